//! The cluster configuration end to end, with everything real except the Kubernetes API server
//! (the in-memory one of the operator's tests): the REST API with the cluster executor and the
//! store mirror, the reconciler, the gateway resolving runners through its reflector, and a
//! real `cliscale-runner` started with the environment of the Job the operator made, as the
//! kubelet would. The `cliscale` command line reads and cancels through the same API. Runs on
//! SQLite and on PostgreSQL.

use cliscale_testkit::stack as common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use cliscale_api::executor::Executor;
use cliscale_api::routes::{ApiConfig, ApiState};
use cliscale_api::signing::KeyRing;
use cliscale_api::store::Store;
use cliscale_gateway::cluster::ReflectorResolver;
use cliscale_gateway::{Gateway, GatewayConfig, JwksCache};
use cliscale_operator::cluster_api::{ClusterExecutor, run_mirror};
use cliscale_operator::controller::{Context, run};
use cliscale_operator::desired::OperatorConfig;
use cliscale_testkit::fake_kube::FakeApi;
use cliscale_testkit::fixtures;
use cliscale_wiring::backends::{
    KeyRingIssuer, RECONNECT_TOKEN_TTL, StoreArchive, StoreKeys, StoreLedger,
};
use common::{
    ADMIN_KEY, HANG_GUARD, fresh_postgres, open_terminal, read_session, read_until, run_cli,
};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const NS: &str = "sessions";

