//! `/ws/{sid}`: every check happens before the upgrade, so each refusal is an HTTP status with
//! a JSON reason; then frames are proxied both ways, one in flight per direction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{self, CloseFrame, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use cliscale_core::protocol::{
    AttachMode, CloseCode, ErrorBody, ServerMessage, SessionStatus, credential,
};
use cliscale_core::token::{SessionClaims, TokenError, TokenScope};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use crate::jwks::VerifyError;
use crate::{CodeLabel, Gateway, ResolveError};

/// Largest frame a runner sends (64 KiB of output plus its header), with room to spare.
const MAX_RUNNER_FRAME: usize = 1024 * 1024;

type Upstream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Debug, Default)]
pub struct WsQuery {
    token: Option<String>,
    since: Option<u64>,
    mode: Option<String>,
}

/// A refusal before upgrade: status plus a stable code and message.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// The refusal as a check's answer: not a refused connection, so not counted as one.
    fn into_body(self, status: Option<SessionStatus>) -> Response {
        let mut body = serde_json::to_value(ErrorBody::new(self.code, self.message))
            .expect("an error body serializes");
        if let Some(status) = status {
            body["status"] = serde_json::to_value(status).expect("a status serializes");
        }
        (self.status, axum::Json(body)).into_response()
    }

    fn into_response(self, gateway: &Gateway) -> Response {
        gateway.metrics.refused.get_or_create(&CodeLabel { code: self.code }).inc();
        tracing::info!(code = self.code, "refused a terminal connection: {}", self.message);
        self.into_body(None)
    }

    /// The token's one connection was taken already.
    fn replayed() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "token_replayed", "this token has already been used")
    }
}

fn token_refusal(e: VerifyError) -> Refusal {
    match e {
        VerifyError::Unavailable(m) => {
            Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "jwks_unavailable", m)
        }
        VerifyError::Token(e @ TokenError::WrongSession { .. }) => {
            Refusal::new(StatusCode::FORBIDDEN, e.code(), e.to_string())
        }
        VerifyError::Token(e) => Refusal::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()),
    }
}

pub async fn ws_entry(
    State(gateway): State<Arc<Gateway>>,
    Path(sid): Path<String>,
    request: Request,
) -> Response {
    let (mut parts, _) = request.into_parts();
    let query = match parts.uri.query().map(parse_query) {
        Some(Some(query)) => query,
        None => WsQuery::default(),
        Some(None) => {
            let refusal = Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                "since must be a non-negative integer",
            );
            return refusal.into_response(&gateway);
        }
    };
    let Ok(upgrade) = WebSocketUpgrade::from_request_parts(&mut parts, &()).await else {
        // A plain GET is a person following the seed's `/ws/{id}?token=` link: send them to the
        // page, with the token moved into the fragment.
        let target = match &query.token {
            Some(t) => format!("/t/{}#token={}", urlencode(&sid), urlencode(t)),
            None => format!("/t/{}", urlencode(&sid)),
        };
        return Redirect::to(&target).into_response();
    };
    match admit(&gateway, &sid, &parts.headers, &query).await {
        Ok(Admitted::Archived { claims, archive, status }) => {
            let since = query.since.unwrap_or(0);
            // A reload of the page reconnects with this, as on a live session.
            let reconnect = gateway.reissuer.as_ref().and_then(|r| r.issue(&claims));
            upgrade
                .max_message_size(gateway.config.max_message)
                .max_frame_size(gateway.config.max_message)
                .on_upgrade(move |client| {
                    replay(gateway, client, archive, sid, since, status, reconnect)
                })
        }
        Ok(Admitted::Live { claims, upstream, read_only }) => {
            let reconnect = gateway.reissuer.as_ref().and_then(|r| r.issue(&claims));
            let key = (claims.sub.clone(), used_scope(&claims, read_only));
            upgrade
                .max_message_size(gateway.config.max_message)
                // Refuse an oversize frame at its header, not after buffering it (16 MiB by
                // default, per connection).
                .max_frame_size(gateway.config.max_message)
                .read_buffer_size(4 * 1024)
                .write_buffer_size(0)
                .on_upgrade(move |client| {
                    relay(gateway, client, *upstream, read_only, reconnect, key)
                })
        }
        Err(refusal) => refusal.into_response(&gateway),
    }
}

