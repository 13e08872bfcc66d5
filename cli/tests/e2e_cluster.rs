//! The real-cluster suite (kind or k3d): installs the chart with its defaults (the evaluation
//! database on) in a namespace of its own, and checks what the simulator cannot prove:
//! sessions made through the REST API and with `kubectl apply` get terminals through the
//! gateway; a failing command, a missing image, a cancel and a TTL end as docs/operator.md
//! says; the `cliscale` command line runs, follows and reads a session through the cluster's API;
//! and the operator's log holds no RBAC denial.
//!
//! It needs `CLISCALE_E2E_KUBECONFIG`, `helm` and `kubectl` on PATH, and the three images
//! loaded into the cluster as `$CLISCALE_E2E_IMAGE_REPOSITORY/{operator,gateway,runner}:
//! $CLISCALE_E2E_IMAGE_TAG` (default `cliscale/…:dev`; docs/operator.md, "The real-cluster
//! suite", step by step). It is `#[ignore]`d so that a plain `cargo test` reports it as
//! ignored, never as passed; run it with
//! `CLISCALE_E2E_KUBECONFIG=~/.kube/config cargo test -p cliscale --test e2e_cluster -- --ignored`.
//! Run without a kubeconfig, it prints that it skipped and fails nothing.
//!
//! Every run installs into a fresh namespace and removes it at the end, failed or not, so it
//! can run again at once. It waits on the cluster's own signals (`helm --wait`, `kubectl
//! wait`, port-forward's "Forwarding from" line), never on a sleep.

use cliscale_testkit::stack as common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{open_terminal, read_until, run_cli};
use serde_json::{Value, json};

const ADMIN: &str = "csk_00000000000000e2_e2e-admin-secret-0123456789abcdefghij";

fn kubeconfig() -> Option<String> {
    match std::env::var("CLISCALE_E2E_KUBECONFIG") {
        Ok(path) if !path.is_empty() => Some(path),
        _ => {
            eprintln!(
                "SKIPPED: CLISCALE_E2E_KUBECONFIG is not set; the real-cluster suite did not run"
            );
            None
        }
    }
}

fn try_run(kubeconfig: &str, program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed for the real-cluster suite: {e}"));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn run(kubeconfig: &str, program: &str, args: &[&str]) -> String {
    try_run(kubeconfig, program, args).unwrap_or_else(|e| panic!("{program} {args:?} failed: {e}"))
}

/// The run's own namespace and release; dropping it uninstalls and deletes both, whether the
/// test passed or panicked.
struct Install {
    kc: String,
    ns: String,
}

impl Install {
    fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.ns.as_str()];
        all.extend_from_slice(args);
        run(&self.kc, "kubectl", &all)
    }

    /// `kubectl wait` for a session's field (a jsonpath) to reach `value`.
    fn wait_for(&self, session: &str, jsonpath: &str, value: &str, timeout: &str) {
        let condition = format!("--for=jsonpath={{{jsonpath}}}={value}");
        let target = format!("commandsessions/{session}");
        self.kubectl(&["wait", &condition, &target, &format!("--timeout={timeout}")]);
    }

    fn field(&self, session: &str, jsonpath: &str) -> String {
        self.kubectl(&["get", "cmds", session, "-o", &format!("jsonpath={{{jsonpath}}}")])
    }

    fn apply(&self, manifest: Value) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), manifest.to_string()).unwrap();
        self.kubectl(&["apply", "-f", file.path().to_str().unwrap()]);
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What a person debugging the failure would look at first.
            let _ = try_run(&self.kc, "kubectl", &["-n", &self.ns, "get", "cmds,jobs,pods,events"])
                .map(|out| eprintln!("{out}"));
        }
        let _ = try_run(&self.kc, "helm", &["uninstall", &self.ns, "-n", &self.ns, "--wait"]);
        let _ = try_run(&self.kc, "kubectl", &["delete", "namespace", &self.ns, "--wait=false"]);
    }
}

