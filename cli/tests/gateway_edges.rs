//! Gateway behaviour at the edges: key-set caching, rate limits, slow, unreachable and
//! departed runners. Each refusal is an HTTP status with a reason, and the gateway stays up.

use cliscale_testkit::stack as common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{ADMIN_KEY, Backend, Stack, open_terminal, read_session, read_until};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// The stack's own signing key, to mint tokens the way the API does.
fn signing_key(stack: &Stack) -> cliscale_core::token::SessionSigningKey {
    let jwks: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(stack.data.path().join("jwks.json")).unwrap(),
    )
    .unwrap();
    let der = std::fs::read(stack.data.path().join("signing-key.der")).unwrap();
    cliscale_core::token::SessionSigningKey::from_pkcs8_der(
        jwks["keys"][0]["kid"].as_str().unwrap(),
        &der,
    )
    .unwrap()
}

fn token(key: &cliscale_core::token::SessionSigningKey, sid: &str) -> String {
    let claims = cliscale_core::token::new_claims(
        "cliscale",
        cliscale_core::token::TERMINAL_AUDIENCE,
        cliscale_testkit::stack::ADMIN_KEY_ID,
        sid,
        cliscale_core::token::TokenScope::View,
        300,
    );
    key.sign(&claims).unwrap()
}