/// Why a link does not open, for the page to say in words: `GET /t/{sid}/check` with the
/// link's token as a Bearer header. The same checks as a connection, without consuming the
/// token and without waiting for a runner: 200 when the link should open (a refusal then was
/// transient), otherwise the refusal the connection met, and for a finished session how it
/// ended (`status`).
pub async fn check(
    State(gateway): State<Arc<Gateway>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = credential(authorization, None);
    let claims = match gateway.jwks.verify(token, &sid).await {
        Ok(claims) => claims,
        Err(e) => return token_refusal(e).into_body(None),
    };
    match gateway.resolver.resolve(&sid, Duration::ZERO).await {
        Err(error @ ResolveError::Gone) => {
            let status = gateway.resolver.ended(&sid).await;
            if gateway.archive.is_none() || status.is_none() {
                return unresolved_refusal(error, &sid, Duration::ZERO).into_body(status);
            }
        }
        Err(error @ (ResolveError::UnknownSession | ResolveError::Backend(_))) => {
            return unresolved_refusal(error, &sid, Duration::ZERO).into_body(None);
        }
        Err(ResolveError::NotReady) | Ok(_) => {}
    }
    if let Err(refusal) = key_stands(&gateway, &claims, claims.scope == TokenScope::View).await {
        return refusal.into_body(None);
    }
    match gateway.ledger.is_used(&claims.jti).await {
        Ok(true) => Refusal::replayed().into_body(None),
        Ok(false) => {
            let body = serde_json::json!({ "ok": true, "scope": claims.scope });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(m) => {
            Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "ledger_unavailable", m).into_body(None)
        }
    }
}

/// The scope a connection uses: a read-only one only watches, whatever its token allows. Pure.
fn used_scope(claims: &SessionClaims, read_only: bool) -> TokenScope {
    if read_only { TokenScope::View } else { claims.scope }
}

/// Refuses a token whose key was revoked, deleted or demoted below what the connection does.
async fn key_stands(
    gateway: &Gateway,
    claims: &SessionClaims,
    read_only: bool,
) -> Result<(), Refusal> {
    let Some(keys) = &gateway.keys else { return Ok(()) };
    let standing = keys
        .standing(&claims.sub)
        .await
        .map_err(|m| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "keys_unavailable", m))?;
    if standing.allows(used_scope(claims, read_only)) {
        Ok(())
    } else {
        Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "key_revoked",
            "the API key this token was made for was revoked, or may no longer do this",
        ))
    }
}

/// Parses the query; `None` when `since` is not a non-negative integer.
fn parse_query(q: &str) -> Option<WsQuery> {
    let mut out = WsQuery::default();
    for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
        match k.as_ref() {
            "token" => out.token = Some(v.into_owned()),
            "since" => out.since = Some(v.parse().ok()?),
            "mode" => out.mode = Some(v.into_owned()),
            _ => {}
        }
    }
    Some(out)
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// What an admitted connection is served.
enum Admitted {
    /// The runner, proxied both ways.
    Live { claims: SessionClaims, upstream: Box<Upstream>, read_only: bool },
    /// A finished session's stored output, read-only, then its final status.
    Archived {
        claims: SessionClaims,
        archive: Arc<dyn crate::OutputArchive>,
        status: SessionStatus,
    },
}

