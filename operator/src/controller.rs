//! The reconciler: keeps each CommandSession's Job in place (server-side apply, one field
//! manager) and its status true to the Job and Pod observed. Decisions are the pure functions
//! of `desired` and `status`; this file only reads, applies and writes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
// kube calls its watch-fed cache a Store; here that name belongs to the SQL store.
use kube::runtime::reflector::{ObjectRef, Store as Cache};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::desired::{
    COMPONENT_LABEL, OperatorConfig, SESSION_LABEL, desired_job, job_name, with_output_token,
    with_status_key,
};
use crate::status::{
    ClusterWarning, JobSeen, Observed, derive_status, job_must_stop, stall_check_every, transition,
    warnings_about,
};
use cliscale_core::event::{StatusKey, status_key};
use cliscale_crd::{CommandSession, CommandSessionStatus};

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

/// The reflector caches the reconciler reads from, all watch-fed and of the sessions namespace
/// only: labelled runner Jobs and pods, and Warning Events (what a waiting session waits for;
/// one watch for every session instead of a LIST per waiting session and check).
#[derive(Clone)]
pub struct Caches {
    pub jobs: Cache<Job>,
    pub pods: Cache<Pod>,
    pub warnings: Cache<CoreEvent>,
}

pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub metrics: crate::metrics::OperatorMetrics,
    /// Publishes Kubernetes Events for status transitions.
    pub recorder: Recorder,
    /// The controller's cache of sessions while this replica leads (for the by-phase gauges).
    pub sessions: std::sync::Mutex<Option<Cache<CommandSession>>>,
    /// Jobs and pods, while the controller runs.
    pub caches: std::sync::Mutex<Option<Caches>>,
    /// Consecutive failed reconciles per session, for the error policy's backoff.
    pub failures: std::sync::Mutex<std::collections::HashMap<ObjectRef<CommandSession>, u32>>,
    /// Sessions whose Job creation failed without an answer from the API server, in this
    /// process: only these may try to create their Job again.
    pub unsure_creates: std::sync::Mutex<std::collections::HashSet<ObjectRef<CommandSession>>>,
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
            caches: Default::default(),
            failures: Default::default(),
            unsure_creates: Default::default(),
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

/// Whether an API error is the server refusing the request itself (a 4xx that retrying
/// cannot fix), as opposed to a conflict, a rate limit or an outage. Pure.
fn is_refusal(error: &kube::Error) -> Option<String> {
    match error {
        kube::Error::Api(status)
            if (400..500).contains(&status.code)
                && ![404, 408, 409, 429].contains(&status.code) =>
        {
            Some(format!("{} ({})", status.message, status.reason))
        }
        _ => None,
    }
}

fn status_patch(status: &CommandSessionStatus, seen: Option<&str>) -> serde_json::Value {
    // Server-side apply of the whole status: a field this manager set before and leaves out
    // now is removed, so a recovered pull leaves no stale reason behind. The resourceVersion
    // the status was derived from is a precondition: a cache that lags behind (the operator's
    // own last write not seen yet) gets 409 instead of writing an older state over a newer
    // one, such as a finished session back to Pending.
    let mut patch = serde_json::json!({
        "apiVersion": "cliscale.dev/v1alpha1",
        "kind": "CommandSession",
        "status": status,
    });
    if let Some(version) = seen {
        patch["metadata"] = serde_json::json!({ "resourceVersion": version });
    }
    patch
}

/// Applies the session's status; `None` when the write was refused because the session
/// changed since it was read (409 Conflict).
async fn apply_status(
    sessions: &Api<CommandSession>,
    name: &str,
    status: &CommandSessionStatus,
    seen: Option<&str>,
) -> Result<Option<CommandSession>, Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match sessions.patch_status(name, &params, &Patch::Apply(status_patch(status, seen))).await {
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        written => Ok(Some(written?)),
    }
}

/// Reconciled again once the cache has the newer object; its watch event wakes it sooner.
const STALE_RETRY: Duration = Duration::from_millis(500);

