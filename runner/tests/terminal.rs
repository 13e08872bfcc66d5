//! The runner's terminal, end to end: real binary, real PTY, real WebSockets.

mod common;

use cliscale_core::token::TokenScope;
use cliscale_core::{SessionPhase, TerminalReason};
use common::{Event, run_to_end, runner};
use std::io::Read;

#[tokio::test]
async fn ansi_colour_and_every_byte_value_arrive_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let file = dir.path().join("bytes.bin");
    std::fs::write(&file, &all_bytes).unwrap();
    let command = format!(
        "printf '\\033[1;31mred\\033[0m\\n'; stty raw -echo; cat '{}'; exit 0",
        file.display()
    );
    let r = runner(&command).start();
    let mut c = r.attach(TokenScope::View, 0).await;
    let (out, gaps, status) = c.read_to_end(0).await;
    assert!(gaps.is_empty());
    let mut expected = b"\x1b[1;31mred\x1b[0m\r\n".to_vec();
    expected.extend_from_slice(&all_bytes);
    assert_eq!(out, expected);
    assert_eq!(status.phase, SessionPhase::Succeeded);
    assert_eq!(status.exit_code, Some(0));
}

#[tokio::test]
async fn a_100_mb_burst_arrives_complete_and_in_order() {
    const SIZE: usize = 100 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let data_file = common::pseudo_random(SIZE, 0x5eed);
    let file = dir.path().join("burst.bin");
    std::fs::write(&file, &data_file).unwrap();
    // The program waits for two bytes from the client, so the client is attached before the
    // burst starts and reads it live rather than from the replay window.
    let command = format!(
        "stty raw -echo; printf READY; dd bs=1 count=2 status=none >/dev/null; cat '{}'",
        file.display()
    );
    let r = runner(&command).start();
    let mut c = r.attach(TokenScope::Interact, 0).await;
    let prefix = c.read_until(b"READY").await;
    assert_eq!(prefix, b"READY");
    c.send_input(b"go").await;
    let mut received = 0usize;
    let mut cursor = 5u64;
    let status = loop {
        match c.next().await {
            Event::Output { offset, data } => {
                assert_eq!(offset, cursor, "frames are contiguous");
                let expected = &data_file[received..received + data.len()];
                assert!(data == expected, "bytes differ in the frame at offset {offset}");
                cursor += data.len() as u64;
                received += data.len();
            }
            Event::Gap { from, to } => panic!("a live reader must not see a gap ({from}..{to})"),
            Event::Status(s) if s.phase.is_finished() => break s,
            _ => {}
        }
    };
    assert_eq!(received, SIZE);
    assert_eq!(status.exit_code, Some(0));
}

#[tokio::test]
async fn output_written_before_anyone_attached_is_replayed() {
    // The runner's stdout tee shows when the command has written; only then do we attach.
    let mut r = runner("printf 'early-output\\n'; read -r line; echo \"got:$line\"")
        .capture_stdout()
        .start();
    let mut stdout = r.child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("early-output") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "stdout closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    let mut c = r.attach(TokenScope::Interact, 0).await;
    match c.next().await {
        Event::Hello { log_start, log_end, status, .. } => {
            assert_eq!(log_start, 0);
            assert!(log_end >= 14);
            assert_eq!(status.phase, SessionPhase::Running);
        }
        other => panic!("expected hello, got {other:?}"),
    }
    match c.next().await {
        Event::Output { offset, data } => {
            assert_eq!(offset, 0);
            assert!(data.starts_with(b"early-output\r\n"), "{:?}", String::from_utf8_lossy(&data));
        }
        other => panic!("expected replayed output, got {other:?}"),
    }
    c.send_input(b"hi\r").await;
    c.read_until(b"got:hi").await;
    let (_, _, status) = c.read_to_end_any().await;
    assert_eq!(status.phase, SessionPhase::Succeeded);
}

