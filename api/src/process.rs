//! Process plumbing shared by the server binaries (cliscale-operator, cliscale-gateway and
//! `cliscale up`): JSON logs and the shutdown signal.

use std::future::Future;

/// Structured JSON logs on stdout, filtered by `CLISCALE_LOG` (default `info`).
pub fn init_json_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLISCALE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .json()
        .init();
}

/// Runs `serve` on a fresh multi-threaded runtime; logs the error and exits 1 if it fails.
pub fn run_server<F, E>(name: &str, serve: F)
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    cliscale_core::tls::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    if let Err(e) = runtime.block_on(serve) {
        tracing::error!(error = %e, "{name} failed");
        std::process::exit(1);
    }
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends before killing a pod).
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
}