/// Creates a session running `command`; returns its id and the terminal URL its one-time
/// token opens.
async fn new_session(stack: &Stack, command: &str) -> (String, String) {
    let created = stack.create(ADMIN_KEY, json!({ "command": command })).await;
    let sid = created["sessionId"].as_str().unwrap().to_owned();
    let url = stack.ws_url(&sid, &format!("token={}", created["token"].as_str().unwrap()));
    (sid, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_set_is_fetched_once_across_a_thousand_connects() {
    let stack = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let key = signing_key(&stack);
    for i in 0..1000 {
        let sid = format!("no-such-session-{i}");
        let refused = open_terminal(&stack.ws_url(&sid, &format!("token={}", token(&key, &sid))))
            .await
            .unwrap_err();
        assert_eq!(refused, (404, "session_not_found".into()));
    }
    assert_eq!(stack.metric("cliscale_api_jwks_served_total").await, 1.0);
    // Tokens naming an unknown key id trigger at most one refetch per interval, not one each.
    let stranger = cliscale_core::token::SessionSigningKey::generate("unknown-kid");
    for i in 0..100 {
        let sid = format!("s{i}");
        let refused =
            open_terminal(&stack.ws_url(&sid, &format!("token={}", token(&stranger, &sid))))
                .await
                .unwrap_err();
        assert_eq!(refused, (401, "token_unknown_key".into()));
    }
    assert!(stack.metric("cliscale_api_jwks_served_total").await <= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_apply_per_key_after_auth_and_per_address_before() {
    let stack = Stack::start(Backend::Sqlite, &["--rate-per-minute", "5"]).await.unwrap();
    let operator = stack.new_key("operator").await; // the admin's first request
    for _ in 0..4 {
        assert_eq!(stack.call("GET", "/api/sessions", Some(ADMIN_KEY), None).await.0, 200);
    }
    let resp =
        stack.http.get(stack.url("/api/sessions")).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "rate_limited");
    // Another key has its own budget.
    assert_eq!(stack.call("GET", "/api/sessions", Some(&operator), None).await.0, 200);
    // Unauthenticated attempts are limited by client address.
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(
            stack.call("GET", "/api/sessions", Some("csk_0123456789abcdef_guess"), None).await.0,
        );
    }
    assert_eq!(&statuses[..5], &[401; 5]);
    assert_eq!(statuses[6], 429);
}

/// A runner binary that takes `delay` seconds to start, like a slow image pull.
fn slow_runner(dir: &std::path::Path, delay: &str) -> std::path::PathBuf {
    let path = dir.join("slow-runner");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nsleep {delay}\nexec '{}' \"$@\"\n", common::runner_bin().display()),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_runner_is_waited_for_within_bounds_and_a_refusal_burns_no_token() {
    let tools = tempfile::tempdir().unwrap();
    let slow = slow_runner(tools.path(), "3").display().to_string();
    let impatient =
        Stack::start(Backend::Sqlite, &["--runner-bin", &slow, "--ready-wait", "300ms"])
            .await
            .unwrap();
    let created = impatient.create(ADMIN_KEY, json!({"command": "echo up; read -r x"})).await;
    let (sid, tok) = (created["sessionId"].as_str().unwrap(), created["token"].as_str().unwrap());
    let url = impatient.ws_url(sid, &format!("token={tok}"));
    assert_eq!(open_terminal(&url).await.unwrap_err(), (503, "runner_not_ready".into()));
    impatient.wait_for_phase(sid, "Running").await;
    assert!(open_terminal(&url).await.is_ok(), "the refused attempt did not consume the token");

    let patient = Stack::start(Backend::Sqlite, &["--runner-bin", &slow]).await.unwrap();
    let created = patient.create(ADMIN_KEY, json!({"command": "echo up; read -r x"})).await;
    let url = patient.ws_url(
        created["sessionId"].as_str().unwrap(),
        &format!("token={}", created["token"].as_str().unwrap()),
    );
    let mut ws = open_terminal(&url).await.expect("the gateway waits for the starting runner");
    common::read_until(&mut ws, "up").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_runner_is_a_clear_refusal_and_the_gateway_stays_up() {
    let tools = tempfile::tempdir().unwrap();
    // Claims (on its event pipe) to listen on a port where nothing does.
    let liar = tools.path().join("liar-runner");
    let script = "#!/bin/sh\necho '{\"event\":\"listening\",\"addr\":\"127.0.0.1:1\"}' >&\"$CLISCALE_RUNNER_EVENTS_FD\"\nexec sleep 600\n";
    std::fs::write(&liar, script).unwrap();
    std::fs::set_permissions(&liar, std::fs::Permissions::from_mode(0o755)).unwrap();
    let stack =
        Stack::start(Backend::Sqlite, &["--runner-bin", liar.to_str().unwrap()]).await.unwrap();
    let (sid, url) = new_session(&stack, "true").await;
    stack.wait_for_phase(&sid, "Starting").await;
    assert_eq!(open_terminal(&url).await.unwrap_err(), (502, "runner_unreachable".into()));
    let health = stack.http.get(stack.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        stack.call("GET", &format!("/api/sessions/{sid}"), Some(ADMIN_KEY), None).await.0,
        200
    );
}

/// Once its runner has left, a session's terminal opens from the output store: read-only,
/// its output, its final status, then 1000 "session ended" (a gateway without the store
/// answers 410 `session_gone`, which the gateway's unit tests hold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_runner_has_left_opens_from_the_store() {
    let stack = Stack::start(Backend::Sqlite, &["--linger", "0s"]).await.unwrap();
    let created = stack.create(ADMIN_KEY, json!({"command": "echo left-behind"})).await;
    let sid = created["sessionId"].as_str().unwrap();
    stack.wait_for_phase(sid, "Succeeded").await;
    common::wait_for_runner_exit(sid).await;
    let key = signing_key(&stack);
    let mut ws =
        open_terminal(&stack.ws_url(sid, &format!("token={}", token(&key, sid)))).await.unwrap();
    let mut hello = None;
    while hello.is_none() {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) if t.contains("\"hello\"") => {
                hello = Some(serde_json::from_str::<serde_json::Value>(&t).unwrap())
            }
            _ => {}
        }
    }
    let hello = hello.unwrap();
    assert_eq!(
        (hello["readOnly"].as_bool(), hello["status"]["phase"].as_str()),
        (Some(true), Some("Succeeded"))
    );
    let (out, status, _) = common::read_session(&mut ws).await;
    assert_eq!(out, b"left-behind\r\n");
    assert_eq!(status["exitCode"], 0);
    match ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected a close, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_sessions_are_deleted_after_their_ttl() {
    let stack =
        Stack::start(Backend::Sqlite, &["--gc-interval", "200ms", "--linger", "0s"]).await.unwrap();
    let keep = stack.create(ADMIN_KEY, json!({"command": "exit 0", "ttl_seconds": 3600})).await;
    let gone = stack.create(ADMIN_KEY, json!({"command": "exit 0", "ttl_seconds": 0})).await;
    let (keep, gone) = (keep["sessionId"].as_str().unwrap(), gone["sessionId"].as_str().unwrap());
    stack.wait_for_phase(keep, "Succeeded").await;
    let session_dir = stack.data.path().join("sessions").join(gone);
    let deadline = std::time::Instant::now() + common::HANG_GUARD;
    while stack.call("GET", &format!("/api/sessions/{gone}"), Some(ADMIN_KEY), None).await.0 != 404
    {
        assert!(std::time::Instant::now() < deadline, "the expired session was never deleted");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!session_dir.exists(), "its files are deleted too");
    assert_eq!(
        stack.call("GET", &format!("/api/sessions/{keep}"), Some(ADMIN_KEY), None).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_cliscale_up_sends_sigterm_to_its_runners() {
    let mut stack = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let created = stack
        .create(ADMIN_KEY, json!({"command": "trap '' HUP; trap 'echo got-sigterm > stopped; exit 0' TERM; echo up; while :; do sleep 0.1; done"}))
        .await;
    let sid = created["sessionId"].as_str().unwrap().to_owned();
    stack.wait_for_phase(&sid, "Running").await;
    let marker = stack.work.path().join(&sid).join("stopped");
    std::process::Command::new("kill")
        .args(["-INT", &stack.child.id().to_string()])
        .status()
        .unwrap();
    let status = stack.child.wait().unwrap();
    assert!(status.success(), "cliscale up exits cleanly on Ctrl-C: {status}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "got-sigterm");
}

/// Stopping `cliscale up` while a browser watches: the runner is stopped first, so the browser
/// sees its session end (Cancelled) and the connection close, and the process exits. A relay
/// that waited for its browser would hold the server's graceful shutdown open for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_cliscale_up_with_a_terminal_open_ends_it_and_exits() {
    let mut stack = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let (_, url) = new_session(&stack, "echo watching; read -r x").await;
    let mut ws = open_terminal(&url).await.unwrap();
    read_until(&mut ws, "watching").await;
    Command::new("kill").args(["-INT", &stack.child.id().to_string()]).status().unwrap();
    let (_, last, _) = read_session(&mut ws).await;
    assert_eq!(last["phase"], "Cancelled", "{last}");
    let pid = stack.child.id();
    let waited = tokio::task::spawn_blocking(move || stack.child.wait());
    let status = tokio::time::timeout(common::HANG_GUARD, waited)
        .await
        .unwrap_or_else(|_| panic!("cliscale up ({pid}) did not exit with a terminal open"))
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

/// Output that piles up in the gateway while a browser is not reading comes out whole and in
/// order once it reads: the relay forwards the runner's frames in bursts (at most 8 per flush),
/// and a frame taken from the runner beyond a burst must never be dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_piled_up_behind_a_late_reader_arrives_whole_and_in_order() {
    let stack = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    // About 13 MB: some 200 frames of 64 KiB, more than the sockets between runner, gateway and
    // browser hold, and less than the runner's 16 MiB log window.
    let command = "stty -echo; seq 1 1500000; echo DONE; read -r x";
    let (sid, late_url) = new_session(&stack, command).await;
    let mut late = open_terminal(&late_url).await.unwrap();
    // While another terminal reads everything, the first reads nothing: its runner frames pile
    // up in the gateway's connection to the runner.
    let key = signing_key(&stack);
    let mut watcher =
        open_terminal(&stack.ws_url(&sid, &format!("token={}", token(&key, &sid)))).await.unwrap();
    let (seen, _) = read_until(&mut watcher, "DONE\r\n").await;
    let mut expected: Vec<u8> =
        (1..=1_500_000).flat_map(|i| format!("{i}\r\n").into_bytes()).collect();
    expected.extend_from_slice(b"DONE\r\n");
    assert!(seen.ends_with(&expected), "the watcher's copy differs");

    let (out, _) = read_until(&mut late, "DONE\r\n").await;
    assert_eq!(out.len(), expected.len(), "the late reader got {} bytes", out.len());
    assert!(out == expected, "the late reader's copy differs from the command's output");
    late.send(Message::Binary(b"\r".to_vec().into())).await.unwrap();
    let (_, status, _) = read_session(&mut late).await;
    assert_eq!(status["phase"], "Succeeded", "{status}");
}

/// A paste into a command that is not reading its input holds the browser's frames up at the
/// runner and, behind them, in the gateway; the browser's pongs wait in the same queue. Neither
/// hop may take that wait for silence and drop the browser with its input half delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paste_waiting_for_a_busy_command_is_not_taken_for_a_silent_browser() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    const FRAME: usize = 512 * 1024;
    const FRAMES: usize = 128; // 64 MiB: far more than the sockets and queues on the way hold.
    let stack = Stack::start(Backend::Sqlite, &["--ping-interval", "100ms"]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    assert!(Command::new("mkfifo").arg(&gate).status().unwrap().success());
    let command = format!(
        "stty raw -echo; printf R; read -r _ < '{}'; head -c {} | sha256sum",
        gate.display(),
        FRAME * FRAMES
    );
    let (_, url) = new_session(&stack, &command).await;
    let mut ws = open_terminal(&url).await.unwrap();
    read_until(&mut ws, "R").await;
    let (mut tx, mut rx) = ws.split();
    let frame: Vec<u8> = (0..FRAME).map(|i| b'a' + (i % 26) as u8).collect();
    let sender = tokio::spawn({
        let frame = frame.clone();
        async move {
            for _ in 0..FRAMES {
                tx.send(Message::Binary(frame.clone().into())).await.unwrap();
            }
            tx
        }
    });
    let digest = tokio::task::spawn_blocking(move || {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        for _ in 0..FRAMES {
            hasher.update(&frame);
        }
        hex::encode(hasher.finalize())
    });
    // Ten gateway ping intervals pass with the paste held up; the time passing is what is
    // under test, and the sender still being stuck afterwards shows the hold-up lasted.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(!sender.is_finished(), "the paste was not held up; the test proves nothing");
    let digest = digest.await.unwrap();
    std::fs::write(&gate, b"go\n").unwrap();
    let mut output = Vec::new();
    while !String::from_utf8_lossy(&output).contains(&digest) {
        match tokio::time::timeout(common::HANG_GUARD, rx.next()).await.unwrap() {
            Some(Ok(Message::Binary(data))) => {
                output.extend_from_slice(cliscale_core::protocol::decode_output(&data).unwrap().1)
            }
            Some(Ok(Message::Close(frame))) => panic!("dropped mid-paste: {frame:?}"),
            Some(Ok(_)) => {}
            other => panic!("connection ended mid-paste: {other:?}"),
        }
    }
    drop(sender.await.unwrap());
}

/// Intervals and limits of zero are refused when `cliscale up` starts: a zero interval used to
/// panic the task that ran it (session GC stopped for good).
#[test]
fn zero_intervals_are_refused_at_startup() {
    for flag in ["--ping-interval", "--gc-interval", "--token-ttl"] {
        let data = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_cliscale"))
            .args(["up", "--listen", "127.0.0.1:0", flag, "0s"])
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{flag}: {stderr}");
        assert!(stderr.contains(flag) && stderr.contains("must be more than zero"), "{stderr}");
    }
}

/// A browser that stops reading is dropped by the gateway after the stall timeout, with a close
/// reason it gets once it reads again, and without disturbing the session or other viewers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_stops_reading_is_dropped_with_a_reason() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    // The stall timeout is also how long the close gets to go through: long enough for this
    // client to read the megabytes in flight once it sees the drop, on a loaded machine.
    let stack = Stack::start(Backend::Sqlite, &["--client-stall-timeout", "3s"]).await.unwrap();
    // About 40 MB once a viewer asks: far more than the sockets on the way hold.
    let command = "stty -echo; read -r _; seq 1 5000000; echo DONE";
    let (sid, url) = new_session(&stack, command).await;
    let mut stuck = open_terminal(&url).await.unwrap();
    let key = signing_key(&stack);
    let mut watcher =
        open_terminal(&stack.ws_url(&sid, &format!("token={}", token(&key, &sid)))).await.unwrap();
    stuck.send(Message::Binary(b"\r".to_vec().into())).await.unwrap();
    read_until(&mut watcher, "DONE\r\n").await;
    // The watcher got everything; the stuck browser, reading nothing, is dropped.
    let dropped = "cliscale_gateway_dropped_total{code=\"too_slow\"} 1";
    let deadline = std::time::Instant::now() + common::HANG_GUARD;
    loop {
        let metrics = stack.http.get(stack.url("/gateway/metrics")).send().await.unwrap();
        if metrics.text().await.unwrap().contains(dropped) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the stuck browser was never dropped");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut got = 0usize;
    let close = loop {
        match tokio::time::timeout(common::HANG_GUARD, stuck.next()).await.unwrap() {
            Some(Ok(Message::Binary(data))) => got += data.len(),
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("ended without a close frame after {got} bytes: {other:?}"),
        }
    };
    let close = close.expect("a close frame with a code");
    assert_eq!((u16::from(close.code), close.reason.as_str()), (4008, "client too slow"));
    // The session carries on to its end for everyone else.
    let (_, status, _) = read_session(&mut watcher).await;
    assert_eq!(status["phase"], "Succeeded", "{status}");
}

/// A browser message over the gateway's limit closes that connection with 1009 (Message Too
/// Big), as the runner does; nothing of it reaches the session, which carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_closes_only_that_connection_with_1009() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let stack = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let command = "stty -echo; printf 'ready\\n'; read -r line; echo \"got ${#line}\"";
    let (sid, url) = new_session(&stack, command).await;
    let mut ws = open_terminal(&url).await.unwrap();
    read_until(&mut ws, "ready").await;
    let _ = ws.send(Message::Binary(vec![b'x'; 2 * 1024 * 1024].into())).await;
    let close = loop {
        match tokio::time::timeout(common::HANG_GUARD, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1009));
    let key = signing_key(&stack);
    let mut viewer =
        open_terminal(&stack.ws_url(&sid, &format!("token={}", token(&key, &sid)))).await.unwrap();
    let (seen, _) = read_until(&mut viewer, "ready").await;
    assert!(!String::from_utf8_lossy(&seen).contains("got"), "part of the message got through");
}
