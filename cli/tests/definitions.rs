//! Secrets, templates, trigger tokens, schedules, retries and the event log, end to end
//! against the real `cliscale up`: through REST, the command line and trigger tokens, with a
//! test clock for schedules, and a search for a secret's value in everything the server
//! keeps or says.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine;
use cliscale_core::rest::{EventQuery, LogEntry, ScheduleSpec, TemplateSpec};
use cliscale_testkit::stack::{ADMIN_KEY, Backend, Stack, run_cli};
use serde_json::{Value, json};

const SECRET: &str = "s3cr3t-Value-9f8e7d6c5b4a";
/// Fails a wait that goes on this long: the conditions below come true in seconds.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// Polls `check` until it answers `Some`.
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "waited too long for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn template(value: Value) -> TemplateSpec {
    serde_json::from_value(value).expect("a template")
}

fn params(value: Value) -> BTreeMap<String, Value> {
    serde_json::from_value(value).unwrap()
}

async fn text_output(stack: &Stack, sid: &str) -> String {
    let path = format!("/api/sessions/{sid}/output?format=text");
    match stack.call("GET", &path, Some(ADMIN_KEY), None).await {
        (200, Value::String(text)) => text,
        other => panic!("output of {sid}: {other:?}"),
    }
}

async fn log(stack: &Stack, query: EventQuery) -> Vec<LogEntry> {
    stack.client(ADMIN_KEY).log(&query).await.unwrap().items
}

