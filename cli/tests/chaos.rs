//! Parts failing under load (docs/security.md): the database gone while terminals are open, and
//! the API killed in the middle of a burst of creates.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cliscale_testkit::netcut::Proxy;
use cliscale_testkit::on_both_backends;
use cliscale_testkit::procinfo::{parent_of, session_processes};
use cliscale_testkit::stack::{
    self as common, ADMIN_KEY, Backend, HANG_GUARD, Stack, open_terminal,
};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

on_both_backends!(an_api_killed_during_a_burst_of_creates_makes_no_duplicate);

/// With PostgreSQL unreachable, creating a session and opening a terminal fail closed with
/// 503 (and use no token up), while a terminal already open goes on; once the database is
/// back, everything works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_fails_closed_and_open_terminals_go_on() {
    let Some(url) = common::fresh_postgres().await else { return };
    // The database's port, behind a proxy the test can cut.
    let (head, rest) = url.split_once('@').unwrap();
    let (host, db) = rest.split_once('/').unwrap();
    let host = if host.contains(':') { host.to_owned() } else { format!("{host}:5432") };
    let proxy = Proxy::start(host.parse().unwrap()).await;
    let proxied = format!("{head}@{}/{db}", proxy.addr);
    let stack = Stack::start(Backend::Sqlite, &["--database-url", &proxied]).await.unwrap();

    let created = stack.create(ADMIN_KEY, json!({"command": "echo ready; exec cat"})).await;
    let sid = created["sessionId"].as_str().unwrap().to_owned();
    let token = created["token"].as_str().unwrap();
    let mut open = open_terminal(&stack.ws_url(&sid, &format!("token={token}"))).await.unwrap();
    common::read_until(&mut open, "ready").await;
    let (status, body) = stack
        .call("POST", &format!("/api/sessions/{sid}/tokens"), Some(ADMIN_KEY), Some(json!({})))
        .await;
    assert_eq!(status, 201, "{body}");
    let spare = body["token"].as_str().unwrap().to_owned();

    proxy.cut();
    let started = Instant::now();
    let (status, body) = stack
        .call("POST", "/api/sessions", Some(ADMIN_KEY), Some(json!({"command": "true"})))
        .await;
    assert_eq!((status, body["error"].as_str()), (503, Some("storage_unavailable")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    let refused = open_terminal(&stack.ws_url(&sid, &format!("token={spare}"))).await.err();
    assert!(matches!(refused, Some((503, _))), "{refused:?}");
    // The open terminal still types and echoes.
    open.send(Message::Text(r#"{"type":"input","data":"still-here\r"}"#.into())).await.unwrap();
    common::read_until(&mut open, "still-here").await;

    proxy.restore();
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let (status, _) = stack.call("GET", "/api/sessions", Some(ADMIN_KEY), None).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the API never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The refused token was not used up.
    let mut again = open_terminal(&stack.ws_url(&sid, &format!("token={spare}"))).await.unwrap();
    again.send(Message::Text(r#"{"type":"input","data":"back\r"}"#.into())).await.unwrap();
    common::read_until(&mut again, "back").await;
}

/// Creates, each with its own Idempotency-Key; the server is killed outright partway, started
/// again, and every create whose answer was lost is retried with its key. Each key names one
/// session, there are exactly as many sessions as keys, and no session has two runners.
async fn an_api_killed_during_a_burst_of_creates_makes_no_duplicate(backend: Backend) {
    let Some(stack) = Stack::start(backend, &[]).await else { return };
    const CREATES: usize = 120;
    let create = |stack: &Stack, key: String| {
        let request = stack
            .http
            .post(stack.url("/api/sessions"))
            .bearer_auth(ADMIN_KEY)
            .header("idempotency-key", key.clone())
            .header("content-type", "application/json")
            .body(json!({"command": "exec sleep 600"}).to_string());
        async move {
            let answer = match request.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body: serde_json::Value =
                        serde_json::from_str(&resp.text().await.unwrap_or_default())
                            .unwrap_or_default();
                    Some((status, body))
                }
                Err(_) => None,
            };
            (key, answer)
        }
    };
    let keys: Vec<String> = (0..CREATES).map(|i| format!("burst-{i}")).collect();
    let mut burst = tokio::task::JoinSet::new();
    for key in &keys {
        burst.spawn(create(&stack, key.clone()));
    }
    // Kill the server once some of the burst has been answered.
    let mut answered = HashMap::new();
    let mut killed = None;
    while let Some(done) = burst.join_next().await {
        let (key, answer) = done.unwrap();
        if let Some((201, body)) = answer {
            answered.insert(key, body["sessionId"].as_str().unwrap().to_owned());
        }
        if answered.len() >= 3 && killed.is_none() {
            killed = Some(stack.child.id());
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(stack.child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
        }
    }
    assert!(killed.is_some(), "the burst ended before the kill");
    // The case that matters: creates whose answer the kill lost.
    let unanswered = CREATES - answered.len();
    eprintln!("{} creates answered before the kill, {unanswered} not", answered.len());
    assert!(unanswered > 0, "every create was answered before the kill");
    let stack = stack.crash_and_restart();
    // Every key again: the lost ones make their session now, the answered ones name theirs.
    let mut ids = HashMap::new();
    for key in &keys {
        let (_, answer) = create(&stack, key.clone()).await;
        let (status, body) = answer.expect("the restarted server answers");
        assert!(status == 200 || status == 201, "{key}: {status} {body}");
        let id = body["sessionId"].as_str().unwrap().to_owned();
        if let Some(first) = answered.get(key) {
            assert_eq!(&id, first, "{key} named another session after the restart");
            assert_eq!(status, 200);
        }
        ids.insert(key.clone(), id);
    }
    let distinct: HashSet<&String> = ids.values().collect();
    assert_eq!(distinct.len(), CREATES, "two keys named one session");
    let (_, listed) = stack.call("GET", "/api/sessions?limit=200", Some(ADMIN_KEY), None).await;
    let listed = listed["items"].as_array().unwrap();
    assert_eq!(listed.len(), CREATES, "sessions made: {}", listed.len());
    // A key names one request: another body under it is refused, and so is a malformed key.
    let refused = stack
        .http
        .post(stack.url("/api/sessions"))
        .bearer_auth(ADMIN_KEY)
        .header("idempotency-key", "burst-0")
        .header("content-type", "application/json")
        .body(json!({"command": "something else"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409);
    assert!(refused.text().await.unwrap().contains("idempotency_key_reused"));
    let malformed = stack
        .http
        .post(stack.url("/api/sessions"))
        .bearer_auth(ADMIN_KEY)
        .header("idempotency-key", "k".repeat(300))
        .header("content-type", "application/json")
        .body(json!({"command": "true"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert!(malformed.text().await.unwrap().contains("invalid_idempotency_key"));
    // No session has two runners.
    for id in distinct {
        let runners: Vec<i32> = session_processes(id)
            .into_iter()
            .filter(|(_, c)| c == "cliscale-runner")
            .map(|(pid, _)| pid)
            .collect();
        // A runner's child between its fork and its exec carries the runner's name and
        // environment: it is that runner's, not a second one.
        let roots = runners
            .iter()
            .filter(|pid| parent_of(**pid).is_none_or(|parent| !runners.contains(&parent)))
            .count();
        assert!(roots <= 1, "{id} has {roots} runners: {runners:?}");
    }
}