fn numbered_lines(from: usize, to: usize) -> Vec<u8> {
    (from..=to).flat_map(|i| format!("line-{i:05}\r\n").into_bytes()).collect()
}

#[tokio::test]
async fn reconnecting_since_an_offset_gets_exactly_the_missing_bytes() {
    let r = runner(
        "for i in $(seq -f %05g 1 2000); do echo line-$i; done; read -r x; \
                    for i in $(seq -f %05g 2001 3000); do echo line-$i; done",
    )
    .start();
    let expected_first = numbered_lines(1, 2000);
    let mut a = r.attach(TokenScope::Interact, 0).await;
    let got = a.read_until(b"line-02000\r\n").await;
    assert_eq!(got, expected_first);
    // Drop the connection half-way through what we have seen, then resume from there.
    a.close().await;
    let resume_at = 7777u64;
    let mut b = r.attach(TokenScope::Interact, resume_at).await;
    b.send_input(b"\r").await;
    let (out, gaps, status) = b.read_to_end(resume_at).await;
    assert!(gaps.is_empty());
    let mut expected = expected_first[resume_at as usize..].to_vec();
    expected.extend_from_slice(b"\r\n"); // the echo of the Enter key
    expected.extend_from_slice(&numbered_lines(2001, 3000));
    assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&expected));
    assert_eq!(status.exit_code, Some(0));
}

#[tokio::test]
async fn bytes_evicted_from_the_window_are_reported_as_a_gap() {
    let mut r =
        runner("for i in $(seq -f %05g 1 20000); do echo line-$i; done; echo DONE; read -r x")
            .args(["--log-window-bytes", "65536"])
            .capture_stdout()
            .start();
    // The stdout tee is only our signal that the command has printed everything; like any
    // reader slower than a 64 KiB window it may itself skip bytes, so the expected log comes
    // from the command, not from what stdout showed.
    let mut stdout = r.child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    while !seen.ends_with(b"DONE\r\n") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "stdout closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    let mut expected = numbered_lines(1, 20000);
    expected.extend_from_slice(b"DONE\r\n");
    let total = expected.len() as u64;
    let mut c = r.attach(TokenScope::Interact, 0).await;
    let Event::Hello { log_start, log_end, .. } = c.next().await else { panic!("no hello") };
    assert_eq!(log_end, total);
    assert_eq!(log_start, total - 65536);
    assert_eq!(c.next().await, Event::Gap { from: 0, to: log_start });
    let tail = c.read_until(b"DONE\r\n").await;
    assert_eq!(tail, &expected[log_start as usize..]);
    c.send_input(b"\r").await;
}