struct Cluster {
    api: Arc<FakeApi>,
    base: String,
    /// Two more gateways of their own, as Deployment replicas: (address, stop).
    gateways: Vec<(String, tokio_util::sync::CancellationToken)>,
    http: reqwest::Client,
    dir: tempfile::TempDir,
    store: Store,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Cluster {
    async fn start(database_url: Option<String>) -> Cluster {
        cliscale_core::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let url = database_url.unwrap_or_else(|| {
            format!("sqlite://{}?mode=rwc", dir.path().join("api.db").display())
        });
        let store = Store::connect(&url).await.unwrap();
        cliscale_api::bootstrap::ensure_admin_key(&store, Some(ADMIN_KEY)).await.unwrap();
        let keys = Arc::new(KeyRing::load_or_generate(&dir.path().join("key.der")).unwrap());
        std::fs::write(dir.path().join("jwks.json"), keys.jwks()).unwrap();

        let api = FakeApi::new();
        let client = kube::Client::new(api.router(), "default");
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        // Runners append their output to this API, as the chart points them at the Service.
        let config = OperatorConfig {
            output_url: Some(base.clone()),
            namespace: NS.into(),
            ..Default::default()
        };
        let ctx = Arc::new(Context {
            output_keys: Some(keys.clone()),
            ..Context::new(client.clone(), config)
        });
        tokio::spawn(run(ctx, stopped()));
        tokio::spawn(run_mirror(client.clone(), NS.into(), store.clone(), stopped()));

        let gateway_for = |shutdown: tokio_util::sync::CancellationToken| {
            let gateway = Arc::new(Gateway {
                shutdown,
                jwks: JwksCache::terminal_tokens_from(
                    format!("{base}/.well-known/jwks.json"),
                    "cliscale",
                    Duration::from_secs(300),
                ),
                ledger: Arc::new(StoreLedger(store.clone())),
                resolver: Arc::new(ReflectorResolver::spawn(client.clone(), NS)),
                reissuer: Some(Arc::new(KeyRingIssuer {
                    keys: keys.clone(),
                    ttl: RECONNECT_TOKEN_TTL,
                })),
                archive: Some(Arc::new(StoreArchive::new(store.clone()))),
                config: GatewayConfig { ready_wait: Duration::from_secs(20), ..Default::default() },
                keys: Some(Arc::new(StoreKeys(store.clone()))),
                key_watch: Default::default(),
                metrics: Default::default(),
            });
            gateway.watch_keys();
            gateway
        };
        let mut gateways = Vec::new();
        for _ in 0..2 {
            let stop = tokio_util::sync::CancellationToken::new();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            gateways.push((listener.local_addr().unwrap().to_string(), stop.clone()));
            let app = cliscale_gateway::router(gateway_for(stop.clone()));
            tokio::spawn(
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .into_future(),
            );
        }
        let gateway = gateway_for(Default::default());
        let api_state = ApiState::new(
            store.clone(),
            keys,
            Arc::new(ClusterExecutor::new(client.clone(), NS)) as Arc<dyn Executor>,
            ApiConfig::default(),
        );
        let app = cliscale_gateway::router(gateway).merge(cliscale_api::routes::router(api_state));
        tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(stopped())
                .await
        });
        Cluster { api, base, gateways, http: reqwest::Client::new(), dir, store, _stop: stop }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req =
            self.http.request(method, format!("{}{path}", self.base)).bearer_auth(ADMIN_KEY);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Waits for the API to report `phase` (the store follows the CommandSession's status).
    async fn wait_for_phase(&self, sid: &str, phase: &str) -> Value {
        let path = format!("/api/sessions/{sid}");
        let wait = async {
            loop {
                let (status, body) = self.call(reqwest::Method::GET, &path, None).await;
                if status == 200 && body["phase"] == phase {
                    return body;
                }
                // The store has no change feed to wait on; re-read at a short interval.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(HANG_GUARD, wait).await.unwrap_or_else(|_| panic!("never {phase}"))
    }

    /// Plays the kubelet: runs the runner with the Job's environment on a loopback address of
    /// its own (port 7681 as in a pod), reports the pod Running and Ready, and when the runner
    /// exits reports its container terminated, with the exit code and the termination message
    /// the runner wrote (the file the Job names, as a kubelet mounts it).
    async fn run_pod(&mut self, sid: &str) {
        let job_name = format!("cs-{sid}");
        self.api.wait_until("the Job exists", |a| a.get("jobs", NS, &job_name).is_some()).await;
        let job = self.api.get("jobs", NS, &job_name).unwrap();
        let container = &job["spec"]["template"]["spec"]["containers"][0];
        let ip = format!(
            "127.{}.{}.{}",
            rand::random::<u8>() % 200 + 20,
            rand::random::<u8>(),
            rand::random::<u8>() % 250 + 2
        );
        let work = self.dir.path().join(sid);
        let message_path = self.dir.path().join(format!("{sid}.termination-log"));
        assert_eq!(
            container["terminationMessagePath"], "/dev/termination-log",
            "the runner's final event goes where the kubelet reads it"
        );
        let mut cmd = tokio::process::Command::new(common::runner_bin());
        cmd.env_clear().env("PATH", std::env::var("PATH").unwrap());
        for var in container["env"].as_array().unwrap() {
            if let Some(value) = var["value"].as_str() {
                cmd.env(var["name"].as_str().unwrap(), value);
            }
        }
        // What the pod's mounts and network namespace would provide.
        cmd.env("CLISCALE_RUNNER_LISTEN", format!("{ip}:7681"))
            .env("CLISCALE_RUNNER_JWKS_FILE", self.dir.path().join("jwks.json"))
            .env("CLISCALE_RUNNER_WORK_DIR", &work)
            .env("HOME", self.dir.path())
            .env("CLISCALE_RUNNER_TERMINATION_LOG", &message_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // The test's end stops it, as a node going away would.
            .kill_on_drop(true);
        let mut runner = cmd.spawn().unwrap();
        let ready = format!("http://{ip}:7681/readyz");
        let (pod_name, sid) = (format!("{job_name}-x"), sid.to_owned());
        let pod = move || fixtures::pod(&pod_name).of_session(NS, &sid).ip(&ip);
        // Readiness as the probe sees it: the runner's /readyz answers. A runner whose command
        // ends at once may never be ready; its pod goes from Running straight to terminated.
        let probe = async {
            while !self.http.get(&ready).send().await.is_ok_and(|r| r.status().is_success()) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let exited = tokio::select! {
            _ = tokio::time::timeout(HANG_GUARD, probe) => None,
            status = runner.wait() => Some(status),
        };
        let running = pod().running();
        self.api.put("pods", if exited.is_none() { running.ready() } else { running }.json());
        // The container's end, as the kubelet reports it once the process is gone.
        let api = self.api.clone();
        tokio::spawn(async move {
            let status = match exited {
                Some(status) => status,
                None => runner.wait().await,
            };
            // A container whose main process a signal killed exits 128 + the signal, as the
            // kubelet reports it.
            use std::os::unix::process::ExitStatusExt;
            let Ok(status) = status else { return };
            let Some(code) = status.code().or(status.signal().map(|n| 128 + n)) else { return };
            let message = std::fs::read_to_string(&message_path).unwrap_or_default();
            let reason = if code == 0 { "Completed" } else { "Error" };
            api.put("pods", pod().terminated(code, reason).termination_message(&message).json());
        });
    }

    fn ws_url(&self, sid: &str, token: &str) -> String {
        format!("{}/ws/{sid}?token={token}", self.base.replacen("http", "ws", 1))
    }
}

async fn scenario(database_url: Option<String>) {
    let mut c = Cluster::start(database_url).await;

    // Through the REST API: a CommandSession appears at once, owned by the caller's key.
    let (status, created) = c
        .call(
            reqwest::Method::POST,
            "/api/sessions",
            Some(json!({ "command": "echo cluster-ready; read line; echo got-$line; exit 3" })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let sid = created["sessionId"].as_str().unwrap().to_owned();
    let cs = c.api.get("commandsessions", NS, &sid).expect("a CommandSession");
    assert_eq!(cs["metadata"]["annotations"]["cliscale.dev/owner"], ADMIN_KEY[4..20]);

    // Before the runner is up the gateway waits; once the pod is Ready it proxies.
    let url = c.ws_url(&sid, created["token"].as_str().unwrap());
    let pod = c.run_pod(&sid);
    let (ws, ()) = tokio::join!(open_terminal(&url), pod);
    let mut ws = ws.expect("the gateway proxied the terminal");
    read_until(&mut ws, "cluster-ready").await;
    ws.send(Message::Binary(b"typed\r".to_vec().into())).await.unwrap();
    let (out, last, _) = read_session(&mut ws).await;
    assert!(String::from_utf8_lossy(&out).contains("got-typed"));
    assert_eq!(last["exitCode"], 3);
    // The runner stored its output with the credential the operator gave its Job, and its
    // final event brought the output's tail into the CommandSession's status.
    c.wait_for_phase(&sid, "Failed").await;
    let stored = c
        .http
        .get(format!("{}/api/sessions/{sid}/output?format=text", c.base))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(stored, "cluster-ready\ntyped\ngot-typed\n");
    // The command line reads the cluster's API as it reads local mode's.
    assert_eq!(
        run_cli(&c.base, ADMIN_KEY, &["logs", "--plain", &sid]),
        "cluster-ready\ntyped\ngot-typed\n"
    );
    let got: Value =
        serde_json::from_str(&run_cli(&c.base, ADMIN_KEY, &["get", "-o", "json", &sid])).unwrap();
    assert_eq!((got["phase"].as_str(), got["exitCode"].as_i64()), (Some("Failed"), Some(3)));
    c.api
        .wait_until("the status carries the output's tail", |a| {
            a.get("commandsessions", NS, &sid)
                .is_some_and(|cs| cs["status"]["outputTail"].is_string())
        })
        .await;
    let cs = c.api.get("commandsessions", NS, &sid).unwrap();
    assert_eq!(cs["status"]["outputTail"], "cluster-ready\ntyped\ngot-typed");
    // The same token again is a replay, refused before any upgrade.
    assert_eq!(open_terminal(&url).await.err().map(|e| e.0), Some(401));

    // Sessions made with kubectl are listed and get tokens too.
    c.api.put(
        "commandsessions",
        json!({ "apiVersion": "cliscale.dev/v1alpha1", "kind": "CommandSession",
                "metadata": { "name": "by-kubectl", "namespace": NS },
                "spec": { "command": "sleep 600" } }),
    );
    c.wait_for_phase("by-kubectl", "Pending").await;
    let (status, list) = c.call(reqwest::Method::GET, "/api/sessions", None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> =
        list["items"].as_array().unwrap().iter().filter_map(|s| s["sessionId"].as_str()).collect();
    assert!(ids.contains(&"by-kubectl") && ids.contains(&sid.as_str()), "{list}");
    let (status, minted) = c
        .call(
            reqwest::Method::POST,
            "/api/sessions/by-kubectl/tokens",
            Some(json!({"scope": "view"})),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    assert!(minted["token"].as_str().is_some_and(|t| t.split('.').count() == 3));

    // Cancel through the API: the annotation, the Job deleted, the session Cancelled.
    c.run_pod("by-kubectl").await;
    c.wait_for_phase("by-kubectl", "Running").await;
    let listed: Vec<Value> =
        serde_json::from_str(&run_cli(&c.base, ADMIN_KEY, &["ls", "-o", "json"])).unwrap();
    assert!(listed.iter().any(|s| s["sessionId"] == "by-kubectl"), "{listed:?}");
    assert!(run_cli(&c.base, ADMIN_KEY, &["cancel", "by-kubectl"]).contains("being cancelled"));
    let cancelled = c.wait_for_phase("by-kubectl", "Cancelled").await;
    assert_eq!(cancelled["reason"], "Cancelled");
    assert!(c.api.get("jobs", NS, "cs-by-kubectl").is_none());

    // `kubectl delete` of a running session: recorded as deleted by a user.
    c.api.put(
        "commandsessions",
        json!({ "apiVersion": "cliscale.dev/v1alpha1", "kind": "CommandSession",
                "metadata": { "name": "deleted", "namespace": NS }, "spec": { "command": "sleep 600" } }),
    );
    c.wait_for_phase("deleted", "Pending").await;
    c.api.remove("commandsessions", NS, "deleted");
    let gone = c.wait_for_phase("deleted", "Cancelled").await;
    assert_eq!(gone["reason"], "DeletedByUser");
    let events = c.store.events("deleted").await.unwrap();
    assert!(events.iter().any(|e| e.1 == "created"), "{events:?}");

    // A command killed by a signal: the runner's final event, as its termination message,
    // tells the operator what the exit code alone cannot.
    c.api.put(
        "commandsessions",
        json!({ "apiVersion": "cliscale.dev/v1alpha1", "kind": "CommandSession",
                "metadata": { "name": "killed", "namespace": NS },
                "spec": { "command": "kill -9 $$", "lingerSeconds": 0 } }),
    );
    c.run_pod("killed").await;
    let killed = c.wait_for_phase("killed", "Failed").await;
    assert_eq!(
        (killed["reason"].as_str(), killed["exitCode"].as_i64()),
        (Some("Signaled"), Some(137)),
        "{killed}"
    );
    assert!(killed["message"].as_str().unwrap().contains("killed by signal 9"), "{killed}");

    // The command writes the termination message itself (in a pod it shares the runner's user)
    // and kills its runner, so that its forged final event is all the kubelet reports. The
    // event carries no seal made with the session's key: the status tells only what the
    // kubelet saw.
    let log = c.dir.path().join("forger.termination-log");
    let forged = r#"{"event":"finished","phase":"Succeeded","exitCode":137,"reason":"Exited","message":"all good","outputTail":"forged"}"#;
    c.api.put(
        "commandsessions",
        json!({ "apiVersion": "cliscale.dev/v1alpha1", "kind": "CommandSession",
                "metadata": { "name": "forger", "namespace": NS },
                "spec": { "command": format!("printf '%s\\n' '{forged}' > {}; kill -9 $PPID", log.display()),
                          "lingerSeconds": 0 } }),
    );
    c.run_pod("forger").await;
    let faked = c.wait_for_phase("forger", "Failed").await;
    assert_eq!(faked["exitCode"], 137, "{faked}");
    assert_eq!(std::fs::read_to_string(&log).unwrap().trim(), forged, "the forgery was written");
    assert_ne!(faked["message"], "all good", "{faked}");
    let cs = c.api.get("commandsessions", NS, "forger").unwrap();
    assert!(cs["status"].get("outputTail").is_none_or(|t| t != "forged"), "{cs}");
}

/// A gateway replica killed mid-stream: the client, cut off, reconnects through another replica
/// with its one-time reconnect token from the offset it had, and loses no byte and sees none
/// twice. The kill is what a client and a runner see of one: the client's connection reset
/// (a proxy the test cuts) and the gateway's connections to the runner dropped.
async fn a_gateway_killed_mid_stream_loses_no_byte(database_url: Option<String>) {
    let mut c = Cluster::start(database_url).await;
    let (status, created) = c
        .call(
            reqwest::Method::POST,
            "/api/sessions",
            Some(json!({ "command": "for i in $(seq 1 4000); do echo line-$i; done; sleep 1; exit 0" })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let sid = created["sessionId"].as_str().unwrap().to_owned();
    let (first, stop_first) = c.gateways[0].clone();
    let proxy = cliscale_testkit::netcut::Proxy::start(first.parse().unwrap()).await;
    let url = |addr: &str, token: &str, since: usize| {
        format!("ws://{addr}/ws/{sid}?token={token}&since={since}")
    };
    let token = created["token"].as_str().unwrap();
    let pod = c.run_pod(&sid);
    let first_url = url(&proxy.addr.to_string(), token, 0);
    let (ws, ()) = tokio::join!(open_terminal(&first_url), pod);
    let mut ws = ws.expect("the first gateway proxied the terminal");
    let (before, reconnect) = read_until(&mut ws, "line-1000\r\n").await;
    let reconnect = reconnect.expect("a reconnect token");
    proxy.cut();
    stop_first.cancel();
    drop(ws);
    let second = c.gateways[1].0.clone();
    let mut ws = open_terminal(&url(&second, &reconnect, before.len())).await.unwrap();
    let (after, last, _) = read_session(&mut ws).await;
    assert_eq!(last["phase"], "Succeeded", "{last}");
    let mut all = before;
    all.extend_from_slice(&after);
    let expected: String = (1..=4000).map(|i| format!("line-{i}\r\n")).collect();
    assert_eq!(String::from_utf8_lossy(&all), expected, "bytes were lost or repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_killed_mid_stream_loses_no_byte_on_sqlite() {
    a_gateway_killed_mid_stream_loses_no_byte(None).await;
}

/// After a (re)list, an unfinished session whose CommandSession is gone (deleted while no
/// mirror watched) is marked Lost, and a finished one past its TTL is deleted; one whose
/// CommandSession exists, or whose TTL has not passed, is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_marks_sessions_without_a_command_session_lost() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("api.db").display());
    let store = Store::connect(&url).await.unwrap();
    let spec = cliscale_api::model::validate_create(
        cliscale_api::model::CreateSessionRequest { command: "bash".into(), ..Default::default() },
        Default::default(),
    )
    .unwrap();
    store.insert_session("vanished", "k", &spec).await.unwrap();
    store.insert_session("present", "k", &spec).await.unwrap();
    // Finished while no mirror watched: the operator deleted one at its TTL (0 s), not yet the
    // other (an hour).
    let ended = cliscale_api::store::StatusUpdate {
        phase: Some(cliscale_core::SessionPhase::Succeeded),
        exit_code: Some(0),
        ..Default::default()
    };
    let expiring =
        cliscale_api::model::SessionSpec { ttl_seconds_after_finished: 0, ..spec.clone() };
    store.insert_session("expired", "k", &expiring).await.unwrap();
    store.update_status("expired", &ended).await.unwrap();
    let keeping =
        cliscale_api::model::SessionSpec { ttl_seconds_after_finished: 3600, ..spec.clone() };
    store.insert_session("finished", "k", &keeping).await.unwrap();
    store.update_status("finished", &ended).await.unwrap();
    let api = FakeApi::new();
    api.put(
        "commandsessions",
        json!({ "apiVersion": "cliscale.dev/v1alpha1", "kind": "CommandSession",
                "metadata": { "name": "present", "namespace": NS }, "spec": { "command": "bash" } }),
    );
    let client = kube::Client::new(api.router(), "default");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(cliscale_operator::cluster_api::run_mirror_with_grace(
        client,
        NS.into(),
        store.clone(),
        -1,
        async move {
            let _ = stopped.await;
        },
    ));
    let wait = async {
        loop {
            let row = store.get_session("vanished").await.unwrap().unwrap();
            let expired = store.get_session("expired").await.unwrap();
            if row.phase == cliscale_core::SessionPhase::Lost && expired.is_none() {
                return row;
            }
            // The store has no change feed to wait on; re-read at a short interval.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let lost = tokio::time::timeout(HANG_GUARD, wait).await.expect("marked Lost, expired deleted");
    assert_eq!(lost.reason, Some(cliscale_core::TerminalReason::RunnerLost));
    let finished = store.get_session("finished").await.unwrap().expect("kept until its TTL");
    assert_eq!(finished.phase, cliscale_core::SessionPhase::Succeeded);
    let present = store.get_session("present").await.unwrap().unwrap();
    assert_eq!(present.phase, cliscale_core::SessionPhase::Pending);
    stop.send(()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_stack_on_sqlite() {
    scenario(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_stack_on_postgres() {
    let Some(url) = fresh_postgres().await else { return };
    scenario(Some(url)).await;
}
