//! CommandTemplates and CommandSchedules against the in-memory API server: the API publishes
//! what it makes; what kubectl applies (and changes, and deletes) reaches the API's store;
//! the server's schema and CEL rules refuse bad ones; a schedule applied with kubectl fires
//! into a CommandSession.

use std::sync::Arc;

use cliscale_api::executor::{Definition, DefinitionKind, Executor};
use cliscale_api::routes::{ApiConfig, ApiState};
use cliscale_api::signing::KeyRing;
use cliscale_api::store::{CLUSTER_OWNER, Store};
use cliscale_core::rest::TemplateSpec;
use cliscale_crd::{CommandSchedule, CommandTemplate};
use cliscale_operator::cluster_api::ClusterExecutor;
use cliscale_operator::definitions::{run_definition_mirror, run_definition_mirror_with_grace};
use cliscale_testkit::fake_kube::FakeApi;
use kube::api::{Api, PostParams};
use serde_json::json;

const NS: &str = "team";

async fn store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
    (Store::connect(&url).await.unwrap(), dir)
}

/// Polls the store until `check` holds.
async fn until<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "waited too long for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_go_both_ways_and_a_kubectl_schedule_fires() {
    let api = FakeApi::new();
    let client = kube::Client::new(api.router(), NS);
    let (store, _dir) = store().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(run_definition_mirror(client.clone(), NS.into(), store.clone(), async move {
        let _ = stopped.await;
    }));

    // What the API makes is applied, owned by its key.
    let executor = ClusterExecutor::new(client.clone(), NS);
    let greet: TemplateSpec = serde_json::from_value(json!({
        "name": "greet", "session": {"command": "echo hi $WHO"},
        "params": [{"name": "WHO", "type": "string", "default": "you"}]
    }))
    .unwrap();
    let described = TemplateSpec {
        description: Some("says hello".into()),
        labels: [("team".to_string(), "a".to_string())].into(),
        ..greet.clone()
    };
    executor.publish(Definition::Template(&described, "key1")).await.unwrap();
    let applied = api.get("commandtemplates", NS, "greet").expect("the CommandTemplate");
    assert_eq!(applied["spec"]["description"], "says hello");
    // A change that leaves fields out removes them, as server-side apply does: a merge would
    // keep the old description and labels, and the mirror would bring them back.
    executor.publish(Definition::Template(&greet, "key1")).await.unwrap();
    let applied = api.get("commandtemplates", NS, "greet").expect("the CommandTemplate");
    assert!(applied["spec"].get("description").is_none(), "{applied}");
    assert!(applied["spec"].get("labels").is_none(), "{applied}");
    assert_eq!(applied["spec"]["session"]["command"], "echo hi $WHO");
    assert_eq!(applied["metadata"]["annotations"]["cliscale.dev/owner"], "key1");
    until("the mirrored template", || async {
        store.template("greet").await.unwrap().is_some_and(|t| t.owner == "key1")
    })
    .await;

    // The API server refuses what the CRD refuses.
    let schedules: Api<CommandSchedule> = Api::namespaced(client.clone(), NS);
    let refused = |value: serde_json::Value| {
        let schedules = schedules.clone();
        async move {
            let resource: CommandSchedule = match serde_json::from_value(value) {
                Ok(r) => r,
                Err(_) => return true,
            };
            matches!(
                schedules.create(&PostParams::default(), &resource).await,
                Err(kube::Error::Api(s)) if s.code == 422
            )
        }
    };
    let kind = json!({"apiVersion": "cliscale.dev/v1alpha1", "kind": "CommandSchedule"});
    let with = |name: &str, spec: serde_json::Value| {
        let mut v = kind.clone();
        v["metadata"] = json!({"name": name, "namespace": NS});
        v["spec"] = spec;
        v
    };
    assert!(
        refused(with("a", json!({"name": "b", "template": "greet", "cron": "@daily"}))).await,
        "a spec.name that is not the resource's"
    );
    assert!(
        refused(with(
            "c",
            json!({"template": "greet", "cron": "@daily", "concurrencyPolicy": "Sometimes"})
        ))
        .await,
        "an unknown concurrency policy"
    );

    // What kubectl applies reaches the store, owned by the cluster, and fires.
    let every_minute = with(
        "every-minute",
        json!({"template": "greet", "cron": "* * * * *", "params": {"WHO": "kube"}}),
    );
    let resource: CommandSchedule = serde_json::from_value(every_minute).unwrap();
    schedules.create(&PostParams::default(), &resource).await.unwrap();
    until("the mirrored schedule", || async {
        store.schedule("every-minute").await.unwrap().is_some_and(|s| s.owner == CLUSTER_OWNER)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyRing::load_or_generate(&dir.path().join("k.der")).unwrap());
    let state = ApiState::new(
        store.clone(),
        keys,
        Arc::new(ClusterExecutor::new(client.clone(), NS)) as Arc<dyn Executor>,
        ApiConfig::default(),
    );
    let from = store.schedule("every-minute").await.unwrap().unwrap().last_considered;
    cliscale_api::scheduler::tick(&state, from + 61).await.unwrap();
    let sessions = api.count("commandsessions");
    assert_eq!(sessions, 1, "the schedule's run is a CommandSession");
    let runs =
        store.runs_of(cliscale_api::store::RunsOf::Schedule, "every-minute", 5).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].owner, CLUSTER_OWNER);
    assert!(runs[0].spec.env.iter().any(|e| e.name == "WHO" && e.value == "kube"));
    // Its status reaches the resource: the run, its time, the next times.
    let mut written = std::collections::HashMap::new();
    cliscale_operator::definitions::publish_statuses(&state, &schedules, &mut written)
        .await
        .unwrap();
    let status = api.get("commandschedules", NS, "every-minute").unwrap()["status"].clone();
    assert_eq!(status["active"], json!([runs[0].id.clone()]), "{status}");
    assert_eq!(status["nextRunTimes"].as_array().map(Vec::len), Some(5), "{status}");
    assert!(status["lastScheduleTime"].is_string(), "{status}");
    // Unchanged: not written again.
    let writes = api.applies("commandschedules");
    cliscale_operator::definitions::publish_statuses(&state, &schedules, &mut written)
        .await
        .unwrap();
    assert_eq!(api.applies("commandschedules"), writes);

    // Changed with kubectl: the store follows; deleted: the row goes.
    let templates: Api<CommandTemplate> = Api::namespaced(client.clone(), NS);
    let generation = store.template("greet").await.unwrap().unwrap().generation;
    let patch = json!({"spec": {"description": "changed in the cluster"}});
    templates
        .patch("greet", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .unwrap();
    until("the changed template", || async {
        store.template("greet").await.unwrap().is_some_and(|t| {
            t.generation == generation + 1 && t.spec.contains("changed in the cluster")
        })
    })
    .await;
    schedules.delete("every-minute", &Default::default()).await.unwrap();
    until("the deleted schedule", || async {
        store.schedule("every-minute").await.unwrap().is_none()
    })
    .await;
    executor.withdraw(DefinitionKind::Template, "greet").await.unwrap();
    assert!(api.get("commandtemplates", NS, "greet").is_none());
    until("the withdrawn template", || async { store.template("greet").await.unwrap().is_none() })
        .await;
    stop.send(()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_deleted_while_no_watch_was_open_go_at_the_relist() {
    let api = FakeApi::new();
    let client = kube::Client::new(api.router(), NS);
    let (store, _dir) = store().await;
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(run_definition_mirror_with_grace(
        client.clone(),
        NS.into(),
        store.clone(),
        -1,
        async move {
            let _ = stopped.await;
        },
    ));
    let templates: Api<CommandTemplate> = Api::namespaced(client.clone(), NS);
    let schedules: Api<CommandSchedule> = Api::namespaced(client.clone(), NS);
    let resource = |kind: &str, name: &str, spec: serde_json::Value| {
        json!({"apiVersion": "cliscale.dev/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": NS}, "spec": spec})
    };
    for name in ["kept", "gone"] {
        let t = resource("CommandTemplate", name, json!({"session": {"command": "make"}}));
        templates
            .create(&PostParams::default(), &serde_json::from_value(t).unwrap())
            .await
            .unwrap();
    }
    for name in ["hourly", "nightly"] {
        let s = resource("CommandSchedule", name, json!({"template": "kept", "cron": "@daily"}));
        schedules
            .create(&PostParams::default(), &serde_json::from_value(s).unwrap())
            .await
            .unwrap();
    }
    until("all four mirrored", || async {
        store.templates().await.unwrap().len() == 2 && store.schedules().await.unwrap().len() == 2
    })
    .await;

    // The API server is out of reach while one of each is deleted, and etcd compacts its
    // history meanwhile: the watches come back to 410 Gone and list again, with no deletion
    // to replay.
    api.hold_watches();
    api.remove("commandtemplates", NS, "gone").unwrap();
    api.remove("commandschedules", NS, "nightly").unwrap();
    api.compact();
    api.release_watches();
    until("the relist's deletions", || async {
        store.template("gone").await.unwrap().is_none()
            && store.schedule("nightly").await.unwrap().is_none()
    })
    .await;
    assert!(store.template("kept").await.unwrap().is_some());
    assert!(store.schedule("hourly").await.unwrap().is_some());
}