/// Everything the server answered, kept so the test can search it afterwards.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn keep(&mut self, v: &impl serde::Serialize) {
        self.0.push(serde_json::to_string(v).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_runs_through_rest_the_command_line_and_a_trigger_and_its_secret_leaks_nowhere()
{
    let Some(stack) = Stack::start_logged(Backend::Sqlite, &[]).await else { return };
    let admin = stack.client(ADMIN_KEY);
    let mut seen = Seen::default();

    let made = admin
        .create_secret("deploy", BTreeMap::from([("TOKEN".to_string(), SECRET.to_string())]))
        .await
        .unwrap();
    assert_eq!(made.keys, ["TOKEN"]);
    seen.keep(&made);
    let greet = template(json!({
        "name": "greet",
        "description": "says hello",
        "session": {
            "command": "echo \"hello $WHO from $TEAM token=$TOKEN\"; echo \"$TOKEN\" | base64",
            "secret_env": {"TOKEN": {"secret": "deploy", "key": "TOKEN"}}
        },
        "params": [
            {"name": "WHO", "type": "string", "required": true},
            {"name": "TEAM", "type": "string", "default": "core", "allowed": ["core", "infra"]}
        ]
    }));
    seen.keep(&admin.put_template(&greet, false).await.unwrap());

    // Through REST. The parameter reaches the command as a variable: a value with shell syntax
    // in it is printed, never run.
    let run =
        admin.run_template("greet", params(json!({"WHO": "x; echo INJECTED"}))).await.unwrap();
    seen.keep(&run);
    let ended = stack.wait_for_phase(&run.session_id, "Succeeded").await;
    assert_eq!(ended["template"], "greet");
    assert_eq!(ended["templateGeneration"], 1);
    assert_eq!(ended["secretEnv"]["TOKEN"], json!({"secret": "deploy", "key": "TOKEN"}));
    seen.keep(&ended);
    let out = text_output(&stack, &run.session_id).await;
    assert!(out.contains("hello x; echo INJECTED from core token=***"), "{out}");
    assert!(!out.contains("\nINJECTED"), "{out}");
    seen.keep(&out);

    // Through the command line.
    let printed = run_cli(
        &stack.base,
        ADMIN_KEY,
        &["run", "--template", "greet", "-p", "WHO=bob", "-p", "TEAM=infra", "--detach"],
    );
    let cli_id = printed.lines().next().unwrap().to_owned();
    stack.wait_for_phase(&cli_id, "Succeeded").await;
    assert!(text_output(&stack, &cli_id).await.contains("hello bob from infra token=***"));

    // Through a trigger token that may set WHO only.
    let trigger = admin.create_trigger("greet", "ci", vec!["WHO".into()]).await.unwrap();
    let token = trigger.token.clone().expect("shown once");
    assert!(token.starts_with("cst_"));
    let listed = admin.list_triggers("greet").await.unwrap();
    assert!(listed.items.iter().all(|t| t.token.is_none()), "a token is listed");
    let anonymous = stack.client(ADMIN_KEY);
    let by_ci = anonymous.trigger("greet", &token, params(json!({"WHO": "carol"}))).await.unwrap();
    stack.wait_for_phase(&by_ci.session_id, "Succeeded").await;
    assert!(text_output(&stack, &by_ci.session_id).await.contains("hello carol from core"));
    let refused = anonymous.trigger("greet", &token, params(json!({"TEAM": "infra"}))).await;
    assert_eq!(refused.unwrap_err().code(), Some("param_not_allowed"));
    admin
        .put_template(&template(json!({"name": "other", "session": {"command": "true"}})), false)
        .await
        .unwrap();
    let elsewhere = anonymous.trigger("other", &token, BTreeMap::new()).await;
    assert_eq!(elsewhere.unwrap_err().code(), Some("trigger_scope"));
    admin.revoke_trigger("greet", &trigger.id).await.unwrap();
    let revoked = anonymous.trigger("greet", &token, params(json!({"WHO": "dave"}))).await;
    assert_eq!(revoked.unwrap_err().code(), Some("invalid_trigger_token"));

    // The event log tells who made each run, in one order.
    let entries =
        log(&stack, EventQuery { template: Some("greet".into()), ..Default::default() }).await;
    seen.keep(&entries);
    let created: Vec<&LogEntry> = entries.iter().filter(|e| e.kind == "created").collect();
    assert_eq!(created.len(), 3, "{entries:?}");
    assert_eq!(created[2].actor.as_deref(), Some(format!("trigger:{}", trigger.id).as_str()));
    assert!(entries.iter().any(|e| e.kind == "trigger_used"));
    assert!(entries.iter().any(|e| e.kind == "secret_referenced" && e.message.contains("deploy")));
    assert!(entries.windows(2).all(|w| w[0].seq < w[1].seq), "{entries:?}");
    let newest_first = log(
        &stack,
        EventQuery {
            template: Some("greet".into()),
            order: Some("desc".into()),
            limit: Some(2),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(newest_first[0].seq, entries.last().unwrap().seq);

    // The secret's value, and its base64, are nowhere: not in any answer, the database, the
    // log, the stored output, the recording, the events.
    // Its base64 as `echo "$TOKEN" | base64` prints it (a newline after the value): the
    // groups of three bytes that hold only the value's own bytes.
    let encoded = base64::engine::general_purpose::STANDARD.encode(SECRET)[..32].to_owned();
    for id in [&run.session_id, &cli_id, &by_ci.session_id] {
        let (_, view) =
            stack.call("GET", &format!("/api/sessions/{id}"), Some(ADMIN_KEY), None).await;
        seen.keep(&view);
        let (_, events) =
            stack.call("GET", &format!("/api/sessions/{id}/events"), Some(ADMIN_KEY), None).await;
        seen.keep(&events);
        let raw = stack
            .http
            .get(stack.url(&format!("/api/sessions/{id}/output")))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        seen.0.push(String::from_utf8_lossy(&raw).into_owned());
        let (_, cast) = stack
            .call("GET", &format!("/api/sessions/{id}/recording"), Some(ADMIN_KEY), None)
            .await;
        seen.keep(&cast);
    }
    seen.keep(&admin.list_secrets().await.unwrap());
    seen.keep(&admin.list_templates().await.unwrap());
    seen.keep(&log(&stack, EventQuery::default()).await);
    for text in &seen.0 {
        assert!(!text.contains(SECRET) && !text.contains(&encoded), "leaked in {text}");
    }
    assert!(seen.0.iter().any(|t| t.contains("***")), "masking was not exercised");
    let mut files = vec![stack.log.clone().unwrap()];
    for entry in std::fs::read_dir(stack.data.path()).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("cliscale.db") {
            files.push(entry.path());
        }
    }
    // The stored output's bytes, one file per session.
    for file in std::fs::read_dir(stack.data.path().join("output")).unwrap().flatten() {
        files.push(file.path());
    }
    assert!(files.len() > 3, "{files:?}");
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(SECRET) && !text.contains(&encoded), "leaked in {}", file.display());
    }
}

