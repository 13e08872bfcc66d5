//! cliscale-operator (docs/operator.md): on every replica, the REST API (PostgreSQL store,
//! sessions as CommandSessions) and the store mirror; on the replica holding the Lease, the
//! reconciler that turns CommandSessions into runner Jobs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use clap::Parser;
use cliscale_api::executor::Executor;
use cliscale_api::model::SpecDefaults;
use cliscale_api::process::Shutdown;
use cliscale_api::routes::{ApiConfig, ApiState};
use cliscale_api::signing::KeyRing;
use cliscale_api::store::Store;
use cliscale_operator::cluster_api::{ClusterExecutor, run_mirror};
use cliscale_operator::controller::Context;
use cliscale_operator::desired::OperatorConfig;
use cliscale_operator::leader::{LeaderConfig, run_when_leading};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

#[derive(Parser)]
#[command(
    name = "cliscale-operator",
    version,
    about = "Reconciles CommandSessions into runner Jobs and serves the REST API"
)]
struct Args {
    #[command(flatten)]
    limits: cliscale_serve::LimitArgs,
    /// Image of the runner, unless a session names its own.
    #[arg(long, env = "CLISCALE_RUNNER_IMAGE")]
    runner_image: Option<String>,
    /// ConfigMap holding jwks.json, mounted into every runner.
    #[arg(long, env = "CLISCALE_JWKS_CONFIG_MAP")]
    jwks_config_map: Option<String>,
    /// Resources of runner containers whose session names none, as JSON
    /// (`{"requests":{"cpu":"100m"},"limits":{"memory":"2Gi"}}`).
    #[arg(long, env = "CLISCALE_RUNNER_RESOURCES")]
    runner_resources: Option<String>,
    /// Timeout (seconds) of sessions that set none.
    #[arg(long, env = "CLISCALE_RUNNER_DEFAULT_TIMEOUT_SECONDS")]
    runner_default_timeout_seconds: Option<u32>,
    /// The API's URL as runners reach it, to store their sessions' output (the chart sets it
    /// to this Deployment's Service). Unset: output is not stored.
    #[arg(long, env = "CLISCALE_OUTPUT_URL")]
    output_url: Option<String>,
    /// Most bytes of output stored per session (head and tail kept, a gap between).
    #[arg(long, env = "CLISCALE_OUTPUT_CAP_BYTES", default_value_t = cliscale_api::output::DEFAULT_CAP_BYTES,
          value_parser = clap::value_parser!(u64).range(cliscale_api::output::MIN_CAP_BYTES..))]
    output_cap_bytes: u64,
    /// How long a console login (an API key exchanged for a cookie) lasts.
    #[arg(long, env = "CLISCALE_CONSOLE_SESSION_TTL", default_value = "12h", value_parser = cliscale_core::args::positive_duration)]
    console_session_ttl: std::time::Duration,
    /// TTL after finishing (seconds) of API sessions that name none.
    #[arg(long, env = "CLISCALE_SESSION_TTL_SECONDS", default_value_t = 3600)]
    session_ttl_seconds: u32,
    /// Seconds API sessions keep their terminal open after the command exits.
    #[arg(long, env = "CLISCALE_SESSION_LINGER_SECONDS", default_value_t = 30)]
    session_linger_seconds: u32,
    /// Address of /healthz and the reconciler's /metrics.
    #[arg(long, env = "CLISCALE_OPERATOR_LISTEN", default_value = "0.0.0.0:8081")]
    listen: SocketAddr,
    /// Address of the REST API (/api, /.well-known/jwks.json, /openapi.json, /metrics).
    #[arg(long, env = "CLISCALE_API_LISTEN", default_value = "0.0.0.0:8080")]
    api_listen: SocketAddr,
    /// PostgreSQL URL: API keys, used JTIs and the session event log.
    #[arg(long, env = "CLISCALE_DATABASE_URL")]
    database_url: String,
    /// Apply the database migrations and exit (the chart's pre-install/upgrade hook).
    #[arg(long)]
    migrate_only: bool,
    /// Namespace where API sessions are created and whose CommandSessions the API lists.
    #[arg(long, env = "CLISCALE_SESSIONS_NAMESPACE")]
    sessions_namespace: Option<String>,
    /// Signing key files (PEM or PKCS#8 DER), comma-separated; the first signs, all are
    /// published in the JWKS.
    #[arg(long, env = "CLISCALE_SIGNING_KEY_FILES", value_delimiter = ',')]
    signing_key_file: Vec<PathBuf>,
    /// Base of the URLs handed out (default: from each request's Host or trusted forwarded
    /// headers).
    #[arg(long, env = "CLISCALE_PUBLIC_URL")]
    public_url: Option<String>,
    /// Lifetime of terminal tokens.
    #[arg(long, env = "CLISCALE_TOKEN_TTL", default_value = "5m", value_parser = cliscale_core::args::positive_duration)]
    token_ttl: Duration,
    /// Requests per minute per API key (and per address for unauthenticated requests).
    #[arg(long, env = "CLISCALE_RATE_PER_MINUTE", default_value_t = 600)]
    rate_per_minute: u32,
    /// Proxies whose X-Forwarded-* headers are trusted (CIDRs, comma-separated).
    #[arg(long, env = "CLISCALE_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// How long a session may wait for its runner pod to run (scheduling, image pulls,
    /// mounts, quota) before it fails with the reason it waited for.
    #[arg(long, env = "CLISCALE_START_DEADLINE", default_value = "10m", value_parser = cliscale_core::args::positive_duration)]
    start_deadline: Duration,
    /// Secrets in the sessions namespace that runner images are pulled with (comma-separated).
    #[arg(long, env = "CLISCALE_RUNNER_IMAGE_PULL_SECRETS", value_delimiter = ',')]
    runner_image_pull_secrets: Vec<String>,
    /// Most bytes a runner's work dir may hold (a Kubernetes quantity).
    #[arg(long, env = "CLISCALE_RUNNER_WORKSPACE_SIZE", default_value = "8Gi")]
    runner_workspace_size: String,
    /// Most bytes a runner's /tmp and $HOME may each hold (a Kubernetes quantity).
    #[arg(long, env = "CLISCALE_RUNNER_SCRATCH_SIZE", default_value = "1Gi")]
    runner_scratch_size: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "CLISCALE_LEASE_NAME", default_value = "cliscale-operator")]
    lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pod_namespace: String,
    /// This replica's identity in the Lease (default: the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

