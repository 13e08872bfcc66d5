//! `cliscale up`: the REST API, the gateway and the local executor on one address, with SQLite
//! under the data dir (or PostgreSQL). Paths are routed as the cluster's load balancer does:
//! `/api/*` and `/.well-known/*` to the API, `/t/*`, `/ws/*` and `/assets/*` to the gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cliscale_api::executor::Executor;
use cliscale_api::local::{Isolation, LocalConfig, LocalExecutor, OutputSink};
use cliscale_api::model::SpecDefaults;
use cliscale_api::process::Shutdown;
use cliscale_api::routes::{ApiConfig, ApiState};
use cliscale_api::scheduler::Clock;
use cliscale_api::secrets::{SealedVault, SealingKeys};
use cliscale_api::signing::KeyRing;
use cliscale_api::store::Store;
use cliscale_core::protocol::SessionStatus;
use cliscale_gateway::{BoxFuture, Gateway, JwksCache, ResolveError, RunnerResolver};
use cliscale_wiring::GatewayArgs;
use cliscale_wiring::backends::{
    KeyRingIssuer, RECONNECT_TOKEN_TTL, StoreArchive, StoreKeys, StoreLedger,
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Address to listen on.
    #[arg(long, env = "CLISCALE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the database, keys and session files live.
    #[arg(long, env = "CLISCALE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where sessions' work dirs are made (default: `cliscale-work-<uid>` in the temp dir).
    /// It must belong to this process' user; it is made traversable, not listable.
    #[arg(long, env = "CLISCALE_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// The users sessions run as when cliscale up runs as root: FIRST-LAST, one per running
    /// session (docs/security.md, "Local mode").
    #[arg(long, default_value = "2000000000-2000065535", value_parser = uid_range)]
    pub session_uids: (u32, u32),
    /// Run every session as this process' own user even as root. Only admin keys are then
    /// accepted, since any session could act as the server.
    #[arg(long, default_value_t = false)]
    pub single_tenant: bool,
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
    #[command(flatten)]
    pub limits: cliscale_serve::LimitArgs,
    /// How long runners keep serving after their command ends (whole seconds, at most 1h).
    #[arg(long, default_value = "10s", value_parser = linger)]
    pub linger: Duration,
    /// Let sessions fetch code from loopback and private addresses.
    #[arg(long, default_value_t = false)]
    pub allow_private_code_urls: bool,
    /// How long a console login (an API key exchanged for a cookie) lasts.
    #[arg(long, default_value = "12h", value_parser = cliscale_core::args::positive_duration)]
    pub console_session_ttl: Duration,
    /// How often expired sessions are deleted.
    #[arg(long, default_value = "30s", value_parser = cliscale_core::args::positive_duration)]
    pub gc_interval: Duration,
    /// Most bytes of output stored per session: past it the head and the tail are kept, with a
    /// gap between (docs/api.md, "Output").
    #[arg(long, env = "CLISCALE_OUTPUT_CAP_BYTES", default_value_t = cliscale_api::output::DEFAULT_CAP_BYTES,
          value_parser = clap::value_parser!(u64).range(cliscale_api::output::MIN_CAP_BYTES..))]
    pub output_cap_bytes: u64,
    /// The key secrets are sealed with (default: `secrets.key` in the data dir, made on first
    /// start; `CLISCALE_SECRETS_KEY` overrides it). docs/templates.md, "Secrets", tells how to
    /// rotate it.
    #[arg(long, value_name = "FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// Decide schedules and retries by the Unix seconds in this file instead of the system
    /// clock (for tests that move time by hand).
    #[arg(long, value_name = "FILE", hide = true)]
    pub clock_file: Option<PathBuf>,
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

