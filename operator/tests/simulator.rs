//! The real Controller against the cluster simulator: every cluster condition the operator
//! maps (docs/operator.md, "From cluster to status"), status that clears, one Event per
//! transition, Jobs never made twice, refusals that fail fast, and watches that expire.

use std::sync::Arc;
use std::time::Duration;

use cliscale_operator::controller::{Context, run};
use cliscale_operator::desired::OperatorConfig;
use cliscale_testkit::cluster_sim::{ClusterSim, Lifecycle};
use cliscale_testkit::fake_kube::FakeApi;
use serde_json::{Value, json};

const NS: &str = "team";

fn session(name: &str) -> Value {
    json!({
        "apiVersion": "cliscale.dev/v1alpha1", "kind": "CommandSession",
        "metadata": { "name": name, "namespace": NS },
        "spec": { "command": "make test" }
    })
}

struct Cluster {
    api: Arc<FakeApi>,
    sim: Arc<ClusterSim>,
    ctx: Arc<Context>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Cluster {
    fn start(start_deadline: Duration) -> Self {
        Self::configured(OperatorConfig { start_deadline, ..Default::default() })
    }

    fn configured(config: OperatorConfig) -> Self {
        let api = FakeApi::new();
        let sim = ClusterSim::start(&api);
        let (ctx, stop) = Self::operator(&api, config);
        Self { api, sim, ctx, stop: Some(stop) }
    }

    fn operator(
        api: &Arc<FakeApi>,
        config: OperatorConfig,
    ) -> (Arc<Context>, tokio::sync::oneshot::Sender<()>) {
        let client = kube::Client::new(api.router(), "default");
        let config = OperatorConfig { namespace: NS.into(), ..config };
        let ctx = Arc::new(Context::new(client, config));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(run(ctx.clone(), async move {
            let _ = stopped.await;
        }));
        (ctx, stop)
    }

    /// A new operator process in place of the old one (its seals still open: same secrets).
    fn restart(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        let secrets = self.ctx.status_secrets.clone();
        let client = kube::Client::new(self.api.router(), "default");
        let config = OperatorConfig {
            namespace: NS.into(),
            start_deadline: self.ctx.config.start_deadline,
            ..Default::default()
        };
        let ctx = Arc::new(Context { status_secrets: secrets, ..Context::new(client, config) });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(run(ctx.clone(), async move {
            let _ = stopped.await;
        }));
        self.ctx = ctx;
        self.stop = Some(stop);
    }

    fn status(&self, name: &str) -> Value {
        self.api.get("commandsessions", NS, name).map(|o| o["status"].clone()).unwrap_or_default()
    }

    async fn until(&self, name: &str, phase: &str, reason: Option<&str>) -> Value {
        let what = format!("{name}: {phase} {reason:?}");
        self.api
            .wait_until(&what, |a| {
                let s = a.get("commandsessions", NS, name).map(|o| o["status"].clone());
                s.is_some_and(|s| s["phase"] == phase && reason.is_none_or(|r| s["reason"] == r))
            })
            .await;
        self.status(name)
    }

    fn reconciles(&self) -> u64 {
        self.ctx.metrics.reconciles.get()
    }

    /// Waits until the operator has reconciled at least `n` more times.
    async fn reconciled_since(&self, before: u64, n: u64) {
        let wait = async {
            while self.reconciles() < before + n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait).await.expect("reconciles run");
    }

    fn events_for(&self, name: &str) -> Vec<(String, String)> {
        self.api
            .list("events")
            .into_iter()
            .filter(|e| e["involvedObject"]["name"] == name)
            .map(|e| {
                let note = e["message"].as_str().unwrap_or("");
                (e["reason"].as_str().unwrap_or("").into(), note.into())
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ending_of_a_running_runner_has_its_phase_and_reason() {
    let c = Cluster::start(Duration::from_secs(600));
    // (lifecycle, phase, reason, words of the cluster's or runner's that the message keeps)
    let cases = [
        (Lifecycle::Exits(0), "Succeeded", "Exited", "exited with code 0"),
        (Lifecycle::Exits(3), "Failed", "Exited", "exited with code 3"),
        (Lifecycle::OomKilled, "Lost", "OomKilled", "memory limit"),
        (Lifecycle::Evicted, "Lost", "Evicted", "low on resource: memory"),
        (Lifecycle::Preempted, "Lost", "Preempted", "Preempted in order to admit"),
        (Lifecycle::NodeLost, "Lost", "NodeLost", "node.kubernetes.io/unreachable"),
        (Lifecycle::JobDeadline, "TimedOut", "DeadlineExceeded", "longer than specified deadline"),
        (Lifecycle::CompletesAndPodVanishes, "Succeeded", "Exited", "its pod was removed"),
    ];
    for (i, (lifecycle, ..)) in cases.iter().enumerate() {
        c.sim.script(&format!("end-{i}"), *lifecycle);
        c.api.put("commandsessions", session(&format!("end-{i}")));
    }
    for (i, (lifecycle, phase, reason, words)) in cases.iter().enumerate() {
        let s = c.until(&format!("end-{i}"), phase, Some(reason)).await;
        let message = s["message"].as_str().unwrap_or("");
        assert!(message.contains(words), "{lifecycle:?}: {s}");
        // A disruption is the cluster's doing, not a cancel, whatever the runner saw.
        assert_ne!(s["reason"], "Cancelled", "{lifecycle:?}");
        assert!(s.get("runnerAddress").is_none(), "{lifecycle:?}: an ended runner has no address");
    }
    // The runner's sealed event gives the output's last lines.
    assert_eq!(c.status("end-0")["outputTail"], "bye from end-0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stall_is_named_and_fails_at_the_start_deadline() {
    let c = Cluster::start(Duration::from_secs(3));
    // (lifecycle, the reason shown while waiting, if any, the final reason, the cluster's words)
    let cases = [
        (Lifecycle::Unschedulable, Some("Unschedulable"), "Unschedulable", "Insufficient memory"),
        (Lifecycle::PullFails, Some("ImagePullFailed"), "ImagePullFailed", "pulling image"),
        (
            Lifecycle::ConfigError,
            Some("ContainerConfigError"),
            "ContainerConfigError",
            "secret \"agent-keys\" not found",
        ),
        // Only the cluster's warnings tell these, and they are named while the session waits.
        (Lifecycle::MountFails, Some("MountFailed"), "MountFailed", "MountVolume.SetUp failed"),
        (Lifecycle::QuotaRefused, Some("JobRejected"), "JobRejected", "exceeded quota"),
    ];
    for (i, (lifecycle, ..)) in cases.iter().enumerate() {
        c.sim.script(&format!("stall-{i}"), *lifecycle);
        c.api.put("commandsessions", session(&format!("stall-{i}")));
    }
    for (i, (_, waiting, ..)) in cases.iter().enumerate() {
        if let Some(waiting) = waiting {
            c.until(&format!("stall-{i}"), "Pending", Some(waiting)).await;
        }
    }
    for (i, (lifecycle, _, reason, words)) in cases.iter().enumerate() {
        let name = format!("stall-{i}");
        let s = c.until(&name, "Failed", Some(reason)).await;
        let message = s["message"].as_str().unwrap_or("");
        assert!(
            message.contains(words) && message.contains("not started within"),
            "{lifecycle:?}: {s}"
        );
        // The Job is stopped, so the pod cannot start later and run a command nobody waits for.
        c.api
            .wait_until("the Job is gone", |a| a.get("jobs", NS, &format!("cs-{name}")).is_none())
            .await;
    }
    // A Job that neither makes a pod nor says why: the deadline itself is the reason.
    c.sim.script("silent", Lifecycle::QuotaRefused);
    let mut quiet = session("silent");
    quiet["metadata"]["labels"] = json!({"test": "silent"});
    c.api.put("commandsessions", quiet);
    // Its FailedCreate warning is removed before the deadline.
    c.api
        .wait_until("its warning", |a| {
            a.list("events").iter().any(|e| e["involvedObject"]["name"] == "cs-silent")
        })
        .await;
    for e in c.api.list("events") {
        if e["involvedObject"]["name"] == "cs-silent" {
            c.api.remove("events", NS, e["metadata"]["name"].as_str().unwrap());
        }
    }
    let s = c.until("silent", "Failed", Some("StartDeadlineExceeded")).await;
    assert!(s["message"].as_str().unwrap().contains("did not start within 3s"), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_sessions_read_the_clusters_warnings_from_one_watch() {
    // A look at the warnings every 500 ms: each session looks several times while it waits.
    let c = Cluster::start(Duration::from_secs(2));
    const WAITING: usize = 8;
    for i in 0..WAITING {
        c.sim.script(&format!("wait-{i}"), Lifecycle::MountFails);
        c.api.put("commandsessions", session(&format!("wait-{i}")));
    }
    for i in 0..WAITING {
        // Only the pod's FailedMount Event names this stall.
        let s = c.until(&format!("wait-{i}"), "Failed", Some("MountFailed")).await;
        assert!(s["message"].as_str().unwrap().contains("MountVolume.SetUp failed"), "{s}");
    }
    // The Events watch's first list (and one more should the watch have been cut), never one
    // per session and look: that was two per look (the Job's and the pod's).
    let lists = c.api.lists("events");
    assert!((1..=2).contains(&lists), "{lists} LISTs of Events for {WAITING} waiting sessions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_pull_clears_its_reason_and_each_transition_is_one_event() {
    let c = Cluster::start(Duration::from_secs(600));
    c.sim.script("pull", Lifecycle::PullRecovers);
    c.api.put("commandsessions", session("pull"));
    c.until("pull", "Pending", Some("ImagePullFailed")).await;
    let s = c.until("pull", "Running", None).await;
    // Server-side apply of the status removes what the operator no longer says.
    assert!(s.get("reason").is_none() && s.get("message").is_none(), "{s}");
    assert_eq!(s["runnerAddress"], "10.244.1.7:7681");
    // More reconciles (label edits) record nothing more.
    for n in 0..3 {
        let before = c.reconciles();
        let mut cs = c.api.get("commandsessions", NS, "pull").unwrap();
        cs["metadata"]["labels"] = json!({ "touch": n.to_string() });
        c.api.put("commandsessions", cs);
        c.reconciled_since(before, 1).await;
    }
    let events = c.events_for("pull");
    let count = |reason: &str, words: &str| {
        events.iter().filter(|(r, note)| r == reason && note.contains(words)).count()
    };
    assert_eq!(count("Pending", "ImagePullFailed"), 1, "{events:?}");
    assert_eq!(count("Running", ""), 1, "{events:?}");
    // Accepted, pull failing (ErrImagePull then ImagePullBackOff: one reason, one Event),
    // starting, running.
    assert_eq!(events.len(), 4, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_job_ends_the_session_lost_and_no_second_job_is_made() {
    let mut c = Cluster::start(Duration::from_secs(600));
    c.api.put("commandsessions", session("gone"));
    c.until("gone", "Running", None).await;
    c.api.delete("jobs", NS, "cs-gone");
    let s = c.until("gone", "Lost", Some("JobDeleted")).await;
    assert!(s["message"].as_str().unwrap().contains("not run again"), "{s}");
    // Neither more reconciles nor a new operator process make it again.
    c.restart();
    let before = c.reconciles();
    let mut cs = c.api.get("commandsessions", NS, "gone").unwrap();
    cs["metadata"]["labels"] = json!({ "touch": "1" });
    c.api.put("commandsessions", cs);
    c.reconciled_since(before, 1).await;
    assert_eq!(c.api.ever_made("jobs"), 1);
    assert!(c.api.get("jobs", NS, "cs-gone").is_none());
    assert_eq!(c.status("gone")["reason"], "JobDeleted");
}

/// A status derived from an old copy of the session is refused (409), as the real server
/// refuses an apply whose resourceVersion is not the stored one: the operator's cache may lag
/// behind its own last write, and must not put a finished session back to an older phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_from_a_stale_copy_is_refused_and_a_finished_session_stays_finished() {
    let c = Cluster::start(Duration::from_secs(600));
    c.sim.script("late", Lifecycle::Exits(0));
    c.api.put("commandsessions", session("late"));
    let running = c.until("late", "Running", None).await;
    let old = c.api.get("commandsessions", NS, "late").unwrap();
    let old_version = old["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    c.until("late", "Succeeded", Some("Exited")).await;
    let client = kube::Client::new(c.api.router(), "default");
    let sessions: kube::Api<cliscale_crd::CommandSession> = kube::Api::namespaced(client, NS);
    let stale = json!({"apiVersion": "cliscale.dev/v1alpha1", "kind": "CommandSession",
        "metadata": {"resourceVersion": old_version}, "status": running});
    let params = kube::api::PatchParams::apply("cliscale-operator").force();
    let refused = sessions.patch_status("late", &params, &kube::api::Patch::Apply(&stale)).await;
    assert!(matches!(&refused, Err(kube::Error::Api(e)) if e.code == 409), "{refused:?}");
    assert_eq!(c.status("late")["phase"], "Succeeded");
}

/// A cancelled session's pod is deleted as a real cluster deletes one: marked with its grace
/// period, stopped by the kubelet (the runner's SIGTERM end, sealed, in its status), then gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_sessions_pod_is_stopped_gracefully_then_goes() {
    let c = Cluster::start(Duration::from_secs(600));
    c.api.put("commandsessions", session("stop"));
    c.until("stop", "Running", None).await;
    let mut watch = c.api.subscribe();
    let mut cs = c.api.get("commandsessions", NS, "stop").unwrap();
    cs["metadata"]["annotations"] = json!({ "cliscale.dev/cancel-requested": "1" });
    c.api.update("commandsessions", cs);
    c.until("stop", "Cancelled", Some("Cancelled")).await;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, collection, event) =
            tokio::time::timeout_at(deadline, watch.recv()).await.expect("the pod goes").unwrap();
        if collection != "pods" {
            continue;
        }
        let pod = &event["object"];
        let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
        seen.push((
            event["type"].as_str().unwrap().to_owned(),
            !pod["metadata"]["deletionTimestamp"].is_null(),
            pod["metadata"]["deletionGracePeriodSeconds"].as_i64(),
            terminated["exitCode"].as_i64(),
        ));
        if event["type"] == "DELETED" {
            break;
        }
    }
    let marked =
        seen.iter().position(|(t, marked, grace, _)| t == "MODIFIED" && *marked && grace.is_some());
    let stopped = seen.iter().position(|(_, marked, _, code)| *marked && *code == Some(143));
    assert!(
        matches!((marked, stopped), (Some(m), Some(s)) if m < s && s < seen.len() - 1),
        "marked for deletion, then stopped, then gone: {seen:?}"
    );
    // The session stays as it ended: the runner's own end does not rewrite it.
    assert_eq!(c.status("stop")["reason"], "Cancelled");
}

/// The operator's own settings reach the Job too: a volume size the API server cannot parse
/// fails the session with its message, as a session's own bad quantity does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_volume_size_in_the_operators_settings_is_refused_with_its_message() {
    let config = OperatorConfig {
        workspace_size_limit: k8s_openapi::apimachinery::pkg::api::resource::Quantity(
            "eight gigs".into(),
        ),
        start_deadline: Duration::from_secs(600),
        ..Default::default()
    };
    let c = Cluster::configured(config);
    c.api.put("commandsessions", session("big-disk"));
    let s = c.until("big-disk", "Failed", Some("JobRejected")).await;
    let message = s["message"].as_str().unwrap();
    assert!(message.contains("sizeLimit") && message.contains("eight gigs"), "{s}");
    assert_eq!(c.api.ever_made("jobs"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_cluster_refuses_fails_the_session_at_once_with_its_message() {
    let c = Cluster::start(Duration::from_secs(600));
    // Quantities the CRD takes, each well formed, that no container may have: a request above
    // its limit.
    let mut bad = session("bad-cpu");
    bad["spec"]["resources"] = json!({ "requests": { "cpu": "2" }, "limits": { "cpu": "1500m" } });
    c.api.put("commandsessions", bad);
    let s = c.until("bad-cpu", "Failed", Some("JobRejected")).await;
    let message = s["message"].as_str().unwrap();
    assert!(message.contains("must be less than or equal to cpu limit of 1500m"), "{s}");
    assert_eq!(c.api.ever_made("jobs"), 0);
    // Refused once, never retried: a reconcile later makes no new attempt.
    let before = c.api.creates("jobs");
    let mut cs = c.api.get("commandsessions", NS, "bad-cpu").unwrap();
    cs["metadata"]["labels"] = json!({ "touch": "1" });
    let reconciles = c.reconciles();
    c.api.put("commandsessions", cs);
    c.reconciled_since(reconciles, 1).await;
    assert_eq!(c.api.creates("jobs"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_watches_relist_and_the_controller_goes_on() {
    let c = Cluster::start(Duration::from_secs(600));
    c.api.put("commandsessions", session("before"));
    c.until("before", "Running", None).await;
    // etcd compacts; every watch is cut and finds its resourceVersion gone (410).
    c.api.compact();
    c.api.put("commandsessions", session("after"));
    c.until("after", "Running", None).await;
    assert_eq!(c.api.ever_made("jobs"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_being_deleted_ends_cancelled_and_goes_when_its_finalizer_does() {
    let c = Cluster::start(Duration::from_secs(600));
    let mut cs = session("fin");
    cs["metadata"]["finalizers"] = json!(["example.com/keep"]);
    c.api.put("commandsessions", cs);
    c.until("fin", "Running", None).await;
    c.api.delete("commandsessions", NS, "fin");
    c.until("fin", "Cancelled", Some("DeletedByUser")).await;
    // Its runner stops at once, while the finalizer keeps the record.
    c.api.wait_until("the Job is stopped", |a| a.get("jobs", NS, "cs-fin").is_none()).await;
    assert!(c.api.get("commandsessions", NS, "fin").is_some());
    let mut cs = c.api.get("commandsessions", NS, "fin").unwrap();
    cs["metadata"]["finalizers"] = json!([]);
    // The finalizer's owner removes it; with the last one gone, so is the session.
    c.api.update("commandsessions", cs);
    c.api
        .wait_until("the session, then its Job and pod, are gone", |a| {
            a.get("commandsessions", NS, "fin").is_none()
                && a.get("jobs", NS, "cs-fin").is_none()
                && a.count("pods") == 0
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_keeps_status_and_spec_apart_and_holds_the_schema() {
    let api = FakeApi::new();
    let client = kube::Client::new(api.router(), "default");
    let sessions: kube::Api<cliscale_crd::CommandSession> = kube::Api::namespaced(client, NS);
    let mut cs = session("schema");
    cs["status"] = json!({ "phase": "Succeeded" });
    cs["spec"]["unknownField"] = json!(1);
    let made: Value = serde_json::to_value(
        sessions.create(&Default::default(), &serde_json::from_value(cs).unwrap()).await.unwrap(),
    )
    .unwrap();
    // A create sets no status; an unknown field is pruned.
    assert!(made["status"].is_null() || made["status"].get("phase").is_none(), "{made}");
    assert!(made["spec"].get("unknownField").is_none());
    // The main resource cannot write status; /status cannot write the spec.
    let patch = json!({ "spec": { "command": "other" }, "status": { "phase": "Failed" } });
    let params = kube::api::PatchParams::default();
    let after = sessions.patch("schema", &params, &kube::api::Patch::Merge(&patch)).await.unwrap();
    assert_eq!(after.spec.session.command, "other");
    assert!(after.status.as_ref().and_then(|s| s.phase).is_none());
    let patch = json!({ "spec": { "command": "third" }, "status": { "phase": "Failed" } });
    let after =
        sessions.patch_status("schema", &params, &kube::api::Patch::Merge(&patch)).await.unwrap();
    assert_eq!(after.spec.session.command, "other");
    assert_eq!(after.status.unwrap().phase, Some(cliscale_core::SessionPhase::Failed));
    // The schema's types, enums and bounds hold.
    let ar = kube::core::ApiResource::erase::<cliscale_crd::CommandSession>(&());
    let client = kube::Client::new(api.router(), "default");
    let dynamic: kube::Api<kube::core::DynamicObject> = kube::Api::namespaced_with(client, NS, &ar);
    let many: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("example.com/r{i}"), json!(1))).collect();
    for (field, value) in [
        ("cols", json!("wide")),
        ("cols", json!(100_000)),
        ("command", json!(7)),
        // Quantities the Job could not hold are refused here, before any Job is tried.
        ("resources", json!({ "limits": { "cpu": "two cores" } })),
        ("resources", json!({ "requests": { "memory": "-1Gi" } })),
        ("resources", json!({ "limits": { "memory": "1.5 Gi" } })),
        ("resources", json!({ "limits": { "cpu": 1.5 } })),
        ("resources", json!({ "limits": many })),
        // So are placement knobs the pod could not have.
        ("nodeSelector", json!({ "disk": "fast ssd" })),
        ("tolerations", json!([{ "key": "gpu", "operator": "Sometimes" }])),
        ("tolerations", json!([{ "key": "gpu", "effect": "NoRun" }])),
        ("priorityClassName", json!("Batch_Low")),
        ("image", json!("runner:1 --privileged")),
        ("image", json!("")),
    ] {
        let mut bad = session("bad");
        bad["spec"][field] = value.clone();
        let object: kube::core::DynamicObject = serde_json::from_value(bad).unwrap();
        match dynamic.create(&Default::default(), &object).await {
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 422, "{field}: {value}: {e:?}"),
            other => panic!("{field}: {value}: {other:?}"),
        }
    }
    assert!(api.get("commandsessions", NS, "bad").is_none());
    // Every form of quantity a container takes is accepted: integers, decimals, binary and
    // decimal suffixes, exponents.
    let mut fine = session("quantities");
    fine["spec"]["resources"] = json!({
        "requests": { "cpu": "250m", "memory": "512Mi", "ephemeral-storage": "1e9" },
        "limits": { "cpu": 2, "memory": "1.5Gi", "example.com/gpu": "+1" }
    });
    fine["spec"]["nodeSelector"] = json!({ "kubernetes.io/arch": "amd64", "pool": "" });
    fine["spec"]["tolerations"] = json!([
        { "key": "gpu", "operator": "Exists", "effect": "NoSchedule" },
        { "key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute", "tolerationSeconds": 30 }
    ]);
    fine["spec"]["priorityClassName"] = json!("batch-low.example");
    fine["spec"]["image"] = json!("registry.example/cliscale/runner@sha256:0123abcd");
    let object: kube::core::DynamicObject = serde_json::from_value(fine).unwrap();
    let made = dynamic.create(&Default::default(), &object).await.expect("valid quantities");
    assert_eq!(made.data["spec"]["resources"]["limits"]["cpu"], 2);
    // The CRD's CEL rule: a name too long to name a Job and label a pod is refused here, with
    // the rule's message, rather than by the Job later.
    let long: kube::core::DynamicObject = serde_json::from_value(session(&"x".repeat(61))).unwrap();
    match dynamic.create(&Default::default(), &long).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422);
            assert!(e.message.contains("at most 60 characters"), "{e:?}");
        }
        other => panic!("a 61-character name: {other:?}"),
    }
    let fits: kube::core::DynamicObject = serde_json::from_value(session(&"x".repeat(60))).unwrap();
    dynamic.create(&Default::default(), &fits).await.expect("60 characters fit");
    let uid = |n: &str| api.get("commandsessions", NS, n).unwrap()["metadata"]["uid"].clone();
    api.put("commandsessions", session("other"));
    assert_ne!(uid("schema"), uid("other"), "uids are random, never derived from names");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_selectors_filter_lists_and_watches_and_unknown_fields_are_refused() {
    use futures_util::StreamExt;
    use k8s_openapi::api::core::v1::Event;
    use kube::api::{ListParams, WatchEvent, WatchParams};
    let api = FakeApi::new();
    let events: kube::Api<Event> =
        kube::Api::namespaced(kube::Client::new(api.router(), "default"), NS);
    // As kube-apiserver: only the fields an Event is indexed by select it.
    let refused = events.list(&ListParams::default().fields("message=x")).await.unwrap_err();
    match refused {
        kube::Error::Api(e) => {
            assert_eq!(e.code, 400);
            assert!(e.message.contains("field label not supported: message"), "{e:?}");
        }
        other => panic!("{other}"),
    }
    let watch = events.watch(&WatchParams::default().fields("type=Warning"), "0").await.unwrap();
    let mut watch = std::pin::pin!(watch);
    let event = |name: &str, type_: &str| {
        json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": NS},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": NS},
            "type": type_, "reason": name})
    };
    api.put("events", event("routine", "Normal"));
    api.put("events", event("trouble", "Warning"));
    // The Normal Event came first, but the watch never carries it.
    match watch.next().await.unwrap().unwrap() {
        WatchEvent::Added(e) => assert_eq!(e.reason.as_deref(), Some("trouble")),
        other => panic!("{other:?}"),
    }
    let listed = events.list(&ListParams::default().fields("type!=Warning")).await.unwrap();
    let reasons: Vec<_> = listed.items.iter().map(|e| e.reason.clone().unwrap()).collect();
    assert_eq!(reasons, ["routine"]);
}