async fn reconcile_inner(session: Arc<CommandSession>, ctx: &Context) -> Result<Action, Error> {
    let name = session.name_any();
    let ns = session.namespace().ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let key = ObjectRef::from_obj(&*session);
    let sessions: Api<CommandSession> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let caches = ctx
        .caches
        .lock()
        .expect("not poisoned")
        .clone()
        .ok_or_else(|| Error::Config("the Job and pod caches are not running".into()))?;
    let now = now();
    let status_keys = ctx.status_keys(&session);

    if ttl_remaining(&session, &now) == Some(Duration::ZERO) {
        tracing::info!(session = %name, "TTL passed; deleting the session");
        sessions.delete(&name, &DeleteParams::background()).await?;
        return Ok(Action::await_change());
    }
    let previous = session.status.clone().unwrap_or_default();
    // The version the status is derived from: a status write holds to it.
    let mut seen_version = session.resource_version();
    let finished = previous.phase.is_some_and(|p| p.is_finished());
    let deleting = session.metadata.deletion_timestamp.is_some();
    let cancelled = session.annotations().contains_key(crate::desired::CANCEL_ANNOTATION);
    let job_key = ObjectRef::<Job>::new(&job_name(&name)).within(&ns);
    let unsure = ctx.unsure_creates.lock().expect("not poisoned").contains(&key);
    // The Job is made once. The session records it (status.jobName) before it is made, so
    // a Job deleted by someone, even one the operator never saw, is never made again.
    let fetched: Option<Job>;
    let refusal: Option<String>;
    let seen = match caches.jobs.get(&job_key) {
        Some(job) => {
            fetched = Some((*job).clone());
            JobSeen::Made(fetched.as_ref().expect("just set"))
        }
        None if finished || deleting || cancelled => JobSeen::NotYet,
        // The cache may lag behind the API server: only a live read says the Job is gone.
        None if previous.job_name.is_some() && !unsure => {
            fetched = jobs.get_opt(&job_name(&name)).await?;
            fetched.as_ref().map_or(JobSeen::Vanished, JobSeen::Made)
        }
        None => {
            if previous.job_name.is_none() {
                let intent =
                    CommandSessionStatus { job_name: Some(job_name(&name)), ..previous.clone() };
                match apply_status(&sessions, &name, &intent, seen_version.as_deref()).await? {
                    // The session changed since this read: decide again on the newer one.
                    None => return Ok(Action::requeue(STALE_RETRY)),
                    // The status below follows this write.
                    Some(written) => seen_version = written.resource_version(),
                }
            }
            let mut desired = with_status_key(desired_job(&session, &ctx.config), &status_keys[0]);
            if let (Some(_), Some(keys)) = (&ctx.config.output_url, &ctx.output_keys) {
                let timeout = session.spec.session.timeout_seconds;
                let token = keys
                    .output_token("cliscale", &name, timeout)
                    .map_err(|e| Error::Config(format!("signing the output credential: {e}")))?;
                desired = with_output_token(desired, token);
            }
            let params =
                PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            ctx.unsure_creates.lock().expect("not poisoned").insert(key.clone());
            (fetched, refusal) = match jobs.create(&params, &desired).await {
                Ok(job) => (Some(job), None),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    (jobs.get_opt(&job_name(&name)).await?, None)
                }
                Err(e) => (None, Some(is_refusal(&e).ok_or(e)?)),
            };
            ctx.unsure_creates.lock().expect("not poisoned").remove(&key);
            match (&refusal, &fetched) {
                (Some(message), _) => JobSeen::Refused(message),
                (None, Some(job)) => JobSeen::Made(job),
                (None, None) => JobSeen::NotYet,
            }
        }
    };
    let pod = runner_pod_of(&caches.pods, &ns, &name);
    let mut observed = Observed {
        session: &session,
        job: seen,
        pod: pod.as_deref(),
        now: now.clone(),
        status_keys: &status_keys,
        start_deadline: ctx.config.start_deadline,
        warnings: &[],
    };
    // A session that has waited a while, or is past its start deadline: the cluster's own
    // warnings tell what it waits for.
    let warnings;
    if observed.stall_check_due() {
        warnings = cluster_warnings(ctx, &caches, &ns, &name, pod.as_deref()).await?;
        observed.warnings = &warnings;
    }
    let status = derive_status(&observed);
    let start_left = observed.start_deadline_left();
    // A session that ended before its runner (a cancel, a start deadline) stops its Job; the
    // runner gets SIGTERM as its pod is deleted.
    if let JobSeen::Made(job) = seen
        && job_must_stop(&status, job, pod.as_deref())
    {
        jobs.delete(&job_name(&name), &DeleteParams::background()).await?;
    }
    if session.status.as_ref() != Some(&status) {
        if apply_status(&sessions, &name, &status, seen_version.as_deref()).await?.is_none() {
            return Ok(Action::requeue(STALE_RETRY));
        }
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
    if let Some(left) =
        ttl_remaining(&CommandSession { status: Some(status), ..(*session).clone() }, &now)
    {
        return Ok(Action::requeue(left.max(Duration::from_secs(1))));
    }
    Ok(match start_left {
        // Woken to look at the warnings again, and at the start deadline (a second late, so
        // it has surely passed): a stall that changes nothing in the Job or pod has no watch
        // event to wake the reconcile.
        Some(left) => Action::requeue(
            (left + Duration::from_secs(1)).min(stall_check_every(ctx.config.start_deadline)),
        ),
        None => Action::await_change(),
    })
}

