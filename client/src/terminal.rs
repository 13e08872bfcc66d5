//! A session's terminal over the gateway's WebSocket (docs/protocol.md), kept open through
//! network drops: each connection resumes from the offset after the last byte received, with
//! the one-time token the gateway handed over on the previous connection (or a freshly minted
//! one), so no byte is lost or shown twice.
//!
//! One task owns the socket; the caller reads [`TerminalEvent`]s and sends [`Input`] through
//! channels, so neither ever waits on the other and a reconnect loses no state.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cliscale_core::SessionPhase;
use cliscale_core::protocol::{
    ClientMessage, CloseCode, ServerMessage, SessionStatus, decode_output,
};
use cliscale_core::rest::TokenMinted;
use cliscale_core::token::TokenScope;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use url::Url;

use crate::stream::Backoff;
use crate::{Client, Error, Result};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How a terminal is opened.
#[derive(Debug, Clone, Copy)]
pub struct AttachOptions {
    /// The log offset to start from: 0 replays everything the session printed.
    pub since: u64,
    /// Watch only: a view token, and `mode=view`.
    pub read_only: bool,
    /// A connection that brings nothing for this long is taken for dead and replaced. The
    /// gateway pings every 20 s and the client every [`Self::ping_interval`].
    pub silence_limit: Duration,
    pub ping_interval: Duration,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            since: 0,
            read_only: false,
            silence_limit: Duration::from_secs(45),
            ping_interval: Duration::from_secs(15),
        }
    }
}

/// What the terminal reports, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TerminalEvent {
    /// A connection opened (first, and after each reconnect).
    Hello { read_only: bool, log_end: u64, status: SessionStatus },
    /// Bytes at `offset` of the session's log, never overlapping what came before.
    Output { offset: u64, data: Bytes },
    /// Bytes `[from, to)` were evicted before this client read them.
    Gap { from: u64, to: u64 },
    /// The session's phase changed; a finished one carries the exit code and reason.
    Status(SessionStatus),
    /// The server refused one of this client's frames (`read_only`, `not_running`, …); the
    /// connection stays open.
    Refused { code: String, message: String },
    /// The connection dropped; a new one resumes from `offset` after `delay`.
    Reconnecting { offset: u64, delay: Duration, why: String },
    /// The terminal closed for good: the session ended (1000), access was revoked (4401), or
    /// the client closed it.
    Closed { code: u16, reason: String },
}

/// What the caller sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Bytes(Vec<u8>),
    Resize { cols: u16, rows: u16 },
}

/// Closes a terminal's connection (the session goes on), whatever it is doing: waiting for the
/// command to start, relaying, or between connections.
#[derive(Debug, Clone)]
pub struct Closer(Arc<Notify>);

impl Closer {
    pub fn close(&self) {
        self.0.notify_one();
    }
}

pub struct Terminal {
    events: mpsc::Receiver<Result<TerminalEvent>>,
    input: mpsc::Sender<Input>,
    closer: Closer,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Terminal {
    /// Opens session `id`'s terminal with a token minted for it now.
    pub async fn attach(client: &Client, id: &str, options: AttachOptions) -> Result<Self> {
        let scope = if options.read_only { TokenScope::View } else { TokenScope::Interact };
        let minted = client.mint_token(id, scope).await?;
        Self::open(client, &minted, options).await
    }

    /// Opens the terminal a token was minted for (as `POST /api/sessions` hands one out). The
    /// first connection is made here, so a refusal is this call's error.
    pub async fn open(
        client: &Client,
        minted: &TokenMinted,
        options: AttachOptions,
    ) -> Result<Self> {
        let ws_url = ws_url(&minted.terminal_url, &minted.ws_url)?;
        let scope = if options.read_only { TokenScope::View } else { minted.scope };
        let mut link = Link {
            client: client.clone(),
            session_id: minted.session_id.clone(),
            ws_url,
            scope,
            token: minted.token.clone(),
            offset: options.since,
            read_only: options.read_only,
            size: None,
            running: false,
            options,
        };
        let ws = link.connect().await?;
        let (events_tx, events) = mpsc::channel(64);
        let (input, input_rx) = mpsc::channel(256);
        let closer = Closer(Arc::default());
        let task = tokio::spawn(link.run(ws, events_tx, input_rx, closer.0.clone()));
        Ok(Self { events, input, closer, task })
    }

    /// The next event; `None` after [`TerminalEvent::Closed`] or a fatal error.
    pub async fn next(&mut self) -> Option<Result<TerminalEvent>> {
        self.events.recv().await
    }

    /// Where to send input and resizes. Input sent while a connection is being replaced, or
    /// before the command starts, waits until it can be delivered.
    pub fn input(&self) -> mpsc::Sender<Input> {
        self.input.clone()
    }

    /// What closes the connection; [`TerminalEvent::Closed`] follows.
    pub fn closer(&self) -> Closer {
        self.closer.clone()
    }
}

/// The WebSocket address of a terminal: the terminal page's origin (the gateway, as the API
/// sees it from outside) with the `ws_url` path. Pure.
pub fn ws_url(terminal_url: &str, ws_path: &str) -> Result<Url> {
    let mut url = Url::parse(terminal_url)
        .map_err(|e| Error::Unexpected(format!("terminalUrl {terminal_url:?}: {e}")))?;
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    url.set_scheme(scheme)
        .map_err(|_| Error::Unexpected(format!("terminalUrl {terminal_url:?}")))?;
    url.set_path(ws_path);
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// Which refusals a new token fixes: the one held was used up or ran out. Pure.
fn token_spent(code: &str) -> bool {
    matches!(code, "token_replayed" | "token_expired" | "token_unknown_key")
}

struct Link {
    client: Client,
    session_id: String,
    ws_url: Url,
    scope: TokenScope,
    /// The credential for the next connection.
    token: String,
    /// The offset after the last byte handed to the caller.
    offset: u64,
    read_only: bool,
    /// The last size asked for, sent again on every new connection.
    size: Option<(u16, u16)>,
    /// Whether the command runs: the runner refuses input before it starts (`not_running`),
    /// so keys typed early wait here until it does instead of being lost.
    running: bool,
    options: AttachOptions,
}

enum Ending {
    /// Connect again from the current offset.
    Retry(String),
    /// Done: tell the caller and stop.
    Final(TerminalEvent),
}

impl Link {
    async fn connect(&mut self) -> Result<Ws> {
        let mut url = self.ws_url.clone();
        url.query_pairs_mut().append_pair("since", &self.offset.to_string());
        if self.read_only {
            url.query_pairs_mut().append_pair("mode", "view");
        }
        let mut request = url.as_str().into_client_request().map_err(|e| self.ws_error(e))?;
        let bearer = format!("Bearer {}", self.token);
        request.headers_mut().insert(
            "authorization",
            bearer.parse().map_err(|_| Error::Unexpected("a token that is not a header".into()))?,
        );
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(resp)) => Err(Error::from_body(
                resp.status().as_u16(),
                None,
                resp.body().as_deref().unwrap_or_default(),
            )),
            Err(e) => Err(self.ws_error(e)),
        }
    }

