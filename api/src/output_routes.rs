//! The output routes (docs/api.md, "Output"): runners append, people and programs read the
//! bytes, their text, a live-or-stored event stream and an asciicast recording.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cliscale_core::cursor::{Ends, LogCursor, LogRead, Step};
use cliscale_core::output::{
    AppendQuery, COMPLETE_HEADER, END_HEADER, GAPS_HEADER, PlainText, SINCE_HEADER, UNTIL_HEADER,
};
use cliscale_core::protocol::{ServerMessage, SessionStatus, credential, sse};
use cliscale_core::token::TokenVerifier;
use futures_util::Stream;
use serde::Deserialize;

use crate::error::{ApiError, Result};
use crate::model::SessionRecord;
use crate::output::{AppendOutcome, Recorder, Segment, log_complete};
use crate::routes::{ApiState, Caller, visible_session};
use crate::store::now;

type AppState = Arc<ApiState>;

pub use cliscale_core::output::MAX_APPEND_BYTES;
/// Bytes read from the store per step of a read or a stream: a runner's largest batch, so a
/// step takes whole stored segments.
const READ_STEP: usize = MAX_APPEND_BYTES;
/// Most bytes in one `output` event (its data is base64 in JSON).
const EVENT_BYTES: usize = 1024 * 1024;
/// How often a live reader looks for appends another replica took, and for status changes.
const POLL: Duration = Duration::from_secs(1);

fn header(name: &'static str, value: impl ToString) -> (header::HeaderName, HeaderValue) {
    let value = HeaderValue::from_str(&value.to_string()).unwrap_or(HeaderValue::from_static(""));
    (header::HeaderName::from_static(name), value)
}

fn bad_query(e: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::bad_request("invalid_query", e.body_text())
}

#[utoipa::path(post, path = "/api/sessions/{id}/output", tag = "output",
    summary = "Append to a session's stored output (its runner only)",
    params(("id" = String, Path, description = "Session id"),
        ("offset" = u64, Query, description = "Offset of the body's first byte"),
        ("atMs" = Option<u64>, Query, description = "Runner clock, ms"),
        ("gapFrom" = Option<u64>, Query, description = "The runner no longer holds [gapFrom, offset)"),
        ("resizes" = Option<String>, Query, description = "offset.atMs.COLSxROWS, comma-separated"),
        ("closed" = Option<bool>, Query, description = "Nothing follows")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    security(("outputToken" = [])),
    responses((status = 200, description = "Stored; the end offset is in cliscale-output-end"),
        (status = 409, description = "Starts past the stored end (output_behind)", body = crate::error::ErrorBody),
        (status = 401, description = "Not this session's output credential", body = crate::error::ErrorBody)))]