/// The API's code of a refusal (the call must have been refused).
fn code<T: std::fmt::Debug>(r: Result<T, cliscale_client::Error>) -> Option<String> {
    r.map(drop).unwrap_err().code().map(String::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_their_reason_and_roles_hold() {
    let Some(stack) = Stack::start(Backend::Sqlite, &[]).await else { return };
    let admin = stack.client(ADMIN_KEY);
    let operator_key = stack.new_key("operator").await;
    let other_key = stack.new_key("operator").await;
    let viewer_key = stack.new_key("viewer").await;

    let data = BTreeMap::from([("K".to_string(), "v".to_string())]);
    admin.create_secret("keys", data.clone()).await.unwrap();
    assert_eq!(
        code(admin.create_secret("keys", data.clone()).await).as_deref(),
        Some("secret_exists")
    );
    assert_eq!(
        code(admin.create_secret("Bad_Name", data.clone()).await).as_deref(),
        Some("invalid_name")
    );
    assert_eq!(
        code(admin.create_secret("empty", BTreeMap::new()).await).as_deref(),
        Some("invalid_secret")
    );
    assert_eq!(code(admin.update_secret("nope", data.clone()).await).as_deref(), Some("not_found"));
    let operator = stack.client(&operator_key);
    let viewer = stack.client(&viewer_key);
    assert_eq!(
        code(operator.create_secret("mine", data.clone()).await).as_deref(),
        Some("forbidden")
    );
    // A bad body is refused without quoting it.
    let (status, body) = stack
        .call(
            "POST",
            "/api/secrets",
            Some(ADMIN_KEY),
            Some(json!({"name": "x", "data": "hunter2-value"})),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_json")));
    assert!(!body.to_string().contains("hunter2-value"), "{body}");

    // Naming a secret: admins only, and only one that exists.
    let with_secret =
        json!({"command": "true", "secret_env": {"K": {"secret": "keys", "key": "K"}}});
    let (status, body) =
        stack.call("POST", "/api/sessions", Some(&operator_key), Some(with_secret)).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("secret_forbidden")));
    let missing =
        json!({"command": "true", "secret_env": {"K": {"secret": "keys", "key": "NOPE"}}});
    let (status, body) = stack.call("POST", "/api/sessions", Some(ADMIN_KEY), Some(missing)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unknown_secret")));

    // Templates.
    let solo = template(json!({
        "name": "solo", "concurrencyPolicy": "Forbid",
        "session": {"command": "read -r x"},
        "params": [{"name": "N", "type": "integer", "default": 1}]
    }));
    operator.put_template(&solo, false).await.unwrap();
    assert_eq!(code(operator.put_template(&solo, false).await).as_deref(), Some("template_exists"));
    let bad = template(
        json!({"name": "bad", "session": {"command": "true"}, "params": [{"name": "CLISCALE_X"}]}),
    );
    assert_eq!(code(admin.put_template(&bad, false).await).as_deref(), Some("invalid_template"));
    let empty = template(json!({"name": "empty", "session": {"command": ""}}));
    assert_eq!(code(admin.put_template(&empty, false).await).as_deref(), Some("invalid_field"));
    let other = stack.client(&other_key);
    assert_eq!(code(other.put_template(&solo, true).await).as_deref(), Some("forbidden"));
    assert_eq!(
        code(viewer.run_template("solo", BTreeMap::new()).await).as_deref(),
        Some("forbidden")
    );
    assert_eq!(
        code(operator.run_template("solo", params(json!({"N": "x"}))).await).as_deref(),
        Some("invalid_param")
    );
    assert_eq!(
        code(operator.run_template("solo", params(json!({"M": 1}))).await).as_deref(),
        Some("unknown_param")
    );
    assert_eq!(
        code(operator.run_template("nope", BTreeMap::new()).await).as_deref(),
        Some("not_found")
    );
    let first = operator.run_template("solo", BTreeMap::new()).await.unwrap();
    stack.wait_for_phase(&first.session_id, "Running").await;
    assert_eq!(
        code(operator.run_template("solo", BTreeMap::new()).await).as_deref(),
        Some("run_forbidden")
    );
    // Another operator sees the template but not the first one's run, nor its events.
    let seen_by_other = other.template("solo").await.unwrap();
    assert!(seen_by_other.recent_runs.is_empty(), "{seen_by_other:?}");
    let theirs = other
        .log(&EventQuery { session: Some(first.session_id.clone()), ..Default::default() })
        .await
        .unwrap();
    assert!(theirs.items.is_empty(), "{theirs:?}");
    let own = operator
        .log(&EventQuery { session: Some(first.session_id.clone()), ..Default::default() })
        .await
        .unwrap();
    assert!(!own.items.is_empty());
    admin.cancel_session(&first.session_id).await.unwrap();

    // Schedules.
    let schedule = |cron: &str, zone: Option<&str>, template: &str| ScheduleSpec {
        name: "nightly".into(),
        template: template.into(),
        cron: cron.into(),
        time_zone: zone.map(String::from),
        ..Default::default()
    };
    assert_eq!(
        code(admin.put_schedule(&schedule("* * *", None, "solo"), false).await).as_deref(),
        Some("invalid_schedule")
    );
    assert_eq!(
        code(admin.put_schedule(&schedule("@daily", Some("Mars/Base"), "solo"), false).await)
            .as_deref(),
        Some("invalid_schedule")
    );
    assert_eq!(
        code(admin.put_schedule(&schedule("@daily", None, "nope"), false).await).as_deref(),
        Some("unknown_template")
    );
    admin.put_schedule(&schedule("@daily", Some("Europe/Berlin"), "solo"), false).await.unwrap();
    assert_eq!(
        code(admin.put_schedule(&schedule("@daily", None, "solo"), false).await).as_deref(),
        Some("schedule_exists")
    );
    assert_eq!(code(viewer.delete_schedule("nightly").await).as_deref(), Some("forbidden"));
    let shown = viewer.schedule("nightly").await.unwrap();
    assert_eq!(shown.status.next_run_times.len(), 5);

    // A trigger token with a bad name or a parameter the template lacks.
    let bad_trigger = admin.create_trigger("solo", "", vec![]).await;
    assert_eq!(code(bad_trigger).as_deref(), Some("invalid_trigger"));
    let bad_trigger = admin.create_trigger("solo", "ci", vec!["NOPE".into()]).await;
    assert_eq!(code(bad_trigger).as_deref(), Some("invalid_trigger"));

    // The event log's own refusals.
    let (status, body) =
        stack.call("GET", "/api/events?order=sideways", Some(ADMIN_KEY), None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_query")));
    let (status, body) = stack.call("GET", "/api/events?cursor=zzz", Some(ADMIN_KEY), None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_cursor")));
    // Cursors page through everything once.
    let mut seqs = Vec::new();
    let mut cursor = None;
    loop {
        let page = admin
            .log(&EventQuery { limit: Some(3), cursor: cursor.clone(), ..Default::default() })
            .await
            .unwrap();
        seqs.extend(page.items.iter().map(|e| e.seq));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    // Read after the pages: the same entries in the same order, and only entries written since
    // (a session of this test may still be logging its end) after them.
    let all = admin.log(&EventQuery { limit: Some(500), ..Default::default() }).await.unwrap();
    let all: Vec<i64> = all.items.iter().map(|e| e.seq).collect();
    assert!(all.starts_with(&seqs), "pages {seqs:?}, whole log {all:?}");
    assert!(all[seqs.len()..].iter().all(|s| Some(s) > seqs.last()), "{all:?}");
    assert!(seqs.len() > 6);
}

/// The scheduled time the test clock file names, as RFC 3339 in UTC.
fn set_clock(file: &std::path::Path, rfc3339: &str) {
    let t = humantime::parse_rfc3339(rfc3339).unwrap();
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    std::fs::write(file, secs.to_string()).unwrap();
}

async fn schedule_fires_under_a_test_clock(backend: Backend) {
    let clock_dir = tempfile::tempdir().unwrap();
    let clock = clock_dir.path().join("now");
    set_clock(&clock, "2026-03-01T10:00:30Z");
    let clock_arg = clock.display().to_string();
    let Some(stack) = Stack::start(backend, &["--clock-file", &clock_arg]).await else { return };
    let admin = stack.client(ADMIN_KEY);
    let waits = template(json!({
        "name": "waits", "session": {"command": "echo run for $SLOT; read -r x"},
        "params": [{"name": "SLOT", "type": "string", "default": "any"}]
    }));
    admin.put_template(&waits, false).await.unwrap();
    let spec: ScheduleSpec = serde_json::from_value(json!({
        "name": "every-minute", "template": "waits", "params": {"SLOT": "minute"},
        "cron": "* * * * *", "concurrencyPolicy": "Forbid"
    }))
    .unwrap();
    let made = admin.put_schedule(&spec, false).await.unwrap();
    assert_eq!(made.status.next_run_times[0], "2026-03-01T10:01:00Z");

    let status = || async { admin.schedule("every-minute").await.unwrap().status };
    // 10:01 comes: one run starts.
    set_clock(&clock, "2026-03-01T10:01:05Z");
    let first = until("the first run", || async {
        let s = status().await;
        (s.active.len() == 1).then(|| s.active[0].clone())
    })
    .await;
    let run = stack.wait_for_phase(&first, "Running").await;
    assert_eq!(run["schedule"], "every-minute");
    assert_eq!(run["scheduledAt"], "2026-03-01T10:01:00Z");
    assert!(text_output_contains(&stack, &first, "run for minute").await);

    // 10:02 comes while it runs: Forbid skips it, and says so.
    set_clock(&clock, "2026-03-01T10:02:05Z");
    let skipped = until("the skip", || async {
        let s = status().await;
        s.not_run.first().filter(|n| n.scheduled_at == "2026-03-01T10:02:00Z").cloned()
    })
    .await;
    assert_eq!(skipped.reason, "ConcurrencyForbid");

    // Eight minutes pass unseen: the earlier times are one missed record, no flood.
    set_clock(&clock, "2026-03-01T10:10:05Z");
    until("the missed record", || async {
        let s = status().await;
        s.not_run.iter().any(|n| n.reason == "Missed").then_some(())
    })
    .await;
    let missed = log(
        &stack,
        EventQuery {
            schedule: Some("every-minute".into()),
            kind: Some("missed".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(missed.len(), 1, "{missed:?}");
    assert!(missed[0].message.starts_with("7 scheduled times"), "{missed:?}");

    // The run ends; the next time starts a second run, and only one.
    admin.cancel_session(&first).await.unwrap();
    stack.wait_for_phase(&first, "Cancelled").await;
    set_clock(&clock, "2026-03-01T10:11:05Z");
    let second = until("the second run", || async {
        let s = status().await;
        s.active.first().cloned()
    })
    .await;
    assert_ne!(second, first);
    let runs = status().await.recent_runs;
    assert_eq!(runs.len(), 2, "{runs:?}");
    let scheduled = log(
        &stack,
        EventQuery {
            schedule: Some("every-minute".into()),
            kind: Some("scheduled".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(scheduled.len(), 2, "{scheduled:?}");
    let skips = log(
        &stack,
        EventQuery {
            schedule: Some("every-minute".into()),
            kind: Some("skipped".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(skips.len(), 2, "10:02 and 10:10: {skips:?}");

    // Suspended: nothing starts, and the status shows no next times.
    let suspended = ScheduleSpec { suspend: true, ..spec.clone() };
    admin.put_schedule(&suspended, true).await.unwrap();
    admin.cancel_session(&second).await.unwrap();
    set_clock(&clock, "2026-03-01T10:12:05Z");
    until("the suspended skip", || async {
        let s = status().await;
        s.not_run.first().filter(|n| n.reason == "Suspended").map(drop)
    })
    .await;
    let s = status().await;
    assert!(s.active.is_empty() && s.next_run_times.is_empty(), "{s:?}");
    // Both runs ended Cancelled; failedRunsHistoryLimit (default 1) keeps the newer only, and
    // the older is deleted with its output.
    until("the history limit", || async {
        let runs = status().await.recent_runs;
        (runs.len() == 1 && runs[0].session_id == second).then_some(())
    })
    .await;
    let (gone, _) =
        stack.call("GET", &format!("/api/sessions/{first}"), Some(ADMIN_KEY), None).await;
    assert_eq!(gone, 404);
    admin.delete_schedule("every-minute").await.unwrap();
}

async fn text_output_contains(stack: &Stack, sid: &str, needle: &str) -> bool {
    until("the output", || async { text_output(stack, sid).await.contains(needle).then_some(()) })
        .await;
    true
}

/// Waits for session `id`, which a retry makes later, to exist and reach `phase`.
async fn wait_for_attempt(stack: &Stack, id: &str, phase: &str) {
    let path = format!("/api/sessions/{id}");
    until(&format!("{id} {phase}"), || async {
        let (status, view) = stack.call("GET", &path, Some(ADMIN_KEY), None).await;
        (status == 200 && view["phase"] == phase).then_some(())
    })
    .await;
}

async fn a_retry_chain_runs_three_attempts_and_a_cancel_ends_one(backend: Backend) {
    let Some(stack) = Stack::start(backend, &[]).await else { return };
    let admin = stack.client(ADMIN_KEY);
    let flaky = template(json!({
        "name": "flaky",
        "session": {"command": "echo attempt; exit 3"},
        "retry": {"limit": 2, "initialBackoffSeconds": 1, "maxBackoffSeconds": 1, "onExitCodes": [3]}
    }));
    admin.put_template(&flaky, false).await.unwrap();
    let first = admin.run_template("flaky", BTreeMap::new()).await.unwrap().session_id;
    let third = format!("{first}-r3");
    wait_for_attempt(&stack, &third, "Failed").await;
    let chain = admin.template("flaky").await.unwrap().recent_runs;
    let attempts: Vec<(u32, Option<String>)> =
        chain.iter().rev().map(|r| (r.attempt, r.retry_of.clone())).collect();
    assert_eq!(
        attempts,
        [(1, None), (2, Some(first.clone())), (3, Some(first.clone()))],
        "{chain:?}"
    );
    let entries = until("the end of the chain", || async {
        let e =
            log(&stack, EventQuery { template: Some("flaky".into()), ..Default::default() }).await;
        e.iter().any(|x| x.kind == "retries_exhausted").then_some(e)
    })
    .await;
    assert_eq!(entries.iter().filter(|e| e.kind == "retried").count(), 2, "{entries:?}");
    let second = admin.session(&format!("{first}-r2")).await.unwrap();
    assert_eq!((second.attempt, second.retry_of.as_deref()), (2, Some(first.as_str())));

    // A chain waiting for its backoff ends when its attempt is cancelled; a chain beside it,
    // on the same backoff, shows the retry loop has passed over both.
    let slow = template(json!({
        "name": "slow", "session": {"command": "exit 4"},
        "retry": {"limit": 3, "initialBackoffSeconds": 3, "maxBackoffSeconds": 3}
    }));
    admin.put_template(&slow, false).await.unwrap();
    let stopped = admin.run_template("slow", BTreeMap::new()).await.unwrap().session_id;
    let witness = admin.run_template("slow", BTreeMap::new()).await.unwrap().session_id;
    stack.wait_for_phase(&stopped, "Failed").await;
    let (status, _) =
        stack.call("DELETE", &format!("/api/sessions/{stopped}"), Some(ADMIN_KEY), None).await;
    assert_eq!(status, 200);
    // The witness' third attempt comes two backoffs after the cancel: the stopped chain's
    // second would have come by then.
    wait_for_attempt(&stack, &format!("{witness}-r3"), "Failed").await;
    let (status, _) =
        stack.call("GET", &format!("/api/sessions/{stopped}-r2"), Some(ADMIN_KEY), None).await;
    assert_eq!(status, 404, "a cancelled chain was retried");
    let stops = log(
        &stack,
        EventQuery {
            session: Some(stopped.clone()),
            kind: Some("retries_stopped".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(stops.len(), 1);
}

cliscale_testkit::on_both_backends!(
    schedule_fires_under_a_test_clock,
    a_retry_chain_runs_three_attempts_and_a_cancel_ends_one,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_manages_secrets_templates_and_schedules() {
    let Some(stack) = Stack::start(Backend::Sqlite, &[]).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token.txt");
    std::fs::write(&token, SECRET).unwrap();
    let cli = |args: &[&str]| run_cli(&stack.base, ADMIN_KEY, args);
    cli(&["secrets", "create", "deploy", "--from-file", &format!("TOKEN={}", token.display())]);
    let listed = cli(&["secrets", "ls"]);
    assert!(listed.contains("deploy") && listed.contains("TOKEN") && !listed.contains(SECRET));

    let file = dir.path().join("t.yaml");
    std::fs::write(
        &file,
        "name: hello\ndescription: greets\nsession:\n  command: echo hi $WHO\n  secret_env: {TOKEN: {secret: deploy, key: TOKEN}}\nparams:\n  - {name: WHO, type: string, default: you}\n",
    )
    .unwrap();
    cli(&["templates", "apply", "-f", &file.display().to_string()]);
    // Applied again: replaced, at generation 2.
    cli(&["templates", "apply", "-f", &file.display().to_string()]);
    let templates: Value = serde_json::from_str(&cli(&["templates", "ls", "-o", "json"])).unwrap();
    assert_eq!(templates[0]["name"], "hello");
    assert_eq!(templates[0]["generation"], 2);
    assert!(cli(&["secrets", "ls"]).contains("hello"), "the secret's users list the template");

    let trigger =
        cli(&["templates", "triggers", "create", "hello", "--name", "ci", "--param", "WHO"]);
    assert!(trigger.trim().starts_with("cst_"), "{trigger}");
    assert!(cli(&["templates", "triggers", "ls", "hello"]).contains("ci"));

    let schedule = dir.path().join("s.yaml");
    std::fs::write(
        &schedule,
        "name: nightly\ntemplate: hello\ncron: \"30 2 * * *\"\ntimeZone: Europe/Berlin\n",
    )
    .unwrap();
    cli(&["schedules", "apply", "-f", &schedule.display().to_string()]);
    assert!(cli(&["schedules", "ls"]).contains("Europe/Berlin"));
    cli(&["schedules", "suspend", "nightly"]);
    let shown: Value =
        serde_json::from_str(&cli(&["schedules", "get", "nightly", "-o", "json"])).unwrap();
    assert_eq!(shown["suspend"], true);
    assert_eq!(shown["status"]["nextRunTimes"], json!([]));
    cli(&["schedules", "resume", "nightly"]);

    let id = cli(&["run", "--template", "hello", "-p", "WHO=there", "--detach"]);
    let id = id.lines().next().unwrap().to_owned();
    stack.wait_for_phase(&id, "Succeeded").await;
    let events: Value = serde_json::from_str(&cli(&[
        "events",
        "--template",
        "hello",
        "--type",
        "created",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(events.as_array().unwrap().len(), 1, "{events}");
    assert_eq!(events[0]["session"], id.as_str());
    let one: Value = serde_json::from_str(&cli(&["events", &id, "-o", "json"])).unwrap();
    assert!(one.as_array().unwrap().iter().any(|e| e["type"] == "secret_referenced"), "{one}");
    cli(&["schedules", "rm", "nightly"]);
    cli(&["templates", "rm", "hello"]);
    cli(&["secrets", "rm", "deploy"]);
    assert!(!cli(&["secrets", "ls"]).contains("deploy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_token_has_its_own_rate_limit() {
    let Some(stack) = Stack::start(Backend::Sqlite, &["--rate-per-minute", "3"]).await else {
        return;
    };
    let admin = stack.client(ADMIN_KEY);
    admin
        .put_template(&template(json!({"name": "t", "session": {"command": "true"}})), false)
        .await
        .unwrap();
    let token = admin.create_trigger("t", "ci", vec![]).await.unwrap().token.unwrap();
    let caller = stack.client(ADMIN_KEY);
    for _ in 0..3 {
        caller.trigger("t", &token, BTreeMap::new()).await.unwrap();
    }
    let limited = caller.trigger("t", &token, BTreeMap::new()).await.unwrap_err();
    assert_eq!((limited.status(), limited.code()), (Some(429), Some("rate_limited")));
    // Guessed tokens are charged to the caller's address: three refusals, then 429.
    let forged = "cst_0123456789abcdef_guessed";
    for _ in 0..3 {
        let refused = caller.trigger("t", forged, BTreeMap::new()).await.unwrap_err();
        assert_eq!(refused.code(), Some("invalid_trigger_token"));
    }
    let limited = caller.trigger("t", forged, BTreeMap::new()).await.unwrap_err();
    assert_eq!(limited.code(), Some("rate_limited"));
    // The admin key's own budget is its own: it still lists.
    let (status, _) = stack.call("GET", "/api/templates", Some(ADMIN_KEY), None).await;
    assert_ne!(status, 429, "the token's calls were charged to the key");
}
