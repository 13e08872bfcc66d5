//! `GET /api/sessions/feed`: sessions as they are created and change, as Server-Sent Events,
//! with the list's filters and resume by position (docs/api.md, "The session feed").

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cliscale_core::rest::{FeedQuery, FeedReady, SessionView, feed};
use futures_util::Stream;

use crate::error::{ApiError, Result};
use crate::output_routes::last_event_id;
use crate::routes::{AppState, Caller, session_query};
use crate::store::SessionQuery;

/// Changes read per query; a feed far behind catches up in batches of this many.
const BATCH: i64 = 200;
/// How often a feed looks for changes another process made (this process' wake it at once).
const POLL: Duration = Duration::from_secs(1);

#[utoipa::path(get, path = "/api/sessions/feed", tag = "sessions",
    summary = "Sessions as they are created and change (Server-Sent Events)",
    description = "First a `ready` event with the position the feed starts after, then a `session` event (the session as GET /api/sessions/{id} shows it, without outputTail) for every creation and change, its `id` the position to resume after with Last-Event-ID. Comment keepalives every 15 s.",
    params(FeedQuery),
    responses((status = 200, description = "ready and session events", content_type = "text/event-stream"),
        (status = 400, description = "A bad filter or Last-Event-ID", body = crate::error::ErrorBody)))]
pub(crate) async fn session_feed(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    params: std::result::Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let Query(params) =
        params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let what = "a position this feed sent";
    let too_far =
        || ApiError::bad_request("invalid_last_event_id", format!("Last-Event-ID must be {what}"));
    let resume = last_event_id(&headers, what)?
        .map(|p| i64::try_from(p).map_err(|_| too_far()))
        .transpose()?;
    if params.since.is_some_and(|s| s < 0) {
        return Err(ApiError::bad_request("invalid_query", "since must be a position (0 or more)"));
    }
    let mut query = session_query(&caller, params.list())?;
    query.limit = BATCH;
    let position = match resume.or(params.since) {
        Some(position) => position,
        None => state.store.feed_head().await?,
    };
    let reader = FeedReader { state, query, position, pending: VecDeque::new(), ready: false };
    Ok(Sse::new(events(reader))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

struct FeedReader {
    state: AppState,
    query: SessionQuery,
    /// The last position sent.
    position: i64,
    pending: VecDeque<Event>,
    ready: bool,
}

fn events(reader: FeedReader) -> impl Stream<Item = std::result::Result<Event, Infallible>> {
    futures_util::stream::unfold(reader, |mut r| async move {
        let event = r.next_event().await?;
        Some((Ok(event), r))
    })
}

impl FeedReader {
    /// The next event; `None` ends the stream (the server is stopping, or the store failed:
    /// the client resumes from its last position).
    async fn next_event(&mut self) -> Option<Event> {
        if !self.ready {
            self.ready = true;
            let ready = FeedReady { position: self.position };
            let data = serde_json::to_string(&ready).ok()?;
            return Some(
                Event::default().event(feed::READY).id(self.position.to_string()).data(data),
            );
        }
        let changed = self.state.store.changed();
        let stop = self.state.shutdown.clone();
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            // Armed before the read, so a write that lands between the two still wakes it.
            let woken = changed.notified();
            let batch = self.state.store.session_changes(&self.query, self.position).await.ok()?;
            for (position, session) in batch {
                self.position = position;
                let data = serde_json::to_string(&SessionView::from(&session)).ok()?;
                let event =
                    Event::default().event(feed::SESSION).id(position.to_string()).data(data);
                self.pending.push_back(event);
            }
            if !self.pending.is_empty() {
                continue;
            }
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.cancelled() => return None,
            }
        }
    }
}