pub(crate) async fn append(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: std::result::Result<Query<AppendQuery>, axum::extract::rejection::QueryRejection>,
    body: std::result::Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    state.output_verifier.verify(credential(authorization, None), &id).map_err(|e| {
        ApiError::unauthorized(
            "invalid_output_token",
            format!("not this session's output credential: {e}"),
        )
    })?;
    let Query(q) = query.map_err(bad_query)?;
    if q.resizes.as_deref().is_some_and(|r| cliscale_core::output::Resize::parse_list(r).is_none())
    {
        return Err(ApiError::bad_request("invalid_query", "resizes is malformed"));
    }
    let body = body.map_err(|_| ApiError::PayloadTooLarge(MAX_APPEND_BYTES))?;
    state.metrics.output_appended_bytes.inc_by(body.len() as u64);
    match state.output.append(&id, &q, body).await? {
        AppendOutcome::Stored { end } => {
            Ok(([header(END_HEADER, end)], axum::Json(serde_json::json!({ "end": end })))
                .into_response())
        }
        AppendOutcome::Behind { end } => {
            let body = crate::error::ErrorBody::new(
                "output_behind",
                format!("the store ends at {end}; resend from there or declare a gap"),
            );
            Ok((StatusCode::CONFLICT, [header(END_HEADER, end)], axum::Json(body)).into_response())
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReadParams {
    /// First offset (default 0).
    since: Option<u64>,
    /// Offset after the last byte wanted (default: the stored end).
    until: Option<u64>,
    /// `raw` (default): the bytes; `text`: plain text, terminal escapes removed.
    format: Option<String>,
}

/// Ranges `[from, to)` within `[since, until)` the store does not hold, clipped. Pure.
pub fn gaps_within(segments: &[(u64, u64)], since: u64, until: u64) -> Vec<(u64, u64)> {
    segments
        .iter()
        .filter(|(from, to)| *to > since && *from < until)
        .map(|(from, to)| ((*from).max(since), (*to).min(until)))
        .collect()
}

#[utoipa::path(get, path = "/api/sessions/{id}/output", tag = "output",
    summary = "A session's stored output: bytes, or text", params(("id" = String, Path), ReadParams),
    responses((status = 200, description = "The bytes [since, until) the store holds; offsets in cliscale-output-* headers"),
        (status = 400, description = "Bad range or format", body = crate::error::ErrorBody),
        (status = 404, description = "No such session (or not yours)", body = crate::error::ErrorBody)))]
pub(crate) async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    params: std::result::Result<Query<ReadParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let Query(params) = params.map_err(bad_query)?;
    let text = match params.format.as_deref() {
        None | Some("raw") => false,
        Some("text") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("format {other:?} is not raw or text"),
            ));
        }
    };
    if let (Some(since), Some(until)) = (params.since, params.until)
        && since > until
    {
        return Err(ApiError::bad_request("invalid_range", "since is after until"));
    }
    let session = visible_session(&state, &caller, &id).await?;
    let out = state.output.backend();
    let stored = out.state(&id).await?;
    let end = stored.map_or(0, |s| s.end);
    let until = params.until.unwrap_or(end).min(end);
    let since = params.since.unwrap_or(0).min(until);
    let gaps = gaps_within(&out.gaps(&id).await?, since, until);
    let complete = log_complete(stored.as_ref(), session.finished_at, now());
    let listed: Vec<String> = gaps.iter().take(100).map(|(f, t)| format!("{f}-{t}")).collect();
    let content_type = if text { "text/plain; charset=utf-8" } else { "application/octet-stream" };
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        header(SINCE_HEADER, since),
        header(UNTIL_HEADER, until),
        header(END_HEADER, end),
        header(GAPS_HEADER, listed.join(",")),
        header(COMPLETE_HEADER, complete),
    ];
    let body = Body::from_stream(byte_stream(state.clone(), id, since, until, text));
    Ok((headers, body).into_response())
}

struct ByteReader {
    state: AppState,
    id: String,
    offset: u64,
    until: u64,
    text: Option<PlainText>,
    done: bool,
}

/// The stored bytes `[since, until)`, read a step at a time (never the whole log in memory);
/// as text, escapes removed and each gap a line saying so.
fn byte_stream(
    state: AppState,
    id: String,
    since: u64,
    until: u64,
    text: bool,
) -> impl Stream<Item = std::result::Result<Bytes, ApiError>> {
    let reader = ByteReader {
        state,
        id,
        offset: since,
        until,
        text: text.then(PlainText::default),
        done: false,
    };
    futures_util::stream::unfold(reader, |mut r| async move {
        loop {
            if r.done {
                return None;
            }
            if r.offset >= r.until {
                r.done = true;
                let rest = r.text.take().map(PlainText::finish).unwrap_or_default();
                if rest.is_empty() {
                    return None;
                }
                return Some((Ok(Bytes::from(rest)), r));
            }
            let want = READ_STEP.min((r.until - r.offset) as usize);
            let read = match r.state.output.read(&r.id, r.offset, want, None).await {
                Ok(read) => read,
                Err(e) => {
                    r.done = true;
                    return Some((Err(e), r));
                }
            };
            let chunk = match read {
                LogRead::Data { data, .. } => {
                    let data = data.slice(..data.len().min((r.until - r.offset) as usize));
                    r.offset += data.len() as u64;
                    match &mut r.text {
                        Some(plain) => Bytes::from(plain.feed(&data)),
                        None => data,
                    }
                }
                LogRead::Gap { from, to } => {
                    let to = to.min(r.until);
                    r.offset = to;
                    match &mut r.text {
                        Some(_) => Bytes::from(format!(
                            "\n[cliscale: {} bytes of output were not stored]\n",
                            to - from
                        )),
                        None => continue,
                    }
                }
                LogRead::UpToDate { .. } => {
                    r.offset = r.until;
                    continue;
                }
            };
            if !chunk.is_empty() {
                return Some((Ok(chunk), r));
            }
        }
    })
}

