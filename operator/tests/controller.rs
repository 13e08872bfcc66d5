//! The real kube-runtime Controller against the in-memory API server.

use std::sync::Arc;

use cliscale_operator::controller::{Context, run};
use cliscale_operator::desired::OperatorConfig;
use cliscale_testkit::fake_kube::FakeApi;
use cliscale_testkit::fixtures::{self, PodBuilder};
use serde_json::{Value, json};

fn session(name: &str, ttl: u32) -> Value {
    json!({
        "apiVersion": "cliscale.dev/v1alpha1", "kind": "CommandSession",
        "metadata": { "name": name, "namespace": "team" },
        "spec": { "command": "make test", "ttlSecondsAfterFinished": ttl }
    })
}

/// The runner pod of `session`, as the kubelet reports it.
fn pod(session: &str) -> PodBuilder {
    fixtures::pod(&format!("cs-{session}-x1")).of_session("team", session).ip("10.1.2.3")
}

fn config() -> OperatorConfig {
    OperatorConfig { namespace: "team".into(), ..Default::default() }
}

fn start(api: &Arc<FakeApi>) -> tokio::sync::oneshot::Sender<()> {
    start_with(api).1
}

fn start_with(api: &Arc<FakeApi>) -> (Arc<Context>, tokio::sync::oneshot::Sender<()>) {
    let client = kube::Client::new(api.router(), "default");
    let ctx = Arc::new(Context::new(client, config()));
    let handle = ctx.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(run(ctx, async move {
        let _ = stopped.await;
    }));
    (handle, stop)
}