/// The runner pod of a session, from the cache: the one not being deleted, if there are two.
fn runner_pod_of(pods: &Cache<Pod>, ns: &str, session: &str) -> Option<Arc<Pod>> {
    let mut found: Vec<Arc<Pod>> = pods
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(ns)
                && p.labels().get(SESSION_LABEL).map(String::as_str) == Some(session)
        })
        .collect();
    found.sort_by_key(|p| p.metadata.deletion_timestamp.is_some());
    found.into_iter().next()
}

/// Warning Events the cluster recorded about the session's Job and pod, oldest first: from the
/// Events cache, or, until its first list is in, read from the API server.
async fn cluster_warnings(
    ctx: &Context,
    caches: &Caches,
    ns: &str,
    session: &str,
    pod: Option<&Pod>,
) -> Result<Vec<ClusterWarning>, Error> {
    let mut names = vec![job_name(session)];
    names.extend(pod.map(|p| p.name_any()));
    if caches.warnings.wait_until_ready().now_or_never().is_some_and(|ready| ready.is_ok()) {
        let cached = caches.warnings.state();
        return Ok(warnings_about(cached.iter().map(|e| &**e), ns, &names));
    }
    let events: Api<CoreEvent> = Api::namespaced(ctx.client.clone(), ns);
    let mut listed = Vec::new();
    for name in &names {
        let params =
            ListParams::default().fields(&format!("type=Warning,involvedObject.name={name}"));
        listed.extend(events.list(&params).await?.items);
    }
    Ok(warnings_about(&listed, ns, &names))
}

