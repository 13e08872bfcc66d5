//! The command, hosted in a real PTY as the leader of its own session and process group.

use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::error::{Result, RunnerError};
use crate::log::OutputLog;

/// What clients may do to the PTY.
#[derive(Debug)]
pub enum PtyInput {
    Data(Bytes),
    Resize { cols: u16, rows: u16 },
}

/// How to start the command.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub command: String,
    pub dir: std::path::PathBuf,
    pub env: Vec<(String, String)>,
    /// Variables of the runner's own that the command must not inherit.
    pub env_remove: Vec<String>,
    pub cols: u16,
    pub rows: u16,
}

/// A running command in its PTY.
pub struct PtyProcess {
    pub child: tokio::process::Child,
    pub pid: i32,
    /// Ends when the PTY reports end of output.
    pub reader: tokio::task::JoinHandle<()>,
    pub input: mpsc::Sender<PtyInput>,
}

/// The shell commands run under: bash when the image has it, else POSIX sh.
pub fn shell() -> &'static str {
    if Path::new("/bin/bash").exists() { "/bin/bash" } else { "/bin/sh" }
}

/// Starts `spec` in a new PTY, with every byte it prints appended to `log`.
pub fn spawn(spec: &CommandSpec, log: std::sync::Arc<OutputLog>) -> Result<PtyProcess> {
    let spawn_err = |e: pty_process::Error| RunnerError::Spawn(e.to_string());
    let (pty, pts) = pty_process::open().map_err(spawn_err)?;
    pty.resize(pty_process::Size::new(spec.rows, spec.cols)).map_err(spawn_err)?;
    let mut cmd = pty_process::Command::new(shell()).arg("-c").arg(&spec.command);
    for key in &spec.env_remove {
        cmd = cmd.env_remove(key);
    }
    cmd = cmd.envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))).current_dir(&spec.dir);
    let child = cmd.spawn(pts).map_err(spawn_err)?;
    let pid = child.id().map(|p| p as i32).ok_or_else(|| RunnerError::Spawn("no pid".into()))?;
    let (mut read_half, mut write_half) = pty.into_split();
    let echo_log = log.clone();

    let reader = tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(64 * 1024);
            }
            match read_half.read_buf(&mut buf).await {
                // EIO means every slave fd is closed: the PTY's end of output.
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    log.append(buf.split().freeze());
                }
            }
        }
    });

    let (input, mut input_rx) = mpsc::channel::<PtyInput>(256);
    tokio::spawn(async move {
        while let Some(message) = input_rx.recv().await {
            match message {
                PtyInput::Data(data) => {
                    let before = echo_log.end();
                    if write_half.write_all(&data).await.is_err() {
                        break;
                    }
                    if data.len() <= ECHO_SPIN_MAX_INPUT {
                        spin_for_echo(&echo_log, before).await;
                    }
                }
                PtyInput::Resize { cols, rows } => {
                    if let Err(e) = write_half.resize(pty_process::Size::new(rows, cols)) {
                        tracing::warn!(error = %e, "resize failed");
                    }
                }
            }
        }
    });

    Ok(PtyProcess { child, pid, reader, input })
}

/// Keystroke-sized input (at most this many bytes) is followed by a short spin for its echo.
const ECHO_SPIN_MAX_INPUT: usize = 16;
/// How long to spin: a little longer than a program's echo takes on a busy node.
const ECHO_SPIN: Duration = Duration::from_micros(250);

/// Keeps the runtime polling (non-blocking) for a moment after a keystroke instead of letting the
/// thread sleep in `epoll_wait`: the echo then comes back without a process wake-up, which is
/// most of a keystroke's latency on a virtual machine. Costs at most `ECHO_SPIN` of CPU per
/// keystroke (a typist: well under 1 % of a core).
async fn spin_for_echo(log: &OutputLog, before: u64) {
    let started = std::time::Instant::now();
    while log.end() == before && started.elapsed() < ECHO_SPIN {
        // Let the command run first if it shares this CPU (spinning would only delay its echo).
        std::thread::yield_now();
        // Each yield lets the scheduler poll the I/O driver without blocking.
        tokio::task::yield_now().await;
    }
}

/// Sends `signal` to the command's whole process group.
pub fn signal_group(pid: i32, signal: Signal) {
    if let Err(e) = killpg(Pid::from_raw(pid), signal) {
        tracing::debug!(pid, ?signal, error = %e, "signalling the process group failed");
    }
}

/// The exit code a shell would report: the code, or 128 + the signal number.
pub fn exit_code_of(status: std::process::ExitStatus) -> (i32, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(signal)) => (128 + signal, Some(signal)),
        (None, None) => (crate::error::exit_code::RUNNER_FAILED, None),
    }
}

/// Stops the process group: SIGTERM, then SIGKILL after `grace` if it is still alive.
pub async fn stop(process: &mut PtyProcess, grace: Duration) -> std::process::ExitStatus {
    signal_group(process.pid, Signal::SIGTERM);
    match tokio::time::timeout(grace, process.child.wait()).await {
        Ok(Ok(status)) => {
            // Reap stragglers of the group that ignored SIGTERM.
            signal_group(process.pid, Signal::SIGKILL);
            status
        }
        _ => {
            signal_group(process.pid, Signal::SIGKILL);
            process.child.wait().await.unwrap_or_else(|_| {
                std::os::unix::process::ExitStatusExt::from_raw(Signal::SIGKILL as i32)
            })
        }
    }
}
