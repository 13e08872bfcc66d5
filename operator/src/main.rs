//! cliscale-operator: reconciles CommandSessions into runner Jobs (docs/operator.md).
//! One replica for now: leader election is still to come.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use clap::Parser;
use cliscale_operator::controller::{Context, run};
use cliscale_operator::desired::OperatorConfig;

#[derive(Parser)]
#[command(
    name = "cliscale-operator",
    version,
    about = "Reconciles CommandSessions into runner Jobs"
)]
struct Args {
    /// Image of the runner, unless a session names its own.
    #[arg(long, env = "CLISCALE_RUNNER_IMAGE")]
    runner_image: Option<String>,
    /// ConfigMap holding jwks.json, mounted into every runner.
    #[arg(long, env = "CLISCALE_JWKS_CONFIG_MAP")]
    jwks_config_map: Option<String>,
    /// Address of /healthz and /metrics.
    #[arg(long, env = "CLISCALE_OPERATOR_LISTEN", default_value = "0.0.0.0:8081")]
    listen: SocketAddr,
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLISCALE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .json()
        .init();
    cliscale_core::tls::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(serve(args)) {
        tracing::error!(error = %e, "cliscale-operator failed");
        std::process::exit(1);
    }
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let defaults = OperatorConfig::default();
    let config = OperatorConfig {
        runner_image: args.runner_image.unwrap_or(defaults.runner_image),
        jwks_config_map: args.jwks_config_map.unwrap_or(defaults.jwks_config_map),
        default_resources: defaults.default_resources,
    };
    let client = kube::Client::try_default().await?;
    let ctx = Arc::new(Context::new(client, config));
    let metrics_ctx = ctx.clone();
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(move || async move { metrics_ctx.metrics.render() }));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down after the reconciles in flight");
    };
    run(ctx, shutdown).await;
    Ok(())
}
