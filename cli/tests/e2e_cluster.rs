//! The real-cluster suite (kind or k3d): installs the chart, creates a session through the REST
//! API and one with `kubectl apply`, and attaches a terminal to each through the gateway.
//!
//! It needs `CLISCALE_E2E_KUBECONFIG`, `CLISCALE_E2E_DATABASE_URL` (PostgreSQL reachable from
//! the cluster), `helm` and `kubectl` on PATH, and the three images loaded into the cluster as
//! `$CLISCALE_E2E_IMAGE_REPOSITORY/{operator,gateway,runner}:$CLISCALE_E2E_IMAGE_TAG`
//! (default `cliscale/…:dev`; see docs/install.md). It is `#[ignore]`d so that a plain
//! `cargo test` reports it as ignored, never as passed; run it with
//! `CLISCALE_E2E_KUBECONFIG=~/.kube/config cargo test -p cliscale --test e2e_cluster -- --ignored`.
//! Run without a kubeconfig, it prints that it skipped and fails nothing.

use cliscale_testkit::stack as common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{open_terminal, read_until};
use serde_json::{Value, json};

const NS: &str = "cliscale-e2e";
const RELEASE: &str = "cliscale-e2e";
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

fn run(kubeconfig: &str, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed for the real-cluster suite: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct PortForward(Child);

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn port_forward(kubeconfig: &str, service: &str, port: u16, target: u16) -> PortForward {
    let child = Command::new("kubectl")
        .args(["-n", NS, "port-forward", &format!("svc/{service}"), &format!("{port}:{target}")])
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl port-forward");
    PortForward(child)
}

async fn wait_http(url: &str) {
    let client = reqwest::Client::new();
    let up = async {
        while !client.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), up).await.expect("service reachable");
}

/// POSTs `body`, retrying 404s for a minute (a kubectl-made session reaches the API's store
/// through its watch).
async fn post(url: &str, body: Value) -> Value {
    for _ in 0..240 {
        let resp = reqwest::Client::new()
            .post(url)
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        if resp.status() == 404 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        assert!(resp.status().is_success(), "{url}: {}", resp.status());
        return serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    }
    panic!("{url} stayed 404");
}

#[tokio::test]
#[ignore = "needs a real cluster: set CLISCALE_E2E_KUBECONFIG and run with --ignored"]
async fn chart_install_sessions_both_ways_and_terminals() {
    let Some(kc) = kubeconfig() else { return };
    let tag = std::env::var("CLISCALE_E2E_IMAGE_TAG").unwrap_or_else(|_| "dev".into());
    let repository =
        std::env::var("CLISCALE_E2E_IMAGE_REPOSITORY").unwrap_or_else(|_| "cliscale".into());
    let database = std::env::var("CLISCALE_E2E_DATABASE_URL")
        .expect("CLISCALE_E2E_DATABASE_URL: a PostgreSQL URL reachable from inside the cluster");
    run(&kc, "kubectl", &["apply", "-f", "../crds/commandsession.yaml"]);
    run(
        &kc,
        "helm",
        &[
            "upgrade",
            "--install",
            RELEASE,
            "../charts/cliscale",
            "-n",
            NS,
            "--create-namespace",
            "--wait",
            "--timeout",
            "5m",
            "-f",
            "../charts/cliscale/ci/minimal-values.yaml",
            "--set",
            &format!("image.repository={repository}"),
            "--set",
            &format!("image.tag={tag}"),
            "--set",
            &format!("database.url={database}"),
            "--set",
            "image.pullPolicy=IfNotPresent",
            "--set",
            &format!("apiKey.value={ADMIN}"),
        ],
    );
    let _api = port_forward(&kc, &format!("{RELEASE}-operator"), 18080, 8080);
    let _gw = port_forward(&kc, &format!("{RELEASE}-gateway"), 18081, 8080);
    wait_http("http://127.0.0.1:18080/healthz").await;
    wait_http("http://127.0.0.1:18081/healthz").await;

    // Through the REST API.
    let created = post(
        "http://127.0.0.1:18080/api/sessions",
        json!({ "command": "echo e2e-api-ok; sleep 30" }),
    )
    .await;
    let sid = created["sessionId"].as_str().unwrap();
    let url = format!("ws://127.0.0.1:18081/ws/{sid}?token={}", created["token"].as_str().unwrap());
    let mut ws = open_terminal(&url).await.expect("terminal through the gateway");
    read_until(&mut ws, "e2e-api-ok").await;

    // With kubectl apply, then a token from the API.
    let manifest = json!({
        "apiVersion": "cliscale.dev/v1alpha1", "kind": "CommandSession",
        "metadata": { "name": "e2e-kubectl", "namespace": NS },
        "spec": { "command": "echo e2e-kubectl-ok; sleep 30" }
    });
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), manifest.to_string()).unwrap();
    run(&kc, "kubectl", &["apply", "-f", file.path().to_str().unwrap()]);
    let minted =
        post("http://127.0.0.1:18080/api/sessions/e2e-kubectl/tokens", json!({ "scope": "view" }))
            .await;
    let url =
        format!("ws://127.0.0.1:18081/ws/e2e-kubectl?token={}", minted["token"].as_str().unwrap());
    let mut ws = open_terminal(&url).await.expect("terminal of the kubectl session");
    read_until(&mut ws, "e2e-kubectl-ok").await;
    let phase = run(
        &kc,
        "kubectl",
        &["-n", NS, "get", "cmds", "e2e-kubectl", "-o", "jsonpath={.status.phase}"],
    );
    assert_eq!(phase, "Running");
    run(&kc, "helm", &["uninstall", RELEASE, "-n", NS]);
}