/// Every check, in order: mode, token, runner, upstream, JTI (last, so no refusal of the
/// gateway's burns a token). The runner keeps its own record of used tokens.
async fn admit(
    gateway: &Gateway,
    sid: &str,
    headers: &HeaderMap,
    query: &WsQuery,
) -> Result<Admitted, Refusal> {
    let mode = AttachMode::parse(query.mode.as_deref())
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = credential(authorization, query.token.as_deref()).to_owned();
    let claims = gateway.jwks.verify(&token, sid).await.map_err(token_refusal)?;
    let read_only = mode.read_only(claims.scope);
    let wait = gateway.config.ready_wait;
    let resolved = gateway.resolver.resolve(sid, wait).await;
    let archived = match (&resolved, &gateway.archive) {
        (Err(ResolveError::Gone), Some(archive)) => {
            gateway.resolver.ended(sid).await.map(|status| (archive.clone(), status))
        }
        _ => None,
    };
    let addr = match (resolved, archived.is_some()) {
        (Ok(addr), _) => addr,
        (Err(_), true) => String::new(),
        (Err(e), false) => return Err(unresolved_refusal(e, sid, wait)),
    };
    key_stands(gateway, &claims, read_only).await?;
    let consume = || async {
        let first =
            gateway.ledger.consume(&claims.jti, claims.exp as i64).await.map_err(|m| {
                Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "ledger_unavailable", m)
            })?;
        if first { Ok(()) } else { Err(Refusal::replayed()) }
    };
    if let Some((archive, status)) = archived {
        consume().await?;
        return Ok(Admitted::Archived { claims, archive, status });
    }
    let url = runner_url(&addr, query.since.unwrap_or(0), read_only);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| Refusal::new(StatusCode::BAD_GATEWAY, "runner_unreachable", e.to_string()))?;
    let auth = format!("Bearer {token}").parse().map_err(|_| {
        Refusal::new(
            StatusCode::UNAUTHORIZED,
            "token_malformed",
            "token is not a valid header value",
        )
    })?;
    request.headers_mut().insert(header::AUTHORIZATION, auth);
    // Small buffers: an idle proxied connection should cost kilobytes, not tungstenite's
    // default 128 KiB read buffer.
    let config = tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(gateway.config.max_message.max(MAX_RUNNER_FRAME)));
    let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    let upstream = match tokio::time::timeout(gateway.config.connect_timeout, connect).await {
        Ok(Ok((upstream, _))) => upstream,
        Ok(Err(e)) => return Err(upstream_refusal(Some(e))),
        Err(_) => return Err(upstream_refusal(None)),
    };
    // Only a connection that stands uses the token up here (the runner has used its own copy).
    consume().await?;
    Ok(Admitted::Live { claims, upstream: Box::new(upstream), read_only })
}

/// The runner's WebSocket URL for a client that resumes at `since`. Pure.
fn runner_url(addr: &str, since: u64, read_only: bool) -> String {
    let mode = if read_only { "&mode=view" } else { "" };
    format!("ws://{addr}/ws?since={since}{mode}")
}

/// Why a session has no runner to connect to, as the client is told. Pure.
fn unresolved_refusal(error: ResolveError, sid: &str, wait: Duration) -> Refusal {
    match error {
        ResolveError::UnknownSession => {
            Refusal::new(StatusCode::NOT_FOUND, "session_not_found", format!("no session {sid:?}"))
        }
        ResolveError::Gone => Refusal::new(
            StatusCode::GONE,
            "session_gone",
            "the session has ended and its runner is gone",
        ),
        ResolveError::NotReady => Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "runner_not_ready",
            format!("the runner did not start within {wait:?}"),
        ),
        ResolveError::Backend(m) => {
            Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "resolver_unavailable", m)
        }
    }
}

/// Why connecting to the runner failed (`None`: it did not answer in time). Pure.
fn upstream_refusal(error: Option<tungstenite::Error>) -> Refusal {
    match error {
        Some(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            // The runner's refusals of the client's own mistakes pass through as they are.
            let code = serde_json::from_str::<serde_json::Value>(&body).ok();
            match code.as_ref().and_then(|v| v["error"].as_str()) {
                Some("token_replayed") => return Refusal::replayed(),
                Some("since_beyond_end") => {
                    let message = code.as_ref().and_then(|v| v["message"].as_str());
                    return Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "since_beyond_end",
                        message.unwrap_or("since is past the end of the log"),
                    );
                }
                _ => {}
            }
            Refusal::new(
                StatusCode::BAD_GATEWAY,
                "runner_refused",
                format!("the runner answered {}: {body}", response.status()),
            )
        }
        Some(e) => Refusal::new(
            StatusCode::BAD_GATEWAY,
            "runner_unreachable",
            format!("cannot reach the runner: {e}"),
        ),
        None => Refusal::new(
            StatusCode::GATEWAY_TIMEOUT,
            "runner_unreachable",
            "the runner did not answer in time",
        ),
    }
}