struct PortForward(Child);

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Forwards a local port (chosen by kubectl) to `service`; returns once kubectl says it
/// forwards, with the port.
fn port_forward(install: &Install, service: &str, target: u16) -> (PortForward, u16) {
    let mut child = Command::new("kubectl")
        .args(["-n", &install.ns, "port-forward", &format!("svc/{service}"), &format!(":{target}")])
        .env("KUBECONFIG", &install.kc)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl port-forward");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // "Forwarding from 127.0.0.1:40513 -> 8080"
    let port = lines
        .find_map(|line| {
            let line = line.ok()?;
            let rest = line.strip_prefix("Forwarding from 127.0.0.1:")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .expect("kubectl port-forward reports its port");
    std::thread::spawn(move || lines.for_each(drop));
    (PortForward(child), port)
}

async fn call(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url).bearer_auth(ADMIN);
    if let Some(body) = body {
        req = req.header("content-type", "application/json").body(body.to_string());
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
#[ignore = "needs a real cluster: set CLISCALE_E2E_KUBECONFIG and run with --ignored"]
async fn a_default_install_serves_sessions_and_names_every_ending() {
    let Some(kc) = kubeconfig() else { return };
    let tag = std::env::var("CLISCALE_E2E_IMAGE_TAG").unwrap_or_else(|_| "dev".into());
    let repository =
        std::env::var("CLISCALE_E2E_IMAGE_REPOSITORY").unwrap_or_else(|_| "cliscale".into());
    let ns = format!("cliscale-e2e-{:08x}", rand::random::<u32>());
    run(&kc, "kubectl", &["apply", "--server-side", "-f", "../crds/commandsession.yaml"]);
    let install = Install { kc: kc.clone(), ns: ns.clone() };
    run(
        &kc,
        "helm",
        &[
            "install",
            &ns,
            "../charts/cliscale",
            "-n",
            &ns,
            "--create-namespace",
            "--wait",
            "--timeout",
            "10m",
            "--set",
            &format!("image.repository={repository}"),
            "--set",
            &format!("image.tag={tag}"),
            "--set",
            "image.pullPolicy=IfNotPresent",
            "--set",
            &format!("apiKey.value={ADMIN}"),
            // A missing image must fail well inside the test's patience.
            "--set",
            "runner.startDeadline=60s",
        ],
    );
    let (_api, api_port) = port_forward(&install, &format!("{ns}-operator"), 8080);
    let (_gw, gw_port) = port_forward(&install, &format!("{ns}-gateway"), 8080);
    let api = format!("http://127.0.0.1:{api_port}");

    // Through the REST API: a terminal through the gateway.
    let (status, created) = call(
        reqwest::Method::POST,
        &format!("{api}/api/sessions"),
        Some(json!({ "command": "echo e2e-api-ok; sleep 600" })),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let sid = created["sessionId"].as_str().unwrap().to_owned();
    let token = created["token"].as_str().unwrap();
    let url = format!("ws://127.0.0.1:{gw_port}/ws/{sid}?token={token}");
    let mut ws = open_terminal(&url).await.expect("terminal through the gateway");
    read_until(&mut ws, "e2e-api-ok").await;

    // Cancel through the API: Cancelled, and the Job goes.
    let (status, _) =
        call(reqwest::Method::DELETE, &format!("{api}/api/sessions/{sid}"), None).await;
    assert!(status == 200 || status == 202, "cancel: {status}");
    install.wait_for(&sid, ".status.phase", "Cancelled", "120s");
    assert_eq!(install.field(&sid, ".status.reason"), "Cancelled");
    install.kubectl(&["wait", "--for=delete", &format!("jobs/cs-{sid}"), "--timeout=120s"]);

    // With kubectl apply, then a token from the API once it is running.
    install.apply(json!({
        "apiVersion": "cliscale.dev/v1alpha1", "kind": "CommandSession",
        "metadata": { "name": "e2e-kubectl" },
        "spec": { "command": "echo e2e-kubectl-ok; sleep 600" }
    }));
    install.wait_for("e2e-kubectl", ".status.phase", "Running", "180s");
    let (status, minted) = call(
        reqwest::Method::POST,
        &format!("{api}/api/sessions/e2e-kubectl/tokens"),
        Some(json!({ "scope": "view" })),
    )
    .await;
    assert_eq!(status, 201, "{minted}");
    let url = format!(
        "ws://127.0.0.1:{gw_port}/ws/e2e-kubectl?token={}",
        minted["token"].as_str().unwrap()
    );
    let mut ws = open_terminal(&url).await.expect("terminal of the kubectl session");
    read_until(&mut ws, "e2e-kubectl-ok").await;

    // A failing command: Failed, exit 3, and its sealed final event believed.
    install.apply(json!({
        "apiVersion": "cliscale.dev/v1alpha1", "kind": "CommandSession",
        "metadata": { "name": "e2e-exit" },
        "spec": { "command": "echo bye; exit 3", "lingerSeconds": 0 }
    }));
    install.wait_for("e2e-exit", ".status.phase", "Failed", "180s");
    assert_eq!(install.field("e2e-exit", ".status.reason"), "Exited");
    assert_eq!(install.field("e2e-exit", ".status.exitCode"), "3");
    assert!(install.field("e2e-exit", ".status.outputTail").contains("bye"));

    // The command line against the cluster's API: run detached, follow the output to the end
    // (live, then from the store), and read how the session ended.
    let cli = |args: &[&str]| run_cli(&api, ADMIN, args);
    let started = cli(&["run", "--detach", "--", "echo e2e-cli-ok; exit 4"]);
    let cli_sid = started.lines().next().unwrap().to_owned();
    assert!(cli(&["logs", "-f", "--plain", &cli_sid]).contains("e2e-cli-ok"));
    let ended: Value = serde_json::from_str(&cli(&["get", "-o", "json", &cli_sid])).unwrap();
    assert_eq!((ended["phase"].as_str(), ended["exitCode"].as_i64()), (Some("Failed"), Some(4)));
    let listed: Vec<Value> = serde_json::from_str(&cli(&["ls", "-o", "json"])).unwrap();
    assert!(listed.iter().any(|s| s["sessionId"] == cli_sid.as_str()));

    // An image that does not exist: Pending with ImagePullFailed, then Failed at the deadline.
    install.apply(json!({
        "apiVersion": "cliscale.dev/v1alpha1", "kind": "CommandSession",
        "metadata": { "name": "e2e-no-image" },
        "spec": { "command": "true", "image": "cliscale.invalid/none:missing" }
    }));
    install.wait_for("e2e-no-image", ".status.reason", "ImagePullFailed", "120s");
    install.wait_for("e2e-no-image", ".status.phase", "Failed", "180s");
    install.kubectl(&["wait", "--for=delete", "jobs/cs-e2e-no-image", "--timeout=120s"]);

    // TTL: a finished session goes, its Job with it.
    install.apply(json!({
        "apiVersion": "cliscale.dev/v1alpha1", "kind": "CommandSession",
        "metadata": { "name": "e2e-ttl" },
        "spec": { "command": "true", "lingerSeconds": 0, "ttlSecondsAfterFinished": 5 }
    }));
    install.kubectl(&["wait", "--for=delete", "commandsessions/e2e-ttl", "--timeout=240s"]);

    // The operator never met a permission it lacked.
    let logs = install.kubectl(&[
        "logs",
        "-l",
        "cliscale.dev/component=operator",
        "--all-containers",
        "--tail=-1",
        "--prefix",
    ]);
    let denials: Vec<&str> =
        logs.lines().filter(|l| l.contains("forbidden") || l.contains("Forbidden")).collect();
    assert!(denials.is_empty(), "RBAC denials in the operator's log:\n{}", denials.join("\n"));
}
