//! The local stack end to end: `cliscale up` with real runners, on SQLite and PostgreSQL.

use cliscale_testkit::stack as common;

use std::collections::HashSet;

use base64::Engine;
use cliscale_core::rest::{CreateSessionRequest, ListQuery};
use cliscale_core::token::TokenScope;
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
    the_feed_sends_creations_and_changes_in_order_to_those_who_may_see_them,
    a_console_login_is_a_cookie_that_needs_its_csrf_token_to_write,
);

async fn create_get_list_with_pagination_and_cancel(backend: Backend) {
    let Some(stack) = Stack::start(backend, &[]).await else { return };
    let admin = stack.client(ADMIN_KEY);
    let mut ids = Vec::new();
    for i in 0..5 {
        let request = CreateSessionRequest::new(format!("echo s{i}; read -r x"));
        let created = admin.create_session(&request, None).await.unwrap();
        assert!(created.terminal_url.starts_with(&format!("{}/t/", stack.base)));
        assert_eq!(created.ws_url, format!("/ws/{}", created.session_id));
        ids.push(created.session_id);
    }
    // The raw answer names every documented field.
    let (status, one) =
        stack.call("GET", &format!("/api/sessions/{}", ids[0]), Some(ADMIN_KEY), None).await;
    assert_eq!(status, 200);
    for field in ["sessionId", "phase", "exitCode", "reason", "createdAt"] {
        assert!(one.get(field).is_some(), "{field} missing from {one}");
    }
    // Pages of two, newest first, no duplicates, nothing missed.
    let mut seen = Vec::new();
    let mut query = ListQuery { limit: Some(2), ..Default::default() };
    loop {
        let page = admin.list_sessions(&query).await.unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.into_iter().map(|s| s.session_id));
        match page.next_cursor {
            Some(c) => query.cursor = Some(c),
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
    let query = ListQuery { phase: Some("Cancelled".into()), ..Default::default() };
    assert_eq!(admin.list_sessions(&query).await.unwrap().items.len(), 1);
    let kinds: Vec<String> =
        admin.events(&ids[0]).await.unwrap().items.into_iter().map(|e| e.kind).collect();
    assert!(
        kinds.contains(&"created".to_string()) && kinds.contains(&"cancel".to_string()),
        "{kinds:?}"
    );
}

async fn roles_limit_what_keys_can_see_and_do(backend: Backend) {
    let Some(stack) = Stack::start(backend, &[]).await else { return };
    let (alice_key, bob_key) = (stack.new_key("operator").await, stack.new_key("operator").await);
    let (alice, bob) = (stack.client(&alice_key), stack.client(&bob_key));
    let viewer = stack.client(&stack.new_key("viewer").await);
    let admin = stack.client(ADMIN_KEY);
    let code = |e: cliscale_client::Error| (e.status().unwrap(), e.code().unwrap().to_owned());
    let not_found = (404, "not_found".to_owned());
    let forbidden = (403, "forbidden".to_owned());
    let sid = alice.create_session(&CreateSessionRequest::new("read -r x"), None).await;
    let sid = sid.unwrap().session_id;
    // Another operator cannot tell the session exists.
    assert_eq!(code(bob.session(&sid).await.unwrap_err()), not_found);
    assert_eq!(code(bob.cancel_session(&sid).await.unwrap_err()), not_found);
    assert!(bob.list_sessions(&ListQuery::default()).await.unwrap().items.is_empty());
    assert_eq!(alice.session(&sid).await.unwrap().session_id, sid);
    // Viewers read everything and get read-only terminals only.
    assert_eq!(viewer.session(&sid).await.unwrap().session_id, sid);
    assert_eq!(code(viewer.mint_token(&sid, TokenScope::Interact).await.unwrap_err()), forbidden);
    let minted = viewer.mint_token(&sid, TokenScope::View).await.unwrap();
    assert_eq!(minted.scope, TokenScope::View);
    let create = viewer.create_session(&CreateSessionRequest::new("x"), None).await;
    assert_eq!(code(create.unwrap_err()), forbidden);
    assert_eq!(code(viewer.cancel_session(&sid).await.unwrap_err()), forbidden);
    // Keys are for admins only.
    assert_eq!(code(alice.list_keys().await.unwrap_err()), forbidden);
    let keys = admin.list_keys().await.unwrap().items;
    assert_eq!(keys.len(), 4);
    assert!(keys.iter().all(|k| k.key.is_none()), "no secret material is listed");
    // A revoked key stops working at once.
    let bob_id = bob_key.split('_').nth(1).unwrap();
    admin.revoke_key(bob_id).await.unwrap();
    let refused = bob.list_sessions(&ListQuery::default()).await.unwrap_err();
    assert_eq!(code(refused), (401, "invalid_api_key".to_owned()));
    // The read-only terminal really is read-only.
    let view_token = &minted.token;
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
    let long_search = format!("/api/sessions?q={}", "x".repeat(201));
    assert_eq!(
        stack.call("GET", &long_search, Some(ADMIN_KEY), None).await.1["error"],
        "invalid_query"
    );
    let long_feed = format!("/api/sessions/feed?q={}", "x".repeat(201));
    assert_eq!(
        stack.call("GET", &long_feed, Some(ADMIN_KEY), None).await.1["error"],
        "invalid_query"
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

/// Feed events until `done` holds for the events so far.
async fn feed_until(
    feed: &mut cliscale_client::stream::SessionFeed,
    done: impl Fn(&[(i64, String, String)]) -> bool,
) -> Vec<(i64, String, String)> {
    use cliscale_client::stream::FeedEvent;
    let mut seen = Vec::new();
    while !done(&seen) {
        let next = tokio::time::timeout(common::HANG_GUARD, feed.next()).await;
        match next.expect("the feed went quiet").unwrap() {
            FeedEvent::Session { position, session } => {
                seen.push((position, session.session_id, session.phase.as_str().to_owned()));
            }
            FeedEvent::Ready { .. } => {}
            FeedEvent::Reconnecting { why, .. } => panic!("the feed dropped: {why}"),
        }
    }
    seen
}

fn ended(id: &str) -> impl Fn(&[(i64, String, String)]) -> bool + '_ {
    move |seen| seen.iter().any(|(_, s, phase)| s == id && phase == "Succeeded")
}

async fn the_feed_sends_creations_and_changes_in_order_to_those_who_may_see_them(backend: Backend) {
    use cliscale_client::rest::FeedQuery;
    use cliscale_client::stream::FeedEvent;
    let Some(stack) = Stack::start(backend, &[]).await else { return };
    let admin = stack.client(ADMIN_KEY);
    let alice = stack.client(&stack.new_key("operator").await);
    let bob = stack.client(&stack.new_key("operator").await);
    let mut everything = admin.session_feed(FeedQuery::default());
    let FeedEvent::Ready { position: start } = everything.next().await.unwrap() else {
        panic!("a feed starts with ready")
    };
    let mut alices = alice.session_feed(FeedQuery::default());
    assert!(matches!(alices.next().await.unwrap(), FeedEvent::Ready { .. }));

    let hers = alice.create_session(&CreateSessionRequest::new("echo hers"), None).await;
    let hers = hers.unwrap().session_id;
    let his = bob.create_session(&CreateSessionRequest::new("echo his"), None).await;
    let his = his.unwrap().session_id;

    let seen = feed_until(&mut everything, |seen| ended(&hers)(seen) && ended(&his)(seen)).await;
    let positions: Vec<i64> = seen.iter().map(|(p, ..)| *p).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]) && positions[0] > start, "{seen:?}");
    // Each session to its end, its phases never going back (changes that land between two
    // reads of the feed are folded into the later one).
    let rank = |phase: &str| ["Pending", "Starting", "Running"].iter().position(|p| *p == phase);
    for id in [&hers, &his] {
        let order: Vec<usize> =
            seen.iter().filter(|(_, s, _)| s == id).map(|(.., p)| rank(p).unwrap_or(3)).collect();
        assert!(order.windows(2).all(|w| w[0] <= w[1]) && order.last() == Some(&3), "{seen:?}");
    }
    // An operator's feed holds only its own sessions.
    let hers_only = feed_until(&mut alices, ended(&hers)).await;
    assert!(hers_only.iter().all(|(_, s, _)| *s == hers), "{hers_only:?}");

    // Resumed from a position: exactly what came after it. Filtered: only what matches.
    let middle = positions[positions.len() / 2];
    let mut resumed = admin.session_feed(FeedQuery { since: Some(middle), ..Default::default() });
    assert!(
        matches!(resumed.next().await.unwrap(), FeedEvent::Ready { position } if position == middle)
    );
    // What changed after it, once each, as it is now, in the order of the last changes.
    let mut latest: Vec<(i64, String, String)> = Vec::new();
    for event in &seen {
        latest.retain(|(_, s, _)| *s != event.1);
        latest.push(event.clone());
    }
    latest.retain(|(p, ..)| *p > middle);
    let rest = feed_until(&mut resumed, |s| s.len() == latest.len()).await;
    assert_eq!(rest, latest);
    let finished =
        FeedQuery { phase: Some("Succeeded".into()), since: Some(start), ..Default::default() };
    let mut finished = admin.session_feed(finished);
    let done = feed_until(&mut finished, |s| s.len() == 2).await;
    assert!(done.iter().all(|(.., phase)| phase == "Succeeded"), "{done:?}");

    // Refusals: a Last-Event-ID that is no position, an unknown phase, no key.
    let url = stack.url("/api/sessions/feed");
    let bad = stack.http.get(&url).bearer_auth(ADMIN_KEY).header("Last-Event-ID", "x").send();
    let bad = bad.await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.json::<serde_json::Value>().await.unwrap()["error"], "invalid_last_event_id");
    let phase = FeedQuery { phase: Some("Sleeping".into()), ..Default::default() };
    let refused = admin.session_feed(phase).next().await.unwrap_err();
    assert_eq!(refused.code(), Some("invalid_query"));
    let anonymous = cliscale_client::Client::new(&stack.base, None).unwrap();
    let refused = anonymous.session_feed(FeedQuery::default()).next().await.unwrap_err();
    assert_eq!(refused.code(), Some("missing_api_key"));
}