/// What a browser's frame (or the end of its stream) means for the relay.
#[derive(Debug)]
enum ClientEvent {
    /// Goes on to the runner; `closing` when it is the browser's close.
    Forward { message: tungstenite::Message, closing: bool },
    /// Input or a resize on a read-only connection: dropped.
    ReadOnlyInput,
    /// A ping or pong: the browser is there, nothing goes on.
    Heard,
    /// A message over the size limit.
    TooBig,
    /// The connection ended or broke.
    Gone,
}

/// Decides what a browser's frame means. Pure.
fn client_event(
    from_client: Option<Result<ws::Message, axum::Error>>,
    read_only: bool,
) -> ClientEvent {
    let message = match from_client {
        Some(Ok(message)) => message,
        Some(Err(error)) if is_too_big(&error) => return ClientEvent::TooBig,
        _ => return ClientEvent::Gone,
    };
    let upstream = match message {
        ws::Message::Ping(_) | ws::Message::Pong(_) => return ClientEvent::Heard,
        ws::Message::Binary(_) | ws::Message::Text(_) if read_only => {
            return ClientEvent::ReadOnlyInput;
        }
        ws::Message::Binary(b) => tungstenite::Message::Binary(b),
        ws::Message::Text(t) => tungstenite::Message::Text(t.as_str().into()),
        ws::Message::Close(_) => {
            return ClientEvent::Forward {
                message: tungstenite::Message::Close(None),
                closing: true,
            };
        }
    };
    ClientEvent::Forward { message: upstream, closing: false }
}

fn to_client(message: tungstenite::Message) -> Option<ws::Message> {
    Some(match message {
        tungstenite::Message::Binary(b) => ws::Message::Binary(b),
        tungstenite::Message::Text(t) => ws::Message::Text(t.as_str().into()),
        tungstenite::Message::Close(frame) => ws::Message::Close(
            frame.map(|f| CloseFrame { code: f.code.into(), reason: f.reason.as_str().into() }),
        ),
        _ => return None,
    })
}

/// A control message as a text frame.
fn text_frame(message: &ServerMessage) -> ws::Message {
    ws::Message::Text(serde_json::to_string(message).expect("server messages serialize").into())
}

fn close(code: CloseCode) -> ws::Message {
    ws::Message::Close(Some(CloseFrame { code: code.code(), reason: code.reason().into() }))
}

/// Most runner frames (64 KiB each at most) forwarded before one flush to the client.
const RELAY_BURST_FRAMES: usize = 8;

/// Whether a browser's read failed on the message size limit.
fn is_too_big(error: &axum::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|inner| inner.downcast_ref::<tungstenite::Error>())
        .is_some_and(|inner| matches!(inner, tungstenite::Error::Capacity(_)))
}

/// How a burst of runner frames ended.
enum Burst {
    /// Both connections stay open.
    Open,
    /// The runner closed the WebSocket; its close frame was forwarded.
    Closed,
    ClientGone,
    RunnerLost,
    /// The browser took none of the burst within the stall timeout.
    ClientStalled,
}

type ClientTx = futures_util::stream::SplitSink<WebSocket, ws::Message>;
type ClientRx = futures_util::stream::SplitStream<WebSocket>;

/// Forwards `first` and the runner frames already read behind it (at most
/// [`RELAY_BURST_FRAMES`]), then flushes them to the browser with one write.
async fn forward_burst(
    first: Option<Result<tungstenite::Message, tungstenite::Error>>,
    up_rx: &mut futures_util::stream::SplitStream<Upstream>,
    client_tx: &mut ClientTx,
) -> Burst {
    let mut incoming = first;
    let mut forwarded = 0;
    loop {
        let Some(Ok(message)) = incoming else { return Burst::RunnerLost };
        let closing = matches!(message, tungstenite::Message::Close(_));
        if let Some(message) = to_client(message)
            && client_tx.feed(message).await.is_err()
        {
            return Burst::ClientGone;
        }
        if closing {
            let _ = client_tx.flush().await;
            return Burst::Closed;
        }
        forwarded += 1;
        // Poll for another frame only while the burst has room: a frame taken from the stream
        // must be forwarded.
        if forwarded == RELAY_BURST_FRAMES {
            break;
        }
        match up_rx.next().now_or_never() {
            Some(next) => incoming = next,
            None => break,
        }
    }
    if client_tx.flush().await.is_err() { Burst::ClientGone } else { Burst::Open }
}

