//! Test harness: starts the real `cliscale-runner` binary and talks to it over real sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cliscale_core::protocol::{ServerMessage, SessionStatus, decode_output};
use cliscale_core::token::{
    SessionSigningKey, TERMINAL_AUDIENCE, TokenScope, jwks_json, new_claims,
};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub const SESSION: &str = "sess-1";
/// Upper bound for any single wait in a test: a hang guard, never a synchronisation point.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

pub struct Keys {
    pub key: SessionSigningKey,
    pub jwks_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Keys {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = SessionSigningKey::generate("test-key");
        let jwks_path = dir.path().join("jwks.json");
        std::fs::write(&jwks_path, jwks_json([&key])).unwrap();
        Self { key, jwks_path, _dir: dir }
    }

    pub fn token(&self, scope: TokenScope) -> String {
        self.token_for(SESSION, scope)
    }

    pub fn token_for(&self, session: &str, scope: TokenScope) -> String {
        self.key
            .sign(&new_claims("test", TERMINAL_AUDIENCE, "tester", session, scope, 300))
            .unwrap()
    }
}

pub struct Runner {
    pub child: Child,
    pub addr: String,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub keys: Keys,
    pub work: tempfile::TempDir,
}

pub struct RunnerBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    stdout: bool,
}

impl RunnerBuilder {
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable of the runner process (as a pod spec would).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Pipe the runner's stdout (the tee of the log) instead of discarding it.
    pub fn capture_stdout(mut self) -> Self {
        self.stdout = true;
        self
    }

    /// Starts the runner and waits for its "listening" log line.
    pub fn start(self) -> Runner {
        let keys = Keys::new();
        let work = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cliscale-runner"));
        cmd.args(["--session-id", SESSION, "--listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--jwks-file")
            .arg(&keys.jwks_path)
            .arg("--work-dir")
            .arg(work.path().join("w"))
            .args(["--tee-stdout", if self.stdout { "true" } else { "false" }])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(if self.stdout { Stdio::piped() } else { Stdio::null() })
            .stderr(Stdio::piped());
        if !self.args.iter().any(|a| a == "--linger") {
            // Long enough that a test always attaches before the runner leaves.
            cmd.args(["--linger", "60s"]);
        }
        let mut child = cmd.spawn().expect("runner starts");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let lines = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == "listening"
                {
                    let _ = addr_tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = addr_rx.recv_timeout(HANG_GUARD).unwrap_or_default();
        Runner { child, addr, stderr, keys, work }
    }
}

/// Runs a runner to completion with no linger and returns (exit code, stdout, stderr).
pub fn run_to_end(builder: RunnerBuilder) -> (i32, String, String) {
    let mut r = builder.args(["--linger", "0s"]).capture_stdout().start();
    let code = r.wait();
    let mut out = String::new();
    r.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    (code, out, r.stderr_text())
}

pub fn runner(command: &str) -> RunnerBuilder {
    RunnerBuilder { args: vec!["--command".into(), command.into()], env: Vec::new(), stdout: false }
}

impl Runner {
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.addr)
    }

    pub async fn attach(&self, scope: TokenScope, since: u64) -> Client {
        let token = self.keys.token(scope);
        Client::connect(&self.ws_url(&format!("token={token}&since={since}"))).await
    }

    /// Waits for the runner process to exit and returns its exit code.
    pub fn wait(&mut self) -> i32 {
        let deadline = std::time::Instant::now() + HANG_GUARD;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().expect("runner exits normally");
            }
            assert!(std::time::Instant::now() < deadline, "runner did not exit");
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One event from the runner, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Hello { read_only: bool, log_start: u64, log_end: u64, status: SessionStatus },
    Output { offset: u64, data: Vec<u8> },
    Gap { from: u64, to: u64 },
    Status(SessionStatus),
    Error { code: String, message: String },
    Closed { code: Option<u16>, reason: String },
}

