//! Two schedulers over one store, as two replicas (or a restart racing the old process) would
//! run: every scheduled time starts one session, whichever decides it.

use std::sync::{Arc, Mutex};

use cliscale_api::executor::{BoxFuture, Executor};
use cliscale_api::model::SessionRecord;
use cliscale_api::routes::{ApiConfig, ApiState};
use cliscale_api::signing::KeyRing;
use cliscale_api::store::Store;
use cliscale_api::{Result, bootstrap};
use cliscale_testkit::postgres::fresh_postgres;

/// Records what it is asked to start; starts nothing.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Executor for Recorder {
    fn start(&self, session: SessionRecord) -> BoxFuture<'_, Result<()>> {
        self.0.lock().unwrap().push(session.id);
        Box::pin(async { Ok(()) })
    }
    fn cancel(&self, _: &str) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

const KEY: &str = "csk_00000000000000aa_0123456789abcdef0123456789abcdef01";

async fn two_replicas_start_each_time_once(store: Store) {
    bootstrap::ensure_admin_key(&store, Some(KEY)).await.unwrap();
    let owner = "00000000000000aa";
    let template = r#"{"name":"t","session":{"command":"true"}}"#;
    assert!(store.insert_template("t", template, owner).await.unwrap());
    let t0 = 1_772_359_230; // 2026-03-01T10:00:30Z
    let schedule = r#"{"name":"s","template":"t","cron":"* * * * *"}"#;
    assert!(store.insert_schedule("s", schedule, owner, t0).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyRing::load_or_generate(&dir.path().join("k.der")).unwrap());
    let recorders = [Arc::new(Recorder::default()), Arc::new(Recorder::default())];
    let replicas: Vec<_> = recorders
        .iter()
        .map(|r| {
            ApiState::new(
                store.clone(),
                keys.clone(),
                r.clone() as Arc<dyn Executor>,
                ApiConfig::default(),
            )
        })
        .collect();
    // Ten minutes, each decided by both replicas at once.
    for minute in 1..=10 {
        let now = t0 + minute * 60;
        let (a, b) = tokio::join!(
            cliscale_api::scheduler::tick(&replicas[0], now),
            cliscale_api::scheduler::tick(&replicas[1], now)
        );
        a.unwrap();
        b.unwrap();
    }
    let started: Vec<String> = recorders.iter().flat_map(|r| r.0.lock().unwrap().clone()).collect();
    let mut unique = started.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(started.len(), 10, "one start per minute: {started:?}");
    assert_eq!(unique.len(), 10, "a time started twice: {started:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
    two_replicas_start_each_time_once(Store::connect(&url).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_postgres() {
    let Some(url) = fresh_postgres().await else { return };
    two_replicas_start_each_time_once(Store::connect(&url).await.unwrap()).await;
}
