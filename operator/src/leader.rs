//! Leader election through a coordination.k8s.io Lease, so several operator replicas are safe:
//! only the holder of the Lease runs the reconciler; the others wait, and take over when the
//! holder stops renewing (crash) or releases the Lease (graceful shutdown); a standby looks
//! again when the holder's lease would expire.

use std::future::Future;
use std::sync::Arc;

use kube_lease_manager::LeaseManagerBuilder;

use crate::controller::{Context, run};

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// Unique per replica; the pod name on a cluster.
    pub identity: String,
    /// Seconds a Lease stays valid after its last renewal.
    pub lease_seconds: u64,
    /// Seconds before expiry at which the holder renews.
    pub renew_grace_seconds: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("the leader Lease could not be managed: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("the Lease manager stopped: {0}")]
    Stopped(String),
}

/// Runs the reconciler whenever this replica holds the Lease, until `shutdown` resolves; then
/// stops reconciling and releases the Lease for another replica to take.
pub async fn run_when_leading(
    ctx: Arc<Context>,
    config: LeaderConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), LeaderError> {
    let manager = LeaseManagerBuilder::new(ctx.client.clone(), &config.lease_name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(config.lease_seconds)
        .with_grace(config.renew_grace_seconds)
        .with_field_manager(format!("cliscale-operator-lease-{}", config.identity))
        .build()
        .await?;
    let (mut leading, task) = manager.watch().await;
    let mut shutdown = std::pin::pin!(shutdown);
    'terms: loop {
        tokio::select! {
            _ = &mut shutdown => break 'terms,
            became = leading.wait_for(|l| *l) => {
                if became.is_err() {
                    return Err(LeaderError::Stopped("its channel closed".into()));
                }
            }
        }
        tracing::info!(identity = %config.identity, "leading: starting the reconciler");
        ctx.metrics.leader.set(1);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut lost = leading.clone();
        let term_over = async move {
            tokio::select! {
                _ = lost.wait_for(|l| !*l) => tracing::warn!("lost the Lease: stopping the reconciler"),
                _ = stopped => {}
            }
        };
        let mut reconciler = std::pin::pin!(run(ctx.clone(), term_over));
        let shutting_down = tokio::select! {
            _ = &mut reconciler => false,
            _ = &mut shutdown => true,
        };
        if shutting_down {
            let _ = stop.send(());
            reconciler.await;
        }
        ctx.metrics.leader.set(0);
        *ctx.sessions.lock().expect("not poisoned") = None;
        if shutting_down {
            break 'terms;
        }
    }
    // Closing the channel makes the manager release the Lease and hand itself back.
    drop(leading);
    match task.await {
        Ok(Ok(_manager)) => {
            tracing::info!("released the Lease");
            Ok(())
        }
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(LeaderError::Stopped(e.to_string())),
    }
}