/// What `cliscale up` prints for a newcomer: the line that logs the command line in, and a
/// first session. Pure.
fn next_steps(public: &str, new_key: Option<&str>) -> String {
    let login = match new_key {
        Some(key) => format!("cliscale login {public} --api-key {key}"),
        None => format!("cliscale login {public}    # asks for the API key"),
    };
    format!(
        "log the command line in:\n  {login}\nthen run a session:\n  cliscale run -- bash\n\
         or open the web console (log in with the API key):\n  {public}/\n\
         or over REST:\n  curl -s -X POST {public}/api/sessions -H \"Authorization: Bearer $CLISCALE_API_KEY\" \\\n    \
         -H 'Content-Type: application/json' -d '{{\"command\":\"bash\"}}'\n"
    )
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

/// `--session-uids`: FIRST-LAST, not root's, at least one. Pure.
fn uid_range(raw: &str) -> Result<(u32, u32), String> {
    let (first, last) = raw.split_once('-').ok_or("expected FIRST-LAST")?;
    let first: u32 = first.trim().parse().map_err(|e| format!("{first:?}: {e}"))?;
    let last: u32 = last.trim().parse().map_err(|e| format!("{last:?}: {e}"))?;
    if first == 0 || last < first || last == u32::MAX {
        return Err(format!("{raw:?} must be a range of users above 0, lowest first"));
    }
    Ok((first, last - first + 1))
}

/// How sessions are isolated on this host with these flags.
fn isolation(args: &UpArgs) -> Isolation {
    if args.single_tenant {
        return Isolation::SingleTenant {
            why: "--single-tenant was given: sessions run as the server's own user".into(),
        };
    }
    Isolation::detect(args.session_uids.0, args.session_uids.1)
}

/// The data dir is this process' alone: 0700, and every file in it 0600, whatever the umask
/// or an older version left. The database file is made first so SQLite's journal files, which
/// take its mode, are private too.
fn secure_data_dir(data_dir: &std::path::Path, sqlite: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    cliscale_api::local::private_dir(data_dir)?;
    let db = data_dir.join("cliscale.db");
    if sqlite && !db.exists() {
        cliscale_api::local::private_file(&db)?;
    }
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        let mode = if entry.file_type()?.is_dir() { 0o700 } else { 0o600 };
        if !entry.file_type()?.is_symlink() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

/// The work dirs' parent: this user's, traversable by sessions' users but not listable, so a
/// session reaches its own work dir and cannot find the others.
fn work_root(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let euid = nix::unistd::geteuid().as_raw();
    let root =
        explicit.unwrap_or_else(|| std::env::temp_dir().join(format!("cliscale-work-{euid}")));
    match std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&root)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", root.display())),
    }
    // Never a symlink or someone else's: in a shared temp dir another user could have made it.
    let meta = std::fs::symlink_metadata(&root)?;
    if !meta.is_dir() || meta.uid() != euid {
        anyhow::bail!("{} is not a directory of this user's; pass --work-dir", root.display());
    }
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711))?;
    Ok(root)
}

/// The local executor's settings. Pure.
fn local_config(
    args: &UpArgs,
    work_root: PathBuf,
    jwks_path: PathBuf,
    output: Option<OutputSink>,
) -> LocalConfig {
    LocalConfig {
        output,
        runner_bin: runner_bin(args.runner_bin.clone()),
        work_root,
        isolation: isolation(args),
        jwks_path,
        grace_period: Duration::from_secs(10),
        allow_private_code_urls: args.allow_private_code_urls,
    }
}