    fn ws_error(&self, e: tungstenite::Error) -> Error {
        Error::WebSocket { url: self.ws_url.to_string(), source: Box::new(e) }
    }

    /// A new connection after a drop, minting a token through the API when the one held is
    /// spent (the connection broke before the gateway handed over the next).
    async fn reconnect(&mut self) -> Result<Ws> {
        match self.connect().await {
            Err(e) if e.code().is_some_and(token_spent) => {
                self.token = self.client.mint_token(&self.session_id, self.scope).await?.token;
                self.connect().await
            }
            other => other,
        }
    }

    async fn run(
        mut self,
        first: Ws,
        events: mpsc::Sender<Result<TerminalEvent>>,
        mut input: mpsc::Receiver<Input>,
        closing: Arc<Notify>,
    ) {
        let mut ws = Some(first);
        let mut backoff = Backoff::default();
        loop {
            let why = match ws.take() {
                Some(socket) => match self.serve(socket, &events, &mut input, &closing).await {
                    Ending::Final(event) => {
                        let _ = events.send(Ok(event)).await;
                        return;
                    }
                    Ending::Retry(why) => why,
                },
                None => match self.reconnect().await {
                    Ok(socket) => {
                        backoff.reset();
                        ws = Some(socket);
                        continue;
                    }
                    // session_gone: a gateway without the output store; the page's rule is the
                    // same — the store may be back on the next try.
                    Err(e) if e.is_transient() || e.code() == Some("session_gone") => e.to_string(),
                    Err(e) => {
                        let _ = events.send(Err(e)).await;
                        return;
                    }
                },
            };
            let delay = backoff.dropped();
            let event = TerminalEvent::Reconnecting { offset: self.offset, delay, why };
            if events.send(Ok(event)).await.is_err() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = closing.notified() => {
                    let _ = events.send(Ok(closed(1000, "detached"))).await;
                    return;
                }
            }
        }
    }

    /// Relays one connection until it ends.
    async fn serve(
        &mut self,
        mut ws: Ws,
        events: &mpsc::Sender<Result<TerminalEvent>>,
        input: &mut mpsc::Receiver<Input>,
        closing: &Notify,
    ) -> Ending {
        if let Some((cols, rows)) = self.size
            && send(&mut ws, resize(cols, rows)).await.is_err()
        {
            return Ending::Retry("the connection broke".into());
        }
        let mut ping = tokio::time::interval(self.options.ping_interval);
        ping.reset();
        let mut input_open = true;
        loop {
            tokio::select! {
                message = tokio::time::timeout(self.options.silence_limit, ws.next()) => {
                    let message = match message {
                        Err(_) => return Ending::Retry("the connection went silent".into()),
                        Ok(None) => return Ending::Retry("the connection closed".into()),
                        Ok(Some(Err(e))) => return Ending::Retry(format!("the connection broke: {e}")),
                        Ok(Some(Ok(message))) => message,
                    };
                    match self.read(message) {
                        Ok(None) => {}
                        Ok(Some(event)) => {
                            if events.send(Ok(event)).await.is_err() {
                                return Ending::Final(closed(1000, "the client went away"));
                            }
                        }
                        Err(ending) => return ending,
                    }
                }
                item = input.recv(), if input_open && self.running => {
                    let frame = match item {
                        None => { input_open = false; continue; }
                        Some(Input::Resize { cols, rows }) => {
                            self.size = Some((cols, rows));
                            resize(cols, rows)
                        }
                        Some(Input::Bytes(bytes)) => Message::Binary(bytes.into()),
                    };
                    if self.read_only {
                        continue; // the server would drop it anyway
                    }
                    if send(&mut ws, frame).await.is_err() {
                        return Ending::Retry("the connection broke".into());
                    }
                }
                _ = closing.notified() => {
                    let frame = CloseFrame { code: WsCloseCode::Normal, reason: "detached".into() };
                    let _ = ws.close(Some(frame)).await;
                    return Ending::Final(closed(1000, "detached"));
                }
                _ = ping.tick() => {
                    if send(&mut ws, Message::Ping(Bytes::new())).await.is_err() {
                        return Ending::Retry("the connection broke".into());
                    }
                }
            }
        }
    }

    /// One message from the server, read against what was already handed on.
    fn read(&mut self, message: Message) -> Result<Option<TerminalEvent>, Ending> {
        match message {
            Message::Binary(frame) => {
                let Ok((offset, data)) = decode_output(&frame) else {
                    return Ok(None);
                };
                let end = offset + data.len() as u64;
                if end <= self.offset {
                    return Ok(None);
                }
                let skip = self.offset.saturating_sub(offset) as usize;
                let start = offset.max(self.offset);
                self.offset = end;
                let data = Bytes::copy_from_slice(&data[skip..]);
                Ok(Some(TerminalEvent::Output { offset: start, data }))
            }
            Message::Text(text) => match serde_json::from_str::<ServerMessage>(&text) {
                Ok(ServerMessage::Reconnect { token }) => {
                    self.token = token;
                    Ok(None)
                }
                Ok(ServerMessage::Hello { read_only, log_end, status, .. }) => {
                    self.running = status.phase == SessionPhase::Running;
                    Ok(Some(TerminalEvent::Hello { read_only, log_end, status }))
                }
                Ok(ServerMessage::Gap { from, to }) if to > self.offset => {
                    let from = from.max(self.offset);
                    self.offset = to;
                    Ok(Some(TerminalEvent::Gap { from, to }))
                }
                Ok(ServerMessage::Gap { .. }) => Ok(None),
                Ok(ServerMessage::Status(status)) => {
                    self.running = status.phase == SessionPhase::Running;
                    Ok(Some(TerminalEvent::Status(status)))
                }
                Ok(ServerMessage::Error { code, message }) => {
                    Ok(Some(TerminalEvent::Refused { code, message }))
                }
                Err(_) => Ok(None), // what a newer server adds
            },
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                Err(close_drop(code, reason))
            }
            _ => Ok(None),
        }
    }
}

