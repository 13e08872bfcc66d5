//! Local mode attacked from inside: a session's own command, started by one operator, tries to
//! reach the server, its keys and database, and another operator's session
//! (docs/security.md, "Local mode"). Also what a request's variables reach, where the files
//! live and with what modes, and what happens to runners when the server is killed.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use cliscale_testkit::procinfo::session_processes;
use cliscale_testkit::stack::{self as common, ADMIN_KEY, Backend, HANG_GUARD, Stack};
use serde_json::json;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Waits until `sid` has a process named `comm`; returns its pid.
async fn wait_for_process(sid: &str, comm: &str) -> i32 {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        if let Some((pid, _)) = session_processes(sid).into_iter().find(|(_, c)| c == comm) {
            return pid;
        }
        assert!(Instant::now() < deadline, "{sid} never ran {comm}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn uid_of(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn text_output(stack: &Stack, sid: &str) -> String {
    let url = stack.url(&format!("/api/sessions/{sid}/output?format=text"));
    let resp = stack.http.get(url).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// Each probe prints DENIED when the attempt fails and BREACH when it works.
const ATTACK: &str = r#"
probe() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "BREACH $name"; else echo "DENIED $name"; fi; }
probe list-data-dir ls "$DATA"
probe read-signing-key cat "$DATA/signing-key.der"
probe read-database cat "$DATA/cliscale.db"
probe read-jwks-file cat "$DATA/jwks.json"
probe plant-in-data-dir touch "$DATA/planted"
probe read-own-stored-log cat "$DATA/output/$CLISCALE_SESSION_ID.log"
probe signal-server kill -0 "$SERVER_PID"
probe stop-server kill -STOP "$SERVER_PID"
probe read-server-environ cat "/proc/$SERVER_PID/environ"
probe signal-runner kill -0 "$PPID"
probe read-runner-environ cat "/proc/$PPID/environ"
probe open-runner-memory sh -c "exec 9< /proc/$PPID/mem"
probe write-events-pipe sh -c "echo forged > /proc/$PPID/fd/3"
probe list-work-root ls "$WORK_ROOT"
probe list-victim-work-dir ls "$VICTIM_DIR"
probe read-victim-file cat "$VICTIM_DIR/mine.txt"
probe signal-victim kill -0 "$VICTIM_PID"
probe read-victim-environ cat "/proc/$VICTIM_PID/environ"
probe find-output-token sh -c 'env | grep -q CLISCALE_RUNNER'
touch ./mine.txt && echo "ALLOWED own-work-dir"
echo "home=$HOME"
echo ATTACK-DONE
"#;

const PROBES: [&str; 19] = [
    "list-data-dir",
    "read-signing-key",
    "read-database",
    "read-jwks-file",
    "plant-in-data-dir",
    "read-own-stored-log",
    "signal-server",
    "stop-server",
    "read-server-environ",
    "signal-runner",
    "read-runner-environ",
    "open-runner-memory",
    "write-events-pipe",
    "list-work-root",
    "list-victim-work-dir",
    "read-victim-file",
    "signal-victim",
    "read-victim-environ",
    "find-output-token",
];

/// The attack of the issue that found it: one operator's session reads the server's files and
/// takes over another operator's session. Run as root, each session has a user of its own;
/// otherwise the server accepts only admin keys, so there is no other tenant to attack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_command_cannot_reach_the_server_or_another_session() {
    let Some(stack) = Stack::start(Backend::Sqlite, &[]).await else { return };
    if !is_root() {
        let (status, body) = stack
            .call(
                "POST",
                "/api/keys",
                Some(ADMIN_KEY),
                Some(json!({"name": "op", "role": "operator"})),
            )
            .await;
        assert_eq!((status, body["error"].as_str()), (403, Some("single_tenant")), "{body}");
        return;
    }
    let (victim_key, attacker_key) =
        (stack.new_key("operator").await, stack.new_key("operator").await);
    let victim = stack
        .create(&victim_key, json!({"command": "echo victim-secret > mine.txt; exec sleep 600"}))
        .await;
    let victim_id = victim["sessionId"].as_str().unwrap();
    let victim_pid = wait_for_process(victim_id, "sleep").await;
    let victim_dir = stack.work.path().join(victim_id);
    // The victim's file exists, so a failed read is a refusal, not a missing file.
    let deadline = Instant::now() + HANG_GUARD;
    while !victim_dir.join("mine.txt").exists() {
        assert!(Instant::now() < deadline, "the victim never wrote its file");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let env = json!({
        "DATA": stack.data.path().display().to_string(),
        "WORK_ROOT": stack.work.path().display().to_string(),
        "SERVER_PID": stack.child.id().to_string(),
        "VICTIM_DIR": victim_dir.display().to_string(),
        "VICTIM_PID": victim_pid.to_string(),
    });
    let attacker = stack.create(&attacker_key, json!({"command": ATTACK, "env": env})).await;
    let attacker_id = attacker["sessionId"].as_str().unwrap();
    let attacker_pid = wait_for_process(attacker_id, "bash").await;
    let (attacker_uid, victim_uid) = (uid_of(attacker_pid), uid_of(victim_pid));
    stack.wait_for_phase(attacker_id, "Succeeded").await;

    let text = text_output(&stack, attacker_id).await;
    assert!(text.contains("ATTACK-DONE"), "{text}");
    for probe in PROBES {
        assert!(text.contains(&format!("DENIED {probe}\n")), "{probe} was not denied:\n{text}");
    }
    assert!(!text.contains("BREACH"), "{text}");
    assert!(text.contains("ALLOWED own-work-dir"), "{text}");
    assert!(text.contains(&format!("home={}", stack.work.path().join(attacker_id).display())));
    assert_ne!(attacker_uid, 0);
    assert_ne!(victim_uid, 0);
    assert_ne!(attacker_uid, victim_uid, "two running sessions never share a user");
    assert!(!stack.data.path().join("planted").exists());
    // The victim is untouched, and the server was never stopped.
    assert_eq!(stack.wait_for_phase(victim_id, "Running").await["phase"], "Running");
    let (status, _) = stack.call("GET", "/api/sessions", Some(ADMIN_KEY), None).await;
    assert_eq!(status, 200);
}

/// What a request sets is the command's world only: the runner's own process, and so its
/// fetches, never carries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_variables_reach_the_command_and_never_the_runner() {
    let Some(stack) = Stack::start(Backend::Sqlite, &[]).await else { return };
    let env = json!({"LD_PRELOAD": "/nonexistent/evil.so", "PROBE_MARK": "seen"});
    let created = stack
        .create(ADMIN_KEY, json!({"command": "echo mark=$PROBE_MARK; exec sleep 600", "env": env}))
        .await;
    let sid = created["sessionId"].as_str().unwrap();
    let runner = wait_for_process(sid, "cliscale-runner").await;
    let command = wait_for_process(sid, "sleep").await;
    let environ = |pid: i32| -> Vec<String> {
        std::fs::read(format!("/proc/{pid}/environ"))
            .unwrap()
            .split(|b| *b == 0)
            .map(|kv| String::from_utf8_lossy(kv).into_owned())
            .collect()
    };
    let runner_env = environ(runner);
    assert!(
        !runner_env.iter().any(|kv| kv.starts_with("LD_PRELOAD=") || kv.starts_with("PROBE_MARK=")),
        "the runner carries the request's variables: {runner_env:?}"
    );
    assert!(runner_env.iter().any(|kv| kv == "CLISCALE_ENV_PROBE_MARK=seen"));
    let command_env = environ(command);
    assert!(command_env.iter().any(|kv| kv == "LD_PRELOAD=/nonexistent/evil.so"));
    assert!(command_env.iter().any(|kv| kv == "PROBE_MARK=seen"));
    assert!(
        !command_env
            .iter()
            .any(|kv| kv.starts_with("CLISCALE_ENV_") || kv.starts_with("CLISCALE_RUNNER_")),
        "{command_env:?}"
    );
    if is_root() {
        // Isolated: nothing of the server's own environment reaches a session.
        assert!(!command_env.iter().any(|kv| kv.starts_with("CLISCALE_API_KEY=")));
        assert!(!runner_env.iter().any(|kv| kv.starts_with("CARGO")), "{runner_env:?}");
    }
    let (status, _) =
        stack.call("DELETE", &format!("/api/sessions/{sid}"), Some(ADMIN_KEY), None).await;
    assert_eq!(status, 202);
}

