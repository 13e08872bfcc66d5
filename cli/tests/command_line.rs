//! The real `cliscale` binary, in a real pseudo-terminal where a person would use one, against
//! the real `cliscale up` (SQLite, real runners).

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use cliscale_testkit::netcut::Proxy;
use cliscale_testkit::pty::PtyProcess;
use cliscale_testkit::stack::{
    ADMIN_KEY, Backend, HANG_GUARD, Stack, wait_for_runner_exit, workspace_bin,
};

fn cliscale() -> PathBuf {
    workspace_bin("cliscale")
}

/// What every invocation gets: the server, a key, and a config dir of its own.
struct Env {
    vars: Vec<(String, String)>,
    _config: tempfile::TempDir,
}

impl Env {
    fn new(url: &str, key: &str) -> Self {
        let config = tempfile::tempdir().unwrap();
        let vars = vec![
            ("CLISCALE_URL".into(), url.to_owned()),
            ("CLISCALE_API_KEY".into(), key.to_owned()),
            ("XDG_CONFIG_HOME".into(), config.path().display().to_string()),
            ("TERM".into(), "xterm-256color".into()),
        ];
        Self { vars, _config: config }
    }

    fn pairs(&self) -> Vec<(&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    fn pty(&self, args: &[&str]) -> PtyProcess {
        PtyProcess::spawn(&cliscale(), args, &self.pairs(), 100, 30)
    }

    /// Runs without a terminal, as a script would.
    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new(cliscale());
        cmd.args(args).stdin(std::process::Stdio::null()).kill_on_drop(true);
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        tokio::time::timeout(HANG_GUARD, cmd.output()).await.expect("cliscale hung").unwrap()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The session id in `[cliscale: detached from ID; …]`.
fn detached_id(shown: &str) -> String {
    let at = shown.find("detached from ").expect("a detach notice") + "detached from ".len();
    shown[at..].split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_types_into_the_session_and_passes_its_exit_code_through() {
    let up = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let env = Env::new(&up.base, ADMIN_KEY);

    // Typing reaches the program, and its exit code comes back: 3.
    let mut cli = env.pty(&["run", "--", "bash --norc --noprofile"]);
    cli.expect("attached to").await;
    cli.type_bytes(b"echo $((6*7))\r").await;
    cli.expect("42").await;
    cli.type_bytes(b"exit 3\r").await;
    assert_eq!(cli.wait().await.code(), Some(3));

    // 0.
    let mut cli = env.pty(&["run", "--", "read -r line; echo \"got:$line\""]);
    cli.expect("attached to").await;
    cli.type_bytes(b"hello\r").await;
    cli.expect("got:hello").await;
    assert_eq!(cli.wait().await.code(), Some(0));

    // A signal: 128 + 15.
    let mut cli = env.pty(&["run", "--", "echo before; kill -TERM $$"]);
    cli.expect("before").await;
    assert_eq!(cli.wait().await.code(), Some(143));

    // Several words are quoted for the shell one by one.
    let mut cli = env.pty(&["run", "--", "printf", "%s|", "a b", "$HOME"]);
    cli.expect("a b|$HOME|").await;
    assert_eq!(cli.wait().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ctrl_c_reaches_the_remote_program_and_leaves_the_cli_running() {
    let up = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let env = Env::new(&up.base, ADMIN_KEY);
    let script =
        "trap 'echo caught-interrupt; exit 5' INT; echo ready; while :; do read -r -t 1 x; done";
    let mut cli = env.pty(&["run", "--", script]);
    cli.expect("ready").await;
    cli.type_bytes(&[0x03]).await;
    cli.expect("caught-interrupt").await;
    // The CLI was not interrupted: it stayed to hand on the program's own exit code.
    assert_eq!(cli.wait().await.code(), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn detach_leaves_the_session_running_and_attach_returns_to_it() {
    let up = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let env = Env::new(&up.base, ADMIN_KEY);
    let mut cli = env.pty(&["run", "--", "bash --norc --noprofile"]);
    cli.expect("attached to").await;
    cli.type_bytes(b"KEPT=still-here; echo set-$((1+1))\r").await;
    cli.expect("set-2").await;
    // Ctrl-P Ctrl-Q detaches (a Ctrl-P alone is passed on: the detector's unit tests).
    cli.type_bytes(&[0x10, 0x11]).await;
    let shown = cli.expect("returns to it").await;
    assert_eq!(cli.wait().await.code(), Some(0));
    let id = detached_id(&shown);
    let session = up.client(ADMIN_KEY).session(&id).await.unwrap();
    assert_eq!(session.phase.as_str(), "Running", "detaching must not end the session");

    let mut again = env.pty(&["attach", &id]);
    again.expect("attached to").await;
    again.type_bytes(b"echo $KEPT-$((2+2))\r").await;
    again.expect("still-here-4").await;
    again.type_bytes(b"exit 7\r").await;
    assert_eq!(again.wait().await.code(), Some(7));

    // --from-start replays what the session printed, read-only, to its end.
    let replay = env.run(&["attach", "--from-start", "--read-only", &id]).await;
    assert!(stdout(&replay).contains("set-2") && stdout(&replay).contains("still-here-4"));
    assert_eq!(replay.status.code(), Some(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resize_reaches_the_program() {
    let up = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let env = Env::new(&up.base, ADMIN_KEY);
    let mut cli = env.pty(&["run", "--", "bash --norc --noprofile"]);
    cli.expect("attached to").await;
    // The session is made at this terminal's size.
    cli.type_bytes(b"stty size; echo \"sized\"\"-0\"\r").await;
    let shown = cli.expect("sized-0").await;
    assert!(shown.contains("30 100"), "{shown}");

    cli.resize(120, 40);
    // SIGWINCH travels to the CLI, then over the socket, then to the session's PTY; ask until
    // the program sees it.
    let mut seen = false;
    for attempt in 0..100 {
        cli.type_bytes(format!("stty size; echo \"probe\"\"-{attempt}\"\r").as_bytes()).await;
        let shown = cli.expect(&format!("probe-{attempt}")).await;
        if shown.contains("40 120") {
            seen = true;
            break;
        }
    }
    assert!(seen, "the new size never reached the program:\n{}", cli.shown_text());
    cli.type_bytes(b"exit\r").await;
    assert_eq!(cli.wait().await.code(), Some(0));
}

/// The lines `line-1`… the program printed, with cliscale's own notices taken out.
fn numbered_lines(shown: &str) -> Vec<u64> {
    let mut text = shown.to_owned();
    while let Some(start) = text.find("\r\n[cliscale: ") {
        let end = text[start..].find("]\r\n").map(|e| start + e + 3).unwrap_or(text.len());
        text.replace_range(start..end, "");
    }
    text.split("\r\n")
        .filter_map(|line| line.strip_prefix("line-"))
        .map(|n| n.parse().unwrap_or_else(|_| panic!("a damaged line: line-{n}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attach_rides_through_network_cuts_of_seconds_and_of_minutes() {
    let up = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let addr = up.base.strip_prefix("http://").unwrap().parse().unwrap();
    let proxy = Proxy::start(addr).await;
    let env = Env::new(&format!("http://{}", proxy.addr), ADMIN_KEY);
    // A line every 50 ms until a line is typed.
    let script = "i=0; while ! read -r -t 0.05 x; do i=$((i+1)); echo line-$i; done; echo done-$i";
    let started = env.run(&["run", "--detach", "--", script]).await;
    let id = stdout(&started).lines().next().unwrap().to_owned();
    let mut cli = env.pty(&["attach", "--from-start", &id]);
    cli.expect("line-5\r\n").await;

    for (cut, resumed) in
        [(Duration::from_secs(3), "line-100\r\n"), (Duration::from_secs(70), "line-1500\r\n")]
    {
        proxy.cut();
        cli.expect("reconnecting").await;
        tokio::time::sleep(cut).await; // the length of the outage is the thing under test
        proxy.restore();
        cli.expect("reconnected").await;
        cli.expect(resumed).await;
    }
    cli.type_bytes(b"\r").await;
    cli.expect("done-").await;
    assert_eq!(cli.wait().await.code(), Some(0));

    let lines = numbered_lines(&cli.shown_text());
    let expected: Vec<u64> = (1..=lines.len() as u64).collect();
    assert_eq!(lines, expected, "every line exactly once, in order");
    assert!(lines.len() >= 1500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_read_live_and_after_the_runner_is_gone() {
    let up = Stack::start(Backend::Sqlite, &["--linger", "0s"]).await.unwrap();
    let env = Env::new(&up.base, ADMIN_KEY);
    let started = env
        .run(&[
            "run",
            "--detach",
            "--",
            "printf 'a \\033[1mbold\\033[0m word\\n'; sleep 1; echo second",
        ])
        .await;
    assert_eq!(started.status.code(), Some(0), "{}", stderr(&started));
    let out = stdout(&started);
    let mut lines = out.lines();
    let id = lines.next().unwrap().to_owned();
    assert!(lines.next().unwrap().contains(&format!("/t/{id}#token=")));

    // Followed live, to the end.
    let followed = env.run(&["logs", "-f", &id]).await;
    assert_eq!(followed.status.code(), Some(0));
    assert_eq!(followed.stdout, b"a \x1b[1mbold\x1b[0m word\r\nsecond\r\n");

    wait_for_runner_exit(&id).await;
    let raw = env.run(&["logs", &id]).await;
    assert_eq!(raw.stdout, b"a \x1b[1mbold\x1b[0m word\r\nsecond\r\n");
    let plain = env.run(&["logs", "--plain", &id]).await;
    assert_eq!(stdout(&plain), "a bold word\nsecond\n");
    let since = env.run(&["logs", "--since", "2", &id]).await;
    assert_eq!(since.stdout, b"\x1b[1mbold\x1b[0m word\r\nsecond\r\n");
    let followed_plain = env.run(&["logs", "-f", "--plain", &id]).await;
    assert_eq!(stdout(&followed_plain), "a bold word\nsecond\n");

    let cast = env.run(&["recording", &id]).await;
    let header: serde_json::Value =
        serde_json::from_str(stdout(&cast).lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);

    let missing = env.run(&["logs", "no-such-session"]).await;
    assert_eq!(missing.status.code(), Some(65));
    assert!(stderr(&missing).contains("not found"), "{}", stderr(&missing));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ls_prints_json_and_watch_sees_a_phase_change() {
    let up = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let env = Env::new(&up.base, ADMIN_KEY);
    let mut watch = tokio::process::Command::new(cliscale());
    watch.args(["ls", "--watch", "-o", "json"]).kill_on_drop(true);
    watch.stdout(std::process::Stdio::piped()).stdin(std::process::Stdio::null());
    for (k, v) in &env.vars {
        watch.env(k, v);
    }
    let mut watch = watch.spawn().unwrap();
    let mut watched = tokio::io::BufReader::new(watch.stdout.take().unwrap());

    let started = env.run(&["run", "-d", "--", "read -r x"]).await;
    let id = stdout(&started).lines().next().unwrap().to_owned();
    let phase_seen = |phase: &'static str| {
        let id = id.clone();
        move |line: &serde_json::Value| line["sessionId"] == id.as_str() && line["phase"] == phase
    };
    next_watched(&mut watched, phase_seen("Running")).await;

    let cancelled = env.run(&["cancel", &id]).await;
    assert_eq!(cancelled.status.code(), Some(0), "{}", stderr(&cancelled));
    assert!(stdout(&cancelled).contains("cancelled"));
    next_watched(&mut watched, phase_seen("Cancelled")).await;

    let listed = env.run(&["ls", "-o", "json"]).await;
    let sessions: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["sessionId"], id.as_str());
    let yaml = env.run(&["get", "-o", "yaml", &id]).await;
    assert!(stdout(&yaml).contains("phase: Cancelled"), "{}", stdout(&yaml));
    let filtered = env.run(&["ls", "--phase", "Running", "-o", "json"]).await;
    assert_eq!(stdout(&filtered).trim(), "[]");
    let events = env.run(&["events", &id]).await;
    assert!(stdout(&events).contains("cancel"), "{}", stdout(&events));
}

async fn next_watched(
    lines: &mut tokio::io::BufReader<tokio::process::ChildStdout>,
    wanted: impl Fn(&serde_json::Value) -> bool,
) {
    use tokio::io::AsyncBufReadExt;
    let found = async {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(lines.read_line(&mut line).await.unwrap() > 0, "the watch ended");
            let value: serde_json::Value = serde_json::from_str(&line).expect("one object a line");
            if wanted(&value) {
                return;
            }
        }
    };
    tokio::time::timeout(HANG_GUARD, found).await.expect("the watch never showed it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_are_created_used_and_revoked() {
    let up = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let admin = Env::new(&up.base, ADMIN_KEY);
    let created = admin.run(&["keys", "create", "--name", "ci", "--role", "operator"]).await;
    assert_eq!(created.status.code(), Some(0), "{}", stderr(&created));
    let key = stdout(&created).trim().to_owned();
    assert!(key.starts_with("csk_"));
    let id = key.split('_').nth(1).unwrap().to_owned();

    let ci = Env::new(&up.base, &key);
    let used = ci.run(&["ls"]).await;
    assert_eq!(used.status.code(), Some(0), "{}", stderr(&used));
    // An operator may not manage keys: a sentence, and the exit code for a denial.
    let denied = ci.run(&["keys", "ls"]).await;
    assert_eq!(denied.status.code(), Some(77));
    assert!(stderr(&denied).contains("role may not do this"), "{}", stderr(&denied));
    let listed = admin.run(&["keys", "ls", "-o", "json"]).await;
    let keys: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(keys.iter().any(|k| k["id"] == id.as_str() && k["name"] == "ci"));
    assert!(keys.iter().all(|k| k.get("key").is_none()), "secrets are never listed");

    let revoked = admin.run(&["keys", "revoke", &id]).await;
    assert_eq!(revoked.status.code(), Some(0), "{}", stderr(&revoked));
    let refused = ci.run(&["ls"]).await;
    assert_eq!(refused.status.code(), Some(77));
    assert!(stderr(&refused).contains("API key was refused"), "{}", stderr(&refused));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_stores_contexts_privately_and_they_are_chosen_by_name() {
    use std::os::unix::fs::PermissionsExt;
    let up = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let config = tempfile::tempdir().unwrap();
    let bare = |args: &[&str], stdin: &[u8]| {
        let mut cmd = std::process::Command::new(cliscale());
        cmd.args(args).env("XDG_CONFIG_HOME", config.path()).env_remove("CLISCALE_URL");
        cmd.env_remove("CLISCALE_API_KEY").env_remove("CLISCALE_CONTEXT");
        cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
        cmd.stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    };
    let nothing = bare(&["ls"], b"");
    assert_eq!(nothing.status.code(), Some(78));
    assert!(stderr(&nothing).contains("cliscale login"), "{}", stderr(&nothing));

    let wrong =
        bare(&["login", &up.base], b"csk_0000000000000001_not-a-real-secret-at-all-000000\n");
    assert_eq!(wrong.status.code(), Some(77), "a refused key is not stored");
    let login = bare(&["login", &up.base, "--name", "here"], format!("{ADMIN_KEY}\n").as_bytes());
    assert_eq!(login.status.code(), Some(0), "{}", stderr(&login));
    let file = config.path().join("cliscale/config.yaml");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);

    assert_eq!(bare(&["ls"], b"").status.code(), Some(0));
    let contexts = bare(&["config", "get-contexts"], b"");
    assert!(stdout(&contexts).contains("*") && stdout(&contexts).contains("here"));
    let unknown = bare(&["--context", "elsewhere", "ls"], b"");
    assert_eq!(unknown.status.code(), Some(78));
    assert_eq!(stdout(&bare(&["config", "current-context"], b"")).trim(), "here");
    assert_eq!(bare(&["config", "delete-context", "here"], b"").status.code(), Some(0));
    assert_eq!(bare(&["ls"], b"").status.code(), Some(78));

    // A server that is not there: its own exit code and a sentence.
    let away = bare(&["--server", "http://127.0.0.1:9", "--api-key", ADMIN_KEY, "ls"], b"");
    assert_eq!(away.status.code(), Some(69));
    assert!(stderr(&away).contains("cannot reach"), "{}", stderr(&away));
    let usage = bare(&["run"], b"");
    assert_eq!(usage.status.code(), Some(64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_mints_a_link_of_the_asked_scope() {
    let up = Stack::start(Backend::Sqlite, &[]).await.unwrap();
    let env = Env::new(&up.base, ADMIN_KEY);
    let started = env.run(&["run", "-d", "--", "read -r x"]).await;
    let id = stdout(&started).lines().next().unwrap().to_owned();
    for (flags, scope) in [(vec!["--view"], "view"), (vec![], "interact")] {
        let mut args = vec!["open", "--no-browser"];
        args.extend(flags);
        args.push(&id);
        let opened = env.run(&args).await;
        let link = stdout(&opened).trim().to_owned();
        let token = link.split("#token=").nth(1).expect("the token in the fragment");
        let check =
            up.http.get(up.url(&format!("/t/{id}/check"))).bearer_auth(token).send().await.unwrap();
        let body: serde_json::Value = check.json().await.unwrap();
        assert_eq!(body["scope"], scope, "{body}");
    }
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, mark) in
        [("bash", "_cliscale()"), ("zsh", "#compdef cliscale"), ("fish", "complete -c cliscale")]
    {
        let out =
            std::process::Command::new(cliscale()).args(["completion", shell]).output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        let script = stdout(&out);
        assert!(script.contains(mark), "{shell}: {}", &script[..script.len().min(200)]);
        assert!(script.contains("attach") && script.contains("recording"));
    }
}

#[test]
fn up_writes_no_colour_codes_into_a_log() {
    use std::io::{BufRead, BufReader};
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(cliscale())
        .args(["up", "--listen", "127.0.0.1:0", "--single-tenant"])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--work-dir")
        .arg(work.path())
        .env("CLISCALE_LOG", "info")
        .env_remove("CLISCALE_API_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    for line in stdout.lines().map_while(Result::ok) {
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("then run a session") {
            break;
        }
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log: {log:?}");
    // A new key: the line that logs the command line in names it.
    let login = printed.lines().find(|l| l.trim_start().starts_with("cliscale login")).unwrap();
    assert!(login.contains("--api-key csk_"), "{printed}");
}