/// Logs in with `key`: (the cookie header to send back, the Set-Cookie line, the answer).
async fn console_login(stack: &Stack, key: &str) -> (String, String, serde_json::Value) {
    let resp = stack
        .http
        .post(stack.url("/api/console/login"))
        .json(&json!({ "key": key }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let pair = set.split(';').next().unwrap().to_owned();
    (pair, set, resp.json().await.unwrap())
}

async fn a_console_login_is_a_cookie_that_needs_its_csrf_token_to_write(backend: Backend) {
    let Some(stack) = Stack::start(backend, &[]).await else { return };
    let with_cookie = |method: reqwest::Method, path: &str, cookie: &str| {
        stack.http.request(method, stack.url(path)).header("cookie", cookie)
    };
    // A wrong key gets nothing.
    let refused = stack
        .http
        .post(stack.url("/api/console/login"))
        .json(&json!({ "key": "csk_0000000000000001_not-a-key-at-all-00000000000" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().get("set-cookie").is_none());

    let operator = stack.new_key("operator").await;
    let (cookie, set, login) = console_login(&stack, &operator).await;
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(attribute), "{attribute} missing from {set}");
    }
    assert!(!set.contains("Secure"), "plain http: {set}");
    assert!(!set.contains(&operator), "the cookie is not the key");
    assert_eq!(login["role"], "operator");
    let csrf = login["csrfToken"].as_str().unwrap().to_owned();

    // Reads need only the cookie, and see what the key may see: not another key's session.
    let others = stack.create(ADMIN_KEY, json!({"command": "true"})).await;
    let listed = with_cookie(reqwest::Method::GET, "/api/sessions", &cookie).send().await.unwrap();
    assert_eq!(listed.status(), 200);
    let listed: serde_json::Value = listed.json().await.unwrap();
    assert_eq!(listed["items"], json!([]), "an operator's login lists only its own sessions");
    let theirs = format!("/api/sessions/{}", others["sessionId"].as_str().unwrap());
    let hidden = with_cookie(reqwest::Method::GET, &theirs, &cookie).send().await.unwrap();
    assert_eq!(hidden.status(), 404);
    // Writes need the CSRF token too.
    let create = || {
        with_cookie(reqwest::Method::POST, "/api/sessions", &cookie)
            .json(&json!({"command": "true"}))
    };
    let forged = create().send().await.unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(forged.json::<serde_json::Value>().await.unwrap()["error"], "csrf_failed");
    let wrong = create().header("x-csrf-token", "not-it").send().await.unwrap();
    assert_eq!(wrong.status(), 403);
    let made = create().header("x-csrf-token", &csrf).send().await.unwrap();
    assert_eq!(made.status(), 201);
    let nobody = stack.http.get(stack.url("/api/console/me")).send().await.unwrap();
    assert_eq!(nobody.status(), 204);
    let me = with_cookie(reqwest::Method::GET, "/api/console/me", &cookie).send().await.unwrap();
    let me: serde_json::Value = me.json().await.unwrap();
    assert_eq!(
        (me["role"].as_str(), me["csrfToken"].as_str()),
        (Some("operator"), Some(csrf.as_str()))
    );

    // A viewer's login reads but cannot create, CSRF token or not.
    let (viewer_cookie, _, viewer) = console_login(&stack, &stack.new_key("viewer").await).await;
    let denied = with_cookie(reqwest::Method::POST, "/api/sessions", &viewer_cookie)
        .header("x-csrf-token", viewer["csrfToken"].as_str().unwrap())
        .json(&json!({"command": "true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);

    // Logging out ends the login and clears the cookie.
    let out = with_cookie(reqwest::Method::POST, "/api/console/logout", &viewer_cookie).send();
    let out = out.await.unwrap();
    assert_eq!(out.status(), 204);
    assert!(out.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let after = with_cookie(reqwest::Method::GET, "/api/sessions", &viewer_cookie).send().await;
    let after: serde_json::Value = after.unwrap().json().await.unwrap();
    assert_eq!(after["error"], "console_login_expired");

    // Revoking the key ends its logins at once.
    let id = operator.split('_').nth(1).unwrap();
    stack.client(ADMIN_KEY).revoke_key(id).await.unwrap();
    let revoked = with_cookie(reqwest::Method::GET, "/api/sessions", &cookie).send().await;
    assert_eq!(revoked.unwrap().status(), 401);
}