/// Sends the close frame behind the output already on its way, giving the browser `wait` to
/// read through it. Its frames are read meanwhile: unread input would turn the socket's close
/// into a reset that discards what the browser has not read yet, the close frame included.
async fn say_goodbye(
    client_tx: &mut ClientTx,
    client_rx: &mut ClientRx,
    frame: ws::Message,
    wait: Duration,
) {
    let send = async {
        let _ = client_tx.send(frame).await;
    };
    let drain = async { while let Some(Ok(_)) = client_rx.next().await {} };
    let _ = tokio::time::timeout(wait, async { tokio::join!(send, drain) }).await;
}

/// Largest output frame of a replay, as the runner sends.
const REPLAY_FRAME: usize = 64 * 1024;
/// Bytes read from the archive at a time (whole stored segments), sent as frames.
const REPLAY_READ: usize = 4 * 1024 * 1024;

/// Serves a finished session from the archive: the hello (read-only, with its final status),
/// the stored output from `since` with its gaps, the final status again, then 1000.
async fn replay(
    gateway: Arc<Gateway>,
    client: WebSocket,
    archive: Arc<dyn crate::OutputArchive>,
    sid: String,
    since: u64,
    status: SessionStatus,
    reconnect: Option<String>,
) {
    use cliscale_core::cursor::{Ends, LogCursor, LogRead, Step};
    gateway.metrics.accepted.inc();
    gateway.metrics.connections.inc();
    let (mut client_tx, mut client_rx) = client.split();
    let log_end = match archive.read(&sid, u64::MAX, 1).await {
        Ok(LogRead::UpToDate { end, .. }) => end,
        _ => 0,
    };
    let hello = ServerMessage::Hello {
        session_id: sid.clone(),
        read_only: true,
        log_start: 0,
        log_end,
        status: status.clone(),
        elapsed_secs: None,
    };
    let mut cursor = LogCursor::new(since, Ends::AfterFinalStatus);
    cursor.greeted(&status);
    if let Some(token) = reconnect {
        let _ = client_tx.send(text_frame(&ServerMessage::Reconnect { token })).await;
    }
    let mut open = client_tx.send(text_frame(&hello)).await.is_ok();
    while open {
        let read = match archive.read(&sid, cursor.offset(), REPLAY_READ).await {
            // Nothing more is coming: the runner is gone.
            Ok(LogRead::UpToDate { end, .. }) => LogRead::UpToDate { end, closed: true },
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(%error, "reading a finished session's output failed");
                let _ = client_tx.send(close(CloseCode::RunnerLost)).await;
                break;
            }
        };
        let messages: Vec<ws::Message> = match cursor.next(read) {
            Step::Output { offset, data } => data
                .chunks(REPLAY_FRAME)
                .enumerate()
                .map(|(i, chunk)| {
                    let at = offset + (i * REPLAY_FRAME) as u64;
                    ws::Message::Binary(cliscale_core::protocol::encode_output(at, chunk).into())
                })
                .collect(),
            Step::Gap { from, to } => vec![text_frame(&ServerMessage::Gap { from, to })],
            Step::Status(status) => vec![text_frame(&ServerMessage::Status(status))],
            Step::Wait | Step::End => {
                let frame = close(CloseCode::SessionEnded);
                say_goodbye(&mut client_tx, &mut client_rx, frame, Duration::from_secs(5)).await;
                break;
            }
        };
        // One write to the client per read; a client that takes none of it for the stall
        // timeout is left.
        let stall = gateway.config.stall_timeout;
        for message in messages {
            open &=
                matches!(tokio::time::timeout(stall, client_tx.feed(message)).await, Ok(Ok(())));
            if !open {
                break;
            }
        }
        open &= matches!(tokio::time::timeout(stall, client_tx.flush()).await, Ok(Ok(())));
    }
    gateway.metrics.connections.dec();
}

