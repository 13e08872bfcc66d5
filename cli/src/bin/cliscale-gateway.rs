//! cliscale-gateway on a cluster: verifies terminal tokens against the API's JWKS, consumes each
//! JTI once in PostgreSQL, finds runners through a watch-backed cache of CommandSessions and
//! proxies the terminal. Stateless: run as many replicas as the load needs.
//! (Locally the same gateway runs inside `cliscale up`.)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use clap::Parser;
use cliscale_api::process::Shutdown;
use cliscale_api::signing::KeyRing;
use cliscale_api::store::Store;
use cliscale_gateway::cluster::ReflectorResolver;
use cliscale_gateway::{Gateway, JwksCache, ReconnectIssuer};
use cliscale_wiring::GatewayArgs;
use cliscale_wiring::backends::{
    KeyRingIssuer, RECONNECT_TOKEN_TTL, StoreArchive, StoreKeys, StoreLedger,
};

#[derive(Parser)]
#[command(name = "cliscale-gateway", version, about = "cliscale's terminal gateway (cluster)")]
struct Args {
    #[command(flatten)]
    limits: cliscale_serve::LimitArgs,
    /// Address to listen on.
    #[arg(long, env = "CLISCALE_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// The API's JWKS (the operator service).
    #[arg(long, env = "CLISCALE_JWKS_URL")]
    jwks_url: String,
    /// Expected token issuer.
    #[arg(long, env = "CLISCALE_ISSUER", default_value = "cliscale")]
    issuer: String,
    /// PostgreSQL URL of the API's database (used JTIs are recorded there).
    #[arg(long, env = "CLISCALE_DATABASE_URL")]
    database_url: String,
    /// Namespace whose CommandSessions the gateway serves.
    #[arg(long, env = "CLISCALE_SESSIONS_NAMESPACE")]
    sessions_namespace: String,
    /// Signing key files (PEM or PKCS#8 DER) for one-time reconnect tokens; without them, a
    /// dropped terminal needs a fresh token from the API.
    #[arg(long, env = "CLISCALE_SIGNING_KEY_FILES", value_delimiter = ',')]
    signing_key_file: Vec<PathBuf>,
    #[command(flatten)]
    gateway: GatewayArgs,
    /// How long the JWKS is cached.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    jwks_ttl: Duration,
}

fn main() {
    let args = Args::parse();
    cliscale_api::process::init_json_logs();
    cliscale_api::process::run_server("cliscale-gateway", serve(args));
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::connect(&args.database_url).await?;
    let client = kube::Client::try_default().await?;
    let resolver = Arc::new(ReflectorResolver::spawn(client, &args.sessions_namespace));
    let reissuer = if args.signing_key_file.is_empty() {
        None
    } else {
        let keys = Arc::new(KeyRing::from_files(&args.signing_key_file)?);
        Some(Arc::new(KeyRingIssuer { keys, ttl: RECONNECT_TOKEN_TTL }) as Arc<dyn ReconnectIssuer>)
    };
    let shutdown = Shutdown::on_signals();
    let gateway = Arc::new(Gateway {
        shutdown: shutdown.token(),
        jwks: JwksCache::terminal_tokens_from(args.jwks_url.clone(), &args.issuer, args.jwks_ttl),
        ledger: Arc::new(StoreLedger(store.clone())),
        resolver: resolver.clone(),
        reissuer,
        archive: Some(Arc::new(StoreArchive::new(store.clone()))),
        config: args.gateway.config(),
        keys: Some(Arc::new(StoreKeys(store.clone()))),
        key_watch: Default::default(),
        metrics: Default::default(),
    });
    gateway.watch_keys();
    let metrics = gateway.clone();
    let app = cliscale_gateway::router(gateway)
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let (store, resolver) = (store.clone(), resolver.clone());
                async move {
                    let cache =
                        tokio::time::timeout(Duration::from_secs(1), resolver.ready()).await;
                    match (store.ping().await, cache) {
                        (Ok(()), Ok(true)) => (axum::http::StatusCode::OK, "ready"),
                        _ => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not ready"),
                    }
                }
            }),
        )
        .route("/metrics", get(move || async move { metrics.metrics.render() }));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %args.listen, namespace = %args.sessions_namespace, "gateway up");
    let limits = args.limits.limits();
    cliscale_serve::serve(listener, app, limits, cliscale_serve::no_delay, shutdown.requested())
        .await?;
    Ok(())
}