#[tokio::test]
async fn two_clients_at_once_and_the_read_only_one_cannot_type() {
    let r = runner("stty -echo; read -r line; echo \"got:$line\"").start();
    let mut viewer = r.attach(TokenScope::View, 0).await;
    let mut driver = r.attach(TokenScope::Interact, 0).await;
    assert!(matches!(viewer.next().await, Event::Hello { read_only: true, .. }));
    assert!(matches!(driver.next().await, Event::Hello { read_only: false, .. }));
    viewer.send_input(b"evil\r").await;
    viewer.resize(10, 5).await;
    loop {
        match viewer.next().await {
            Event::Error { code, .. } => {
                assert_eq!(code, "read_only");
                break;
            }
            Event::Output { .. } | Event::Status(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    driver.send_input(b"hello\r").await;
    let (driver_out, _, status) = driver.read_to_end_any().await;
    let (viewer_out, _, _) = viewer.read_to_end_any().await;
    for out in [&driver_out, &viewer_out] {
        let text = String::from_utf8_lossy(out);
        assert!(text.contains("got:hello"), "{text}");
        assert!(!text.contains("evil"), "{text}");
    }
    assert_eq!(status.phase, SessionPhase::Succeeded);
}

#[tokio::test]
async fn resize_reaches_the_program() {
    let r =
        runner("stty size; read -r x; stty size").args(["--cols", "100", "--rows", "30"]).start();
    let mut c = r.attach(TokenScope::Interact, 0).await;
    c.read_until(b"30 100\r\n").await;
    c.resize(132, 43).await;
    c.send_input(b"\r").await;
    let (out, _, _) = c.read_to_end_any().await;
    assert!(String::from_utf8_lossy(&out).contains("43 132"), "{}", String::from_utf8_lossy(&out));
}

/// A command that prints `R`, reads nothing until a line is written to the returned FIFO, then
/// prints the SHA-256 of the next `size` bytes of its input. Raw mode: no echo, no line
/// editing; every byte reaches the program as sent.
fn gated_input_digest(size: usize) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let command = format!(
        "stty raw -echo; printf R; read -r _ < '{}'; head -c {size} | sha256sum",
        gate.display()
    );
    (dir, gate, command)
}

#[tokio::test]
async fn input_the_program_is_not_reading_yet_waits_for_room_and_arrives_whole() {
    // Far more than the PTY's input buffers hold, so the runner's writes meet a full PTY and
    // must wait for the program to read instead of failing or dropping bytes.
    const SIZE: usize = 512 * 1024;
    let (_dir, gate, command) = gated_input_digest(SIZE);
    let r = runner(&command).start();
    let mut c = r.attach(TokenScope::Interact, 0).await;
    c.read_until(b"R").await;
    let input: Vec<u8> = (0..SIZE).map(|i| b'a' + (i % 26) as u8).collect();
    for chunk in input.chunks(16 * 1024) {
        c.send_input(chunk).await;
    }
    // Only now does the program start reading its terminal.
    tokio::fs::write(&gate, b"go\n").await.unwrap();
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&input))
    };
    c.read_until(format!("{digest}  -").as_bytes()).await;
}

/// Runs `command` after the client has attached (it waits for one keypress), with no linger.
async fn finished(command: &str, extra: &[&str]) -> (i32, cliscale_core::protocol::SessionStatus) {
    let command = format!("read -r _go; {command}");
    let mut r = runner(&command).args(extra.iter().copied()).args(["--linger", "0s"]).start();
    let mut c = r.attach(TokenScope::Interact, 0).await;
    c.send_input(b"\r").await;
    let (_, _, status) = c.read_to_end_any().await;
    (r.wait(), status)
}

#[tokio::test]
async fn exit_codes_and_signal_deaths_are_reported_and_returned() {
    let (code, status) = finished("exit 0", &[]).await;
    assert_eq!((code, status.phase, status.exit_code), (0, SessionPhase::Succeeded, Some(0)));
    assert_eq!(status.reason, Some(TerminalReason::Exited));

    let (code, status) = finished("echo failing; exit 3", &[]).await;
    assert_eq!((code, status.phase, status.exit_code), (3, SessionPhase::Failed, Some(3)));
    assert_eq!(status.reason, Some(TerminalReason::Exited));

    let (code, status) = finished("kill -KILL $$", &[]).await;
    assert_eq!((code, status.phase, status.exit_code), (137, SessionPhase::Failed, Some(137)));
    assert_eq!(status.reason, Some(TerminalReason::Signaled));

    let (code, status) = finished("sleep 600", &["--timeout", "1s", "--grace-period", "5s"]).await;
    assert_eq!((code, status.phase), (124, SessionPhase::TimedOut));
    assert_eq!(status.reason, Some(TerminalReason::DeadlineExceeded));
}

