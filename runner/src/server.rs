//! The runner's HTTP side: the terminal WebSocket the gateway proxies, Server-Sent Events of
//! the same log, health, readiness and metrics. docs/protocol.md describes the frames.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use cliscale_core::cursor::{Ends, LogCursor, Step};
use cliscale_core::protocol::{
    AttachMode, ClientMessage, CloseCode, ErrorBody, ServerMessage, SessionStatus, credential,
    encode_output, parse_client_text, sse,
};
use cliscale_core::token::{TokenError, TokenVerifier};
use futures_util::{SinkExt, Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::log::OutputLog;
use crate::metrics::{KindLabel, Metrics, ReasonLabel};
use crate::pty::{InputQueue, PtyInput, QueueError};

/// Largest output frame sent to a client.
pub const MAX_OUTPUT_FRAME: usize = 64 * 1024;
/// Largest message accepted from a client; bigger ones close the connection (1009).
pub const MAX_CLIENT_MESSAGE: usize = 1024 * 1024;

/// Initial read buffer per connection; it grows for larger messages.
const CLIENT_READ_BUFFER: usize = 4 * 1024;
/// Most output frames gathered before one write to a client, while a burst has more waiting:
/// the client then wakes once per write instead of once per frame.
const BURST_BYTES: usize = 128 * 1024;

/// State shared by the session driver and every connection.
pub struct Shared {
    pub session_id: String,
    pub log: Arc<OutputLog>,
    pub status: watch::Sender<SessionStatus>,
    /// Set once the command runs in its PTY; readiness follows it.
    pub input: OnceLock<InputQueue>,
    /// Cleared when the command exits: input is no longer accepted.
    pub accepting_input: AtomicBool,
    /// When the command started, and when it ended.
    pub started: OnceLock<Instant>,
    pub ended: OnceLock<Instant>,
    pub verifier: Arc<dyn TokenVerifier>,
    pub metrics: Metrics,
    pub ping_interval: Duration,
    pub stall_timeout: Duration,
    /// Cancelled when the runner shuts down; connections close with "session ended".
    pub shutdown: CancellationToken,
    /// Tracks live connections so the runner can let them say goodbye before exiting.
    pub connections: TaskTracker,
    /// Token ids already used here: a token opens one connection at the runner too, whoever
    /// presents it (the gateway, or someone who reached the runner's port directly).
    pub spent: std::sync::Mutex<SpentTokens>,
    /// The last size a client asked for before the command started (while code is fetched, a
    /// page opened at once fits itself): the command starts at it.
    pub early_size: std::sync::Mutex<Option<(u16, u16)>>,
}

/// The ids of tokens used at this runner, each kept until its token expires.
#[derive(Debug, Default)]
pub struct SpentTokens {
    expiries: std::collections::HashMap<String, u64>,
}

impl SpentTokens {
    /// Records `jti` (valid until `exp`, seconds) as used at `now`; false when it already was.
    /// Expired ids are forgotten: their tokens are refused as expired anyway. Pure.
    pub fn spend(&mut self, jti: &str, exp: u64, now: u64) -> bool {
        if self.expiries.len() >= 1024 {
            self.expiries.retain(|_, e| *e >= now);
        }
        if self.expiries.contains_key(jti) {
            return false;
        }
        self.expiries.insert(jti.to_owned(), exp);
        true
    }
}

impl Shared {
    /// A resize asked for while no command takes input: kept for the command's start, or, if
    /// the command started meanwhile, passed on now. After the end it is moot.
    fn resize_early(&self, cols: u16, rows: u16) {
        if self.ended.get().is_some() {
            return;
        }
        *self.early_size.lock().expect("early size lock") = Some((cols, rows));
        // The command may have started (and taken the early size) since input was checked.
        if self.accepting_input.load(Ordering::Acquire)
            && let Some(input) = self.input.get()
            && let Some((cols, rows)) = self.take_early_size()
        {
            let _ = input.try_send(PtyInput::Resize { cols, rows });
        }
    }

    /// The size asked for before the command started, once.
    pub fn take_early_size(&self) -> Option<(u16, u16)> {
        self.early_size.lock().expect("early size lock").take()
    }

    /// How long the command has run, until its end once it ended.
    pub fn elapsed_secs(&self) -> Option<u64> {
        let started = *self.started.get()?;
        let until = self.ended.get().copied().unwrap_or_else(Instant::now);
        Some(until.saturating_duration_since(started).as_secs())
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/ws", get(ws_handler))
        .route("/events", get(sse_handler))
        .with_state(shared)
}

#[derive(Debug, Deserialize)]
pub struct AttachQuery {
    token: Option<String>,
    since: Option<u64>,
    /// `view` asks for a read-only connection even with an interact token.
    mode: Option<String>,
}

fn error_response(status: StatusCode, code: &'static str, message: String) -> Response {
    HttpError { status, code, message }.into_response()
}

/// A refused request: JSON body with a stable `error` code and a human `message`.
struct HttpError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.input.get().is_some() {
        (StatusCode::OK, "ready").into_response()
    } else {
        let phase = shared.status.borrow().phase;
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the PTY is not up yet (phase {phase})"),
        )
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let counted = shared.metrics.output_bytes.get();
    shared.metrics.output_bytes.inc_by(shared.log.end().saturating_sub(counted));
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        shared.metrics.render(),
    )
        .into_response()
}

