//! The reconciler: keeps each CommandSession's Job in place (server-side apply, one field
//! manager) and its status true to the Job and Pod observed. Decisions are the pure functions
//! of `desired` and `status`; this file only reads, applies and writes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
// kube calls its watch-fed cache a Store; here that name belongs to the SQL store.
use kube::runtime::reflector::{ObjectRef, Store as Cache};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::desired::{
    OperatorConfig, SESSION_LABEL, desired_job, job_name, with_output_token, with_status_key,
};
use crate::status::{Observed, derive_status, transition};
use cliscale_core::event::{StatusKey, status_key};
use cliscale_crd::CommandSession;

/// The one field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "cliscale-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the Kubernetes API failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0} has no namespace")]
    NoNamespace(String),
    #[error("{0}")]
    Config(String),
}

pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub metrics: crate::metrics::OperatorMetrics,
    /// Publishes Kubernetes Events for status transitions.
    pub recorder: Recorder,
    /// The controller's cache of sessions while this replica leads (for the by-phase gauges).
    pub sessions: std::sync::Mutex<Option<Cache<CommandSession>>>,
    /// Consecutive failed reconciles per session, for the error policy's backoff.
    pub failures: std::sync::Mutex<std::collections::HashMap<ObjectRef<CommandSession>, u32>>,
    /// Signs runners' output credentials, when their output is stored (config.output_url).
    pub output_keys: Option<Arc<cliscale_api::signing::KeyRing>>,
    /// What runners' status keys derive from: the signing keys' private halves on every replica
    /// (`KeyRing::status_secrets`), so any replica, now or after a restart, checks any seal.
    pub status_secrets: Vec<Vec<u8>>,
}

impl Context {
    pub fn new(client: Client, config: OperatorConfig) -> Self {
        let reporter =
            Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics: Default::default(),
            sessions: Default::default(),
            failures: Default::default(),
            output_keys: None,
            // Without the signing keys a replica checks only the seals it made itself.
            status_secrets: vec![rand::random::<[u8; 32]>().to_vec()],
        }
    }

    /// The keys that may have sealed `session`'s final event; the first seals new Jobs.
    pub fn status_keys(&self, session: &CommandSession) -> Vec<StatusKey> {
        // A real API server always gives an object its uid; the name stands in only for one
        // that does not.
        let uid = session.metadata.uid.clone().unwrap_or_else(|| session.name_any());
        self.status_secrets.iter().map(|secret| status_key(secret, &uid)).collect()
    }

    /// The metrics text, with the by-phase gauges counted from the cache now.
    pub fn render_metrics(&self) -> String {
        if let Some(store) = self.sessions.lock().expect("not poisoned").as_ref() {
            self.metrics.set_phases(
                store.state().iter().map(|s| s.status.as_ref().and_then(|st| st.phase)),
            );
        }
        self.metrics.render()
    }
}

impl Error {
    /// A label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(_)) => "api",
            Self::Kube(_) => "client",
            Self::NoNamespace(_) => "no_namespace",
            Self::Config(_) => "config",
        }
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Seconds until a finished session's TTL runs out (0 when it has), or `None` while it runs.
pub fn ttl_remaining(session: &CommandSession, now: &Time) -> Option<Duration> {
    let status = session.status.as_ref()?;
    if !status.phase?.is_finished() {
        return None;
    }
    let done = status.completion_time.as_ref()?.0.as_second();
    let expires = done + i64::from(session.spec.session.ttl_seconds_after_finished);
    Some(Duration::from_secs((expires - now.0.as_second()).max(0) as u64))
}

pub async fn reconcile(session: Arc<CommandSession>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let key = ObjectRef::from_obj(&*session);
    let result = reconcile_inner(session, &ctx).await;
    ctx.metrics.record(started.elapsed(), result.as_ref().err().map(Error::kind));
    if result.is_ok() {
        ctx.failures.lock().expect("not poisoned").remove(&key);
    }
    result
}