#[tokio::test]
async fn a_hang_up_then_sigterm_reach_the_process_group_and_cancel() {
    let command = "trap 'echo got-hup' HUP; trap 'echo got-term; exit 7' TERM; echo started; \
                   while :; do sleep 0.05; done";
    let mut r = runner(command)
        // A runner told to stop does not linger: it would outlast the test's hang guard.
        .args(["--linger", "600s", "--grace-period", "10s"])
        .start();
    let mut c = r.attach(TokenScope::View, 0).await;
    c.read_until(b"started").await;
    r.signal(nix::sys::signal::Signal::SIGTERM);
    let (out, _, status) = c.read_to_end_any().await;
    let out = String::from_utf8_lossy(&out);
    let (hup, term) = (out.find("got-hup"), out.find("got-term"));
    assert!(hup.is_some() && term.is_some() && hup < term, "hang-up, then SIGTERM: {out:?}");
    assert_eq!(status.phase, SessionPhase::Cancelled);
    assert_eq!(status.exit_code, Some(7));
    assert_eq!(r.wait(), 7);
}

/// An interactive shell ignores SIGTERM; the hang-up ends it at once, well inside a grace
/// period that would otherwise run out into SIGKILL (137).
#[tokio::test]
async fn cancelling_an_interactive_shell_ends_it_at_once() {
    let mut r =
        runner("exec bash --norc -i").args(["--linger", "600s", "--grace-period", "600s"]).start();
    let mut c = r.attach(TokenScope::Interact, 0).await;
    c.send_input(b"echo shell-up\r").await;
    c.read_until(b"shell-up\r\n").await;
    r.signal(nix::sys::signal::Signal::SIGTERM);
    let (_, _, status) = c.read_to_end_any().await;
    assert_eq!(status.phase, SessionPhase::Cancelled);
    assert_eq!(status.exit_code, Some(129), "ended by the hang-up: {status:?}");
    assert_eq!(r.wait(), 129);
}

#[tokio::test]
async fn a_command_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let mut r = runner("trap '' HUP TERM; echo started; while :; do sleep 0.05; done")
        .args(["--linger", "0s", "--grace-period", "1s"])
        .start();
    let mut c = r.attach(TokenScope::View, 0).await;
    c.read_until(b"started").await;
    r.signal(nix::sys::signal::Signal::SIGINT);
    let (_, _, status) = c.read_to_end_any().await;
    assert_eq!(status.phase, SessionPhase::Cancelled);
    assert_eq!(status.exit_code, Some(137));
    assert_eq!(r.wait(), 137);
}

#[tokio::test]
async fn a_slow_client_does_not_block_a_fast_one() {
    const SIZE: usize = 48 * 1024 * 1024;
    let (_dir, file) = common::random_file(SIZE, 7);
    let command = format!(
        "stty raw -echo; printf READY; dd bs=1 count=1 status=none >/dev/null; cat '{}'",
        file.display()
    );
    let r = runner(&command).args(["--client-stall-timeout", "120s"]).start();
    // The slow client attaches and then reads nothing until the fast one is done.
    let mut slow = r.attach(TokenScope::View, 0).await;
    let mut fast = r.attach(TokenScope::Interact, 0).await;
    fast.read_until(b"READY").await;
    fast.send_input(b"g").await;
    let (out, gaps, status) = fast.read_to_end(5).await;
    assert!(gaps.is_empty());
    assert_eq!(out.len(), SIZE);
    assert_eq!(status.phase, SessionPhase::Succeeded);
    // The slow client's backlog was bounded: it is told what it missed, then catches up.
    let (slow_out, slow_gaps, slow_status) = slow.read_to_end(0).await;
    assert!(!slow_gaps.is_empty(), "48 MiB cannot fit a 16 MiB window plus socket buffers");
    assert_eq!(slow_status, status);
    assert!(slow_out.len() < SIZE);
    assert!(out.ends_with(&slow_out[slow_out.len() - 1024..]));
}