/// Checks the mode, the token (`cliscale_core::protocol::credential`'s rule) and the offset.
fn authorize(
    shared: &Shared,
    headers: &HeaderMap,
    query: &AttachQuery,
) -> Result<(bool, u64), HttpError> {
    let mode = AttachMode::parse(query.mode.as_deref()).map_err(|e| HttpError {
        status: StatusCode::BAD_REQUEST,
        code: e.code(),
        message: e.to_string(),
    })?;
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = credential(authorization, query.token.as_deref());
    let claims = shared.verifier.verify(token, &shared.session_id).map_err(|e| {
        shared.metrics.auth_failures.get_or_create(&ReasonLabel { reason: e.code() }).inc();
        tracing::info!(code = e.code(), "refused a connection: {e}");
        let status = match e {
            TokenError::WrongSession { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        HttpError { status, code: e.code(), message: e.to_string() }
    })?;
    let read_only = mode.read_only(claims.scope);
    let since = query.since.unwrap_or(0);
    let end = shared.log.end();
    if since > end {
        return Err(HttpError {
            status: StatusCode::BAD_REQUEST,
            code: "since_beyond_end",
            message: format!("since={since} is past the end of the log ({end})"),
        });
    }
    // Last, so a refusal never uses the token up.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if !shared.spent.lock().expect("spent tokens lock").spend(&claims.jti, claims.exp, now) {
        shared.metrics.auth_failures.get_or_create(&ReasonLabel { reason: "token_replayed" }).inc();
        return Err(HttpError {
            status: StatusCode::UNAUTHORIZED,
            code: "token_replayed",
            message: "this token has already been used".into(),
        });
    }
    Ok((read_only, since))
}

async fn ws_handler(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<AttachQuery>, axum::extract::rejection::QueryRejection>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Ok(Query(query)) = query else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "since must be a non-negative integer".into(),
        );
    };
    let (read_only, since) = match authorize(&shared, &headers, &query) {
        Ok(ok) => ok,
        Err(refused) => return refused.into_response(),
    };
    upgrade
        // Clients mostly send keystrokes: a small read buffer keeps idle connections cheap.
        .read_buffer_size(CLIENT_READ_BUFFER)
        // Frames gather here only while more output is already waiting (a burst), and are
        // flushed together; otherwise each is flushed as it is sent.
        .write_buffer_size(BURST_BYTES)
        .max_write_buffer_size(BURST_BYTES + 2 * MAX_OUTPUT_FRAME)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| {
            let token = shared.connections.token();
            async move {
                serve_terminal(shared, socket, read_only, since).await;
                drop(token);
            }
        })
}

/// Messages from a connection's reader half to its writer half.
enum Control {
    Error { code: &'static str, message: String },
}

async fn serve_terminal(shared: Arc<Shared>, socket: WebSocket, read_only: bool, since: u64) {
    let gauge = shared.metrics.clients.get_or_create(&KindLabel { kind: "ws" }).clone();
    gauge.inc();
    let (mut sink, stream) = socket.split();
    let (control_tx, control_rx) = mpsc::channel::<Control>(16);
    let last_heard = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let reader = tokio::spawn(read_client(
        shared.clone(),
        stream,
        read_only,
        control_tx,
        last_heard.clone(),
        started,
    ));
    let ending =
        write_client(&shared, &mut sink, read_only, since, control_rx, last_heard, started).await;
    if let Some(reason) = ending.dropped {
        shared.metrics.clients_dropped.get_or_create(&ReasonLabel { reason }).inc();
        tracing::info!(reason, "dropped a client");
    }
    if let Some(frame) = ending.close {
        say_goodbye(&shared, &mut sink, frame).await;
    }
    reader.abort();
    gauge.dec();
}

/// How a terminal connection ends, as decided by its writer half.
struct Ending {
    /// Why the runner gave up on the client (a `clients_dropped` reason), if it did.
    dropped: Option<&'static str>,
    /// The close frame the client should get, if the connection can still carry one.
    close: Option<CloseFrame>,
}

impl Ending {
    fn closed_by_peer() -> Self {
        Self { dropped: None, close: None }
    }