async fn reconcile_inner(session: Arc<CommandSession>, ctx: &Context) -> Result<Action, Error> {
    let name = session.name_any();
    let ns = session.namespace().ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let sessions: Api<CommandSession> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let now = now();
    let status_keys = ctx.status_keys(&session);

    if ttl_remaining(&session, &now) == Some(Duration::ZERO) {
        tracing::info!(session = %name, "TTL passed; deleting the session");
        sessions.delete(&name, &DeleteParams::background()).await?;
        return Ok(Action::await_change());
    }
    let finished = session.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_finished());
    let deleting = session.metadata.deletion_timestamp.is_some();
    // The Job is made once. A later spec change is surfaced in status, never half-applied.
    let job = match jobs.get_opt(&job_name(&name)).await? {
        Some(job) => Some(job),
        None if !finished && !deleting => {
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let mut desired = with_status_key(desired_job(&session, &ctx.config), &status_keys[0]);
            if let (Some(_), Some(keys)) = (&ctx.config.output_url, &ctx.output_keys) {
                let timeout = session.spec.session.timeout_seconds;
                let token = keys
                    .output_token("cliscale", &name, timeout)
                    .map_err(|e| Error::Config(format!("signing the output credential: {e}")))?;
                desired = with_output_token(desired, token);
            }
            Some(jobs.patch(&job_name(&name), &params, &Patch::Apply(&desired)).await?)
        }
        None => None,
    };
    let selector = ListParams::default().labels(&format!("{SESSION_LABEL}={name}"));
    let pod = pods.list(&selector).await?.items.into_iter().next();
    let status = derive_status(&Observed {
        session: &session,
        job: job.as_ref(),
        pod: pod.as_ref(),
        now: now.clone(),
        status_keys: &status_keys,
    });
    // A cancelled session's Job goes; the runner gets SIGTERM as its pod is deleted.
    if status.reason == Some(cliscale_core::TerminalReason::Cancelled)
        && job.as_ref().is_some_and(|j| j.metadata.deletion_timestamp.is_none())
    {
        jobs.delete(&job_name(&name), &DeleteParams::background()).await?;
    }
    if session.status.as_ref() != Some(&status) {
        let patch = serde_json::json!({ "status": status });
        sessions.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        if let Some(t) = transition(session.status.as_ref(), &status) {
            let event = KubeEvent {
                type_: if t.warning { EventType::Warning } else { EventType::Normal },
                reason: t.reason,
                note: Some(t.note),
                action: "Reconcile".into(),
                secondary: None,
            };
            // An Event is a courtesy: failing to record one must not fail the reconcile.
            if let Err(error) = ctx.recorder.publish(&event, &session.object_ref(&())).await {
                tracing::warn!(session = %name, %error, "could not record an Event");
            }
        }
    }
    Ok(match ttl_remaining(&CommandSession { status: Some(status), ..(*session).clone() }, &now) {
        Some(left) => Action::requeue(left.max(Duration::from_secs(1))),
        None => Action::await_change(),
    })
}

/// Retry delay after `failures` consecutive failures of one session: 1 s doubling to 5 min,
/// so a broken session or an unavailable API server is not hammered. Pure.
pub fn backoff_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs((1u64 << exponent).min(300))
}

/// Counts one more failure of `key` and returns its consecutive failures. Sessions that no
/// longer `exist` lose their count: a session deleted while failing is never reconciled again,
/// so nothing else would remove it.
pub fn record_failure<K: std::hash::Hash + Eq + Clone>(
    failures: &mut std::collections::HashMap<K, u32>,
    key: &K,
    exists: impl Fn(&K) -> bool,
) -> u32 {
    failures.retain(|k, _| k == key || exists(k));
    let n = failures.entry(key.clone()).or_insert(0);
    *n += 1;
    *n
}

pub fn error_policy(session: Arc<CommandSession>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = {
        let cache = ctx.sessions.lock().expect("not poisoned").clone();
        let mut map = ctx.failures.lock().expect("not poisoned");
        record_failure(&mut map, &ObjectRef::from_obj(&*session), |k| {
            cache.as_ref().is_none_or(|store| store.get(k).is_some())
        })
    };
    let delay = backoff_delay(failures);
    tracing::warn!(session = %session.name_any(), %error, failures, ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let sessions: Api<CommandSession> = Api::all(ctx.client.clone());
    let jobs: Api<Job> = Api::all(ctx.client.clone());
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    // Only runner pods (those carrying the session label) are watched.
    let runner_pods = watcher::Config::default().labels(SESSION_LABEL);
    let controller = Controller::new(sessions, watcher::Config::default());
    *ctx.sessions.lock().expect("not poisoned") = Some(controller.store());
    controller
        .owns(jobs, watcher::Config::default())
        .watches(pods, runner_pods, |pod| {
            let session = pod.labels().get(SESSION_LABEL)?.clone();
            Some(ObjectRef::<CommandSession>::new(&session).within(&pod.namespace()?))
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_counts_are_consecutive_and_forget_deleted_sessions() {
        let mut failures = std::collections::HashMap::new();
        let live = |k: &&str| *k != "deleted";
        assert_eq!(record_failure(&mut failures, &"deleted", live), 1);
        assert_eq!(record_failure(&mut failures, &"a", |_| true), 1);
        assert_eq!(record_failure(&mut failures, &"a", |_| true), 2);
        // "deleted" is gone from the cache: the next failure of anyone drops its count.
        assert_eq!(record_failure(&mut failures, &"b", live), 1);
        assert_eq!(failures.len(), 2);
        assert!(!failures.contains_key("deleted"));
        assert_eq!(failures["a"], 2);
    }

    #[test]
    fn backoff_doubles_from_one_second_and_stops_at_five_minutes() {
        let delays: Vec<u64> = (1..=10).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(backoff_delay(u32::MAX), Duration::from_secs(300));
        assert_eq!(backoff_delay(0), Duration::from_secs(1));
    }
}