pub struct Client {
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
        Client { ws }
    }

    pub async fn next(&mut self) -> Event {
        // One deadline for the whole call: the runner's pings, skipped below, must not keep a
        // stuck test waiting forever.
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("runner sent nothing but pings (hang guard)");
            match message {
                None => {
                    return Event::Closed { code: None, reason: String::new() };
                }
                Some(Err(e)) => {
                    return Event::Closed { code: None, reason: e.to_string() };
                }
                Some(Ok(Message::Binary(frame))) => {
                    let (offset, data) = decode_output(&frame).unwrap();
                    return Event::Output { offset, data: data.to_vec() };
                }
                Some(Ok(Message::Text(text))) => {
                    return match serde_json::from_str::<ServerMessage>(&text).unwrap() {
                        ServerMessage::Hello { read_only, log_start, log_end, status, .. } => {
                            Event::Hello { read_only, log_start, log_end, status }
                        }
                        ServerMessage::Gap { from, to } => Event::Gap { from, to },
                        ServerMessage::Status(s) => Event::Status(s),
                        ServerMessage::Error { code, message } => Event::Error { code, message },
                        ServerMessage::Reconnect { .. } => panic!("a runner sends no reconnect"),
                    };
                }
                Some(Ok(Message::Close(frame))) => {
                    return Event::Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    };
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads events until the session's final status, returning all output bytes (checked to
    /// be contiguous from `since`), the gaps seen and the final status.
    pub async fn read_to_end(&mut self, since: u64) -> (Vec<u8>, Vec<(u64, u64)>, SessionStatus) {
        let mut out = Vec::new();
        let mut gaps = Vec::new();
        let mut cursor = since;
        loop {
            match self.next().await {
                Event::Output { offset, data } => {
                    assert_eq!(offset, cursor, "output must be contiguous");
                    cursor += data.len() as u64;
                    out.extend_from_slice(&data);
                }
                Event::Gap { from, to } => {
                    assert_eq!(from, cursor);
                    gaps.push((from, to));
                    cursor = to;
                }
                Event::Status(s) if s.phase.is_finished() => return (out, gaps, s),
                Event::Closed { code, reason } => {
                    panic!("closed before the end: {code:?} {reason}")
                }
                _ => {}
            }
        }
    }

    /// Like [`Client::read_to_end`] for a client that already consumed some events.
    pub async fn read_to_end_any(&mut self) -> (Vec<u8>, Vec<(u64, u64)>, SessionStatus) {
        let mut out = Vec::new();
        let mut gaps = Vec::new();
        loop {
            match self.next().await {
                Event::Output { data, .. } => out.extend_from_slice(&data),
                Event::Gap { from, to } => gaps.push((from, to)),
                Event::Status(s) if s.phase.is_finished() => return (out, gaps, s),
                Event::Closed { code, reason } => {
                    panic!("closed before the end: {code:?} {reason}")
                }
                _ => {}
            }
        }
    }

    /// Reads output until `needle` appears; returns everything read (output bytes only).
    pub async fn read_until(&mut self, needle: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while !out.windows(needle.len()).any(|w| w == needle) {
            match self.next().await {
                Event::Output { data, .. } => out.extend_from_slice(&data),
                Event::Closed { code, reason } => {
                    panic!("closed before {:?}: {code:?} {reason}", String::from_utf8_lossy(needle))
                }
                _ => {}
            }
        }
        out
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    pub async fn send_input(&mut self, data: &[u8]) {
        self.ws.send(Message::Binary(data.to_vec().into())).await.unwrap();
    }

    pub async fn resize(&mut self, cols: u16, rows: u16) {
        self.send_text(&format!(r#"{{"type":"resize","cols":{cols},"rows":{rows}}}"#)).await;
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

pub fn close_code(code: CloseCode) -> u16 {
    u16::from(code)
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG state to compare.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A plain HTTP client (the process-wide TLS provider installed first, as the binaries do).
/// A file of `len` pseudo-random bytes in a fresh temporary directory (kept alive by the
/// returned guard), for commands that `cat` a known burst.
pub fn random_file(len: usize, seed: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("random.bin");
    std::fs::write(&file, pseudo_random(len, seed)).unwrap();
    (dir, file)
}

pub fn http_client() -> reqwest::Client {
    cliscale_core::tls::install_crypto_provider();
    reqwest::Client::new()
}

pub async fn http_get(url: String) -> reqwest::Response {
    http_client().get(url).send().await.unwrap()
}

/// A real HTTP server on loopback serving files from a directory, standing in for GitHub,
/// archive hosts and git's dumb HTTP transport.
pub struct FixtureServer {
    pub base: String,
    pub root: tempfile::TempDir,
}

impl FixtureServer {
    pub async fn start() -> FixtureServer {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().to_path_buf();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let dir = dir.clone();
            async move {
                let rel = uri.path().trim_start_matches('/');
                match std::fs::read(dir.join(rel)) {
                    Ok(body) if !rel.contains("..") => (axum::http::StatusCode::OK, body),
                    _ => (axum::http::StatusCode::NOT_FOUND, b"not found".to_vec()),
                }
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FixtureServer { base, root }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        let path = self.root.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        path
    }

    pub fn put(&self, rel: &str, body: &[u8]) -> String {
        std::fs::write(self.path(rel), body).unwrap();
        format!("{}/{rel}", self.base)
    }
}
