//! Who may connect, and what happens to bad input: every refusal is precise and harmless.

mod common;

use base64::Engine;
use cliscale_core::SessionPhase;
use cliscale_core::token::{TERMINAL_AUDIENCE, TokenScope, new_claims};
use common::{Event, SESSION, runner};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Attempts a WebSocket handshake and returns the HTTP refusal (status, error code).
async fn refused(url: String) -> (u16, String) {
    refused_request(url.into_client_request().unwrap()).await
}

async fn refused_request(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> (u16, String) {
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
            (response.status().as_u16(), body["error"].as_str().unwrap().to_owned())
        }
        other => panic!("expected an HTTP refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn missing_wrong_forged_and_expired_tokens_are_refused() {
    let r = runner("read -r x").start();
    assert_eq!(refused(r.ws_url("")).await, (401, "token_missing".into()));
    assert_eq!(refused(r.ws_url("token=not.a.jwt")).await, (401, "token_malformed".into()));
    let other = r.keys.token_for("someone-else", TokenScope::Interact);
    assert_eq!(
        refused(r.ws_url(&format!("token={other}"))).await,
        (403, "token_wrong_session".into())
    );
    let mut claims = new_claims("t", TERMINAL_AUDIENCE, "me", SESSION, TokenScope::Interact, 0);
    claims.exp -= 3600;
    let expired = r.keys.key.sign(&claims).unwrap();
    assert_eq!(refused(r.ws_url(&format!("token={expired}"))).await, (401, "token_expired".into()));
    let stranger = cliscale_core::token::SessionSigningKey::generate("test-key");
    let forged = stranger
        .sign(&new_claims("t", TERMINAL_AUDIENCE, "me", SESSION, TokenScope::Interact, 60))
        .unwrap();
    assert_eq!(
        refused(r.ws_url(&format!("token={forged}"))).await,
        (401, "token_bad_signature".into())
    );

    let metrics =
        common::http_get(format!("http://{}/metrics", r.addr)).await.text().await.unwrap();
    assert!(
        metrics.contains(r#"cliscale_runner_auth_failures_total{reason="token_missing"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_bearer_header_is_accepted_and_bad_offsets_are_refused() {
    let r = runner("read -r x").start();
    let token = r.keys.token(TokenScope::Interact);
    let mut request = r.ws_url("since=0").into_client_request().unwrap();
    request.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains(r#""type":"hello""#));

    let token = r.keys.token(TokenScope::Interact);
    assert_eq!(
        refused(r.ws_url(&format!("token={token}&since=999999"))).await,
        (400, "since_beyond_end".into())
    );
    assert_eq!(
        refused(r.ws_url(&format!("token={token}&since=-1"))).await,
        (400, "bad_query".into())
    );
    assert_eq!(
        refused(r.ws_url(&format!("token={token}&mode=admin"))).await,
        (400, "bad_mode".into())
    );
}

#[tokio::test]
async fn odd_frames_get_precise_errors_and_the_session_carries_on() {
    let r = runner("stty -echo; read -r line; echo \"got:$line\"").start();
    let mut c = r.attach(TokenScope::Interact, 0).await;
    assert!(matches!(c.next().await, Event::Hello { .. }));
    let cases = [
        ("not json", "bad_message"),
        (r#"{"type":"launch"}"#, "bad_message"),
        (r#"{"type":"resize","cols":0,"rows":10}"#, "bad_resize"),
        (r#"{"type":"resize","cols":80,"rows":70000}"#, "bad_message"),
        (r#"{"type":"input","data":"x","extra":true}"#, "bad_message"),
    ];
    for (text, code) in cases {
        c.send_text(text).await;
        loop {
            match c.next().await {
                Event::Error { code: got, .. } => {
                    assert_eq!(got, code, "for {text}");
                    break;
                }
                Event::Output { .. } | Event::Status(_) => {}
                other => panic!("unexpected {other:?} for {text}"),
            }
        }
    }
    // Text input works too, and the PTY never saw the rejected frames.
    c.send_text(r#"{"type":"input","data":"fine\r"}"#).await;
    let (out, _, status) = c.read_to_end_any().await;
    assert!(String::from_utf8_lossy(&out).contains("got:fine"));
    assert_eq!(status.phase, SessionPhase::Succeeded);
}

#[tokio::test]
async fn an_oversize_message_closes_only_that_connection() {
    let r = runner("stty -echo; read -r line; echo \"got:$line\"").start();
    let mut big = r.attach(TokenScope::Interact, 0).await;
    assert!(matches!(big.next().await, Event::Hello { .. }));
    let oversize =
        tokio_tungstenite::tungstenite::Message::Binary(vec![b'a'; 2 * 1024 * 1024].into());
    // The runner may close while the message is still being written (the send then fails with
    // a reset); otherwise the close arrives as the next event. Either way the connection ends.
    if futures_util::SinkExt::send(&mut big.ws, oversize).await.is_ok() {
        loop {
            if let Event::Closed { code, .. } = big.next().await {
                assert!(code.is_none() || code == Some(1009), "{code:?}");
                break;
            }
        }
    }
    let mut c = r.attach(TokenScope::Interact, 0).await;
    c.send_input(b"still-alive\r").await;
    let (out, _, _) = c.read_to_end_any().await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("got:still-alive"), "{text}");
    assert!(!text.contains("aaaa"), "the oversize input must not reach the PTY");
}

#[tokio::test]
async fn a_view_mode_request_downgrades_an_interact_token() {
    let r = runner("read -r x").start();
    let token = r.keys.token(TokenScope::Interact);
    let mut c = common::Client::connect(&r.ws_url(&format!("token={token}&mode=view"))).await;
    assert!(matches!(c.next().await, Event::Hello { read_only: true, .. }));
}

#[tokio::test]
async fn readiness_follows_the_pty_and_a_stop_before_start_cancels() {
    let mut r = runner("echo never")
        .args(["--install-cmd", "echo installing; exec sleep 600", "--linger", "0s"])
        .start();
    let mut c = r.attach(TokenScope::View, 0).await;
    c.read_until(b"installing").await;
    let health = common::http_get(format!("http://{}/healthz", r.addr)).await;
    assert_eq!(health.status(), 200);
    let ready = common::http_get(format!("http://{}/readyz", r.addr)).await;
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = serde_json::from_str(&ready.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "not_ready");
    r.signal(nix::sys::signal::Signal::SIGTERM);
    let (_, _, status) = c.read_to_end_any().await;
    assert_eq!(status.phase, SessionPhase::Cancelled);
    assert_eq!(r.wait(), 143);
}

/// Parses an SSE body into (event, id, data) triples.
fn parse_sse(body: &str) -> Vec<(String, Option<String>, String)> {
    body.split("\n\n")
        .filter(|block| block.lines().any(|l| l.starts_with("event:")))
        .map(|block| {
            let field = |name: &str| {
                block.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            (field("event:").unwrap(), field("id:"), field("data:").unwrap_or_default())
        })
        .collect()
}

#[tokio::test]
async fn server_sent_events_carry_the_same_log_and_resume_from_last_event_id() {
    let mut r = runner("read -r _go; for i in 1 2 3; do echo sse-line-$i; done; exit 5").start();
    let mut c = r.attach(TokenScope::Interact, 0).await;
    c.send_input(b"\r").await;
    let (expected, _, _) = c.read_to_end_any().await;
    let token = r.keys.token(TokenScope::View);
    let client = common::http_client();
    let body = client
        .get(format!("http://{}/events?since=0", r.addr))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = parse_sse(&body);
    assert_eq!(events.first().unwrap().0, "hello");
    let mut output = Vec::new();
    let mut ids = Vec::new();
    for (event, id, data) in &events {
        if event == "output" {
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["offset"].as_u64().unwrap() as usize, output.len());
            output.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(v["data"].as_str().unwrap())
                    .unwrap(),
            );
            ids.push(id.clone().unwrap().parse::<u64>().unwrap());
        }
    }
    assert_eq!(output, expected);
    assert_eq!(*ids.last().unwrap(), expected.len() as u64);
    let (last_event, _, last_data) = events.last().unwrap();
    assert_eq!(last_event, "status");
    let status: serde_json::Value = serde_json::from_str(last_data).unwrap();
    assert_eq!(status["exitCode"], 5);
    assert_eq!(status["phase"], "Failed");

    // A token opens one stream, as it opens one terminal.
    let again =
        client.get(format!("http://{}/events", r.addr)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(again.status(), 401);
    // A reconnect with Last-Event-ID (and a fresh token) gets only what follows.
    let resume = client
        .get(format!("http://{}/events", r.addr))
        .bearer_auth(r.keys.token(TokenScope::View))
        .header("Last-Event-ID", "4")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let resumed: Vec<u8> = parse_sse(&resume)
        .into_iter()
        .filter(|(e, _, _)| e == "output")
        .flat_map(|(_, _, d)| {
            let v: serde_json::Value = serde_json::from_str(&d).unwrap();
            base64::engine::general_purpose::STANDARD.decode(v["data"].as_str().unwrap()).unwrap()
        })
        .collect();
    assert_eq!(resumed, expected[4..]);
    let unauthorized = client.get(format!("http://{}/events", r.addr)).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    r.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(r.wait(), 5);
}

/// Reads one server frame from a raw socket: (opcode, payload). Server frames are unmasked.
async fn raw_frame(sock: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 2];
    sock.read_exact(&mut head).await.unwrap();
    let len = match head[1] & 0x7f {
        126 => sock.read_u16().await.unwrap() as usize,
        127 => sock.read_u64().await.unwrap() as usize,
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    sock.read_exact(&mut payload).await.unwrap();
    (head[0] & 0x0f, payload)
}

#[tokio::test]
async fn an_idle_client_that_answers_pings_stays_connected() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let r = runner("read -r x; echo \"got $x\"").args(["--ping-interval", "100ms"]).start();
    let token = r.keys.token(TokenScope::Interact);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(r.ws_url(&format!("token={token}"))).await.unwrap();
    // Idle for eight ping intervals, well past the three of silence that drop a client; the
    // client library answers each ping as it reads.
    let mut pings = 0;
    while pings < 8 {
        match tokio::time::timeout(common::HANG_GUARD, ws.next()).await.unwrap() {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Close(frame))) => panic!("dropped while answering pings: {frame:?}"),
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
    ws.send(Message::Binary(b"still-here\r".to_vec().into())).await.unwrap();
    let mut output = Vec::new();
    while !String::from_utf8_lossy(&output).contains("got still-here") {
        match tokio::time::timeout(common::HANG_GUARD, ws.next()).await.unwrap() {
            Some(Ok(Message::Binary(frame))) => {
                output.extend_from_slice(cliscale_core::protocol::decode_output(&frame).unwrap().1)
            }
            Some(Ok(Message::Close(frame))) => panic!("dropped while answering pings: {frame:?}"),
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_with_a_reason() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = runner("read -r x").args(["--ping-interval", "100ms"]).start();
    // A hand-made WebSocket client that reads frames but never answers a ping.
    let mut sock = tokio::net::TcpStream::connect(&r.addr).await.unwrap();
    let token = r.keys.token(TokenScope::View);
    let request = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        r.addr
    );
    sock.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        response.push(sock.read_u8().await.unwrap());
    }
    assert!(response.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&response));
    let mut pings = 0;
    loop {
        let (opcode, payload) = raw_frame(&mut sock).await;
        match opcode {
            0x9 => pings += 1,
            0x8 => {
                assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 4000);
                assert_eq!(&payload[2..], b"keepalive timeout");
                break;
            }
            _ => {}
        }
    }
    assert!(pings >= 2, "the server pinged before giving up ({pings})");
}

#[test]
fn bad_configuration_exits_120_and_names_the_setting() {
    let keys = common::Keys::new();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let garbled_jwks = dir.path().join("garbled.json");
    std::fs::write(&garbled_jwks, "{\"keys\": [ not json").unwrap();
    let checksum = "ab".repeat(32);
    let cases: [(&[&str], &str); 12] = [
        (&["--command", " "], "command must not be empty"),
        (&["--session-id", "a b"], "session id must be 1-128 characters"),
        (&["--cols", "0"], "terminal size"),
        (&["--log-window-bytes", "1000"], "log window must be at least 65536 bytes"),
        (&["--log-format", "xml"], "is not json or text"),
        (&["--code-checksum-sha256", &checksum], "a code checksum was given without a code URL"),
        (
            &["--code-url", "https://example.com/a.zip", "--code-checksum-sha256", "xyz"],
            "is not a SHA-256 hex digest",
        ),
        (&["--jwks-file", "/nonexistent/jwks.json"], "reading JWKS file /nonexistent/jwks.json"),
        (&["--jwks-file", garbled_jwks.to_str().unwrap()], "invalid JWKS file"),
        (&["--timeout", "forever"], "--timeout"),
        (&["--ping-interval", "0s"], "must be more than zero"),
        (&["--client-stall-timeout", "0ms"], "must be more than zero"),
    ];
    for (flags, expected) in cases {
        // Valid settings first; the case's own flag overrides its namesake.
        let mut settings = vec![
            ("--session-id".to_string(), common::SESSION.to_string()),
            ("--jwks-file".into(), keys.jwks_path.display().to_string()),
            ("--command".into(), format!("touch '{}'", marker.display())),
            ("--listen".into(), "127.0.0.1:0".into()),
            ("--linger".into(), "0s".into()),
        ];
        for pair in flags.chunks(2) {
            settings.retain(|(name, _)| name != pair[0]);
            settings.push((pair[0].into(), pair[1].into()));
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cliscale-runner"))
            .args(settings.iter().flat_map(|(k, v)| [k, v]))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(120), "{flags:?}: {stderr}");
        assert!(stderr.contains(expected), "{flags:?} should say {expected:?}: {stderr}");
        assert!(!marker.exists(), "{flags:?}: the command ran");
    }
}

#[test]
fn a_listen_address_in_use_exits_125_and_names_it() {
    let keys = common::Keys::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cliscale-runner"))
        .args(["--session-id", common::SESSION, "--command", "true", "--listen", &addr])
        .arg("--jwks-file")
        .arg(&keys.jwks_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("cannot listen") && stderr.contains(&addr), "{stderr}");
}