fn status_of(api: &FakeApi, name: &str) -> Value {
    api.get("commandsessions", "team", name).map(|o| o["status"].clone()).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_fails_and_expires_and_a_restart_makes_no_second_job() {
    let api = FakeApi::new();
    let stop = start(&api);
    api.put("commandsessions", session("s1", 1));
    api.wait_until("the Job exists", |a| a.get("jobs", "team", "cs-s1").is_some()).await;
    let job = api.get("jobs", "team", "cs-s1").unwrap();
    assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "CommandSession");
    api.wait_until("status Pending", |a| status_of(a, "s1")["phase"] == "Pending").await;

    api.put("pods", pod("s1").running().ready().json());
    api.wait_until("status Running", |a| status_of(a, "s1")["phase"] == "Running").await;
    assert_eq!(status_of(&api, "s1")["runnerAddress"], "10.1.2.3:7681");

    // An operator restart: the new controller finds the Job and applies nothing.
    stop.send(()).unwrap();
    let creates = api.creates("jobs");
    let stop = start(&api);
    api.put("pods", pod("s1").terminated(3, "Error").json());
    api.wait_until("status Failed", |a| status_of(a, "s1")["phase"] == "Failed").await;
    assert_eq!(status_of(&api, "s1")["exitCode"], 3);
    assert_eq!(status_of(&api, "s1")["reason"], "Exited");
    assert_eq!(api.creates("jobs"), creates, "no second create after the restart");
    assert_eq!(api.count("jobs"), 1);

    // TTL: one second after finishing, the session (and by ownership its Job) is deleted.
    // Garbage collection of the Job follows the session's deletion, as in a real cluster.
    api.wait_until("the session and its Job are gone", |a| {
        a.get("commandsessions", "team", "s1").is_none() && a.count("jobs") == 0
    })
    .await;
    stop.send(()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_session_takes_its_job_and_pod_with_it() {
    let api = FakeApi::new();
    let stop = start(&api);
    api.put("commandsessions", session("s2", 3600));
    api.wait_until("the Job exists", |a| a.get("jobs", "team", "cs-s2").is_some()).await;
    let job_uid = api.get("jobs", "team", "cs-s2").unwrap()["metadata"]["uid"].clone();
    api.put("pods", pod("s2").running().owned_by_job("cs-s2", &job_uid).json());
    api.remove("commandsessions", "team", "s2");
    // The garbage collector takes the Job, then its pod. The pod's deletion is what stops the
    // runner (SIGTERM, then the grace period).
    api.wait_until("the Job and its pod are collected", |a| {
        a.get("jobs", "team", "cs-s2").is_none() && a.get("pods", "team", "cs-s2-x1").is_none()
    })
    .await;
    stop.send(()).unwrap();
}

fn running_pod(session: &str) -> Value {
    pod(session).running().ready().json()
}

fn event_reasons(api: &FakeApi) -> Vec<String> {
    api.list("events").iter().map(|e| e["reason"].as_str().unwrap_or("").to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_are_recorded_as_kubernetes_events() {
    let api = FakeApi::new();
    let stop = start(&api);
    api.put("commandsessions", session("s3", 3600));
    api.wait_until("a Pending event", |a| event_reasons(a).contains(&"Pending".into())).await;
    api.put("pods", running_pod("s3"));
    api.wait_until("a Running event", |a| event_reasons(a).contains(&"Running".into())).await;
    let running = api.list("events").into_iter().find(|e| e["reason"] == "Running").unwrap();
    assert_eq!(running["type"], "Normal");
    // Stored as the core/v1 Event it also is, whichever API recorded it.
    assert_eq!(running["involvedObject"]["name"], "s3");
    assert_eq!(running["reportingComponent"], "cliscale-operator");
    stop.send(()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cancel_annotation_deletes_the_job_and_ends_the_session_cancelled() {
    let api = FakeApi::new();
    let stop = start(&api);
    api.put("commandsessions", session("s4", 3600));
    api.put("pods", running_pod("s4"));
    api.wait_until("Running", |a| status_of(a, "s4")["phase"] == "Running").await;
    let mut cs = api.get("commandsessions", "team", "s4").unwrap();
    cs["metadata"]["annotations"] = json!({ "cliscale.dev/cancel-requested": "1" });
    api.put("commandsessions", cs);
    api.wait_until("Cancelled and the Job gone", |a| {
        status_of(a, "s4")["phase"] == "Cancelled" && a.get("jobs", "team", "cs-s4").is_none()
    })
    .await;
    assert_eq!(status_of(&api, "s4")["reason"], "Cancelled");
    assert!(api.get("commandsessions", "team", "s4").is_some(), "the record stays until its TTL");
    stop.send(()).unwrap();
}

fn replica(
    api: &Arc<FakeApi>,
    identity: &str,
) -> (Arc<Context>, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    use cliscale_operator::leader::{LeaderConfig, run_when_leading};
    let client = kube::Client::new(api.router(), "default");
    let ctx = Arc::new(Context::new(client, config()));
    let config = LeaderConfig {
        lease_name: "cliscale-operator".into(),
        namespace: "cliscale".into(),
        identity: identity.into(),
        // Long enough that a loaded CI machine never misses a renewal; a standby checks again
        // when the holder's lease would expire, so takeover takes up to this long.
        lease_seconds: 6,
        renew_grace_seconds: 2,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_when_leading(ctx.clone(), config, async move {
        let _ = stopped.await;
    }));
    let task = tokio::spawn(async move { task.await.unwrap().expect("leader loop") });
    (ctx, stop, task)
}

fn holder(api: &FakeApi) -> Value {
    api.get("leases", "cliscale", "cliscale-operator")
        .map(|l| l["spec"]["holderIdentity"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_reconciles_and_a_standby_takes_over_on_shutdown() {
    let api = FakeApi::new();
    let (a, stop_a, task_a) = replica(&api, "replica-a");
    api.wait_until("replica-a holds the Lease", |x| holder(x) == "replica-a").await;
    let (b, stop_b, task_b) = replica(&api, "replica-b");
    api.put("commandsessions", session("l1", 3600));
    api.wait_until("l1 reconciled", |x| status_of(x, "l1")["phase"] == "Pending").await;
    assert!(a.metrics.render().contains("cliscale_operator_leader 1"));
    assert!(b.metrics.render().contains("cliscale_operator_reconciles_total 0"));
    assert!(b.metrics.render().contains("cliscale_operator_leader 0"));
    assert!(a.render_metrics().contains(r#"cliscale_operator_sessions{phase="Pending"} 1"#));

    // A graceful shutdown releases the Lease; the standby takes over and reconciles.
    stop_a.send(()).unwrap();
    task_a.await.unwrap();
    api.wait_until("replica-b holds the Lease", |x| holder(x) == "replica-b").await;
    api.put("commandsessions", session("l2", 3600));
    api.wait_until("l2 reconciled by b", |x| status_of(x, "l2")["phase"] == "Pending").await;
    // The counter is bumped as the reconcile returns, just after its status write: wait for it.
    let counted = async {
        while b.metrics.render().contains("cliscale_operator_reconciles_total 0") {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), counted)
        .await
        .expect("replica-b counted its reconciles");
    assert_eq!(api.count("jobs"), 2, "one Job per session, never two");
    stop_b.send(()).unwrap();
    task_b.await.unwrap();
    assert_eq!(holder(&api), Value::Null, "released on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_reconciles_back_off_and_recover() {
    let api = FakeApi::new();
    api.fail_writes("jobs", 2);
    let (ctx, stop) = start_with(&api);
    api.put("commandsessions", session("f1", 3600));
    api.wait_until("the Job exists after two failures", |a| {
        a.get("jobs", "team", "cs-f1").is_some()
    })
    .await;
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains(r#"cliscale_operator_reconcile_failures_total{kind="api"} 2"#),
        "{metrics}"
    );
    api.wait_until("status Pending", |a| status_of(a, "f1")["phase"] == "Pending").await;
    assert_eq!(api.count("jobs"), 1);
    stop.send(()).unwrap();
}
