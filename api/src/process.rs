//! Process plumbing shared by the server binaries (cliscale-operator, cliscale-gateway and
//! `cliscale up`): JSON logs, the runtime, and one way of stopping.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

/// How every binary stops (docs/architecture.md, "Stopping"). A stop signal cancels one token;
/// servers stop accepting on it and long-lived work (terminal relays, watches, the reconciler)
/// ends itself on it; the binary then waits for its tracked tasks, up to a grace period.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    /// A shutdown that only [`Self::request`] starts.
    pub fn new() -> Self {
        Self::default()
    }

    /// A shutdown that Ctrl-C or SIGTERM starts.
    pub fn on_signals() -> Self {
        let shutdown = Self::new();
        let token = shutdown.token.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            token.cancel();
        });
        shutdown
    }

    pub fn request(&self) {
        self.token.cancel();
    }

    pub fn is_requested(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The token long-lived work watches.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Resolves once shutdown is requested (for `with_graceful_shutdown` and the like).
    pub fn requested(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// Runs `task`; [`Self::drain`] waits for it.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Waits up to `grace` for every spawned task; false when some were still running.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.tasks.close();
        let done = tokio::time::timeout(grace, self.tasks.wait()).await.is_ok();
        if !done {
            tracing::warn!(
                left = self.tasks.len(),
                ?grace,
                "tasks still running after the grace period"
            );
        }
        done
    }
}

/// Structured JSON logs on stdout, filtered by `CLISCALE_LOG` (default `info`).
pub fn init_json_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLISCALE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .json()
        // A closed stdout must not turn a log line into a panic.
        .log_internal_errors(false)
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