    fn dropped(reason: &'static str, code: CloseCode) -> Self {
        Self { dropped: Some(reason), close: Some(close_frame(code)) }
    }
}

fn close_frame(code: CloseCode) -> CloseFrame {
    CloseFrame { code: code.code(), reason: code.reason().into() }
}

/// Sends the close frame. It queues behind whatever output is already on its way, so a client
/// that was too slow gets another stall timeout to read that and learn why it was dropped. The
/// reader half keeps running meanwhile: it takes the client's reply, and no unread input turns
/// the socket's close into a reset that would discard what the client has not read yet.
async fn say_goodbye(shared: &Shared, sink: &mut Sink, frame: CloseFrame) {
    let _ =
        tokio::time::timeout(shared.stall_timeout, sink.send(Message::Close(Some(frame)))).await;
}

async fn read_client(
    shared: Arc<Shared>,
    mut stream: futures_util::stream::SplitStream<WebSocket>,
    read_only: bool,
    control: mpsc::Sender<Control>,
    last_heard: Arc<AtomicU64>,
    started: Instant,
) {
    let mut told_read_only = false;
    while let Some(Ok(message)) = stream.next().await {
        last_heard.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let input = match message {
            Message::Binary(data) => PtyInput::Data(data),
            Message::Text(text) => match parse_client_text(text.as_str()) {
                Ok(ClientMessage::Input { data }) => PtyInput::Data(Bytes::from(data)),
                Ok(ClientMessage::Resize { cols, rows }) => PtyInput::Resize { cols, rows },
                Err(e) => {
                    let _ = control
                        .send(Control::Error { code: e.code(), message: e.to_string() })
                        .await;
                    continue;
                }
            },
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if read_only {
            if !told_read_only {
                told_read_only = true;
                let message = "this connection is read-only; input and resize are ignored".into();
                let _ = control.send(Control::Error { code: "read_only", message }).await;
            }
            continue;
        }
        let sender = shared.input.get().filter(|_| shared.accepting_input.load(Ordering::Acquire));
        let Some(sender) = sender else {
            match input {
                // A client fitting itself to its window typed nothing: before the start the
                // command starts at that size, after the end there is nothing to fit.
                PtyInput::Resize { cols, rows } => shared.resize_early(cols, rows),
                PtyInput::Data(data) => {
                    let message = format!(
                        "the command is not running; {} byte{} of input dropped",
                        data.len(),
                        if data.len() == 1 { "" } else { "s" }
                    );
                    let _ = control.send(Control::Error { code: "not_running", message }).await;
                }
            }
            continue;
        };
        if let PtyInput::Data(data) = &input {
            shared.metrics.input_bytes.inc_by(data.len() as u64);
        }
        match sender.try_send(input) {
            Ok(()) => {}
            Err(QueueError::Closed) => break,
            Err(QueueError::Full(input)) => {
                // The program is not reading its input, and this client waits for it: its
                // pongs queue behind its input, so its silence says nothing until the wait ends.
                // (A client that is really gone still fails the writer's sends.)
                last_heard.store(WAITING_ON_PROGRAM, Ordering::Relaxed);
                let sent = sender.send(input).await;
                last_heard.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                if sent.is_err() {
                    break;
                }
            }
        }
    }
}

/// `last_heard` while a client's reader waits for the program to take its input: a time in
/// the future, so the keepalive finds no silence.
const WAITING_ON_PROGRAM: u64 = u64::MAX;

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;

/// Why a send failed: the connection broke, or the client took nothing for the stall timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendError {
    Broken,
    TooSlow,
}

impl From<SendError> for Ending {
    fn from(error: SendError) -> Self {
        match error {
            SendError::Broken => Ending { dropped: Some("send_failed"), close: None },
            SendError::TooSlow => Ending::dropped("too_slow", CloseCode::TooSlow),
        }
    }
}

/// Sends one message, giving up on a client that cannot take it within the stall timeout.
async fn send(shared: &Shared, sink: &mut Sink, message: Message) -> Result<(), SendError> {
    stalls(shared, sink.send(message)).await
}

/// Queues one message behind others of a burst; the write buffer goes out when full, or at
/// the next [`send`] or flush.
async fn feed(shared: &Shared, sink: &mut Sink, message: Message) -> Result<(), SendError> {
    stalls(shared, sink.feed(message)).await
}

async fn stalls<E>(
    shared: &Shared,
    io: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), SendError> {
    match tokio::time::timeout(shared.stall_timeout, io).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(SendError::Broken),
        Err(_) => Err(SendError::TooSlow),
    }
}

