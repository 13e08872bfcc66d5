//! The gateway: serves the terminal page, verifies session tokens against the API's JWKS,
//! consumes each token's JTI exactly once, finds the session's runner and proxies the terminal
//! stream both ways. It holds no state of its own: the ledger of used JTIs, the map from
//! session to runner and the reconnect signer are traits, which the binaries back with the
//! API's store and keys (`cliscale up`, `cliscale-gateway`).

pub mod assets;
pub mod cluster;
pub mod jwks;
mod proxy;
pub mod standing;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use cliscale_core::protocol::SessionStatus;
use cliscale_core::token::SessionClaims;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use jwks::{JwksCache, JwksSource};
pub use standing::{KeyDirectory, KeyStanding, KeyWatch};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Records consumed token ids. `consume` must be atomic: of N concurrent calls with one id,
/// exactly one returns `Ok(true)`.
pub trait JtiLedger: Send + Sync + 'static {
    fn consume(&self, jti: &str, expires_at: i64) -> BoxFuture<'_, Result<bool, String>>;
    /// Whether `jti` was consumed already (without consuming it).
    fn is_used(&self, jti: &str) -> BoxFuture<'_, Result<bool, String>>;
}

/// Why a session has no runner to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// No such session.
    UnknownSession,
    /// The session ended and its runner is gone.
    Gone,
    /// The runner did not come up within the wait.
    NotReady,
    /// The lookup itself failed.
    Backend(String),
}

/// Finds the address (`host:port`) of a session's runner, waiting up to `wait` for it.
pub trait RunnerResolver: Send + Sync + 'static {
    fn resolve(
        &self,
        session_id: &str,
        wait: Duration,
    ) -> BoxFuture<'_, Result<String, ResolveError>>;
    /// How a finished session ended, where that is known.
    fn ended(&self, session_id: &str) -> BoxFuture<'_, Option<SessionStatus>>;
}

/// The stored output of sessions whose runner is gone (the API's output store): a finished
/// session's terminal is replayed from it, read-only. `UpToDate` reads mean the end.
pub trait OutputArchive: Send + Sync + 'static {
    fn read(
        &self,
        session_id: &str,
        offset: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<cliscale_core::cursor::LogRead<bytes::Bytes>, String>>;
}

/// Mints the one-time token a client uses to reconnect after a drop, handed over the live
/// connection so no token is ever reusable.
pub trait ReconnectIssuer: Send + Sync + 'static {
    fn issue(&self, previous: &SessionClaims) -> Option<String>;
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// How long a connection waits for a starting runner before refusing with 503.
    pub ready_wait: Duration,
    pub ping_interval: Duration,
    /// A browser that takes no output for this long is closed with 4008 "client too slow".
    pub stall_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_message: usize,
    /// How often the keys holding open terminals are checked: a revoked or demoted key's
    /// terminals end within about this long.
    pub key_check_interval: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            ready_wait: Duration::from_secs(30),
            ping_interval: Duration::from_secs(20),
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_message: 1024 * 1024,
            key_check_interval: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

pub struct GatewayMetrics {
    registry: Registry,
    pub connections: Gauge,
    pub accepted: Counter,
    pub refused: Family<CodeLabel, Counter>,
    /// Browsers the gateway closed on its own account, by reason.
    pub dropped: Family<CodeLabel, Counter>,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cliscale_gateway");
        let connections = Gauge::default();
        let accepted = Counter::default();
        let refused = Family::<CodeLabel, Counter>::default();
        registry.register("connections", "Open proxied terminal connections", connections.clone());
        registry.register("accepted", "Terminal connections accepted", accepted.clone());
        registry.register(
            "refused",
            "Terminal connections refused, by error code",
            refused.clone(),
        );
        let dropped = Family::<CodeLabel, Counter>::default();
        registry.register(
            "dropped",
            "Terminal connections the gateway closed itself, by reason",
            dropped.clone(),
        );
        Self { registry, connections, accepted, refused, dropped }
    }
}

impl GatewayMetrics {
    pub fn render(&self) -> String {
        cliscale_core::metrics::render(&self.registry)
    }
}

pub struct Gateway {
    /// Cancelled when the process stops: open relays close with 1001 so browsers reconnect
    /// elsewhere, instead of holding the server's graceful shutdown open.
    pub shutdown: tokio_util::sync::CancellationToken,
    pub jwks: JwksCache,
    pub ledger: Arc<dyn JtiLedger>,
    pub resolver: Arc<dyn RunnerResolver>,
    pub reissuer: Option<Arc<dyn ReconnectIssuer>>,
    /// Where a finished session's output is replayed from; without it such a link is refused
    /// with 410.
    pub archive: Option<Arc<dyn OutputArchive>>,
    /// Where tokens' keys are checked (the API's keys). Without it a token is good for its
    /// whole lifetime, whatever becomes of its key.
    pub keys: Option<Arc<dyn KeyDirectory>>,
    pub key_watch: Arc<KeyWatch>,
    pub config: GatewayConfig,
    pub metrics: GatewayMetrics,
}

impl Gateway {
    /// Starts checking the keys of open terminals, until shutdown. Call once, in a runtime.
    pub fn watch_keys(&self) {
        if let Some(directory) = &self.keys {
            tokio::spawn(self.key_watch.clone().run(
                directory.clone(),
                self.config.key_check_interval,
                self.shutdown.clone(),
            ));
        }
    }
}

/// The gateway's routes: `/t/{sid}` (page), `/t/{sid}/check` (why a link does not open),
/// `/assets/*`, `/ws/{sid}` (terminal stream).
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/t/{sid}", get(|| async { assets::page() }))
        .route(
            "/assets/{name}",
            get(|Path(name): Path<String>| async move { assets::serve(&name) }),
        )
        .route("/ws/{sid}", get(proxy::ws_entry))
        .route("/t/{sid}/check", get(proxy::check))
        .route(
            "/gateway/metrics",
            get(|State(g): State<Arc<Gateway>>| async move { g.metrics.render() }),
        )
        .with_state(gateway)
}