/// Where a reconnecting Server-Sent Events client resumes: its `Last-Event-ID`, which must be a
/// number an event of this stream carried (`what` says which kind, for the refusal).
pub(crate) fn last_event_id(headers: &HeaderMap, what: &str) -> Result<Option<u64>> {
    match headers.get("last-event-id").map(|v| v.to_str().map(|v| v.trim().parse::<u64>())) {
        Some(Ok(Ok(n))) => Ok(Some(n)),
        Some(_) => Err(ApiError::bad_request(
            "invalid_last_event_id",
            format!("Last-Event-ID must be {what}"),
        )),
        None => Ok(None),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamParams {
    /// Offset to start at (default 0); a `Last-Event-ID` header overrides it.
    since: Option<u64>,
}

#[utoipa::path(get, path = "/api/sessions/{id}/output/stream", tag = "output",
    summary = "The session's output as Server-Sent Events: live while it runs, stored after",
    params(("id" = String, Path), StreamParams),
    responses((status = 200, description = "hello, output, gap and status events", content_type = "text/event-stream"),
        (status = 404, description = "No such session (or not yours)", body = crate::error::ErrorBody)))]
pub(crate) async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    params: std::result::Result<Query<StreamParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let Query(params) = params.map_err(bad_query)?;
    let resume = last_event_id(&headers, "an offset this stream sent")?;
    let session = visible_session(&state, &caller, &id).await?;
    let since = resume.or(params.since).unwrap_or(0);
    let wake = state.output.watch(&id);
    let reader = LiveReader {
        cursor: LogCursor::new(since, Ends::AfterFinalStatus),
        status: session.status(),
        finished_at: session.finished_at,
        session,
        wake,
        greeted: false,
        state: state.clone(),
    };
    state.metrics.output_streams.inc();
    Ok(Sse::new(live_events(reader))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

struct LiveReader {
    state: AppState,
    session: SessionRecord,
    cursor: LogCursor,
    status: SessionStatus,
    finished_at: Option<i64>,
    wake: tokio::sync::watch::Receiver<u64>,
    greeted: bool,
}

impl Drop for LiveReader {
    fn drop(&mut self) {
        self.state.metrics.output_streams.dec();
    }
}

fn event(kind: &str, data: &impl serde::Serialize) -> Event {
    Event::default().event(kind).json_data(data).unwrap_or_else(|_| Event::default())
}

fn live_events(reader: LiveReader) -> impl Stream<Item = std::result::Result<Event, Infallible>> {
    futures_util::stream::unfold(reader, |mut r| async move {
        let event = r.next_event().await?;
        Some((Ok(event), r))
    })
}

impl LiveReader {
    async fn next_event(&mut self) -> Option<Event> {
        if !self.greeted {
            self.greeted = true;
            let end = self.state.output.backend().state(&self.session.id).await.ok()?;
            let hello = ServerMessage::Hello {
                session_id: self.session.id.clone(),
                read_only: true,
                log_start: 0,
                log_end: end.map_or(0, |s| s.end),
                status: self.status.clone(),
                elapsed_secs: None,
            };
            self.cursor.greeted(&self.status);
            return Some(event(sse::HELLO, &hello).id(self.cursor.offset().to_string()));
        }
        let stop = self.state.shutdown.clone();
        loop {
            if stop.is_cancelled() {
                self.cursor.shut_down();
            }
            let read = self
                .state
                .output
                .read(&self.session.id, self.cursor.offset(), EVENT_BYTES, self.finished_at)
                .await
                .ok()?;
            match self.cursor.next(read) {
                Step::Output { offset, data } => {
                    let body = sse::OutputData::new(offset, &data);
                    return Some(event(sse::OUTPUT, &body).id(self.cursor.offset().to_string()));
                }
                Step::Gap { from, to } => {
                    let gap = ServerMessage::Gap { from, to };
                    return Some(event(sse::GAP, &gap).id(to.to_string()));
                }
                Step::Status(status) => {
                    return Some(event(sse::STATUS, &ServerMessage::Status(status)));
                }
                Step::End => return None,
                Step::Wait => {
                    tokio::select! {
                        _ = self.wake.changed() => {}
                        _ = tokio::time::sleep(POLL) => {}
                        _ = stop.cancelled() => {}
                    }
                    self.refresh().await;
                }
            }
        }
    }

    /// Picks up a change of the session's status; a deleted session ends the stream.
    async fn refresh(&mut self) {
        let session = match self.state.store.get_session(&self.session.id).await {
            Ok(Some(session)) => session,
            Ok(None) => {
                self.cursor.shut_down();
                return;
            }
            Err(_) => return,
        };
        let status = session.status();
        if status != self.status {
            self.status = status.clone();
            self.cursor.status_changed(status);
        }
        self.finished_at = session.finished_at;
    }
}

#[utoipa::path(get, path = "/api/sessions/{id}/recording", tag = "output",
    summary = "The session as an asciicast v2 recording", params(("id" = String, Path)),
    responses((status = 200, description = "asciicast v2", content_type = "application/x-asciicast"),
        (status = 404, description = "No such session (or not yours)", body = crate::error::ErrorBody)))]