fn json_message(message: &ServerMessage) -> Message {
    Message::Text(serde_json::to_string(message).expect("server messages serialize").into())
}

async fn write_client(
    shared: &Shared,
    sink: &mut Sink,
    read_only: bool,
    since: u64,
    control: mpsc::Receiver<Control>,
    last_heard: Arc<AtomicU64>,
    started: Instant,
) -> Ending {
    match stream_to_client(shared, sink, read_only, since, control, last_heard, started).await {
        Ok(ending) => ending,
        Err(error) => error.into(),
    }
}

/// The first message of every stream, WebSocket or SSE: the session, the log's extent and the
/// current status, which the reader's cursor takes note of.
fn greet(
    shared: &Shared,
    status_rx: &mut watch::Receiver<SessionStatus>,
    cursor: &mut LogCursor,
    read_only: bool,
) -> ServerMessage {
    let status = status_rx.borrow_and_update().clone();
    cursor.greeted(&status);
    ServerMessage::Hello {
        session_id: shared.session_id.clone(),
        read_only,
        log_start: shared.log.start(),
        log_end: shared.log.end(),
        status,
        elapsed_secs: shared.elapsed_secs(),
    }
}

/// Streams the log, status changes, errors and pings to one client until the connection ends.
async fn stream_to_client(
    shared: &Shared,
    sink: &mut Sink,
    read_only: bool,
    since: u64,
    mut control: mpsc::Receiver<Control>,
    last_heard: Arc<AtomicU64>,
    started: Instant,
) -> Result<Ending, SendError> {
    let mut end_rx = shared.log.subscribe();
    let mut status_rx = shared.status.subscribe();
    let mut cursor = LogCursor::new(since, Ends::OnShutdown);
    let hello = greet(shared, &mut status_rx, &mut cursor, read_only);
    send(shared, sink, json_message(&hello)).await?;
    // The first ping is one interval away. (An `interval`'s first tick is immediate in name
    // only: awaiting it waits for the timer wheel, about 1 ms before the first byte.)
    let period = shared.ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        if status_rx.has_changed().unwrap_or(false) {
            cursor.status_changed(status_rx.borrow_and_update().clone());
        }
        match cursor.next(shared.log.read_since(cursor.offset(), MAX_OUTPUT_FRAME)) {
            Step::Output { offset, data } => {
                let frame = Message::Binary(encode_output(offset, &data).into());
                // More is already waiting: gather this frame with the next ones.
                if shared.log.end() > cursor.offset() {
                    feed(shared, sink, frame).await?;
                } else {
                    send(shared, sink, frame).await?;
                }
                if let Ok(Control::Error { code, message }) = control.try_recv() {
                    let error = ServerMessage::Error { code: code.into(), message };
                    send(shared, sink, json_message(&error)).await?;
                }
                continue;
            }
            Step::Gap { from, to } => {
                shared.metrics.gaps.inc();
                send(shared, sink, json_message(&ServerMessage::Gap { from, to })).await?;
                continue;
            }
            Step::Status(status) => {
                send(shared, sink, json_message(&ServerMessage::Status(status))).await?;
                continue;
            }
            Step::End => break,
            // Nothing gathered is left waiting for more output that may never come.
            Step::Wait => stalls(shared, sink.flush()).await?,
        }
        tokio::select! {
            _ = end_rx.changed() => {}
            changed = status_rx.changed() => {
                if changed.is_ok() {
                    cursor.status_changed(status_rx.borrow_and_update().clone());
                }
            }
            message = control.recv() => match message {
                Some(Control::Error { code, message }) => {
                    let error = ServerMessage::Error { code: code.into(), message };
                    send(shared, sink, json_message(&error)).await?;
                }
                // The reader ended: the client closed or its connection broke.
                None => return Ok(Ending::closed_by_peer()),
            },
            _ = ping.tick() => {
                let silent_ms = (started.elapsed().as_millis() as u64)
                    .saturating_sub(last_heard.load(Ordering::Relaxed));
                if silent_ms > 3 * shared.ping_interval.as_millis() as u64 {
                    return Ok(Ending::dropped("keepalive_timeout", CloseCode::KeepaliveTimeout));
                }
                send(shared, sink, Message::Ping(Bytes::from_static(b"cliscale"))).await?;
            }
            // Drain what is left, then close.
            _ = shared.shutdown.cancelled() => cursor.shut_down(),
        }
    }
    Ok(Ending { dropped: None, close: Some(close_frame(CloseCode::SessionEnded)) })
}