#[tokio::test]
async fn output_that_pauses_after_a_full_read_batch_arrives_without_more_output() {
    // The PTY reader stops reading after a 16 KiB batch until the PTY signals again; output
    // that then pauses (the program waits for input) must still arrive in full, at once.
    let dir = tempfile::tempdir().unwrap();
    for (i, size) in [16 * 1024, 16 * 1024 + 1, 3 * 16 * 1024 + 1234].into_iter().enumerate() {
        let data = common::pseudo_random(size, 0xba7c + i as u64);
        let file = dir.path().join(format!("out-{i}.bin"));
        std::fs::write(&file, &data).unwrap();
        let command = format!(
            "stty raw -echo; cat '{}'; printf '<end>'; head -c 1 >/dev/null",
            file.display()
        );
        let r = runner(&command).start();
        let mut c = r.attach(TokenScope::Interact, 0).await;
        let out = tokio::time::timeout(std::time::Duration::from_secs(20), c.read_until(b"<end>"))
            .await
            .unwrap_or_else(|_| panic!("{size} bytes then a pause: the tail never arrived"));
        let mut expected = data;
        expected.extend_from_slice(b"<end>");
        assert_eq!(out.len(), expected.len(), "{size} bytes then a pause");
        assert!(out == expected, "{size} bytes then a pause arrived altered");
        c.send_input(b"x").await;
        let (_, _, status) = c.read_to_end_any().await;
        assert_eq!(status.exit_code, Some(0));
    }
}

#[tokio::test]
async fn secrets_reach_the_command_only_through_its_environment() {
    const SECRET: &str = "tok-9f1c2a7e-do-not-log";
    // Each step prints its own argv (the runner must not have put the secret there), whether
    // the secret arrived, and how many of the runner's own settings leaked into its env.
    let report = |step: &str| {
        format!(
            "tr '\\0' ' ' < /proc/$$/cmdline; echo; echo \"{step} sees ${{#DEPLOY_TOKEN}} bytes, \
             $(env | grep -c '^CLISCALE_RUNNER_') runner settings\""
        )
    };
    let (code, out, logs) = run_to_end(
        runner(&report("command"))
            .args(["--install-cmd", &report("install")])
            .env("DEPLOY_TOKEN", SECRET)
            .env("CLISCALE_RUNNER_GRACE_PERIOD", "5s")
            // The runner's own logs at their most verbose.
            .env("CLISCALE_LOG", "trace"),
    );
    assert_eq!(code, 0, "{logs}");
    let len = SECRET.len();
    assert!(out.contains(&format!("install sees {len} bytes, 0 runner settings")), "{out}");
    assert!(out.contains(&format!("command sees {len} bytes, 0 runner settings")), "{out}");
    assert!(!out.contains(SECRET), "a process's argv carried the secret: {out}");
    assert!(logs.contains("command started"), "the runner logged: {logs}");
    assert!(!logs.contains(SECRET), "the runner's own logs carry the secret");
}

#[tokio::test]
async fn the_runner_lingers_for_late_viewers_and_a_stop_signal_ends_the_linger() {
    let mut r = runner("echo finished-early; exit 3").args(["--linger", "10m"]).start();
    let mut first = r.attach(TokenScope::View, 0).await;
    let (_, _, status) = first.read_to_end(0).await;
    assert_eq!(status.exit_code, Some(3));
    first.close().await;

    // The command is gone; a viewer arriving now still gets the whole log and the ending.
    let mut late = r.attach(TokenScope::View, 0).await;
    match late.next().await {
        Event::Hello { status, .. } => assert_eq!(status.phase, SessionPhase::Failed),
        other => panic!("expected hello, got {other:?}"),
    }
    let (out, gaps, status) = late.read_to_end(0).await;
    assert!(String::from_utf8_lossy(&out).contains("finished-early"));
    assert!(gaps.is_empty());
    assert_eq!((status.exit_code, status.reason), (Some(3), Some(TerminalReason::Exited)));
    assert!(r.child.try_wait().unwrap().is_none(), "the runner left before its linger ended");

    // Kubernetes deleting the pod mid-linger: the runner leaves at once, with the command's code.
    r.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(r.wait(), 3);
    assert!(r.stderr_text().contains("stop signal during linger"));
}