/// What a close from the server means: the session ended or access went (final), or the path
/// to the runner broke (retry). Pure.
fn close_drop(code: u16, reason: String) -> Ending {
    match CloseCode::from_code(code) {
        Some(CloseCode::SessionEnded | CloseCode::AccessRevoked | CloseCode::MessageTooBig) => {
            Ending::Final(TerminalEvent::Closed { code, reason })
        }
        _ => Ending::Retry(format!("the server closed the connection ({code} {reason})")),
    }
}

fn closed(code: u16, reason: &str) -> TerminalEvent {
    TerminalEvent::Closed { code, reason: reason.to_owned() }
}

fn resize(cols: u16, rows: u16) -> Message {
    let text = serde_json::to_string(&ClientMessage::Resize { cols, rows }).expect("serializes");
    Message::Text(text.into())
}

async fn send(ws: &mut Ws, message: Message) -> Result<(), tungstenite::Error> {
    ws.send(message).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_at_the_terminal_pages_origin() {
        let url =
            ws_url("https://cli.example.test/t/s1?scrollback=5000#token=x", "/ws/s1").unwrap();
        assert_eq!(url.as_str(), "wss://cli.example.test/ws/s1");
        let local = ws_url("http://127.0.0.1:8080/t/s1#token=x", "/ws/s1").unwrap();
        assert_eq!(local.as_str(), "ws://127.0.0.1:8080/ws/s1");
    }

    #[test]
    fn only_an_ended_session_or_revoked_access_closes_for_good() {
        for (code, last) in [
            (1000, true),
            (4401, true),
            (1009, true),
            (1001, false),
            (1011, false),
            (4000, false),
            (4008, false),
            (1006, false),
        ] {
            let is_final = matches!(close_drop(code, String::new()), Ending::Final(_));
            assert_eq!(is_final, last, "{code}");
        }
    }

    #[test]
    fn spent_tokens_are_replaced_and_other_refusals_are_not() {
        assert!(token_spent("token_replayed") && token_spent("token_expired"));
        assert!(!token_spent("key_revoked") && !token_spent("token_wrong_session"));
    }
}