async fn sse_handler(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<AttachQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(mut query)) = query else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "since must be a non-negative integer".into(),
        );
    };
    // EventSource reconnects with Last-Event-ID, which is the offset to resume from.
    if let Some(last) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        match last.parse() {
            Ok(offset) => query.since = Some(offset),
            Err(_) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_last_event_id",
                    format!("Last-Event-ID {last:?} is not an offset"),
                );
            }
        }
    }
    // SSE is read-only by nature, so the token's scope does not matter here.
    let (_, since) = match authorize(&shared, &headers, &query) {
        Ok(ok) => ok,
        Err(refused) => return refused.into_response(),
    };
    Sse::new(sse_stream(shared, since)).keep_alive(KeepAlive::default()).into_response()
}

struct SseState {
    shared: Arc<Shared>,
    cursor: LogCursor,
    end_rx: watch::Receiver<(u64, bool)>,
    status_rx: watch::Receiver<SessionStatus>,
    hello_sent: bool,
    _gauge: GaugeGuard,
}

/// Keeps the client gauge right however the stream ends.
struct GaugeGuard(prometheus_client::metrics::gauge::Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn sse_event(kind: &str, data: &impl serde::Serialize) -> Event {
    Event::default().event(kind).data(serde_json::to_string(data).expect("events serialize"))
}

fn sse_stream(shared: Arc<Shared>, since: u64) -> impl Stream<Item = Result<Event, Infallible>> {
    let gauge = shared.metrics.clients.get_or_create(&KindLabel { kind: "sse" }).clone();
    gauge.inc();
    let state = SseState {
        end_rx: shared.log.subscribe(),
        status_rx: shared.status.subscribe(),
        shared,
        cursor: LogCursor::new(since, Ends::AfterFinalStatus),
        hello_sent: false,
        _gauge: GaugeGuard(gauge),
    };
    futures_util::stream::unfold(state, |mut st| async move {
        let event = next_sse_event(&mut st).await?;
        Some((Ok(event), st))
    })
}

async fn next_sse_event(st: &mut SseState) -> Option<Event> {
    if !st.hello_sent {
        st.hello_sent = true;
        let hello = greet(&st.shared, &mut st.status_rx, &mut st.cursor, true);
        return Some(sse_event(sse::HELLO, &hello).id(st.cursor.offset().to_string()));
    }
    loop {
        if st.status_rx.has_changed().unwrap_or(false) {
            st.cursor.status_changed(st.status_rx.borrow_and_update().clone());
        }
        let read = st.shared.log.read_since(st.cursor.offset(), MAX_OUTPUT_FRAME);
        match st.cursor.next(read) {
            Step::Output { offset, data } => {
                let body = sse::OutputData::new(offset, &data);
                return Some(sse_event(sse::OUTPUT, &body).id(st.cursor.offset().to_string()));
            }
            Step::Gap { from, to } => {
                st.shared.metrics.gaps.inc();
                let gap = ServerMessage::Gap { from, to };
                return Some(sse_event(sse::GAP, &gap).id(to.to_string()));
            }
            Step::Status(status) => {
                return Some(sse_event(sse::STATUS, &ServerMessage::Status(status)));
            }
            Step::End => return None,
            Step::Wait => {}
        }
        tokio::select! {
            _ = st.end_rx.changed() => {}
            changed = st.status_rx.changed() => {
                if changed.is_ok() {
                    st.cursor.status_changed(st.status_rx.borrow_and_update().clone());
                }
            }
            _ = st.shared.shutdown.cancelled() => st.cursor.shut_down(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SpentTokens;

    #[test]
    fn a_token_is_spent_once_and_forgotten_after_it_expires() {
        let mut spent = SpentTokens::default();
        assert!(spent.spend("a", 100, 10));
        assert!(!spent.spend("a", 100, 11), "a second use is refused");
        assert!(spent.spend("b", 100, 11));
        for i in 0..1100 {
            assert!(spent.spend(&format!("old-{i}"), 50, 20));
        }
        // Past 1024 ids the expired ones go; the live ones stay spent.
        assert!(spent.spend("c", 200, 60));
        assert!(spent.expiries.len() < 1024, "{}", spent.expiries.len());
        assert!(!spent.spend("a", 100, 60));
    }
}