#[tokio::test]
async fn after_the_end_input_is_refused_in_words_and_a_resize_is_not() {
    let r = runner("exit 0").args(["--linger", "10m"]).start();
    let mut c = r.attach(TokenScope::Interact, 0).await;
    let (_, _, status) = c.read_to_end(0).await;
    assert_eq!(status.phase, SessionPhase::Succeeded);
    // A page or a terminal fits itself to its window as it opens: nothing anyone typed, so
    // nothing to refuse. The keystrokes after it are refused, saying how many went.
    c.resize(120, 40).await;
    c.send_input(b"abc").await;
    match c.next().await {
        Event::Error { code, message } => {
            assert_eq!(code, "not_running");
            assert!(message.contains("3 bytes of input dropped"), "{message}");
        }
        other => panic!("expected the refusal of the input, got {other:?}"),
    }
}

#[tokio::test]
async fn a_size_asked_for_before_the_start_is_the_size_the_command_starts_at() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    // The install step (as code is fetched and built) holds the start until the test says go.
    let install = format!("while [ ! -e '{}' ]; do sleep 0.05; done", go.display());
    let r = runner("stty size")
        .args(["--install-cmd", &install, "--cols", "80", "--rows", "24"])
        .start();
    let mut c = r.attach(TokenScope::Interact, 0).await;
    match c.next().await {
        Event::Hello { status, .. } => assert_eq!(status.phase, SessionPhase::Starting),
        other => panic!("expected hello, got {other:?}"),
    }
    // A page opened at once fits itself to its window before the command runs.
    c.resize(132, 43).await;
    // Keystrokes before the start are refused: the refusal comes after the resize was taken.
    c.send_input(b"x").await;
    let mut out = Vec::new();
    loop {
        match c.next().await {
            Event::Error { code, message } => {
                assert_eq!(code, "not_running");
                assert!(message.contains("1 byte of input dropped"), "{message}");
                break;
            }
            // The install step's progress lines.
            Event::Output { data, .. } => out.extend(data),
            Event::Status(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    std::fs::write(&go, b"").unwrap();
    let (rest, _, status) = c.read_to_end(out.len() as u64).await;
    assert_eq!(status.phase, SessionPhase::Succeeded);
    out.extend(rest);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("43 132\r\n"), "the command started at another size: {text}");
}

#[tokio::test]
async fn the_command_sees_its_terminal_type_prompt_and_session_id() {
    let prompt = "fix the flaky test; then run \"cargo test\" -- don't push";
    let r = runner(
        "printf '[%s] [%s] [%s] [%s]\\n' \"$TERM\" \"$COLORTERM\" \"$CLISCALE_SESSION_ID\" \"$CLISCALE_PROMPT\"",
    )
    .args(["--term", "screen-256color", "--prompt", prompt])
    .start();
    let mut c = r.attach(TokenScope::View, 0).await;
    let (out, _, status) = c.read_to_end(0).await;
    assert_eq!(status.exit_code, Some(0));
    let expected = format!("[screen-256color] [truecolor] [{}] [{prompt}]\r\n", common::SESSION);
    assert_eq!(String::from_utf8_lossy(&out), expected);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_with_a_close_reason() {
    const SIZE: usize = 32 * 1024 * 1024;
    let (_dir, file) = common::random_file(SIZE, 11);
    let command = format!(
        "stty raw -echo; printf READY; dd bs=1 count=1 status=none >/dev/null; cat '{}'; \
         dd bs=1 count=1 status=none >/dev/null",
        file.display()
    );
    // The stall timeout is also how long the close gets to go through: long enough for this
    // client to read the megabytes in flight once it sees the drop, on a loaded machine.
    let r = runner(&command).args(["--client-stall-timeout", "3s"]).start();
    // The stuck client attaches and then reads nothing while the output fills every buffer
    // between it and the runner.
    let mut stuck = r.attach(TokenScope::View, 0).await;
    let mut fast = r.attach(TokenScope::Interact, 0).await;
    let mut seen = fast.read_until(b"READY").await.len() as u64;
    fast.send_input(b"g").await;
    while seen < 5 + SIZE as u64 {
        match fast.next().await {
            common::Event::Output { data, .. } => seen += data.len() as u64,
            other => panic!("the fast client was disturbed: {other:?}"),
        }
    }
    // The runner gives up on the stuck client; the session and the fast client carry on.
    let metrics_url = format!("http://{}/metrics", r.addr);
    let dropped = r#"cliscale_runner_clients_dropped_total{reason="too_slow"} 1"#;
    let deadline = std::time::Instant::now() + common::HANG_GUARD;
    while !common::http_get(metrics_url.clone()).await.text().await.unwrap().contains(dropped) {
        assert!(std::time::Instant::now() < deadline, "the stuck client was never dropped");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // When it reads again it gets what was already on its way, then the reason.
    let mut got = 0u64;
    let (code, reason) = loop {
        match stuck.next().await {
            common::Event::Output { data, .. } => got += data.len() as u64,
            common::Event::Closed { code, reason } => break (code, reason),
            _ => {}
        }
    };
    assert_eq!((code, reason.as_str()), (Some(4008), "client too slow"), "after {got} bytes");
    assert!(got < SIZE as u64, "a stuck client cannot have been sent everything");
    fast.send_input(b"x").await;
    let (_, _, status) = fast.read_to_end_any().await;
    assert_eq!(status.exit_code, Some(0));
}

#[tokio::test]
async fn a_stdout_nobody_reads_never_holds_up_the_command_and_its_skip_is_noted() {
    const SIZE: usize = 4 * 1024 * 1024;
    let (_dir, file) = common::random_file(SIZE, 5);
    let command = format!("stty raw -echo; cat '{}'; printf '<end>'", file.display());
    // Nobody reads the runner's stdout until the session is over: the pipe fills at once.
    let mut r = runner(&command).args(["--log-window-bytes", "65536"]).capture_stdout().start();
    let mut c = r.attach(TokenScope::View, 0).await;
    let (_, _, status) = c.read_to_end_any().await;
    assert_eq!(status.exit_code, Some(0), "the command ran to its end with stdout stuck");
    // Now drain stdout and let the runner go.
    let mut stdout = r.child.stdout.take().unwrap();
    let drained = std::thread::spawn(move || {
        let mut tee = Vec::new();
        stdout.read_to_end(&mut tee).unwrap();
        tee
    });
    r.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(r.wait(), 0);
    let tee = drained.join().unwrap();
    assert!(tee.len() < SIZE, "a 64 KiB window cannot have kept all {SIZE} bytes for stdout");
    assert!(tee.ends_with(b"<end>"), "the tee catches up to the end once stdout moves");
    assert!(r.stderr_text().contains("stdout fell behind; bytes skipped"), "{}", r.stderr_text());
}

/// The next output frame's bytes, or `None` for a ping; any end of the connection fails.
async fn output_or_ping(
    rx: &mut futures_util::stream::SplitStream<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    >,
) -> Option<Vec<u8>> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(common::HANG_GUARD, rx.next()).await.unwrap() {
            Some(Ok(Message::Binary(frame))) => {
                return Some(cliscale_core::protocol::decode_output(&frame).unwrap().1.to_vec());
            }
            Some(Ok(Message::Ping(_))) => return None,
            Some(Ok(Message::Close(frame))) => panic!("closed while its input waited: {frame:?}"),
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_client_whose_input_waits_for_the_program_is_not_taken_for_dead() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    // More input messages than the runner queues, for a program that does not read yet: the
    // runner stops reading this client (backpressure), pongs included, for many ping intervals.
    const SIZE: usize = 512 * 4096;
    let (_dir, gate, command) = gated_input_digest(SIZE);
    let r = runner(&command).args(["--ping-interval", "100ms"]).start();
    let token = r.keys.token(TokenScope::Interact);
    let (ws, _) =
        tokio_tungstenite::connect_async(r.ws_url(&format!("token={token}"))).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let mut output = Vec::new();
    while !output.contains(&b'R') {
        output.extend(output_or_ping(&mut rx).await.unwrap_or_default());
    }
    let input: Vec<u8> = (0..SIZE).map(|i| b'a' + (i % 26) as u8).collect();
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&input))
    };
    let sender = tokio::spawn(async move {
        for chunk in input.chunks(4096) {
            tx.send(Message::Binary(chunk.to_vec().into())).await.unwrap();
        }
        tx
    });
    // Eight ping intervals with the input held up: well past the three that drop a silent client.
    let mut pings = 0;
    while pings < 8 {
        match output_or_ping(&mut rx).await {
            Some(data) => output.extend(data),
            None => pings += 1,
        }
    }
    tokio::fs::write(&gate, b"go\n").await.unwrap();
    while !String::from_utf8_lossy(&output).contains(&digest) {
        output.extend(output_or_ping(&mut rx).await.unwrap_or_default());
    }
    drop(sender.await.unwrap());
}