/// The REST API's settings; a session's linger is `--linger` unless it names one. Pure.
fn api_config(args: &UpArgs) -> ApiConfig {
    ApiConfig {
        admin_only: isolation(args).admin_only().map(str::to_owned),
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
        console_session_ttl: args.console_session_ttl,
        clock: match &args.clock_file {
            Some(file) => Clock::File(file.clone()),
            None => Clock::System,
        },
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
    secure_data_dir(&data_dir, args.database_url.is_none())
        .with_context(|| format!("making {} private", data_dir.display()))?;
    let work_root = work_root(args.work_dir.clone())?;
    let database_url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", data_dir.join("cliscale.db").display()));
    let mut store = Store::connect(&database_url).await.context("opening the database")?;
    if args.database_url.is_none() {
        // Beside the SQLite database they belong with: the bytes of stored output, one file
        // per session. On PostgreSQL they stay in its rows, where any server reaches them.
        store = store
            .with_output_files(&data_dir.join("output"))
            .await
            .context("opening the output dir")?;
    }
    let keys = Arc::new(if args.signing_key_file.is_empty() {
        KeyRing::load_or_generate(&data_dir.join("signing-key.der"))?
    } else {
        KeyRing::from_files(&args.signing_key_file)?
    });
    let jwks_path = data_dir.join("jwks.json");
    std::io::Write::write_all(
        &mut cliscale_api::local::private_file(&jwks_path)?,
        keys.jwks().as_bytes(),
    )
    .context("writing the runners' JWKS")?;

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
        LocalExecutor::new(local_config(&args, work_root, jwks_path, Some(sink)), store.clone());
    let isolation = isolation(&args);
    match isolation.admin_only() {
        None => tracing::info!(?isolation, "each session runs as a user of its own"),
        Some(why) => {
            tracing::warn!(why, "single-tenant: only admin keys are accepted");
            println!("single-tenant: only admin keys are accepted ({why})");
        }
    }
    let lost = executor.recover().await?;
    if lost > 0 {
        tracing::warn!(lost, "sessions whose runner died with the previous process are now Lost");
    }
    let shutdown = Shutdown::on_signals();
    executor.spawn_janitor(args.gc_interval, &shutdown);
    // Terminal relays close on their own token, cancelled only once the runners are stopped:
    // viewers see their session end (Cancelled, 1000) rather than the gateway going away.
    let relays = CancellationToken::new();

    let sealing = SealingKeys::load_or_generate(
        &args.secrets_key_file.clone().unwrap_or_else(|| data_dir.join("secrets.key")),
    )?;
    let vault = SealedVault::open(store.clone(), sealing).await.context("opening the secrets")?;
    executor.use_vault(vault.clone());
    let api = ApiState::with_vault(
        store.clone(),
        keys.clone(),
        Arc::new(executor.clone()) as Arc<dyn Executor>,
        api_config(&args),
        vault,
    );
    tokio::spawn(cliscale_api::scheduler::run(api.clone(), api.shutdown.clone()));
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
        keys: Some(Arc::new(StoreKeys(store.clone()))),
        key_watch: Default::default(),
        metrics: Default::default(),
    });
    gateway.watch_keys();
    let streams = api.shutdown.clone();
    let app = cliscale_gateway::router(gateway).merge(cliscale_api::routes::router(api));

    let chosen = std::env::var("CLISCALE_API_KEY").ok();
    let printed_key = cliscale_api::bootstrap::ensure_admin_key(&store, chosen.as_deref()).await?;
    let public = args.public_url.clone().unwrap_or_else(|| local_base.clone());
    println!("cliscale is up: {public}");
    println!("listening on {local_base}");
    match &printed_key {
        Some(key) => println!("admin API key (shown once, keep it): {key}"),
        None => println!("using the existing API keys (CLISCALE_API_KEY or from an earlier start)"),
    }
    print!("{}", next_steps(&public, printed_key.as_deref()));

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
    cliscale_serve::serve(listener, app, args.limits.limits(), cliscale_serve::no_delay, stopping)
        .await?;
    shutdown.drain(Duration::from_secs(5)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_in_the_login_line() {
        let steps = next_steps("http://127.0.0.1:8080", Some("csk_1_x"));
        assert!(steps.contains("cliscale login http://127.0.0.1:8080 --api-key csk_1_x\n"));
        let kept = next_steps("http://127.0.0.1:8080", None);
        assert!(kept.contains("cliscale login http://127.0.0.1:8080 ") && !kept.contains("csk_"));
    }

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
