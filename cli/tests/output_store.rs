//! The output store end to end: real runners append to the real API on SQLite and PostgreSQL;
//! output is read back over REST, Server-Sent Events, the recording and the terminal after the
//! runner is gone, through API restarts and network cuts, capped, expired and masked.

use cliscale_testkit::stack as common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use cliscale_api::executor::{BoxFuture, Executor};
use cliscale_api::model::SessionRecord;
use cliscale_api::routes::{ApiConfig, ApiState};
use cliscale_api::signing::KeyRing;
use cliscale_api::store::Store;
use cliscale_core::launch::RunnerLaunch;
use common::{ADMIN_KEY, Backend, HANG_GUARD, Stack, open_terminal, read_session, runner_bin};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

use cliscale_testkit::on_both_backends;

on_both_backends!(
    a_hundred_megabytes_read_back_byte_exact_after_the_runner_is_gone,
    an_api_restart_loses_no_byte_and_a_gap_is_recorded_only_past_the_window,
    stored_output_goes_with_the_session_at_its_ttl,
    past_the_cap_the_head_and_the_tail_are_kept_around_a_gap,
    the_event_stream_is_live_then_resumes_at_last_event_id,
);

/// A GET with the admin key: status, headers and the whole body.
async fn get(stack: &Stack, path: &str, key: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let resp = stack.http.get(stack.url(path)).bearer_auth(key).send().await.unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A command writing the first `megabytes` MB of `file` unchanged (the PTY's output processing
/// off), a megabyte at a time, at about the rate a PTY carries a command's output.
fn paced_cat(file: &std::path::Path, megabytes: usize) -> String {
    format!(
        "stty -opost; for i in $(seq 0 {}); do \
         dd if={} bs=1000000 skip=$i count=1 status=none; sleep 0.02; done",
        megabytes - 1,
        file.display()
    )
}

/// Runs `command` to a successful end and its runner's exit; returns the session id and the
/// stored output with its headers.
async fn run_to_the_end(
    stack: &Stack,
    command: &str,
) -> (String, reqwest::header::HeaderMap, Vec<u8>) {
    let created = stack.create(ADMIN_KEY, json!({ "command": command })).await;
    let sid = created["sessionId"].as_str().unwrap().to_owned();
    stack.wait_for_phase(&sid, "Succeeded").await;
    common::wait_for_runner_exit(&sid).await;
    // A finished session whose runner is gone still opens: from the store.
    let (status, minted) = stack
        .call("POST", &format!("/api/sessions/{sid}/tokens"), Some(ADMIN_KEY), Some(json!({})))
        .await;
    assert_eq!(status, 201, "{minted}");
    let check = stack
        .http
        .get(stack.url(&format!("/t/{sid}/check")))
        .bearer_auth(minted["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let text = check.text().await.unwrap();
    assert!(text.contains("\"ok\":true"), "{text}");
    let (status, headers, body) =
        get(stack, &format!("/api/sessions/{sid}/output"), ADMIN_KEY).await;
    assert_eq!(status, 200);
    (sid, headers, body)
}

/// The runner's window and linger are its own; `--linger 0` lets the runner go at once.
async fn stack(backend: Backend, extra: &[&str]) -> Option<Stack> {
    let mut args = vec!["--linger", "0"];
    args.extend_from_slice(extra);
    Stack::start(backend, &args).await
}

/// 100 MB of random bytes (the PTY's output processing off, so they pass unchanged) are read
/// back once the runner has exited: over REST and through the terminal, the same SHA-256. They
/// are written a megabyte at a time, at about the rate a PTY carries a command's output
/// (docs/benchmarks.md): a file copied into the PTY from the page cache outruns what an
/// unoptimised test build stores, and that is what the runner's window and gaps are for.
async fn a_hundred_megabytes_read_back_byte_exact_after_the_runner_is_gone(backend: Backend) {
    let Some(stack) = stack(backend, &[]).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("random.bin");
    let made = std::process::Command::new("head")
        .args(["-c", "100000000", "/dev/urandom"])
        .stdout(std::fs::File::create(&file).unwrap())
        .status()
        .unwrap();
    assert!(made.success());
    let data = std::fs::read(&file).unwrap();
    let digest = sha(&data);
    let (sid, headers, body) = run_to_the_end(&stack, &paced_cat(&file, 100)).await;
    let sid = sid.as_str();
    assert_eq!(header(&headers, "cliscale-output-gaps"), "", "no gap was expected");
    assert_eq!(header(&headers, "cliscale-output-complete"), "true");
    assert_eq!(header(&headers, "cliscale-output-end"), data.len().to_string());
    assert_eq!(body.len(), data.len());
    assert_eq!(sha(&body), digest);

    // A slice by offsets is exactly those bytes.
    let (status, headers, part) =
        get(&stack, &format!("/api/sessions/{sid}/output?since=12345&until=2000000"), ADMIN_KEY)
            .await;
    assert_eq!(status, 200);
    assert_eq!(
        (header(&headers, "cliscale-output-since"), header(&headers, "cliscale-output-until")),
        ("12345", "2000000")
    );
    assert_eq!(part, &data[12345..2_000_000]);

    // The terminal of the finished session replays the same bytes, read-only, then its status.
    let (_, minted) = stack
        .call("POST", &format!("/api/sessions/{sid}/tokens"), Some(ADMIN_KEY), Some(json!({})))
        .await;
    let token = minted["token"].as_str().unwrap();
    let mut ws = open_terminal(&stack.ws_url(sid, &format!("token={token}"))).await.unwrap();
    let (replayed, status, _) = read_session(&mut ws).await;
    assert_eq!(sha(&replayed), digest);
    assert_eq!(status["phase"], "Succeeded");
    match ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!((u16::from(frame.code), frame.reason.as_str()), (1000, "session ended"))
        }
        other => panic!("expected the close after the replay, got {other:?}"),
    }
}

/// Executes nothing: the tests below start the runner themselves, pointed at the API.
struct NoExecutor;

impl Executor for NoExecutor {
    fn start(&self, _: SessionRecord) -> BoxFuture<'_, cliscale_api::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn cancel(&self, _: &str) -> BoxFuture<'_, cliscale_api::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// One API process: the REST API on `store`, until `stop`.
struct Api {
    addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start_api(store: &Store, keys: &Arc<KeyRing>) -> Api {
    let state = ApiState::new(
        store.clone(),
        keys.clone(),
        Arc::new(NoExecutor) as Arc<dyn Executor>,
        ApiConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let app = cliscale_api::routes::router(state);
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(token.cancelled_owned())
            .await;
    });
    Api { addr, stop, task }
}

impl Api {
    /// Stops the API as a crash would look from outside: it no longer answers.
    async fn stop(self) {
        self.stop.cancel();
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn store_for(backend: Backend, dir: &std::path::Path) -> Option<Store> {
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}?mode=rwc", dir.join("api.db").display()),
        Backend::Postgres => common::fresh_postgres().await?,
    };
    let store = Store::connect(&url).await.unwrap();
    cliscale_api::bootstrap::ensure_admin_key(&store, Some(ADMIN_KEY)).await.unwrap();
    Some(store)
}

/// Starts a runner for session `sid` that appends to `output_url`, with a log window of
/// `window` bytes.
fn spawn_runner(
    dir: &std::path::Path,
    keys: &KeyRing,
    sid: &str,
    command: &str,
    output_url: &str,
    window: usize,
) -> tokio::process::Child {
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, keys.jwks()).unwrap();
    let launch = RunnerLaunch {
        session_id: sid.into(),
        command: command.into(),
        cols: 80,
        rows: 24,
        listen: Some("127.0.0.1:0".into()),
        jwks_file: Some(jwks.display().to_string()),
        work_dir: Some(dir.join(sid).display().to_string()),
        linger: Some(Duration::ZERO),
        output_url: Some(output_url.into()),
        output_token: Some(keys.output_token("cliscale", sid, None).unwrap()),
        ..Default::default()
    };
    tokio::process::Command::new(runner_bin())
        .envs(launch.env())
        .env("CLISCALE_RUNNER_LOG_WINDOW_BYTES", window.to_string())
        .env("CLISCALE_RUNNER_TEE_STDOUT", "false")
        .env("CLISCALE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn read_stored(api: SocketAddr, sid: &str) -> (reqwest::header::HeaderMap, Vec<u8>) {
    let resp = reqwest::Client::new()
        .get(format!("http://{api}/api/sessions/{sid}/output"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    (headers, resp.bytes().await.unwrap().to_vec())
}

async fn read_stored_text(api: SocketAddr, sid: &str) -> String {
    let url = format!("http://{api}/api/sessions/{sid}/output?format=text");
    let resp = reqwest::Client::new().get(url).bearer_auth(ADMIN_KEY).send().await.unwrap();
    resp.text().await.unwrap()
}

async fn stored_end(store: &Store, sid: &str) -> u64 {
    use cliscale_api::output::OutputBackend;
    store.state(sid).await.unwrap().map_or(0, |s| s.end)
}

/// The API stops mid-session and another takes its place (behind a proxy the test cuts): the
/// runner resumes from the last acknowledged offset and no byte is lost or doubled. A gap is
/// recorded only when the outage outlasts the runner's window.
async fn an_api_restart_loses_no_byte_and_a_gap_is_recorded_only_past_the_window(backend: Backend) {
    cliscale_core::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = store_for(backend, dir.path()).await else { return };
    let keys = Arc::new(KeyRing::load_or_generate(&dir.path().join("key.der")).unwrap());
    let first = start_api(&store, &keys).await;
    let proxy = cliscale_testkit::netcut::Proxy::start(first.addr).await;
    let via_proxy = format!("http://{}", proxy.addr);

    // 1. Within the window: the API goes away for two seconds while output flows.
    let sid = "restart-within-window";
    let command = "for i in $(seq 1 300); do echo line-$i; sleep 0.01; done";
    store
        .insert_session(sid, "00000000000000aa", &cliscale_core::spec::SessionSpec::new(command))
        .await
        .unwrap();
    let mut runner = spawn_runner(dir.path(), &keys, sid, command, &via_proxy, 1 << 20);
    let deadline = std::time::Instant::now() + HANG_GUARD;
    while stored_end(&store, sid).await == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing was stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut();
    first.stop().await;
    // The outage under test: two seconds without an API.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = start_api(&store, &keys).await;
    proxy.retarget(second.addr);
    proxy.restore();
    let exit = tokio::time::timeout(HANG_GUARD, runner.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit}");
    let expected: String = (1..=300).map(|i| format!("line-{i}\r\n")).collect();
    let (headers, stored) = read_stored(second.addr, sid).await;
    assert_eq!(header(&headers, "cliscale-output-gaps"), "");
    assert_eq!(String::from_utf8_lossy(&stored), expected);

    // 2. Past the window: 300 kB are written while the store is unreachable and the runner
    // holds 64 KiB; the store records the gap, then everything after it.
    let sid = "outage-past-window";
    let command = "head -c 300000 /dev/zero | tr '\\0' x; sleep 2; echo; echo tail-marker";
    store
        .insert_session(sid, "00000000000000aa", &cliscale_core::spec::SessionSpec::new(command))
        .await
        .unwrap();
    proxy.cut();
    let mut runner = spawn_runner(dir.path(), &keys, sid, command, &via_proxy, 65536);
    // The outage under test: longer than the 300 kB take to pass the runner's window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.restore();
    let exit = tokio::time::timeout(HANG_GUARD, runner.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit}");
    let (headers, stored) = read_stored(second.addr, sid).await;
    let gaps = header(&headers, "cliscale-output-gaps");
    let (from, to) = gaps.split_once('-').expect("a gap");
    let (from, to): (usize, usize) = (from.parse().unwrap(), to.parse().unwrap());
    assert_eq!(from, 0, "{gaps}");
    assert!((300_000 - 65536..300_000).contains(&to), "{gaps}");
    assert_eq!(
        header(&headers, "cliscale-output-end"),
        (300_000 + "\r\ntail-marker\r\n".len()).to_string()
    );
    // Everything after the gap is there, exactly.
    assert_eq!(stored.len(), 300_000 - to + "\r\ntail-marker\r\n".len());
    assert!(stored[..300_000 - to].iter().all(|b| *b == b'x'));
    assert!(stored.ends_with(b"\r\ntail-marker\r\n"));
    // The text form says where bytes are missing.
    let text = read_stored_text(second.addr, sid).await;
    assert!(
        text.starts_with(&format!("\n[cliscale: {to} bytes of output were not stored]\n")),
        "{}",
        &text[..80]
    );
    second.stop().await;
}

/// The output stream is live while the session runs; a client that reconnects with
/// `Last-Event-ID` gets exactly what follows; the stream ends with the final status.
async fn the_event_stream_is_live_then_resumes_at_last_event_id(backend: Backend) {
    let Some(stack) = stack(backend, &[]).await else { return };
    let created = stack
        .create(
            ADMIN_KEY,
            json!({"command": "for i in $(seq 1 40); do echo ev-$i; sleep 0.05; done"}),
        )
        .await;
    let sid = created["sessionId"].as_str().unwrap();
    let url = stack.url(&format!("/api/sessions/{sid}/output/stream"));

    // Live: the first output arrives while the session still runs.
    let resp = stack.http.get(&url).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(header(resp.headers(), "content-type").starts_with("text/event-stream"));
    let mut events = SseReader::new(resp);
    let hello = events.next().await.unwrap();
    assert_eq!(hello.event, "hello");
    let mut first = Vec::new();
    let mut last_id = String::new();
    while !String::from_utf8_lossy(&first).contains("ev-3\r\n") {
        let e = events.next().await.expect("output before the end");
        if e.event == "status" {
            continue; // Starting, Running
        }
        assert_eq!(e.event, "output", "{e:?}");
        first.extend(output_bytes(&e.data));
        last_id = e.id.clone().unwrap();
    }
    let (_, s) = stack.call("GET", &format!("/api/sessions/{sid}"), Some(ADMIN_KEY), None).await;
    assert_eq!(s["phase"], "Running", "the stream was not live");
    drop(events);

    // Resume: exactly what follows the last event, then the final status, then the end.
    let resp = stack
        .http
        .get(&url)
        .bearer_auth(ADMIN_KEY)
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    let mut events = SseReader::new(resp);
    assert_eq!(events.next().await.unwrap().id.as_deref(), Some(last_id.as_str()));
    let mut rest = Vec::new();
    let mut statuses = Vec::new();
    while let Some(e) = events.next().await {
        match e.event.as_str() {
            "output" => {
                let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
                assert_eq!(data["offset"].as_u64().unwrap() as usize, first.len() + rest.len());
                rest.extend(output_bytes(&e.data));
            }
            "status" => statuses.push(serde_json::from_str::<serde_json::Value>(&e.data).unwrap()),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(statuses.last().unwrap()["phase"], "Succeeded");
    let all: String = String::from_utf8(first.into_iter().chain(rest).collect()).unwrap();
    let expected: String = (1..=40).map(|i| format!("ev-{i}\r\n")).collect();
    assert_eq!(all, expected);

    // A Last-Event-ID this stream never sent is refused.
    let bad = stack
        .http
        .get(&url)
        .bearer_auth(ADMIN_KEY)
        .header("last-event-id", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = serde_json::from_slice(&bad.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"], "invalid_last_event_id");
}

fn output_bytes(data: &str) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_str(data).unwrap();
    base64::engine::general_purpose::STANDARD.decode(v["data"].as_str().unwrap()).unwrap()
}

#[derive(Debug)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
}

/// Reads Server-Sent Events off a response, skipping comments (keepalives).
struct SseReader {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

impl SseReader {
    fn new(resp: reqwest::Response) -> Self {
        Self { body: resp.bytes_stream().boxed(), buf: String::new() }
    }

    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut e = SseEvent { event: "message".into(), id: None, data: String::new() };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        e.event = v.into();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        e.id = Some(v.into());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        e.data += v;
                        any = true;
                    }
                }
                if any {
                    return Some(e);
                }
                continue;
            }
            let chunk = tokio::time::timeout(HANG_GUARD, self.body.next()).await.ok()??.ok()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// A finished session's stored output is deleted with it when its TTL passes.
async fn stored_output_goes_with_the_session_at_its_ttl(backend: Backend) {
    let Some(stack) = stack(backend, &["--gc-interval", "1s"]).await else { return };
    let created =
        stack.create(ADMIN_KEY, json!({"command": "echo kept-until-ttl", "ttl_seconds": 2})).await;
    let sid = created["sessionId"].as_str().unwrap();
    stack.wait_for_phase(sid, "Succeeded").await;
    let (status, _, body) = get(&stack, &format!("/api/sessions/{sid}/output"), ADMIN_KEY).await;
    assert_eq!(status, 200);
    assert_eq!(body, b"kept-until-ttl\r\n");
    let deadline = std::time::Instant::now() + HANG_GUARD;
    loop {
        let (status, _, body) =
            get(&stack, &format!("/api/sessions/{sid}/output"), ADMIN_KEY).await;
        if status == 404 {
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"], "not_found");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the output outlived its TTL");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Gone from the database, not only from view.
    if backend == Backend::Sqlite {
        let url = format!("sqlite://{}", stack.data.path().join("cliscale.db").display());
        sqlx::any::install_default_drivers();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await.unwrap();
        for table in ["session_output", "session_output_state", "session_resizes"] {
            let n: i64 = sqlx::Row::get(
                &sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table} WHERE session_id = $1"))
                    .bind(sid)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap(),
                "n",
            );
            assert_eq!(n, 0, "{table} still holds the session");
        }
        let file = stack.data.path().join(format!("output/{sid}.log"));
        assert!(!file.exists(), "{} outlived the session", file.display());
    }
}

/// Past the per-session cap the store keeps the head and the newest tail, with one gap
/// recorded between them; what it keeps is byte-exact.
async fn past_the_cap_the_head_and_the_tail_are_kept_around_a_gap(backend: Backend) {
    let cap: usize = 16 * 1024 * 1024;
    let Some(stack) = stack(backend, &["--output-cap-bytes", &cap.to_string()]).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lines.txt");
    // 48 MB of numbered lines, written a megabyte at a time (as above).
    let data: Vec<u8> = (0..4_000_000).flat_map(|i| format!("{i:011}\n").into_bytes()).collect();
    std::fs::write(&file, &data).unwrap();
    let (_, headers, body) = run_to_the_end(&stack, &paced_cat(&file, 48)).await;
    assert_eq!(header(&headers, "cliscale-output-end"), data.len().to_string());
    let gaps = header(&headers, "cliscale-output-gaps");
    let (from, to) = gaps.split_once('-').expect("one gap");
    let (from, to): (usize, usize) = (from.parse().unwrap(), to.parse().unwrap());
    // The head holds at least half the cap; the whole is within the cap plus one batch.
    assert!(from >= cap / 2, "{gaps}");
    let batch = cliscale_core::output::MAX_APPEND_BYTES;
    assert!(body.len() <= cap + batch, "{} bytes kept", body.len());
    assert_eq!(body.len(), from + data.len() - to);
    assert_eq!(&body[..from], &data[..from]);
    assert_eq!(&body[from..], &data[to..]);
}

/// Secret values never reach a stream, the store, the tail or the recording: not whole, not
/// split across two writes, not base64- or URL-encoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_masked_wherever_output_goes() {
    let Some(stack) = stack(Backend::Sqlite, &[]).await else { return };
    let secret = "s3cr3t-V@lue/42";
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("user:{secret}"));
    let url: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let (first_half, second_half) = secret.split_at(6);
    let command = format!(
        "printf 'whole=%s\\n' \"$API_TOKEN\"; printf 'split={first_half}'; sleep 0.03; \
         printf -- '{second_half}\\n'; \
         printf 'user:%s' \"$API_TOKEN\" | base64; echo 'url={url}'; echo done"
    );
    let created = stack
        .create(
            ADMIN_KEY,
            json!({"command": command, "env": {"API_TOKEN": secret}, "masked_env": ["API_TOKEN"]}),
        )
        .await;
    let sid = created["sessionId"].as_str().unwrap();
    // The live terminal masks as well.
    let token = created["token"].as_str().unwrap();
    let mut ws = open_terminal(&stack.ws_url(sid, &format!("token={token}"))).await.unwrap();
    let (live, _, _) = read_session(&mut ws).await;
    stack.wait_for_phase(sid, "Succeeded").await;

    let (_, _, raw) = get(&stack, &format!("/api/sessions/{sid}/output"), ADMIN_KEY).await;
    let (_, _, text) =
        get(&stack, &format!("/api/sessions/{sid}/output?format=text"), ADMIN_KEY).await;
    let (_, _, cast) = get(&stack, &format!("/api/sessions/{sid}/recording"), ADMIN_KEY).await;
    let (_, view) = stack.call("GET", &format!("/api/sessions/{sid}"), Some(ADMIN_KEY), None).await;
    let sse = reqwest::Client::new()
        .get(stack.url(&format!("/api/sessions/{sid}/output/stream")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let mut events = SseReader::new(sse);
    let mut streamed = Vec::new();
    while let Some(e) = events.next().await {
        if e.event == "output" {
            streamed.extend(output_bytes(&e.data));
        }
    }
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("whole=***\nsplit=***\n"), "{text}");
    assert!(text.contains("url=***\ndone"), "{text}");
    let tail = view["outputTail"].as_str().unwrap().as_bytes().to_vec();
    for (what, bytes) in [
        ("live", &live),
        ("stored", &raw),
        ("recording", &cast),
        ("sse", &streamed),
        ("tail", &tail),
    ] {
        let s = String::from_utf8_lossy(bytes);
        for form in [secret, &b64[8..], url.as_str(), first_half, second_half] {
            assert!(!s.contains(form), "{what} holds {form:?}: {s}");
        }
        assert!(s.contains("***"), "{what} shows no mask: {s}");
    }
}

/// The recording is asciicast v2 that asciinema itself loads: the header, `o` events on the
/// runner's clock rising monotonically, and an `r` event where the terminal was resized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recording_loads_in_asciinema_with_its_resize() {
    let Some(stack) = stack(Backend::Sqlite, &[]).await else { return };
    let created = stack
        .create(
            ADMIN_KEY,
            json!({"command": "echo before; read -r x; echo after-$x", "cols": 90, "rows": 20}),
        )
        .await;
    let sid = created["sessionId"].as_str().unwrap();
    let token = created["token"].as_str().unwrap();
    let mut ws = open_terminal(&stack.ws_url(sid, &format!("token={token}"))).await.unwrap();
    common::read_until(&mut ws, "before").await;
    ws.send(Message::text(r#"{"type":"resize","cols":120,"rows":40}"#)).await.unwrap();
    ws.send(Message::binary(b"go\r".to_vec())).await.unwrap();
    read_session(&mut ws).await;
    stack.wait_for_phase(sid, "Succeeded").await;
    let resp = stack
        .http
        .get(stack.url(&format!("/api/sessions/{sid}/recording")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(resp.headers(), "content-type"), "application/x-asciicast");
    let cast = resp.bytes().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("session.cast");
    std::fs::write(&path, &cast).unwrap();

    let Ok(python) = std::env::var("CLISCALE_TEST_ASCIINEMA_PYTHON") else {
        cliscale_testkit::postgres::skip_unless_ci(
            "CLISCALE_TEST_ASCIINEMA_PYTHON",
            "CLISCALE_TEST_ASCIINEMA_PYTHON is not set, so asciinema did not load the recording",
        );
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/asciicast_check.py");
    let out = std::process::Command::new(python).arg(script).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["version"], 2);
    assert_eq!((summary["width"].as_u64(), summary["height"].as_u64()), (Some(90), Some(20)));
    assert_eq!(summary["term"], "xterm-256color");
    assert!(summary["title"].as_str().unwrap().contains(sid));
    assert!(summary["timestamp"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(summary["monotonic"], true);
    assert_eq!(summary["resizes"], json!(["120x40"]));
    let output = summary["output"].as_str().unwrap();
    let (before, after) = (output.find("before").unwrap(), output.find("after-go").unwrap());
    // The resize sits between the output before it and the output after it.
    let resize_at = summary["resize_output_offsets"][0].as_u64().unwrap() as usize;
    assert!(before < resize_at && resize_at <= after, "{summary}");
    // Input is never recorded: only the echo the terminal printed.
    assert!(!summary["kinds"].as_array().unwrap().iter().any(|k| k == "i"), "{summary}");
}

/// Roles hold for output as for the session; a runner's credential appends to its own
/// session only; bad requests get their stable codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_is_guarded_by_roles_and_credentials_and_refuses_bad_requests() {
    let Some(stack) = stack(Backend::Sqlite, &[]).await else { return };
    let alice = stack.new_key("operator").await;
    let bob = stack.new_key("operator").await;
    let viewer = stack.new_key("viewer").await;
    let created = stack.create(&alice, json!({"command": "echo alice-only"})).await;
    let sid = created["sessionId"].as_str().unwrap();
    stack.wait_for_phase(sid, "Succeeded").await;
    for path in ["output", "output/stream", "recording"] {
        let path = format!("/api/sessions/{sid}/{path}");
        let (status, _, body) = get(&stack, &path, &bob).await;
        assert_eq!(status, 404, "another operator read {path}: {}", String::from_utf8_lossy(&body));
        let (status, _, _) = get(&stack, &path, &viewer).await;
        assert_eq!(status, 200, "{path}");
    }
    let (status, _, body) = get(&stack, &format!("/api/sessions/{sid}/output"), &alice).await;
    assert_eq!((status, body.as_slice()), (200, &b"alice-only\r\n"[..]));

    // Appends: only the session's own output credential, never a key or a terminal token.
    let keys = KeyRing::load_or_generate(&stack.data.path().join("signing-key.der")).unwrap();
    let other = stack.create(&bob, json!({"command": "echo bob"})).await;
    let other_sid = other["sessionId"].as_str().unwrap();
    let append = |sid: &str, credential: &str, query: &str, body: Vec<u8>| {
        stack
            .http
            .post(stack.url(&format!("/api/sessions/{sid}/output?{query}")))
            .bearer_auth(credential)
            .body(body)
            .send()
    };
    let own = keys.output_token("cliscale", sid, None).unwrap();
    for (credential, target) in [
        (own.as_str(), other_sid),
        (ADMIN_KEY, sid),
        (created["token"].as_str().unwrap(), sid),
        ("", sid),
    ] {
        let resp = append(target, credential, "offset=0", b"forged".to_vec()).await.unwrap();
        assert_eq!(resp.status(), 401, "{credential:.12} appended to {target}");
        let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!(body["error"], "invalid_output_token");
    }
    let (_, _, still) = get(&stack, &format!("/api/sessions/{sid}/output"), &alice).await;
    assert_eq!(still, b"alice-only\r\n");
    // The session's own credential past the end without a declared gap: told where to resume.
    let resp = append(sid, &own, "offset=999", b"late".to_vec()).await.unwrap();
    assert_eq!(resp.status(), 409);
    assert_eq!(header(resp.headers(), "cliscale-output-end"), "12");
    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"], "output_behind");
    let resp = append(sid, &own, "offset=0&bogus=1", Vec::new()).await.unwrap();
    assert_eq!(resp.status(), 400);
    let resp = append(sid, &own, "offset=0&resizes=1.2.0x0", Vec::new()).await.unwrap();
    assert_eq!(resp.status(), 400);

    // Reads with bad parameters.
    for (query, code) in [
        ("format=html", "invalid_query"),
        ("since=10&until=2", "invalid_range"),
        ("since=-1", "invalid_query"),
    ] {
        let (status, _, body) =
            get(&stack, &format!("/api/sessions/{sid}/output?{query}"), &alice).await;
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((status, body["error"].as_str()), (400, Some(code)), "{query}");
    }
    // Last: the server answers an oversized body at once and closes the connection.
    let resp = append(sid, &own, "offset=0", vec![b'x'; 5 * 1024 * 1024]).await.unwrap();
    assert_eq!(resp.status(), 413);
}
