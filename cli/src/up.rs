//! `cliscale up`: the REST API, the gateway and the local executor on one address, with SQLite
//! under the data dir (or PostgreSQL). Paths are routed as the cluster's load balancer does:
//! `/api/*` and `/.well-known/*` to the API, `/t/*`, `/ws/*` and `/assets/*` to the gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cliscale_api::executor::Executor;
use cliscale_api::local::{LocalConfig, LocalExecutor, OutputSink};
use cliscale_api::model::SpecDefaults;
use cliscale_api::process::Shutdown;
use cliscale_api::routes::{ApiConfig, ApiState};
use cliscale_api::signing::KeyRing;
use cliscale_api::store::Store;
use cliscale_core::protocol::SessionStatus;
use cliscale_gateway::{BoxFuture, Gateway, JwksCache, ResolveError, RunnerResolver};
use cliscale_wiring::GatewayArgs;
use cliscale_wiring::backends::{KeyRingIssuer, RECONNECT_TOKEN_TTL, StoreArchive, StoreLedger};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Address to listen on.
    #[arg(long, env = "CLISCALE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the database, keys and session files live.
    #[arg(long, env = "CLISCALE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// `postgres://…` to use PostgreSQL instead of SQLite in the data dir.
    #[arg(long, env = "CLISCALE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Base of the URLs handed out (default: from each request's Host).
    #[arg(long, env = "CLISCALE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The runner binary (default: `cliscale-runner` beside this binary, else on PATH).
    #[arg(long, env = "CLISCALE_RUNNER_BIN")]
    pub runner_bin: Option<PathBuf>,
    /// Signing key files (PKCS#8 DER); the first signs, all are published. Default: one
    /// generated in the data dir.
    #[arg(long)]
    pub signing_key_file: Vec<PathBuf>,
    /// Lifetime of terminal tokens.
    #[arg(long, default_value = "5m", value_parser = cliscale_core::args::positive_duration)]
    pub token_ttl: Duration,
    /// Requests per minute per API key (and per address for unauthenticated requests).
    #[arg(long, default_value_t = 600)]
    pub rate_per_minute: u32,
    /// Proxies whose X-Forwarded-* headers are trusted (CIDRs, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    /// How long runners keep serving after their command ends (whole seconds, at most 1h).
    #[arg(long, default_value = "10s", value_parser = linger)]
    pub linger: Duration,
    /// Let sessions fetch code from loopback and private addresses.
    #[arg(long, default_value_t = false)]
    pub allow_private_code_urls: bool,
    /// How often expired sessions are deleted.
    #[arg(long, default_value = "30s", value_parser = cliscale_core::args::positive_duration)]
    pub gc_interval: Duration,
    /// Most bytes of output stored per session: past it the head and the tail are kept, with a
    /// gap between (docs/api.md, "Output").
    #[arg(long, env = "CLISCALE_OUTPUT_CAP_BYTES", default_value_t = cliscale_api::output::DEFAULT_CAP_BYTES,
          value_parser = clap::value_parser!(u64).range(cliscale_api::output::MIN_CAP_BYTES..))]
    pub output_cap_bytes: u64,
}

struct LocalResolver {
    executor: Arc<LocalExecutor>,
    store: Store,
}

impl RunnerResolver for LocalResolver {
    fn resolve(
        &self,
        session_id: &str,
        wait: Duration,
    ) -> BoxFuture<'_, Result<String, ResolveError>> {
        let id = session_id.to_owned();
        Box::pin(async move {
            let Some(mut rx) = self.executor.runner_state(&id) else {
                return match self.store.get_session(&id).await {
                    Ok(Some(_)) => Err(ResolveError::Gone),
                    Ok(None) => Err(ResolveError::UnknownSession),
                    Err(e) => Err(ResolveError::Backend(e.to_string())),
                };
            };
            let ready =
                tokio::time::timeout(wait, rx.wait_for(|s| s.addr.is_some() || s.exited)).await;
            match ready {
                Err(_) => Err(ResolveError::NotReady),
                Ok(Err(_)) => Err(ResolveError::Gone),
                Ok(Ok(state)) if state.exited => Err(ResolveError::Gone),
                Ok(Ok(state)) => state.addr.clone().ok_or(ResolveError::NotReady),
            }
        })
    }

    fn ended(&self, session_id: &str) -> BoxFuture<'_, Option<SessionStatus>> {
        let id = session_id.to_owned();
        Box::pin(async move {
            let row = self.store.get_session(&id).await.ok()??;
            row.phase.is_finished().then(|| row.status())
        })
    }
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("cliscale")
}

/// `--linger`: whole seconds, as a session's spec holds it. Pure.
fn linger(raw: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    let max = Duration::from_secs(cliscale_core::spec::MAX_LINGER_SECS.into());
    if d.subsec_nanos() != 0 || d > max {
        return Err(format!("{raw:?} must be whole seconds, at most {max:?}"));
    }
    Ok(d)
}

/// The local executor's settings. Pure.
fn local_config(
    args: &UpArgs,
    data_dir: &std::path::Path,
    jwks_path: PathBuf,
    output: Option<OutputSink>,
) -> LocalConfig {
    LocalConfig {
        output,
        runner_bin: runner_bin(args.runner_bin.clone()),
        sessions_dir: data_dir.join("sessions"),
        jwks_path,
        grace_period: Duration::from_secs(10),
        allow_private_code_urls: args.allow_private_code_urls,
    }
}

