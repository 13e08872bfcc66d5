//! Runs a helper process (git, the install command) with its stdout and stderr appended to the
//! session's output log as they arrive.

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{ChildStderr, ChildStdout, Command};

use crate::log::OutputLog;

/// How a logged process ended.
#[derive(Debug)]
pub enum Outcome {
    Exited(ExitStatus),
    TimedOut,
    SpawnFailed(std::io::Error),
}

/// How long the output of a process that has exited may take to reach the log before the
/// session moves on. Output still arriving after that (from a background process the helper
/// started, such as a database for the command) keeps flowing into the log.
const OUTPUT_SETTLE: Duration = Duration::from_millis(500);

/// Runs `cmd` until it exits (or until `timeout`), teeing its output into `log`.
///
/// It waits for the process, not for its pipes: an install command may leave a service
/// running in the background that still holds them open, and the session must not wait for
/// that service to end. Its output keeps reaching the log until it closes the pipes or the log
/// closes.
pub async fn run_logged(mut cmd: Command, log: &Arc<OutputLog>, timeout: Duration) -> Outcome {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so a timeout kills its children too.
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return Outcome::SpawnFailed(e),
    };
    let _managed = child.id().map(crate::reaper::Managed::new);
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut pumps = tokio::spawn(pump_both(stdout, stderr, log.clone()));
    let outcome = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => Outcome::Exited(status),
        Ok(Err(e)) => Outcome::SpawnFailed(e),
        Err(_) => {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Outcome::TimedOut
        }
    };
    // What the process wrote before it exited is already in the pipes: let it land in the log
    // before anything that follows. Past the settle time the pumps carry on by themselves.
    let _ = tokio::time::timeout(OUTPUT_SETTLE, &mut pumps).await;
    outcome
}

/// Copies both pipes into the log until each is closed by every process holding it.
async fn pump_both(stdout: ChildStdout, stderr: ChildStderr, log: Arc<OutputLog>) {
    tokio::join!(pump(stdout, &log), pump(stderr, &log));
}

async fn pump(mut from: impl AsyncRead + Unpin, log: &OutputLog) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        log.append(to_terminal_newlines(&buf[..n]));
    }
}

/// Pipes carry bare `\n`; a terminal needs `\r\n` or lines stair-step.
fn to_terminal_newlines(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + data.len() / 16);
    let mut previous = 0u8;
    for &b in data {
        if b == b'\n' && previous != b'\r' {
            out.put_u8(b'\r');
        }
        out.put_u8(b);
        previous = b;
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_newlines_become_crlf_once() {
        assert_eq!(&to_terminal_newlines(b"a\nb\r\nc\n")[..], b"a\r\nb\r\nc\r\n");
    }
}
