//! The real kube-runtime Controller against the in-memory API server.

mod fake_api;

use std::sync::Arc;

use cliscale_operator::controller::{Context, run};
use cliscale_operator::desired::OperatorConfig;
use fake_api::FakeApi;
use serde_json::{Value, json};

fn session(name: &str, ttl: u32) -> Value {
    json!({
        "apiVersion": "cliscale.dev/v1alpha1", "kind": "CommandSession",
        "metadata": { "name": name, "namespace": "team" },
        "spec": { "command": "make test", "ttlSecondsAfterFinished": ttl }
    })
}

fn pod(session: &str, status: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": format!("cs-{session}-x1"), "namespace": "team", "labels": { "cliscale.dev/session": session } },
        "spec": { "containers": [{ "name": "runner", "image": "runner" }] },
        "status": status
    })
}

fn start(api: &Arc<FakeApi>) -> tokio::sync::oneshot::Sender<()> {
    let client = kube::Client::new(api.router(), "default");
    let ctx = Arc::new(Context {
        client,
        config: OperatorConfig::default(),
        metrics: Default::default(),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(run(ctx, async move {
        let _ = stopped.await;
    }));
    stop
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

    api.put("pods", pod("s1", json!({ "phase": "Running", "podIP": "10.1.2.3", "containerStatuses": [{
        "name": "runner", "ready": true, "image": "runner", "imageID": "", "restartCount": 0, "state": { "running": {} } }] })));
    api.wait_until("status Running", |a| status_of(a, "s1")["phase"] == "Running").await;
    assert_eq!(status_of(&api, "s1")["runnerAddress"], "10.1.2.3:7681");

    // An operator restart: the new controller finds the Job and applies nothing.
    stop.send(()).unwrap();
    let applies = api.applies("jobs");
    let stop = start(&api);
    api.put(
        "pods",
        pod(
            "s1",
            json!({ "phase": "Failed", "podIP": "10.1.2.3", "containerStatuses": [{
        "name": "runner", "ready": false, "image": "runner", "imageID": "", "restartCount": 0,
        "state": { "terminated": { "exitCode": 3, "reason": "Error" } } }] }),
        ),
    );
    api.wait_until("status Failed", |a| status_of(a, "s1")["phase"] == "Failed").await;
    assert_eq!(status_of(&api, "s1")["exitCode"], 3);
    assert_eq!(status_of(&api, "s1")["reason"], "Exited");
    assert_eq!(api.applies("jobs"), applies, "no second apply after the restart");
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
    let mut p = pod("s2", json!({ "phase": "Running" }));
    p["metadata"]["ownerReferences"] = json!([{ "apiVersion": "batch/v1", "kind": "Job", "name": "cs-s2", "uid": job_uid, "controller": true }]);
    api.put("pods", p);
    api.remove("commandsessions", "team", "s2");
    // The pod's deletion is what stops the runner (SIGTERM, then the grace period).
    assert!(api.get("jobs", "team", "cs-s2").is_none());
    assert!(api.get("pods", "team", "cs-s2-x1").is_none());
    stop.send(()).unwrap();
}