/// The REST API's settings; a session's linger is `--linger` unless it names one. Pure.
fn api_config(args: &UpArgs) -> ApiConfig {
    ApiConfig {
        public_url: args.public_url.clone(),
        token_ttl: args.token_ttl,
        issuer: "cliscale".into(),
        rate_per_minute: args.rate_per_minute,
        trusted_proxies: args.trusted_proxies.clone(),
        spec_defaults: SpecDefaults {
            linger_secs: args.linger.as_secs() as u32,
            ..Default::default()
        },
        output_cap_bytes: args.output_cap_bytes,
    }
}

fn runner_bin(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| {
            let sibling = std::env::current_exe().ok()?.with_file_name("cliscale-runner");
            sibling.exists().then_some(sibling)
        })
        .unwrap_or_else(|| PathBuf::from("cliscale-runner"))
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    cliscale_core::tls::install_crypto_provider();
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let database_url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", data_dir.join("cliscale.db").display()));
    let store = Store::connect(&database_url).await.context("opening the database")?;
    let keys = Arc::new(if args.signing_key_file.is_empty() {
        KeyRing::load_or_generate(&data_dir.join("signing-key.der"))?
    } else {
        KeyRing::from_files(&args.signing_key_file)?
    });
    let jwks_path = data_dir.join("jwks.json");
    std::fs::write(&jwks_path, keys.jwks()).context("writing the runners' JWKS")?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let local_base = format!(
        "http://{}",
        if addr.ip().is_unspecified() {
            SocketAddr::new([127, 0, 0, 1].into(), addr.port())
        } else {
            addr
        }
    );

    // Runners append their output to this process' own API.
    let sink =
        OutputSink { url: local_base.clone(), keys: keys.clone(), issuer: "cliscale".into() };
    let executor =
        LocalExecutor::new(local_config(&args, &data_dir, jwks_path, Some(sink)), store.clone());
    let lost = executor.recover().await?;
    if lost > 0 {
        tracing::warn!(lost, "sessions whose runner died with the previous process are now Lost");
    }
    let shutdown = Shutdown::on_signals();
    executor.spawn_janitor(args.gc_interval, &shutdown);
    // Terminal relays close on their own token, cancelled only once the runners are stopped:
    // viewers see their session end (Cancelled, 1000) rather than the gateway going away.
    let relays = CancellationToken::new();

    let api = ApiState::new(
        store.clone(),
        keys.clone(),
        Arc::new(executor.clone()) as Arc<dyn Executor>,
        api_config(&args),
    );
    let gateway = Arc::new(Gateway {
        shutdown: relays.clone(),
        jwks: JwksCache::terminal_tokens_from(
            format!("{local_base}/.well-known/jwks.json"),
            "cliscale",
            Duration::from_secs(300),
        ),
        ledger: Arc::new(StoreLedger(store.clone())),
        resolver: Arc::new(LocalResolver { executor: executor.clone(), store: store.clone() }),
        reissuer: Some(Arc::new(KeyRingIssuer { keys: keys.clone(), ttl: RECONNECT_TOKEN_TTL })),
        archive: Some(Arc::new(StoreArchive::new(store.clone()))),
        config: args.gateway.config(),
        metrics: Default::default(),
    });
    let streams = api.shutdown.clone();
    let app = cliscale_gateway::router(gateway).merge(cliscale_api::routes::router(api));

    let chosen = std::env::var("CLISCALE_API_KEY").ok();
    let printed_key = cliscale_api::bootstrap::ensure_admin_key(&store, chosen.as_deref()).await?;
    let public = args.public_url.clone().unwrap_or_else(|| local_base.clone());
    println!("cliscale is up: {public}");
    println!("listening on {local_base}");
    match printed_key {
        Some(key) => println!("admin API key (shown once, keep it): {key}"),
        None => println!("using the existing API keys (CLISCALE_API_KEY or from an earlier start)"),
    }
    println!(
        "create a session:\n  curl -s -X POST {public}/api/sessions -H \"Authorization: Bearer $CLISCALE_API_KEY\" \
         -H 'Content-Type: application/json' -d '{{\"command\":\"bash\"}}'"
    );

    let stopping = {
        let (shutdown, executor) = (shutdown.clone(), executor.clone());
        async move {
            shutdown.requested().await;
            tracing::info!("stopping runners");
            executor.shutdown().await;
            relays.cancel();
            streams.cancel();
        }
    };
    axum::serve(
        cliscale_gateway::without_nagle(listener),
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stopping)
    .await?;
    shutdown.drain(Duration::from_secs(5)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linger_is_whole_seconds_up_to_an_hour() {
        assert_eq!(linger("0s"), Ok(Duration::ZERO));
        assert_eq!(linger("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(linger("1h"), Ok(Duration::from_secs(3600)));
        assert!(linger("1500ms").unwrap_err().contains("whole seconds"));
        assert!(linger("61m").is_err());
        assert!(linger("soon").is_err());
    }
}