/// The data dir is 0700 and everything in it 0600 (directories 0700), even under umask 000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_is_private_whatever_the_umask() {
    // Process-wide, and inherited by the server: the widest a careless shell could leave it.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let Some(stack) = Stack::start(Backend::Sqlite, &[]).await else { return };
    let created = stack.create(ADMIN_KEY, json!({"command": "echo stored"})).await;
    let sid = created["sessionId"].as_str().unwrap();
    stack.wait_for_phase(sid, "Succeeded").await;
    common::wait_for_runner_exit(sid).await;
    let mut seen = 0;
    let mut pending = vec![stack.data.path().to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{} is {mode:o}", path.display());
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
            seen += 1;
        }
    }
    // The key, the JWKS, the database (and its journal files) and the session's log at least.
    assert!(seen >= 4, "only {seen} files");
    assert!(stack.data.path().join(format!("output/{sid}.log")).exists());
    let work = std::fs::metadata(stack.work.path()).unwrap();
    assert_eq!(work.permissions().mode() & 0o777, 0o711, "work dirs are reachable, not listable");
    assert_eq!(work.uid(), nix::unistd::geteuid().as_raw());
}

/// A server killed outright takes its runners and their commands with it; the next start
/// says truthfully what happened to their sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_do_not_outlive_a_killed_server() {
    let Some(mut stack) = Stack::start(Backend::Sqlite, &[]).await else { return };
    let created = stack.create(ADMIN_KEY, json!({"command": "exec sleep 600"})).await;
    let sid = created["sessionId"].as_str().unwrap().to_owned();
    let runner = wait_for_process(&sid, "cliscale-runner").await;
    let command = wait_for_process(&sid, "sleep").await;
    stack.wait_for_phase(&sid, "Running").await;
    // Only the server: its runners are left to notice on their own.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(stack.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = stack.child.wait();
    let alive = |pid: i32| {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    };
    let deadline = Instant::now() + HANG_GUARD;
    while alive(runner) || alive(command) {
        assert!(Instant::now() < deadline, "the runner or its command outlived the server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stack = stack.crash_and_restart();
    let session = stack.wait_for_phase(&sid, "Lost").await;
    let message = session["message"].as_str().unwrap_or_default();
    assert!(message.contains("stopped"), "{session}");
}

/// A session's command tries every way it has to report a made-up end: its own output, its
/// runner's log and event descriptors. The session stays Running, and a cancel acts on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cannot_forge_its_own_status() {
    let Some(stack) = Stack::start(Backend::Sqlite, &[]).await else { return };
    let status = cliscale_core::protocol::SessionStatus::finished(
        cliscale_core::TerminalReason::Exited,
        0,
        Some("forged".into()),
    );
    let forged = cliscale_core::event::RunnerEvent::finished(status, None).to_line();
    let forged = forged.trim();
    let command = format!(
        "f='{forged}'; echo \"$f\"; echo \"$f\" >&2; \
         for fd in 1 2 3 4; do echo \"$f\" > /proc/$PPID/fd/$fd 2>/dev/null; done; \
         echo forged-sent; exec sleep 600"
    );
    let created = stack.create(ADMIN_KEY, json!({ "command": command })).await;
    let sid = created["sessionId"].as_str().unwrap();
    let command_pid = wait_for_process(sid, "sleep").await;
    let deadline = Instant::now() + HANG_GUARD;
    while !text_output(&stack, sid).await.contains("forged-sent") {
        assert!(Instant::now() < deadline, "the attempt never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let session = stack.wait_for_phase(sid, "Running").await;
    assert_ne!(session["message"], "forged", "{session}");
    let (status, body) =
        stack.call("DELETE", &format!("/api/sessions/{sid}"), Some(ADMIN_KEY), None).await;
    assert_eq!(status, 202, "a cancel is not answered 'already finished': {body}");
    stack.wait_for_phase(sid, "Cancelled").await;
    let deadline = Instant::now() + HANG_GUARD;
    while std::path::Path::new(&format!("/proc/{command_pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{command_pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        assert!(Instant::now() < deadline, "the command outlived its cancel");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A cancel acts on what runs, not on the recorded phase: a finished session's runner still
/// lingering is stopped, and the answer says the session had already finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_a_lingering_runner_of_a_finished_session() {
    let Some(stack) = Stack::start(Backend::Sqlite, &["--linger", "600s"]).await else { return };
    let created = stack.create(ADMIN_KEY, json!({"command": "echo done"})).await;
    let sid = created["sessionId"].as_str().unwrap();
    let runner = wait_for_process(sid, "cliscale-runner").await;
    stack.wait_for_phase(sid, "Succeeded").await;
    assert!(std::path::Path::new(&format!("/proc/{runner}")).exists(), "the runner lingers");
    let (status, body) =
        stack.call("DELETE", &format!("/api/sessions/{sid}"), Some(ADMIN_KEY), None).await;
    assert_eq!((status, body["phase"].as_str()), (200, Some("Succeeded")), "{body}");
    common::wait_for_runner_exit(sid).await;
}

/// A pod's case: the command runs as the runner's own user. The runner is non-dumpable, so
/// the command still cannot read its environment (the output token), memory or descriptors.
/// Run as root, the runner is started as `nobody` (65534), as a pod's non-root user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_pod_the_command_cannot_read_its_runners_credentials() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let key = cliscale_core::token::SessionSigningKey::generate("k");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, cliscale_core::token::jwks_json([&key])).unwrap();
    std::fs::set_permissions(&jwks, std::fs::Permissions::from_mode(0o644)).unwrap();
    let probe = r#"
probe() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "BREACH $name"; else echo "DENIED $name"; fi; }
probe read-runner-environ cat /proc/$PPID/environ
probe open-runner-memory sh -c "exec 9< /proc/$PPID/mem"
probe list-runner-descriptors ls /proc/$PPID/fd
probe find-output-token sh -c 'env | grep -q OUTPUT_TOKEN'
echo "same-user=$(stat -c %u /proc/$PPID)/$(id -u)"
echo PROBE-DONE
"#;
    let mut cmd = if is_root() {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        c.arg(common::runner_bin());
        c
    } else {
        std::process::Command::new(common::runner_bin())
    };
    let out = cmd
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", dir.path())
        .env("CLISCALE_SESSION_ID", "pod-test")
        .env("CLISCALE_RUNNER_COMMAND", probe)
        .env("CLISCALE_RUNNER_JWKS_FILE", &jwks)
        .env("CLISCALE_RUNNER_LISTEN", "127.0.0.1:0")
        .env("CLISCALE_RUNNER_WORK_DIR", dir.path().join("work"))
        .env("CLISCALE_RUNNER_LINGER", "0s")
        .env("CLISCALE_RUNNER_OUTPUT_URL", "http://127.0.0.1:9")
        .env("CLISCALE_RUNNER_OUTPUT_TOKEN", "secret-output-token-0123456789")
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("PROBE-DONE"), "{text}");
    for probe in [
        "read-runner-environ",
        "open-runner-memory",
        "list-runner-descriptors",
        "find-output-token",
    ] {
        assert!(text.contains(&format!("DENIED {probe}")), "{probe}:\n{text}");
    }
    assert!(!text.contains("secret-output-token"), "{text}");
    // The probes ran as the runner's own user, as in a pod.
    let same = text.lines().find_map(|l| l.trim().strip_prefix("same-user=")).unwrap();
    let (runner_uid, command_uid) = same.split_once('/').unwrap();
    assert_eq!(command_uid.trim(), runner_uid.trim(), "{text}");
}
