//! How every cliscale listener (the API, the gateway, `cliscale up`, the runner) serves HTTP:
//!
//! - **limits**: a connection must send its request head within the header-read timeout, and
//!   is closed after the idle timeout without a byte either way; at most `max_connections` are
//!   open, and at most `max_per_address` from one client address;
//! - **a bounded shutdown**: once asked to stop, the listener closes, open requests get the
//!   shutdown deadline to finish, and then every connection is dropped, whatever its client
//!   does;
//! - **JSON for every refusal**: the framework's own answers (no such route, wrong method, a
//!   URI or headers too large, a body the extractor refuses) carry the same
//!   `{"error", "message"}` body, with a stable code, as the handlers' (docs/api.md, "Errors").
//!
//! A listener too busy for a connection answers it with a JSON 503 (or 429 for one address)
//! and closes it; nothing is queued.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cliscale_core::protocol::ErrorBody;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// One listener's limits. The defaults suit every cliscale listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A client must send its whole request head within this.
    pub header_read_timeout: Duration,
    /// A connection with no byte either way for this long is closed. Terminal streams ping
    /// far more often; the gateway's wait for a starting runner is shorter.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_per_address: usize,
    /// After a stop is asked for, how long open requests may take before they are dropped.
    pub shutdown_deadline: Duration,
    /// Longest request target (path and query), in bytes.
    pub max_uri_bytes: usize,
    /// Most request header fields, and their most bytes in all.
    pub max_headers: usize,
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            max_connections: 10_000,
            max_per_address: 512,
            shutdown_deadline: Duration::from_secs(10),
            max_uri_bytes: 8 * 1024,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
        }
    }
}

/// The limits as flags, for the binaries that serve HTTP (docs/security.md, "Listeners").
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// A client must send its request head within this.
    #[arg(long, env = "CLISCALE_HEADER_READ_TIMEOUT", default_value = "10s",
          value_parser = cliscale_core::args::positive_duration)]
    pub header_read_timeout: Duration,
    /// A connection silent both ways for this long is closed.
    #[arg(long, env = "CLISCALE_IDLE_TIMEOUT", default_value = "90s",
          value_parser = cliscale_core::args::positive_duration)]
    pub idle_timeout: Duration,
    /// Most connections open at once.
    #[arg(long, env = "CLISCALE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Most connections open at once from one client address.
    #[arg(long, env = "CLISCALE_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 512)]
    pub max_connections_per_address: usize,
    /// How long open requests may take once a stop is asked for.
    #[arg(long, env = "CLISCALE_SHUTDOWN_DEADLINE", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub shutdown_deadline: Duration,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections.max(1),
            max_per_address: self.max_connections_per_address.max(1),
            shutdown_deadline: self.shutdown_deadline,
            ..Limits::default()
        }
    }
}

/// The stable code of a status the framework (not a handler) answered with. Pure.
pub fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::LENGTH_REQUIRED => "length_required",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UPGRADE_REQUIRED => "upgrade_required",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        StatusCode::TOO_MANY_REQUESTS => "too_many_connections",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal_error",
        _ => "bad_request",
    }
}

fn json_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, axum::Json(ErrorBody::new(code, message.into()))).into_response()
}

/// Why a request's head is refused before any handler sees it, if it is. Pure.
pub fn head_refusal(
    uri_bytes: usize,
    headers: usize,
    header_bytes: usize,
    limits: &Limits,
) -> Option<(StatusCode, String)> {
    if uri_bytes > limits.max_uri_bytes {
        return Some((
            StatusCode::URI_TOO_LONG,
            format!("the request target is {uri_bytes} bytes; at most {}", limits.max_uri_bytes),
        ));
    }
    if headers > limits.max_headers {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("{headers} header fields; at most {}", limits.max_headers),
        ));
    }
    if header_bytes > limits.max_header_bytes {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("{header_bytes} bytes of headers; at most {}", limits.max_header_bytes),
        ));
    }
    None
}

/// Most bytes of a framework refusal's text body kept as the JSON message.
const MAX_MESSAGE_BYTES: usize = 4096;

/// Refuses oversize heads, and turns every non-JSON refusal into the JSON error body.
async fn json_refusals(limits: Arc<Limits>, request: Request, next: Next) -> Response {
    let uri_bytes = request.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    let headers = request.headers();
    let header_bytes = headers.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
    if let Some((status, message)) = head_refusal(uri_bytes, headers.len(), header_bytes, &limits) {
        return json_error(status, code_for(status), message);
    }
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_MESSAGE_BYTES).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("refused").to_owned()
    } else {
        text
    };
    let mut rebuilt = json_error(status, code_for(status), message);
    // Keep what the client needs (Retry-After, Allow, WWW-Authenticate), not the old length.
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rebuilt.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rebuilt
}

/// `app` with JSON answers for unknown routes and wrong methods, and [`json_refusals`].
pub fn with_json_refusals(app: Router, limits: &Limits) -> Router {
    let limits = Arc::new(limits.clone());
    app.fallback(|| async { json_error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(axum::middleware::from_fn(move |request, next| {
            json_refusals(limits.clone(), request, next)
        }))
}

/// Open connections, in all and per client address.
#[derive(Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// A connection's place in [`Counts`], given back when it closes.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("connection counts lock");
        counts.total -= 1;
        if let Some(n) = counts.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_address.remove(&self.ip);
            }
        }
    }
}