/// The session a Warning Event is about, through the runner Job or pod it names (from the
/// caches: a Job's name is a digest for long session names, a pod's has a random suffix).
fn session_of_warning(
    event: &CoreEvent,
    jobs: &Cache<Job>,
    pods: &Cache<Pod>,
) -> Option<ObjectRef<CommandSession>> {
    let about = &event.involved_object;
    let ns = about.namespace.as_deref().or(event.metadata.namespace.as_deref())?;
    let name = about.name.as_deref()?;
    let labels = match about.kind.as_deref()? {
        "Job" => jobs.get(&ObjectRef::new(name).within(ns))?.labels().clone(),
        "Pod" => pods.get(&ObjectRef::new(name).within(ns))?.labels().clone(),
        _ => return None,
    };
    Some(ObjectRef::new(labels.get(SESSION_LABEL)?).within(ns))
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

/// Runs the controller until `shutdown` resolves: CommandSessions, and the Jobs and pods
/// carrying the runner label, of the sessions namespace only.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = ctx.config.namespace.clone();
    let sessions: Api<CommandSession> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let events: Api<CoreEvent> = Api::namespaced(ctx.client.clone(), &ns);
    let runners = watcher::Config::default().labels(&format!("{COMPONENT_LABEL}=runner"));
    let (job_cache, job_writer) = reflector::store();
    let (pod_cache, pod_writer) = reflector::store();
    let (warning_cache, warning_writer) = reflector::store();
    let job_events =
        watcher(jobs, runners.clone()).default_backoff().reflect(job_writer).touched_objects();
    let pod_events = watcher(pods, runners).default_backoff().reflect(pod_writer).touched_objects();
    let warning_events = watcher(events, watcher::Config::default().fields("type=Warning"))
        .default_backoff()
        // Only the reason, message and times are read: the field ownership need not be kept.
        .modify(|event| event.managed_fields_mut().clear())
        .reflect(warning_writer)
        .touched_objects();
    let caches = Caches { jobs: job_cache, pods: pod_cache, warnings: warning_cache };
    *ctx.caches.lock().expect("not poisoned") = Some(caches.clone());
    let controller = Controller::new(sessions, watcher::Config::default());
    *ctx.sessions.lock().expect("not poisoned") = Some(controller.store());
    let controller = controller
        .owns_stream(job_events)
        .watches_stream(pod_events, |pod: Pod| {
            let session = pod.labels().get(SESSION_LABEL)?;
            Some(ObjectRef::<CommandSession>::new(session).within(&pod.namespace()?))
        })
        // A warning about a waiting session's Job or pod names its stall at once, not at the
        // next periodic look.
        .watches_stream(warning_events, move |event: CoreEvent| {
            session_of_warning(&event, &caches.jobs, &caches.pods)
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx);
    // The caches fill as the controller polls their watches. Until they have, a reconcile
    // may miss a Job that exists: the create then meets 409 and reads it, and a session that
    // had one reads it live, so a cold cache costs reads, never a second Job.
    controller
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

    fn event_about(kind: &str, name: &str) -> CoreEvent {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{name}.1"), "namespace": "team"},
            "involvedObject": {"kind": kind, "name": name, "namespace": "team"},
            "type": "Warning", "reason": "FailedMount"
        }))
        .unwrap()
    }

    #[test]
    fn a_warning_wakes_the_session_whose_job_or_pod_it_names() {
        let labelled = |name: &str| {
            serde_json::json!({"metadata": {"name": name, "namespace": "team",
                "labels": {SESSION_LABEL: "build-1"}}})
        };
        let (jobs, mut job_writer) = reflector::store::<Job>();
        let (pods, mut pod_writer) = reflector::store::<Pod>();
        // A long session name gives its Job a digest name: only the label says whose it is.
        let long_job = job_name(&"x".repeat(63));
        job_writer.apply_watcher_event(&watcher::Event::Apply(
            serde_json::from_value(labelled(&long_job)).unwrap(),
        ));
        pod_writer.apply_watcher_event(&watcher::Event::Apply(
            serde_json::from_value(labelled("cs-build-1-x7k2p")).unwrap(),
        ));
        let session = Some(ObjectRef::<CommandSession>::new("build-1").within("team"));
        assert_eq!(session_of_warning(&event_about("Job", &long_job), &jobs, &pods), session);
        assert_eq!(
            session_of_warning(&event_about("Pod", "cs-build-1-x7k2p"), &jobs, &pods),
            session
        );
        // Not a runner's (or not in the caches): nobody to wake.
        assert_eq!(session_of_warning(&event_about("Pod", "cs-other-a1b2c"), &jobs, &pods), None);
        assert_eq!(session_of_warning(&event_about("Node", "node-1"), &jobs, &pods), None);
        assert_eq!(session_of_warning(&event_about("Pod", &long_job), &jobs, &pods), None);
    }
}