async fn relay(
    gateway: Arc<Gateway>,
    client: WebSocket,
    upstream: Upstream,
    read_only: bool,
    reconnect: Option<String>,
    (key, scope): (String, TokenScope),
) {
    gateway.metrics.accepted.inc();
    gateway.metrics.connections.inc();
    let _live = gateway.key_watch.hold(&key);
    let mut fallen = gateway.key_watch.subscribe();
    let mut watching_keys = true;
    let (mut client_tx, mut client_rx) = client.split();
    let (mut up_tx, mut up_rx) = upstream.split();
    if let Some(token) = reconnect {
        let _ = client_tx.send(text_frame(&ServerMessage::Reconnect { token })).await;
    }
    let interval = gateway.config.ping_interval;
    // The first ping is one interval away; nothing waits for the timer before the first frame.
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut last_heard = Instant::now();
    let mut told_read_only = false;
    loop {
        tokio::select! {
            from_client = client_rx.next() => {
                let (message, closing) = match client_event(from_client, read_only) {
                    ClientEvent::TooBig => {
                        // As at the runner: 1009, and nothing of the message goes on.
                        let _ = up_tx.send(tungstenite::Message::Close(None)).await;
                        let frame = close(CloseCode::MessageTooBig);
                        let wait = Duration::from_secs(1);
                        say_goodbye(&mut client_tx, &mut client_rx, frame, wait).await;
                        break;
                    }
                    ClientEvent::Gone => {
                        let _ = up_tx.send(tungstenite::Message::Close(None)).await;
                        break;
                    }
                    ClientEvent::Heard => {
                        last_heard = Instant::now();
                        continue;
                    }
                    ClientEvent::Forward { message, closing } => (message, closing),
                    ClientEvent::ReadOnlyInput => {
                        // Dropped here as well as at the runner.
                        last_heard = Instant::now();
                        if told_read_only {
                            continue;
                        }
                        told_read_only = true;
                        let error = ServerMessage::Error {
                            code: "read_only".into(),
                            message: "this connection is read-only; input and resize are ignored"
                                .into(),
                        };
                        let _ = client_tx.send(text_frame(&error)).await;
                        continue;
                    }
                };
                if up_tx.send(message).await.is_err() {
                    let _ = client_tx.send(close(CloseCode::RunnerLost)).await;
                    break;
                }
                // The send waits while the program is not reading its input (a paste into a
                // busy command), and the browser's pongs wait behind it unread: that time is
                // not the browser's silence.
                last_heard = Instant::now();
                if closing {
                    break;
                }
            }
            from_runner = up_rx.next() => {
                // Forward this frame and those already read behind it, then flush once: one
                // write to the client per burst instead of one per frame. A browser that takes
                // none of it for the stall timeout is dropped, like the runner drops a slow
                // client, so a vanished one cannot hold the relay (and its buffers) for good.
                let burst = forward_burst(from_runner, &mut up_rx, &mut client_tx);
                let outcome = tokio::time::timeout(gateway.config.stall_timeout, burst)
                    .await
                    .unwrap_or(Burst::ClientStalled);
                match outcome {
                    Burst::Open => {}
                    Burst::Closed | Burst::ClientGone => break,
                    Burst::RunnerLost => {
                        let _ = client_tx.send(close(CloseCode::RunnerLost)).await;
                        break;
                    }
                    Burst::ClientStalled => {
                        let too_slow = CodeLabel { code: "too_slow" };
                        gateway.metrics.dropped.get_or_create(&too_slow).inc();
                        tracing::info!("dropped a browser that took no output");
                        let _ = up_tx.send(tungstenite::Message::Close(None)).await;
                        let frame = close(CloseCode::TooSlow);
                        let wait = gateway.config.stall_timeout;
                        say_goodbye(&mut client_tx, &mut client_rx, frame, wait).await;
                        break;
                    }
                }
            }
            changed = fallen.changed(), if watching_keys => {
                if changed.is_err() {
                    watching_keys = false;
                    continue;
                }
                if !crate::standing::must_end(&fallen.borrow_and_update(), &key, scope) {
                    continue;
                }
                let revoked = CodeLabel { code: "key_revoked" };
                gateway.metrics.dropped.get_or_create(&revoked).inc();
                tracing::info!("ended a terminal whose API key fell");
                let _ = up_tx.send(tungstenite::Message::Close(None)).await;
                let frame = close(CloseCode::AccessRevoked);
                say_goodbye(&mut client_tx, &mut client_rx, frame, Duration::from_secs(1)).await;
                break;
            }
            _ = gateway.shutdown.cancelled() => {
                let _ = up_tx.send(tungstenite::Message::Close(None)).await;
                let frame = close(CloseCode::GoingAway);
                say_goodbye(&mut client_tx, &mut client_rx, frame, Duration::from_secs(1)).await;
                break;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > interval * 3 {
                    let _ = client_tx.send(close(CloseCode::KeepaliveTimeout)).await;
                    break;
                }
                if client_tx.send(ws::Message::Ping(bytes::Bytes::from_static(b"gw"))).await.is_err() {
                    break;
                }
            }
        }
    }
    gateway.metrics.connections.dec();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode_and_bad_offsets_are_refused() {
        let q = parse_query("token=a%2Bb%3D&since=42&mode=view&x=1").unwrap();
        assert_eq!(q.token.as_deref(), Some("a+b="));
        assert_eq!(q.since, Some(42));
        assert_eq!(q.mode.as_deref(), Some("view"));
        assert!(parse_query("since=-1").is_none());
        assert!(parse_query("since=abc").is_none());
    }

    #[test]
    fn every_way_of_missing_a_runner_has_its_status_and_code() {
        let wait = Duration::from_secs(30);
        let cases = [
            (ResolveError::UnknownSession, 404, "session_not_found"),
            (ResolveError::Gone, 410, "session_gone"),
            (ResolveError::NotReady, 503, "runner_not_ready"),
            (ResolveError::Backend("down".into()), 503, "resolver_unavailable"),
        ];
        for (error, status, code) in cases {
            let r = unresolved_refusal(error, "s1", wait);
            assert_eq!((r.status.as_u16(), r.code), (status, code));
        }
        let timed_out = upstream_refusal(None);
        assert_eq!((timed_out.status.as_u16(), timed_out.code), (504, "runner_unreachable"));
        let refused = upstream_refusal(Some(tungstenite::Error::ConnectionClosed));
        assert_eq!((refused.status.as_u16(), refused.code), (502, "runner_unreachable"));
        assert_eq!(
            runner_url("10.0.0.7:7681", 42, true),
            "ws://10.0.0.7:7681/ws?since=42&mode=view"
        );
        assert_eq!(runner_url("10.0.0.7:7681", 0, false), "ws://10.0.0.7:7681/ws?since=0");
    }

    #[test]
    fn browser_frames_are_forwarded_dropped_or_end_the_relay() {
        let text = || Some(Ok(ws::Message::Text("ls".into())));
        let binary = || Some(Ok(ws::Message::Binary(bytes::Bytes::from_static(b"x"))));
        let pong = || Some(Ok(ws::Message::Pong(bytes::Bytes::new())));
        let close = || Some(Ok(ws::Message::Close(None)));
        let forwarded = |e: ClientEvent| match e {
            ClientEvent::Forward { message, closing } => Some((message.is_close(), closing)),
            _ => None,
        };
        assert_eq!(forwarded(client_event(text(), false)), Some((false, false)));
        assert_eq!(forwarded(client_event(binary(), false)), Some((false, false)));
        assert_eq!(forwarded(client_event(close(), true)), Some((true, true)));
        assert!(matches!(client_event(text(), true), ClientEvent::ReadOnlyInput));
        assert!(matches!(client_event(binary(), true), ClientEvent::ReadOnlyInput));
        assert!(matches!(client_event(pong(), true), ClientEvent::Heard));
        assert!(matches!(client_event(None, false), ClientEvent::Gone));
        let broken = Some(Err(axum::Error::new(std::io::Error::other("reset"))));
        assert!(matches!(client_event(broken, false), ClientEvent::Gone));
    }

    #[test]
    fn redirect_targets_are_encoded() {
        assert_eq!(urlencode("<script>\"'"), "%3Cscript%3E%22%27");
    }
}