/// The state letter and parent of a process, or `None` once it is gone (reaped).
fn proc_state(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.next()?.parse().ok()?))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + common::HANG_GUARD;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[tokio::test]
async fn orphans_of_the_session_are_adopted_and_reaped_while_it_runs() {
    // A job whose shell exits first: its parent becomes the runner, which must collect its
    // exit status or it stays a zombie (in a pod the runner is PID 1, and nobody else would).
    let mut r = runner("(sleep 1 & echo $! > orphan.pid); echo ready; read -r _")
        .args(["--linger", "0s"])
        .start();
    let runner_pid = r.child.id() as i32;
    let mut c = r.attach(TokenScope::Interact, 0).await;
    c.read_until(b"ready").await;
    let pid: i32 =
        std::fs::read_to_string(r.work_dir().join("w/orphan.pid")).unwrap().trim().parse().unwrap();
    wait_for("the orphan to be adopted", || match proc_state(pid) {
        Some((_, parent)) => parent == runner_pid,
        None => panic!("the orphan was gone before it was seen adopted"),
    });
    wait_for("the orphan to be reaped", || proc_state(pid).is_none());
    c.send_input(b"\r").await;
    let (_, _, status) = c.read_to_end_any().await;
    assert_eq!(status.exit_code, Some(0));
    assert_eq!(r.wait(), 0);
}