/// Takes a slot for a connection from `ip`, or says which limit refuses it.
fn admit(counts: &Arc<Mutex<Counts>>, ip: IpAddr, limits: &Limits) -> Result<Slot, StatusCode> {
    let mut c = counts.lock().expect("connection counts lock");
    if c.total >= limits.max_connections {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let mine = c.per_address.entry(ip).or_default();
    if *mine >= limits.max_per_address {
        return Err(StatusCode::TOO_MANY_REQUESTS);
    }
    *mine += 1;
    c.total += 1;
    Ok(Slot { counts: counts.clone(), ip })
}

/// Answers a connection no limit allows with a short JSON refusal, and closes it.
async fn turn_away(mut tcp: TcpStream, status: StatusCode) {
    let message = if status == StatusCode::TOO_MANY_REQUESTS {
        "too many connections from this address"
    } else {
        "the server has too many connections"
    };
    let body = serde_json::to_string(&ErrorBody::new(code_for(status), message.to_owned()))
        .expect("an error body serializes");
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let write = async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(body.as_bytes()).await?;
        tcp.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

pin_project_lite::pin_project! {
    /// A stream that notes when a byte last went either way.
    struct Watched<I> {
        #[pin]
        io: I,
        since: Instant,
        last: Arc<AtomicU64>,
    }
}

impl<I> Watched<I> {
    fn touch(since: &Instant, last: &AtomicU64) {
        last.store(since.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<I: AsyncRead> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            Self::touch(this.since, this.last);
        }
        polled
    }
}

impl<I: AsyncWrite> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            Self::touch(this.since, this.last);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            Self::touch(this.since, this.last);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// Resolves once nothing has gone either way for `idle`.
async fn idle_for(since: Instant, last: Arc<AtomicU64>, idle: Duration) {
    loop {
        let quiet_since = since + Duration::from_millis(last.load(Ordering::Relaxed));
        let deadline = quiet_since + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves, then stops within
/// the shutdown deadline. `tap` runs on each accepted socket (for example to set TCP_NODELAY).
/// Handlers see the client's address as `ConnectInfo<SocketAddr>`.
pub async fn serve<F>(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tap: fn(&TcpStream),
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    let app = with_json_refusals(app, &limits);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Hyper's own ceilings sit above ours, so what lies between is refused in JSON.
        .max_headers(limits.max_headers * 4)
        .max_buf_size(1024 * 1024);
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let counts = Arc::new(Mutex::new(Counts::default()));
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: back off rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let slot = match admit(&counts, peer.ip(), &limits) {
            Ok(slot) => slot,
            Err(status) => {
                tracing::info!(%peer, status = status.as_u16(), "turned a connection away");
                connections.spawn(turn_away(tcp, status));
                continue;
            }
        };
        tap(&tcp);
        let since = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let io = TokioIo::new(Watched { io: tcp, since, last: last.clone() });
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                app.clone().oneshot(request)
            });
        let connection = builder.serve_connection_with_upgrades(io, service).into_owned();
        let connection = graceful.watch(connection);
        let idle = limits.idle_timeout;
        connections.spawn(async move {
            let _slot = slot;
            tokio::select! {
                served = connection => {
                    if let Err(error) = served {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                }
                _ = idle_for(since, last, idle) => {
                    tracing::debug!(%peer, "closed a connection idle for {idle:?}");
                }
            }
        });
    }
    drop(listener);
    let deadline = limits.shutdown_deadline;
    if tokio::time::timeout(deadline, graceful.shutdown()).await.is_err() {
        tracing::warn!(?deadline, "connections still open at the shutdown deadline; dropping them");
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Sets TCP_NODELAY: for listeners whose traffic is keystrokes and echoes.
pub fn no_delay(tcp: &TcpStream) {
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
}

/// Leaves the socket as it is.
pub fn as_is(_: &TcpStream) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_past_a_limit_are_refused_with_the_right_status() {
        let limits = Limits::default();
        assert_eq!(head_refusal(100, 10, 1000, &limits), None);
        assert_eq!(head_refusal(9000, 10, 1000, &limits).unwrap().0, StatusCode::URI_TOO_LONG);
        assert_eq!(
            head_refusal(100, 101, 1000, &limits).unwrap().0,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        assert_eq!(
            head_refusal(100, 10, 70_000, &limits).unwrap().0,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn every_framework_status_has_a_stable_code() {
        assert_eq!(code_for(StatusCode::NOT_FOUND), "not_found");
        assert_eq!(code_for(StatusCode::METHOD_NOT_ALLOWED), "method_not_allowed");
        assert_eq!(code_for(StatusCode::PAYLOAD_TOO_LARGE), "payload_too_large");
        assert_eq!(code_for(StatusCode::URI_TOO_LONG), "uri_too_long");
        assert_eq!(code_for(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE), "headers_too_large");
        assert_eq!(code_for(StatusCode::BAD_GATEWAY), "internal_error");
    }

    #[test]
    fn connections_are_counted_in_all_and_per_address() {
        let limits = Limits { max_connections: 3, max_per_address: 2, ..Limits::default() };
        let counts = Arc::new(Mutex::new(Counts::default()));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = admit(&counts, a, &limits).unwrap();
        let _second = admit(&counts, a, &limits).unwrap();
        assert_eq!(admit(&counts, a, &limits).err(), Some(StatusCode::TOO_MANY_REQUESTS));
        let _third = admit(&counts, b, &limits).unwrap();
        assert_eq!(admit(&counts, b, &limits).err(), Some(StatusCode::SERVICE_UNAVAILABLE));
        drop(first);
        assert!(admit(&counts, a, &limits).is_ok(), "a closed connection gives its slot back");
    }
}
