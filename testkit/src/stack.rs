//! Runs the real `cliscale up` binary (with the real runner) on SQLite or PostgreSQL, and
//! speaks to it as a browser's terminal would.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

pub const ADMIN_KEY: &str = "csk_00000000000000aa_test-admin-secret-0123456789abcdefghij";
/// The id of [`ADMIN_KEY`]: the subject of the tokens it mints.
pub const ADMIN_KEY_ID: &str = "00000000000000aa";
pub const HANG_GUARD: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub use crate::postgres::fresh_postgres;

/// Runs each scenario (an `async fn(Backend)` in scope) once per backend, as `sqlite::name`
/// and `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::stack::Backend::Sqlite).await }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::stack::Backend::Postgres).await }
            )*
        }
    };
}

/// A binary of the workspace, built beside the test or benchmark that runs this (Cargo puts
/// them in `target/<profile>/`, tests and benchmarks one level down in `deps/`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running test's path");
    let dir = exe.parent().expect("deps/");
    let dir = if dir.ends_with("deps") { dir.parent().expect("target/<profile>") } else { dir };
    let bin = dir.join(name);
    assert!(bin.exists(), "{} is missing: build the whole workspace first", bin.display());
    bin
}

/// Runs the real `cliscale` command line against the server at `base` with `key`, in a config
/// dir of its own; answers its standard output, and fails the test if the command fails.
pub fn run_cli(base: &str, key: &str, args: &[&str]) -> String {
    let config = tempfile::tempdir().unwrap();
    let out = Command::new(workspace_bin("cliscale"))
        .args(args)
        .env("CLISCALE_URL", base)
        .env("CLISCALE_API_KEY", key)
        .env("XDG_CONFIG_HOME", config.path())
        .env_remove("CLISCALE_CONTEXT")
        .output()
        .unwrap();
    assert!(out.status.success(), "cliscale {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

pub struct Stack {
    pub child: Child,
    pub base: String,
    pub data: tempfile::TempDir,
    /// Where sessions' work dirs are made.
    pub work: tempfile::TempDir,
    pub http: reqwest::Client,
    args: Vec<String>,
    /// Where its log goes, when it is kept (`start_logged`).
    pub log: Option<PathBuf>,
}

pub fn runner_bin() -> PathBuf {
    workspace_bin("cliscale-runner")
}

impl Stack {
    /// Starts `cliscale up` on a fresh data dir (and a fresh database for PostgreSQL).
    pub async fn start(backend: Backend, extra: &[&str]) -> Option<Stack> {
        let data = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if backend == Backend::Postgres {
            args.push("--database-url".into());
            args.push(fresh_postgres().await?);
        }
        Some(Self::launch(data, tempfile::tempdir().unwrap(), args, None))
    }

    /// [`Stack::start`], its log written at debug level to `up.log` in the data dir (a test
    /// that searches the log for what must not be in it).
    pub async fn start_logged(backend: Backend, extra: &[&str]) -> Option<Stack> {
        let data = tempfile::tempdir().unwrap();
        let log = data.path().join("up.log");
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if backend == Backend::Postgres {
            args.push("--database-url".into());
            args.push(fresh_postgres().await?);
        }
        Some(Self::launch(data, tempfile::tempdir().unwrap(), args, Some(log)))
    }

    fn launch(
        data: tempfile::TempDir,
        work: tempfile::TempDir,
        mut args: Vec<String>,
        log: Option<PathBuf>,
    ) -> Stack {
        cliscale_core::tls::install_crypto_provider();
        if !args.iter().any(|a| a == "--runner-bin") {
            args.push("--runner-bin".into());
            args.push(runner_bin().display().to_string());
        }
        let mut child = Command::new(workspace_bin("cliscale"))
            .args(["up", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data.path())
            .arg("--work-dir")
            .arg(work.path())
            .args(&args)
            .env("CLISCALE_API_KEY", ADMIN_KEY)
            .env("CLISCALE_LOG", if log.is_some() { "debug" } else { "warn" })
            .stdout(Stdio::piped())
            .stderr(match &log {
                Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
                None => Stdio::inherit(),
            })
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(base) = line.strip_prefix("listening on ") {
                    let _ = tx.send(base.to_owned());
                }
            }
        });
        let base = rx.recv_timeout(HANG_GUARD).expect("cliscale up did not start");
        Stack { child, base, data, work, http: reqwest::Client::new(), args, log }
    }

    /// Stops this process abruptly (runners included) and starts again on the same data.
    pub fn crash_and_restart(mut self) -> Stack {
        // Runners are children in their own sessions; kill them too, as a crash would lose them.
        let _ = Command::new("pkill").args(["-KILL", "-P", &self.child.id().to_string()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let data = std::mem::replace(&mut self.data, tempfile::tempdir().unwrap());
        let work = std::mem::replace(&mut self.work, tempfile::tempdir().unwrap());
        let args = std::mem::take(&mut self.args);
        let log = self.log.take();
        Self::launch(data, work, args, log)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn ws_url(&self, sid: &str, query: &str) -> String {
        format!("{}/ws/{sid}?{query}", self.base.replace("http://", "ws://"))
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self.http.request(method.parse().unwrap(), self.url(path));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }

    /// The typed client, acting with `key`.
    pub fn client(&self, key: &str) -> cliscale_client::Client {
        cliscale_client::Client::new(&self.base, Some(key.to_owned())).unwrap()
    }

    /// Creates a session through the typed client from a JSON body (which must name only the
    /// API's fields); answers the API's JSON.
    pub async fn create(&self, key: &str, body: serde_json::Value) -> serde_json::Value {
        let request: cliscale_core::rest::CreateSessionRequest =
            serde_json::from_value(body).expect("a create body of the API's fields");
        let created = self.client(key).create_session(&request, None).await.unwrap();
        serde_json::to_value(created).unwrap()
    }

    /// Polls the API until the session reaches `phase` (the executor records it asynchronously).
    pub async fn wait_for_phase(&self, sid: &str, phase: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + HANG_GUARD;
        let client = self.client(ADMIN_KEY);
        loop {
            let s = client.session(sid).await.unwrap();
            if s.phase.as_str() == phase {
                return serde_json::to_value(s).unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "{sid} never reached {phase}: {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn new_key(&self, role: &str) -> String {
        let role_ = cliscale_core::rest::Role::parse(role).expect("a role");
        let key = self.client(ADMIN_KEY).create_key(role, role_).await.unwrap();
        key.key.expect("a new key is shown once")
    }

    /// A metric of the API's (`/metrics`).
    pub async fn metric(&self, name: &str) -> f64 {
        self.metric_at("/metrics", name).await
    }

    /// A metric of the gateway's (`/gateway/metrics`).
    pub async fn gateway_metric(&self, name: &str) -> f64 {
        self.metric_at("/gateway/metrics", name).await
    }

    async fn metric_at(&self, path: &str, name: &str) -> f64 {
        let text = self.http.get(self.url(path)).send().await.unwrap().text().await.unwrap();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix_kill(self.child.id(), "TERM");
            let _ = self.child.wait();
        }
    }
}

fn nix_kill(pid: u32, signal: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status()
}

/// Waits until session `sid`'s runner process has exited (it carries the id in its
/// environment): its terminal is then served from the output store.
pub async fn wait_for_runner_exit(sid: &str) {
    let deadline = std::time::Instant::now() + HANG_GUARD;
    while crate::procinfo::any_process_with_env("CLISCALE_SESSION_ID", sid) {
        assert!(std::time::Instant::now() < deadline, "the runner of {sid} never left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the terminal WebSocket; Err((status, error code)) when refused before the upgrade.
pub async fn open_terminal(url: &str) -> Result<Ws, (u16, String)> {
    match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
                    .unwrap_or_default();
            Err((resp.status().as_u16(), body["error"].as_str().unwrap_or_default().to_owned()))
        }
        Err(e) => panic!("connection failed below HTTP: {e}"),
    }
}

/// One frame from the gateway: output bytes at their log offset, or a control message.
enum Frame {
    Output(u64, Vec<u8>),
    Control(serde_json::Value),
}

async fn next_frame(ws: &mut Ws) -> Frame {
    loop {
        let message = tokio::time::timeout(HANG_GUARD, ws.next())
            .await
            .expect("hang guard")
            .expect("stream open")
            .unwrap();
        match message {
            Message::Binary(frame) => {
                let (offset, data) = cliscale_core::protocol::decode_output(&frame).unwrap();
                return Frame::Output(offset, data.to_vec());
            }
            Message::Text(t) => return Frame::Control(serde_json::from_str(&t).unwrap()),
            Message::Close(frame) => panic!("closed early: {frame:?}"),
            _ => {}
        }
    }
}

/// Checks that output frames follow each other without a hole: each starts where the last
/// ended, unless a `gap` message said where the log resumes. A relay that loses a frame fails.
#[derive(Default)]
struct Contiguity(Option<u64>);

impl Contiguity {
    fn output(&mut self, offset: u64, len: usize) {
        if let Some(expected) = self.0 {
            assert_eq!(
                offset, expected,
                "output frame at {offset}, expected {expected}: lost bytes"
            );
        }
        self.0 = Some(offset + len as u64);
    }

    fn control(&mut self, v: &serde_json::Value) {
        if v["type"] == "gap" {
            self.0 = v["to"].as_u64();
        }
    }
}

/// Reads until the final status; returns (output, final status JSON, reconnect token if any).
pub async fn read_session(ws: &mut Ws) -> (Vec<u8>, serde_json::Value, Option<String>) {
    let mut out = Vec::new();
    let mut reconnect = None;
    let mut contiguity = Contiguity::default();
    let finished = ["Succeeded", "Failed", "TimedOut", "Cancelled", "Lost"];
    loop {
        match next_frame(ws).await {
            Frame::Output(offset, data) => {
                contiguity.output(offset, data.len());
                out.extend_from_slice(&data)
            }
            Frame::Control(v) if v["type"] == "reconnect" => {
                reconnect = v["token"].as_str().map(String::from)
            }
            Frame::Control(v)
                if v["type"] == "status" && finished.iter().any(|p| v["phase"] == *p) =>
            {
                return (out, v, reconnect);
            }
            Frame::Control(v) => contiguity.control(&v),
        }
    }
}

/// Reads until `needle` shows up in the output.
pub async fn read_until(ws: &mut Ws, needle: &str) -> (Vec<u8>, Option<String>) {
    let mut out = Vec::new();
    let mut reconnect = None;
    let mut contiguity = Contiguity::default();
    let needle = needle.as_bytes();
    let mut found = false;
    while !found {
        match next_frame(ws).await {
            Frame::Output(offset, data) => {
                contiguity.output(offset, data.len());
                // Search only the new bytes (and the needle's length before them).
                let from = out.len().saturating_sub(needle.len());
                out.extend_from_slice(&data);
                found = out[from..].windows(needle.len()).any(|w| w == needle);
            }
            Frame::Control(v) if v["type"] == "reconnect" => {
                reconnect = v["token"].as_str().map(String::from)
            }
            Frame::Control(v) => contiguity.control(&v),
        }
    }
    (out, reconnect)
}
