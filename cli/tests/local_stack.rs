//! The local stack end to end: `cliscale up` with real runners, on SQLite and PostgreSQL.

use cliscale_testkit::stack as common;

use std::collections::HashSet;

use base64::Engine;
use common::{ADMIN_KEY, Backend, Stack, open_terminal, read_session};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use cliscale_testkit::on_both_backends;

on_both_backends!(
    create_get_list_with_pagination_and_cancel,
    roles_limit_what_keys_can_see_and_do,
    a_token_opens_one_terminal_and_a_replay_is_refused,
    fifty_concurrent_uses_of_one_token_yield_exactly_one_terminal,
    forged_and_foreign_tokens_are_refused_before_upgrade,
    bad_requests_get_precise_errors,
    a_restart_marks_orphaned_sessions_lost,
    every_ending_reaches_the_api_while_the_runner_lingers,
);

async fn create_get_list_with_pagination_and_cancel(backend: Backend) {
    let Some(stack) = Stack::start(backend, &[]).await else { return };
    let mut ids = Vec::new();
    for i in 0..5 {
        let created =
            stack.create(ADMIN_KEY, json!({"command": format!("echo s{i}; read -r x")})).await;
        assert!(
            created["terminalUrl"].as_str().unwrap().starts_with(&format!("{}/t/", stack.base))
        );
        assert_eq!(created["wsUrl"], format!("/ws/{}", created["sessionId"].as_str().unwrap()));
        ids.push(created["sessionId"].as_str().unwrap().to_owned());
    }
    let (status, one) =
        stack.call("GET", &format!("/api/sessions/{}", ids[0]), Some(ADMIN_KEY), None).await;
    assert_eq!(status, 200);
    for field in ["sessionId", "phase", "exitCode", "reason", "createdAt"] {
        assert!(one.get(field).is_some(), "{field} missing from {one}");
    }
    // Pages of two, newest first, no duplicates, nothing missed.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/sessions?limit=2&cursor={c}"),
            None => "/api/sessions?limit=2".to_string(),
        };
        let (status, page) = stack.call("GET", &path, Some(ADMIN_KEY), None).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|s| s["sessionId"].as_str().unwrap().to_owned()));
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(seen.iter().collect::<HashSet<_>>(), ids.iter().collect::<HashSet<_>>());

    stack.wait_for_phase(&ids[0], "Running").await;
    let (status, _) =
        stack.call("DELETE", &format!("/api/sessions/{}", ids[0]), Some(ADMIN_KEY), None).await;
    assert_eq!(status, 202);
    let cancelled = stack.wait_for_phase(&ids[0], "Cancelled").await;
    assert_eq!(cancelled["reason"], "Cancelled");
    let (status, page) =
        stack.call("GET", "/api/sessions?phase=Cancelled", Some(ADMIN_KEY), None).await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let (status, events) =
        stack.call("GET", &format!("/api/sessions/{}/events", ids[0]), Some(ADMIN_KEY), None).await;
    assert_eq!(status, 200);
    let kinds: Vec<_> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        kinds.contains(&"created".to_string()) && kinds.contains(&"cancel".to_string()),
        "{kinds:?}"
    );
}