#[tokio::test]
async fn what_the_session_leaves_running_is_stopped_when_it_ends() {
    // Three ways to outlive the command: a service the install started, a process in a new
    // session (out of the command's process group), and one that ignores hang-up and SIGTERM.
    let install = "sleep 600 >/dev/null 2>&1 & echo $! > service.pid";
    let command = "setsid -f sh -c 'echo $$ > detached.pid; exec sleep 600' </dev/null >/dev/null 2>&1; \
                   (trap '' HUP TERM; echo $BASHPID > stubborn.pid; exec sleep 600) >/dev/null 2>&1 & \
                   while [ ! -s detached.pid ] || [ ! -s stubborn.pid ]; do sleep 0.05; done; echo left";
    let mut r = runner(command)
        .args(["--install-cmd", install, "--grace-period", "1s", "--linger", "0s"])
        .start();
    assert_eq!(r.wait(), 0, "{}", r.stderr_text());
    assert!(r.stderr_text().contains("stopping processes the session left running"));
    for name in ["service.pid", "detached.pid", "stubborn.pid"] {
        let pid: i32 = std::fs::read_to_string(r.work_dir().join("w").join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .trim()
            .parse()
            .unwrap();
        // Stopped and reaped before the runner exited: no such process any more.
        assert_eq!(proc_state(pid), None, "{name}: {pid} outlived the session");
    }
}