pub(crate) async fn recording(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    let session = visible_session(&state, &caller, &id).await?;
    let resizes = state.output.backend().resizes(&id).await?;
    let header_line = serde_json::json!({
        "version": 2,
        "width": session.spec.cols,
        "height": session.spec.rows,
        "timestamp": session.started_at.unwrap_or(session.created_at),
        // Not the command: it may hold what the session's masking keeps out of the output.
        "title": format!("cliscale session {}", session.id),
        "env": { "TERM": cliscale_core::launch::DEFAULT_TERM, "SHELL": "/bin/bash" },
    });
    let first = Bytes::from(format!("{header_line}\n"));
    struct Rec {
        state: AppState,
        id: String,
        at: u64,
        recorder: Option<Recorder>,
        pending: std::vec::IntoIter<Segment>,
    }
    let rec = Rec {
        state,
        id: id.clone(),
        at: 0,
        recorder: Some(Recorder::new(resizes)),
        pending: Vec::new().into_iter(),
    };
    let events = futures_util::stream::unfold(rec, |mut r| async move {
        loop {
            let recorder = r.recorder.as_mut()?;
            if let Some(segment) = r.pending.next() {
                r.at = segment.end();
                let lines = recorder.segment(&segment);
                if lines.is_empty() {
                    continue;
                }
                return Some((Ok::<_, ApiError>(Bytes::from(lines)), r));
            }
            let segments = match r.state.output.backend().segments(&r.id, r.at, READ_STEP).await {
                Ok(s) => s,
                Err(e) => return Some((Err(e), Rec { recorder: None, ..r })),
            };
            // The first segment holds `at` only when it starts before it: it was sent already.
            let fresh: Vec<Segment> = segments.into_iter().filter(|s| s.start() >= r.at).collect();
            if fresh.is_empty() {
                let rest = r.recorder.take()?.finish();
                return Some((Ok(Bytes::from(rest)), r));
            }
            r.pending = fresh.into_iter();
        }
    });
    let body = Body::from_stream(futures_util::StreamExt::chain(
        futures_util::stream::once(async { Ok(first) }),
        events,
    ));
    let name = format!("attachment; filename=\"{id}.cast\"");
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/x-asciicast")),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&name).map_err(|e| ApiError::Internal(e.to_string()))?,
            ),
        ],
        body,
    )
        .into_response())
}