async fn roles_limit_what_keys_can_see_and_do(backend: Backend) {
    let Some(stack) = Stack::start(backend, &[]).await else { return };
    let alice = stack.new_key("operator").await;
    let bob = stack.new_key("operator").await;
    let viewer = stack.new_key("viewer").await;
    let sid = stack.create(&alice, json!({"command": "read -r x"})).await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/sessions/{sid}");
    // Another operator cannot tell the session exists.
    assert_eq!(stack.call("GET", &path, Some(&bob), None).await.0, 404);
    assert_eq!(stack.call("DELETE", &path, Some(&bob), None).await.0, 404);
    let (_, bobs_list) = stack.call("GET", "/api/sessions", Some(&bob), None).await;
    assert!(bobs_list["items"].as_array().unwrap().is_empty());
    assert_eq!(stack.call("GET", &path, Some(&alice), None).await.0, 200);
    // Viewers read everything and get read-only terminals only.
    assert_eq!(stack.call("GET", &path, Some(&viewer), None).await.0, 200);
    let tokens = format!("{path}/tokens");
    assert_eq!(
        stack.call("POST", &tokens, Some(&viewer), Some(json!({"scope": "interact"}))).await.0,
        403
    );
    let (status, minted) =
        stack.call("POST", &tokens, Some(&viewer), Some(json!({"scope": "view"}))).await;
    assert_eq!(status, 201);
    assert_eq!(minted["scope"], "view");
    assert_eq!(
        stack.call("POST", "/api/sessions", Some(&viewer), Some(json!({"command": "x"}))).await.0,
        403
    );
    assert_eq!(stack.call("DELETE", &path, Some(&viewer), None).await.0, 403);
    // Keys are for admins only.
    assert_eq!(stack.call("GET", "/api/keys", Some(&alice), None).await.0, 403);
    let (status, keys) = stack.call("GET", "/api/keys", Some(ADMIN_KEY), None).await;
    assert_eq!(status, 200);
    assert_eq!(keys["items"].as_array().unwrap().len(), 4);
    assert!(!keys.to_string().contains("secret"), "no secret material is listed");
    // A revoked key stops working at once.
    let bob_id = bob.split('_').nth(1).unwrap();
    assert_eq!(
        stack.call("DELETE", &format!("/api/keys/{bob_id}"), Some(ADMIN_KEY), None).await.0,
        204
    );
    let (status, body) = stack.call("GET", "/api/sessions", Some(&bob), None).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_api_key")));
    // The read-only terminal really is read-only.
    let view_token = minted["token"].as_str().unwrap();
    let mut ws = open_terminal(&stack.ws_url(&sid, &format!("token={view_token}"))).await.unwrap();
    ws.send(Message::Binary(b"typed\r".to_vec().into())).await.unwrap();
    loop {
        let msg = futures_util::StreamExt::next(&mut ws).await.unwrap().unwrap();
        if let Message::Text(t) = msg
            && t.contains("read_only")
        {
            break;
        }
    }
}

async fn a_token_opens_one_terminal_and_a_replay_is_refused(backend: Backend) {
    let Some(stack) = Stack::start(backend, &[]).await else { return };
    let created = stack
        .create(
            ADMIN_KEY,
            json!({"command": "stty -echo; read -r line; echo \"got:$line\"; exit 3"}),
        )
        .await;
    let (sid, token) = (created["sessionId"].as_str().unwrap(), created["token"].as_str().unwrap());
    let url = stack.ws_url(sid, &format!("token={token}"));
    let mut ws = open_terminal(&url).await.unwrap();
    assert_eq!(open_terminal(&url).await.unwrap_err(), (401, "token_replayed".into()));
    ws.send(Message::Binary(b"hello\r".to_vec().into())).await.unwrap();
    let (out, status, reconnect) = read_session(&mut ws).await;
    assert!(String::from_utf8_lossy(&out).contains("got:hello"));
    assert_eq!(status["exitCode"], 3);
    assert_eq!(status["phase"], "Failed");
    // The reconnect token handed over the socket opens exactly one more connection.
    let reconnect = reconnect.expect("the gateway hands out a reconnect token");
    let again = stack.ws_url(sid, &format!("token={reconnect}&since=0"));
    let mut ws2 = open_terminal(&again).await.unwrap();
    let (replayed, status2, _) = read_session(&mut ws2).await;
    assert_eq!(replayed, out, "a reconnect from 0 replays exactly the same bytes");
    assert_eq!(status2["exitCode"], 3);
    assert_eq!(open_terminal(&again).await.unwrap_err(), (401, "token_replayed".into()));
    let done = stack.wait_for_phase(sid, "Failed").await;
    assert_eq!(done["exitCode"], 3);
}

async fn fifty_concurrent_uses_of_one_token_yield_exactly_one_terminal(backend: Backend) {
    let Some(stack) = Stack::start(backend, &[]).await else { return };
    let created = stack.create(ADMIN_KEY, json!({"command": "read -r x"})).await;
    let url = stack.ws_url(
        created["sessionId"].as_str().unwrap(),
        &format!("token={}", created["token"].as_str().unwrap()),
    );
    let attempts: Vec<_> =
        (0..50).map(|_| tokio::spawn(open_terminal_owned(url.clone()))).collect();
    let mut opened = Vec::new();
    let mut refusals = Vec::new();
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(ws) => opened.push(ws),
            Err(refusal) => refusals.push(refusal),
        }
    }
    assert_eq!(opened.len(), 1, "exactly one terminal");
    assert_eq!(refusals.len(), 49);
    assert!(refusals.iter().all(|r| *r == (401, "token_replayed".to_string())), "{refusals:?}");
}

