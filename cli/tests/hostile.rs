//! Tokens and keys mean what they say (docs/security.md): a used token opens nothing, not even
//! at the runner's own port; a revoked or demoted key's terminals end and its reconnect chain
//! breaks; a refusal never uses a token up; administrators cannot lock themselves out.

use std::time::{Duration, Instant};

use cliscale_testkit::harness::direct_url;
use cliscale_testkit::on_both_backends;
use cliscale_testkit::procinfo::session_processes;
use cliscale_testkit::stack::{
    self as common, ADMIN_KEY, Backend, HANG_GUARD, Stack, open_terminal,
};
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

on_both_backends!(
    a_used_token_opens_nothing_at_the_runner_either,
    a_revoked_key_ends_its_terminals_and_its_reconnect_chain,
    a_demoted_key_keeps_watching_but_stops_typing,
    administrators_cannot_lock_themselves_out,
    a_refusal_never_uses_a_token_up,
);

async fn mint(stack: &Stack, key: &str, sid: &str, scope: &str) -> String {
    let path = format!("/api/sessions/{sid}/tokens");
    let (status, body) = stack.call("POST", &path, Some(key), Some(json!({"scope": scope}))).await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// Reads frames until the reconnect token; the terminal stays open.
async fn reconnect_token(ws: &mut common::Ws) -> String {
    loop {
        let message = tokio::time::timeout(HANG_GUARD, ws.next()).await.unwrap().unwrap().unwrap();
        if let Message::Text(t) = message {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "reconnect" {
                return v["token"].as_str().unwrap().to_owned();
            }
        }
    }
}

/// Reads until the connection closes; returns the close code.
async fn close_code(ws: &mut common::Ws) -> Option<u16> {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await.expect("the terminal never closed") {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Whether the connection is still open and serving after the check interval has passed a few
/// times: a ping gets its pong.
async fn still_open(ws: &mut common::Ws) -> bool {
    use futures_util::SinkExt;
    if ws.send(Message::Ping(b"alive?".to_vec().into())).await.is_err() {
        return false;
    }
    loop {
        match tokio::time::timeout(HANG_GUARD, ws.next()).await.unwrap() {
            Some(Ok(Message::Pong(p))) if &p[..] == b"alive?" => return true,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return false,
            Some(Ok(_)) => continue,
        }
    }
}

async fn a_used_token_opens_nothing_at_the_runner_either(backend: Backend) {
    let Some(stack) = Stack::start(backend, &[]).await else { return };
    let created = stack.create(ADMIN_KEY, json!({"command": "exec sleep 600"})).await;
    let sid = created["sessionId"].as_str().unwrap();
    let addr = runner_addr_of(&stack, sid).await;
    // Used at the gateway: the runner refuses it too.
    let token = created["token"].as_str().unwrap();
    let _open = open_terminal(&stack.ws_url(sid, &format!("token={token}"))).await.unwrap();
    assert_eq!(
        open_terminal(&direct_url(&addr, token)).await.err(),
        Some((401, "token_replayed".into())),
        "a token the gateway took opened the runner directly"
    );
    // Used at the runner first: once there, then neither there nor at the gateway.
    let fresh = mint(&stack, ADMIN_KEY, sid, "interact").await;
    let _direct = open_terminal(&direct_url(&addr, &fresh)).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            open_terminal(&direct_url(&addr, &fresh)).await.err(),
            Some((401, "token_replayed".into()))
        );
    }
    assert_eq!(
        open_terminal(&stack.ws_url(sid, &format!("token={fresh}"))).await.err(),
        Some((401, "token_replayed".into()))
    );
}

/// The runner's own address, found as an attacker on the host would: from its process.
async fn runner_addr_of(stack: &Stack, sid: &str) -> String {
    stack.wait_for_phase(sid, "Running").await;
    let runner = session_processes(sid).into_iter().find(|(_, comm)| comm == "cliscale-runner");
    if let Some((pid, _)) = runner {
        return listening_addr(pid);
    }
    panic!("no runner for {sid}");
}

/// The loopback address process `pid` listens on (from /proc/net/tcp and its sockets).
fn listening_addr(pid: i32) -> String {
    let inodes: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|l| {
            l.to_string_lossy().strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    for line in tcp.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (local, state, inode) = (cols[1], cols[3], cols[9].parse::<u64>().unwrap_or(0));
        if state == "0A" && inodes.contains(&inode) {
            let (ip, port) = local.split_once(':').unwrap();
            let ip = u32::from_str_radix(ip, 16).unwrap().to_le_bytes();
            let port = u16::from_str_radix(port, 16).unwrap();
            return format!("{}.{}.{}.{}:{port}", ip[0], ip[1], ip[2], ip[3]);
        }
    }
    panic!("process {pid} listens nowhere");
}

async fn a_revoked_key_ends_its_terminals_and_its_reconnect_chain(backend: Backend) {
    let Some(stack) = Stack::start(backend, &[]).await else { return };
    let (status, key) = stack
        .call("POST", "/api/keys", Some(ADMIN_KEY), Some(json!({"name": "op", "role": "operator"})))
        .await;
    assert_eq!(status, 201);
    let (key_id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    let created = stack.create(secret, json!({"command": "exec sleep 600"})).await;
    let sid = created["sessionId"].as_str().unwrap();
    let token = created["token"].as_str().unwrap();
    let mut ws = open_terminal(&stack.ws_url(sid, &format!("token={token}"))).await.unwrap();
    let reconnect = reconnect_token(&mut ws).await;
    let watching = mint(&stack, secret, sid, "view").await;
    let mut watcher =
        open_terminal(&stack.ws_url(sid, &format!("token={watching}&mode=view"))).await.unwrap();
    // A spare token minted before the revocation.
    let spare = mint(&stack, secret, sid, "interact").await;

    let revoked_at = Instant::now();
    let (status, _) =
        stack.call("DELETE", &format!("/api/keys/{key_id}"), Some(ADMIN_KEY), None).await;
    assert_eq!(status, 204);
    assert_eq!(close_code(&mut ws).await, Some(4401));
    assert_eq!(close_code(&mut watcher).await, Some(4401));
    assert!(revoked_at.elapsed() < Duration::from_secs(10), "{:?}", revoked_at.elapsed());
    for token in [&reconnect, &spare] {
        assert_eq!(
            open_terminal(&stack.ws_url(sid, &format!("token={token}"))).await.err(),
            Some((401, "key_revoked".into()))
        );
    }
    // The page is told why.
    let check = stack
        .http
        .get(stack.url(&format!("/t/{sid}/check")))
        .bearer_auth(&reconnect)
        .send()
        .await
        .unwrap();
    assert_eq!(check.status(), 401);
    let body: serde_json::Value = serde_json::from_str(&check.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "key_revoked");
}

async fn a_demoted_key_keeps_watching_but_stops_typing(backend: Backend) {
    let Some(stack) = Stack::start(backend, &[]).await else { return };
    let (_, key) = stack
        .call("POST", "/api/keys", Some(ADMIN_KEY), Some(json!({"name": "op", "role": "operator"})))
        .await;
    let (key_id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    let created = stack.create(secret, json!({"command": "exec sleep 600"})).await;
    let sid = created["sessionId"].as_str().unwrap();
    let token = created["token"].as_str().unwrap();
    let mut typing = open_terminal(&stack.ws_url(sid, &format!("token={token}"))).await.unwrap();
    let reconnect = reconnect_token(&mut typing).await;
    let view = mint(&stack, secret, sid, "view").await;
    let mut watching =
        open_terminal(&stack.ws_url(sid, &format!("token={view}&mode=view"))).await.unwrap();

    let (status, body) = stack
        .call(
            "PATCH",
            &format!("/api/keys/{key_id}"),
            Some(ADMIN_KEY),
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!((status, body["role"].as_str()), (200, Some("viewer")), "{body}");
    assert_eq!(close_code(&mut typing).await, Some(4401));
    assert!(still_open(&mut watching).await, "the watching terminal was cut");
    // The reconnect token was for typing: refused; the key may still mint view tokens.
    assert_eq!(
        open_terminal(&stack.ws_url(sid, &format!("token={reconnect}"))).await.err(),
        Some((401, "key_revoked".into()))
    );
    let again = mint(&stack, secret, sid, "view").await;
    assert!(open_terminal(&stack.ws_url(sid, &format!("token={again}&mode=view"))).await.is_ok());
}

async fn administrators_cannot_lock_themselves_out(backend: Backend) {
    let Some(stack) = Stack::start(backend, &[]).await else { return };
    let (_, keys) = stack.call("GET", "/api/keys", Some(ADMIN_KEY), None).await;
    let admin_id = keys["items"][0]["id"].as_str().unwrap().to_owned();
    let refused = |status: u16, body: &serde_json::Value| {
        assert_eq!((status, body["error"].as_str()), (409, Some("last_admin")), "{body}")
    };
    let path = format!("/api/keys/{admin_id}");
    let (status, body) = stack.call("DELETE", &path, Some(ADMIN_KEY), None).await;
    refused(status, &body);
    let (status, body) =
        stack.call("PATCH", &path, Some(ADMIN_KEY), Some(json!({"role": "operator"}))).await;
    refused(status, &body);
    // With a second admin, either may go, but not both.
    let (_, second) = stack
        .call("POST", "/api/keys", Some(ADMIN_KEY), Some(json!({"name": "two", "role": "admin"})))
        .await;
    let (second_id, second_key) = (second["id"].as_str().unwrap(), second["key"].as_str().unwrap());
    let second_path = format!("/api/keys/{second_id}");
    let (first, other) = tokio::join!(
        stack.call("DELETE", &path, Some(second_key), None),
        stack.call("DELETE", &second_path, Some(ADMIN_KEY), None),
    );
    // One goes; the other is refused as the last admin, or, if it came in after, because its
    // own key is gone.
    let mut statuses = [first.0, other.0];
    statuses.sort();
    assert!(matches!(statuses, [204, 401] | [204, 409]), "{first:?} {other:?}");
    let (_, keys) = stack.call("GET", "/api/keys", Some(second_key), None).await;
    let (_, keys_too) = stack.call("GET", "/api/keys", Some(ADMIN_KEY), None).await;
    let standing = |k: &serde_json::Value| {
        k["items"].as_array().map(|items| {
            items.iter().filter(|i| i["role"] == "admin" && i["revokedAt"].is_null()).count()
        })
    };
    assert_eq!(standing(&keys).or(standing(&keys_too)), Some(1), "exactly one admin stands");
    // Unknown keys are 404, not 409.
    let (status, body) =
        stack.call("DELETE", "/api/keys/0123456789abcdef", Some(ADMIN_KEY), None).await;
    assert!(status == 404 || status == 401, "{status} {body}");
}

async fn a_refusal_never_uses_a_token_up(backend: Backend) {
    let Some(stack) = Stack::start(backend, &[]).await else { return };
    let created = stack.create(ADMIN_KEY, json!({"command": "echo hello; exec sleep 600"})).await;
    let sid = created["sessionId"].as_str().unwrap();
    let token = created["token"].as_str().unwrap();
    stack.wait_for_phase(sid, "Running").await;
    // Each of these is the client's mistake: a 4xx, and the token still opens the terminal.
    let mistakes = [
        (format!("token={token}&mode=admin"), 400),
        (format!("token={token}&since=999999999"), 400),
        (format!("token={token}&since=-1"), 400),
    ];
    for (query, status) in &mistakes {
        let refused = open_terminal(&stack.ws_url(sid, query)).await.err().unwrap();
        assert_eq!(refused.0, *status, "{query}: {refused:?}");
    }
    let other = stack.create(ADMIN_KEY, json!({"command": "exec sleep 600"})).await;
    let other_sid = other["sessionId"].as_str().unwrap();
    let wrong = open_terminal(&stack.ws_url(other_sid, &format!("token={token}"))).await.err();
    assert_eq!(wrong, Some((403, "token_wrong_session".into())));
    let mut ws = open_terminal(&stack.ws_url(sid, &format!("token={token}"))).await.unwrap();
    common::read_until(&mut ws, "hello").await;
}

/// Sends `head` raw and reads the whole answer until the server closes (or `HANG_GUARD`).
async fn raw_exchange(addr: &str, head: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(HANG_GUARD, tcp.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Status and JSON error code of a raw HTTP answer.
fn status_and_code(answer: &str) -> (u16, String) {
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_default();
    (status, json["error"].as_str().unwrap_or_default().to_owned())
}

/// The framework's own refusals carry the same JSON error body as the handlers', with a
/// stable code, on `cliscale up` and on a runner's own port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frameworks_own_refusals_are_json() {
    let stack = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let host = stack.base.trim_start_matches("http://").to_owned();
    let created = stack.create(ADMIN_KEY, json!({"command": "exec sleep 600"})).await;
    let sid = created["sessionId"].as_str().unwrap();
    let runner = runner_addr_of(&stack, sid).await;
    let long_query = "a".repeat(9000);
    let many_headers: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let huge_header = format!("x-big: {}\r\n", "b".repeat(70_000));
    for addr in [host.as_str(), runner.as_str()] {
        let cases = [
            (
                "GET /no/such/route HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
                404,
                "not_found",
            ),
            (
                format!(
                    "GET /nope?q={long_query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                ),
                414,
                "uri_too_long",
            ),
            (
                format!(
                    "GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}Connection: close\r\n\r\n"
                ),
                431,
                "headers_too_large",
            ),
            (
                format!(
                    "GET /healthz HTTP/1.1\r\nHost: x\r\n{huge_header}Connection: close\r\n\r\n"
                ),
                431,
                "headers_too_large",
            ),
        ];
        for (head, status, code) in cases {
            let answer = raw_exchange(addr, head.as_bytes()).await;
            assert_eq!(
                status_and_code(&answer),
                (status, code.to_string()),
                "{addr}: {answer:.300}"
            );
            assert!(answer.to_ascii_lowercase().contains("content-type: application/json"));
        }
    }
    // Wrong method, and a body over the limit, on the API.
    let head =
        "PUT /api/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(
        status_and_code(&raw_exchange(&host, head.as_bytes()).await),
        (405, "method_not_allowed".into())
    );
    let big = "x".repeat(3 * 1024 * 1024);
    let resp = stack
        .http
        .post(stack.url("/api/sessions"))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "payload_too_large");
}

/// Requests that never finish their head are closed at the header-read timeout, and a
/// thousand of them neither fill the server nor hold up its stop past the shutdown deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_requests_are_closed_and_cannot_hold_a_stop() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start(Backend::Sqlite, &["--header-read-timeout", "1s"]).await.unwrap();
    let host = stack.base.trim_start_matches("http://").to_owned();
    // One alone: closed by the server soon after the timeout.
    let mut slow = tokio::net::TcpStream::connect(&host).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut rest = Vec::new();
    let started = Instant::now();
    let closed = tokio::time::timeout(HANG_GUARD, slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a request head that never ends was held open");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

    // A thousand that stay within a long header timeout, then a stop: the server is gone
    // within the shutdown deadline and a margin.
    drop(stack);
    let args = [
        "--header-read-timeout",
        "120s",
        "--shutdown-deadline",
        "2s",
        "--max-connections-per-address",
        "5000",
    ];
    let mut stack = Stack::start(Backend::Sqlite, &args).await.unwrap();
    let host = stack.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..1000 {
        let mut tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        held.push(tcp);
    }
    let (status, _) = stack.call("GET", "/api/sessions", Some(ADMIN_KEY), None).await;
    assert_eq!(status, 200, "the server still answers with a thousand slow clients");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(stack.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopping = Instant::now();
    let deadline = stopping + HANG_GUARD;
    while stack.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "cliscale up never stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stopping.elapsed() < Duration::from_secs(15), "stopped in {:?}", stopping.elapsed());
    drop(held);
}

/// One address may hold only so many connections; past that it is answered 429 in JSON and
/// closed, and a closed connection makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let stack =
        Stack::start(Backend::Sqlite, &["--max-connections-per-address", "20"]).await.unwrap();
    let host = stack.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(tokio::net::TcpStream::connect(&host).await.unwrap());
    }
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(&host, head).await;
    assert_eq!(status_and_code(&answer), (429, "too_many_connections".into()), "{answer}");
    held.pop();
    // The server notices the close on its own time: poll until the slot is back.
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let answer = raw_exchange(&host, head).await;
        if status_and_code(&answer).0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never came back: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