fn main() {
    let args = Args::parse();
    cliscale_api::process::init_json_logs();
    cliscale_api::process::run_server("cliscale-operator", serve(args));
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::connect(&args.database_url).await?;
    if args.migrate_only {
        tracing::info!("migrations applied");
        return Ok(());
    }
    // On a cluster the bootstrap key comes from a Secret (the chart makes one): a generated
    // key would have to be printed into the pod's logs, which is no place for a secret.
    match std::env::var("CLISCALE_API_KEY").ok().filter(|k| !k.is_empty()) {
        Some(chosen) => {
            cliscale_api::bootstrap::ensure_admin_key(&store, Some(&chosen)).await?;
        }
        None if store.count_api_keys().await? == 0 => {
            return Err("no API keys exist: set CLISCALE_API_KEY (from a Secret) to the \
                        bootstrap admin key"
                .into());
        }
        None => {}
    }
    let keys = Arc::new(KeyRing::from_files(&args.signing_key_file)?);
    let defaults = OperatorConfig::default();
    let config = OperatorConfig {
        runner_image: args.runner_image.unwrap_or(defaults.runner_image),
        jwks_config_map: args.jwks_config_map.unwrap_or(defaults.jwks_config_map),
        default_resources: match &args.runner_resources {
            Some(json) => serde_json::from_str(json)
                .map_err(|e| format!("CLISCALE_RUNNER_RESOURCES is not valid resources: {e}"))?,
            None => defaults.default_resources,
        },
        default_timeout_seconds: args.runner_default_timeout_seconds,
        output_url: args.output_url.clone(),
        namespace: args.sessions_namespace.clone().unwrap_or_else(|| args.pod_namespace.clone()),
        start_deadline: args.start_deadline,
        image_pull_secrets: args
            .runner_image_pull_secrets
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect(),
        workspace_size_limit: Quantity(args.runner_workspace_size),
        scratch_size_limit: Quantity(args.runner_scratch_size),
    };
    let client = kube::Client::try_default().await?;
    let namespace = config.namespace.clone();
    publish_jwks(&client, &namespace, &config.jwks_config_map, &keys.jwks()).await?;
    let ctx = Arc::new(Context {
        output_keys: Some(keys.clone()),
        status_secrets: keys.status_secrets(),
        ..Context::new(client.clone(), config)
    });

    let shutdown = Shutdown::on_signals();

    let api = ApiState::with_vault(
        store.clone(),
        keys,
        Arc::new(ClusterExecutor::new(client.clone(), &namespace)) as Arc<dyn Executor>,
        ApiConfig {
            public_url: args.public_url,
            token_ttl: args.token_ttl,
            issuer: "cliscale".into(),
            rate_per_minute: args.rate_per_minute,
            trusted_proxies: args.trusted_proxies,
            spec_defaults: SpecDefaults {
                ttl_secs: args.session_ttl_seconds,
                linger_secs: args.session_linger_seconds,
            },
            output_cap_bytes: args.output_cap_bytes,
            // Each session has a pod of its own.
            admin_only: None,
            console_session_ttl: args.console_session_ttl,
            clock: Default::default(),
        },
        Arc::new(cliscale_operator::vault::KubeVault::new(client.clone(), &namespace)),
    );
    // Every replica runs the scheduler: times are claimed by compare-and-set and runs have
    // deterministic names, so none starts twice.
    shutdown.spawn({
        let (api, stop) = (api.clone(), api.shutdown.clone());
        cliscale_api::scheduler::run(api, stop)
    });
    // Open output streams end when the process stops, or they would hold its shutdown open.
    let stopping = {
        let (streams, requested) = (api.shutdown.clone(), shutdown.requested());
        async move {
            requested.await;
            streams.cancel();
        }
    };
    let status_api = api.clone();
    let api_app = cliscale_api::routes::router(api);
    let api_listener = tokio::net::TcpListener::bind(args.api_listen).await?;
    let limits = args.limits.limits();
    shutdown.spawn(cliscale_serve::serve(
        api_listener,
        api_app,
        limits.clone(),
        cliscale_serve::as_is,
        stopping,
    ));
    shutdown.spawn(cliscale_operator::definitions::run_schedule_status(
        status_api,
        client.clone(),
        namespace.clone(),
        std::time::Duration::from_secs(10),
        shutdown.requested(),
    ));
    shutdown.spawn(cliscale_operator::definitions::run_definition_mirror(
        client.clone(),
        namespace.clone(),
        store.clone(),
        shutdown.requested(),
    ));
    shutdown.spawn(run_mirror(client.clone(), namespace.clone(), store, shutdown.requested()));

    let metrics_ctx = ctx.clone();
    let ops = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(move || async move { metrics_ctx.render_metrics() }));
    let ops_listener = tokio::net::TcpListener::bind(args.listen).await?;
    shutdown.spawn(cliscale_serve::serve(
        ops_listener,
        ops,
        limits,
        cliscale_serve::as_is,
        shutdown.requested(),
    ));

    let identity =
        args.identity.unwrap_or_else(|| format!("cliscale-operator-{}", std::process::id()));
    let leader = LeaderConfig {
        lease_name: args.lease_name,
        namespace: args.pod_namespace,
        identity,
        lease_seconds: 15,
        renew_grace_seconds: 5,
    };
    tracing::info!(api = %args.api_listen, sessions_namespace = %namespace, "operator up");
    let leading = run_when_leading(ctx, leader, shutdown.requested()).await;
    // Leading may end in an error: then everything else stops too.
    shutdown.request();
    shutdown.drain(Duration::from_secs(10)).await;
    leading?;
    Ok(())
}

/// Writes the terminal-token public keys into the ConfigMap every runner mounts, so runners
/// verify the tokens the API signs (server-side apply: every replica writes the same content).
async fn publish_jwks(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    jwks: &str,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), namespace);
    let map = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": name, "labels": { "app.kubernetes.io/part-of": "cliscale" } },
        "data": { "jwks.json": jwks }
    });
    let params = kube::api::PatchParams::apply("cliscale-operator").force();
    api.patch(name, &params, &kube::api::Patch::Apply(&map)).await?;
    Ok(())
}