async fn open_terminal_owned(url: String) -> Result<common::Ws, (u16, String)> {
    open_terminal(&url).await
}

fn claims_of(part: &str) -> serde_json::Value {
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap())
        .unwrap()
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

async fn forged_and_foreign_tokens_are_refused_before_upgrade(backend: Backend) {
    let Some(stack) = Stack::start(backend, &[]).await else { return };
    let a = stack.create(ADMIN_KEY, json!({"command": "read -r x"})).await;
    let b = stack.create(ADMIN_KEY, json!({"command": "read -r x"})).await;
    let (sid_a, token_a) = (a["sessionId"].as_str().unwrap(), a["token"].as_str().unwrap());
    let sid_b = b["sessionId"].as_str().unwrap();
    // A token for A at B's door.
    assert_eq!(
        open_terminal(&stack.ws_url(sid_b, &format!("token={token_a}"))).await.unwrap_err(),
        (403, "token_wrong_session".into())
    );
    // Tampered payload (scope raised), original signature.
    let parts: Vec<&str> = token_a.split('.').collect();
    let mut claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).unwrap(),
    )
    .unwrap();
    claims["sid"] = json!(sid_b);
    let tampered = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
    assert_eq!(
        open_terminal(&stack.ws_url(sid_b, &format!("token={tampered}"))).await.unwrap_err(),
        (401, "token_bad_signature".into())
    );
    // alg none.
    let header: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[0]).unwrap(),
    )
    .unwrap();
    let mut none_header = header.clone();
    none_header["alg"] = json!("none");
    let none = format!("{}.{}.", b64(&none_header), parts[1]);
    let refused = open_terminal(&stack.ws_url(sid_a, &format!("token={none}"))).await.unwrap_err();
    assert_eq!(refused.0, 401, "{refused:?}");
    // HS256 keyed with the public key: the classic algorithm confusion.
    let jwks: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(stack.data.path().join("jwks.json")).unwrap(),
    )
    .unwrap();
    let public_x = jwks["keys"][0]["x"].as_str().unwrap();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = header["kid"].as_str().map(String::from);
    let confused = jsonwebtoken::encode(
        &hs_header,
        &claims_of(parts[1]),
        &jsonwebtoken::EncodingKey::from_secret(public_x.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        open_terminal(&stack.ws_url(sid_a, &format!("token={confused}"))).await.unwrap_err(),
        (401, "token_wrong_algorithm".into())
    );
    // Expired: signed with the real key, but long past.
    let key_der = std::fs::read(stack.data.path().join("signing-key.der")).unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap();
    let key = cliscale_core::token::SessionSigningKey::from_pkcs8_der(kid, &key_der).unwrap();
    let mut old = cliscale_core::token::new_claims(
        "cliscale",
        "cliscale-terminal",
        "t",
        sid_a,
        cliscale_core::token::TokenScope::Interact,
        1,
    );
    old.exp -= 3600;
    let expired = key.sign(&old).unwrap();
    assert_eq!(
        open_terminal(&stack.ws_url(sid_a, &format!("token={expired}"))).await.unwrap_err(),
        (401, "token_expired".into())
    );
    assert_eq!(
        open_terminal(&stack.ws_url(sid_a, "")).await.unwrap_err(),
        (401, "token_missing".into())
    );
    // None of that burned A's real token.
    assert!(open_terminal(&stack.ws_url(sid_a, &format!("token={token_a}"))).await.is_ok());
}

async fn bad_requests_get_precise_errors(backend: Backend) {
    let Some(stack) = Stack::start(backend, &[]).await else { return };
    let raw = |body: &'static str| {
        stack
            .http
            .post(stack.url("/api/sessions"))
            .bearer_auth(ADMIN_KEY)
            .header("content-type", "application/json")
            .body(body)
    };
    for (body, code) in [
        ("{not json", "invalid_json"),
        (r#"{"command": "x", "surprise": 1}"#, "invalid_json"),
        (r#"{"command": 42}"#, "invalid_json"),
        (r#"{"command": ""}"#, "invalid_field"),
        (r#"{"command": "x", "code_url": "file:///etc/passwd"}"#, "invalid_code_url"),
        (r#"{"command": "x", "cols": 0}"#, "invalid_size"),
        // Bytes a C string cannot carry: refused up front, never a half-made session.
        (r#"{"command": "echo a\u0000b"}"#, "invalid_field"),
        (r#"{"command": "x", "install_cmd": "make\u0000"}"#, "invalid_field"),
        (r#"{"command": "x", "prompt": "\u0000"}"#, "invalid_field"),
        (r#"{"command": "x", "env": {"A": "b\u0000c"}}"#, "invalid_field"),
    ] {
        let resp = raw(body).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let v: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        assert_eq!(v["error"], code, "{body}: {v}");
    }
    let huge = format!(r#"{{"command": "{}"}}"#, "x".repeat(300 * 1024));
    let resp = stack
        .http
        .post(stack.url("/api/sessions"))
        .bearer_auth(ADMIN_KEY)
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(stack.call("GET", "/api/sessions", None, None).await.1["error"], "missing_api_key");
    assert_eq!(
        stack.call("GET", "/api/sessions", Some("csk_0123456789abcdef_nope"), None).await.1["error"],
        "invalid_api_key"
    );
    assert_eq!(
        stack.call("GET", "/api/sessions?limit=0", Some(ADMIN_KEY), None).await.1["error"],
        "invalid_query"
    );
    assert_eq!(
        stack.call("GET", "/api/sessions?cursor=zzz", Some(ADMIN_KEY), None).await.1["error"],
        "invalid_cursor"
    );
    assert_eq!(stack.call("GET", "/api/sessions/nope", Some(ADMIN_KEY), None).await.0, 404);
    let (_, listed) = stack.call("GET", "/api/sessions", Some(ADMIN_KEY), None).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(0), "a refusal made a session");
    // The store is intact: a good request still works.
    stack.create(ADMIN_KEY, json!({"command": "true"})).await;
}

async fn a_restart_marks_orphaned_sessions_lost(backend: Backend) {
    let Some(stack) = Stack::start(backend, &[]).await else { return };
    let sid = stack.create(ADMIN_KEY, json!({"command": "read -r x"})).await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    stack.wait_for_phase(&sid, "Running").await;
    let stack = stack.crash_and_restart();
    let lost = stack.wait_for_phase(&sid, "Lost").await;
    assert_eq!(lost["reason"], "RunnerLost");
    let (_, sessions) =
        stack.call("GET", "/api/sessions?phase=Running", Some(ADMIN_KEY), None).await;
    assert!(sessions["items"].as_array().unwrap().is_empty());
}

/// The runner's final event reaches the API as soon as the session ends, not when the runner
/// exits: with a 600 s linger, the phase, typed reason, exit code and the runner's own message
/// must be there while the runner still serves the end (the hang guard is 60 s).
async fn every_ending_reaches_the_api_while_the_runner_lingers(backend: Backend) {
    let Some(stack) = Stack::start(backend, &["--linger", "600s"]).await else { return };
    let cases = [
        (
            json!({"command": "sleep 600", "timeout_seconds": 1}),
            "TimedOut",
            "DeadlineExceeded",
            Some(124),
            "deadline",
        ),
        (
            json!({"command": "true", "code_url": "https://127.0.0.1:1/code.tar.gz"}),
            "Failed",
            "FetchFailed",
            Some(121),
            "refusing to fetch from 127.0.0.1",
        ),
        (json!({"command": "kill -9 $$"}), "Failed", "Signaled", Some(137), "killed by signal 9"),
    ];
    for (body, phase, reason, exit_code, message) in cases {
        let sid = stack.create(ADMIN_KEY, body).await["sessionId"].as_str().unwrap().to_owned();
        let ended = stack.wait_for_phase(&sid, phase).await;
        assert_eq!(ended["reason"], reason, "{ended}");
        assert_eq!(ended["exitCode"].as_i64(), exit_code.map(i64::from), "{ended}");
        let said = ended["message"].as_str().unwrap_or_default();
        assert!(said.contains(message), "{phase}: {said:?} should say {message:?}");
        assert!(!said.contains("the runner exited"), "{said}");
    }
}
