//! The command, hosted in a real PTY as the leader of its own session and process group.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, Interest, ReadBuf};
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
    // Taken out of the runtime (`into` deregisters it): the halves below pick their own interest.
    let master: OwnedFd = pty.into();
    let io_err = |e: io::Error| RunnerError::Spawn(format!("PTY master: {e}"));
    let writer = PtyWriter(master.try_clone().map_err(io_err)?);
    let mut reader = PtyReader {
        fd: register(master, Interest::READABLE).map_err(io_err)?,
        read_since_yield: 0,
    };

    let reader = tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(64 * 1024);
            }
            match reader.read_buf(&mut buf).await {
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
                    if writer.write_all(&data).await.is_err() {
                        break;
                    }
                }
                PtyInput::Resize { cols, rows } => {
                    if let Err(e) = writer.resize(cols, rows) {
                        tracing::warn!(error = %e, "resize failed");
                    }
                }
            }
        }
    });

    Ok(PtyProcess { child, pid, reader, input })
}

/// Registers a descriptor this process owns with the runtime for `interest` only.
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` takes ownership of the `OwnedFd`, so the descriptor stays open and
    // refers to the same file for the registration's whole lifetime.
    Ok(unsafe { AsyncFd::register_with_interest(fd, interest) }?)
}

/// The PTY master's read side, registered with the runtime for readability only.
///
/// Not for writability as well: the program reading its input wakes the master's write queue,
/// `epoll_wait` then polls the master, and the kernel's PTY poll waits, in uninterruptible
/// sleep, for the PTY's pending buffer work whenever no output is ready yet. Mid-echo that
/// puts the runner's thread (and on a VM its idle CPU) to sleep just before the echo arrives,
/// and waking it again cost more than the echo itself (docs/benchmarks.md, session 4).
struct PtyReader {
    fd: AsyncFd<OwnedFd>,
    /// Bytes read since the reader last gave the runtime a turn (see `READ_BATCH`).
    read_since_yield: usize,
}

/// After a short read the reader keeps reading (sleeping in the kernel while the PTY's worker
/// refills its 4 KiB) until this much is read, then waits for readiness instead, so the runtime
/// sends the batch as one frame while the worker refills. A frame per read overlapped every
/// refill but gave the same throughput for more CPU and five times the messages on every hop
/// after the runner (docs/benchmarks.md, session 5).
const READ_BATCH: usize = 16 * 1024;

impl AsyncRead for PtyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.fd.poll_read_ready(cx))?;
            // SAFETY: `rustix::io::read` only writes into the slice; nothing is de-initialised.
            let unfilled = unsafe { buf.unfilled_mut() };
            let room = unfilled.len();
            let read = guard.try_io(|fd| {
                let (filled, _) = rustix::io::read(fd.get_ref(), unfilled)?;
                Ok(filled.len())
            });
            match read {
                Ok(Ok(n)) => {
                    // A short read emptied the line discipline's buffer. Once a batch is read,
                    // wait for the next readiness event rather than for the refill. Safe: every
                    // refill wakes the PTY's wait queue, so a new edge always follows.
                    this.read_since_yield += n;
                    if n > 0 && n < room && this.read_since_yield >= READ_BATCH {
                        this.read_since_yield = 0;
                        guard.clear_ready();
                    }
                    // SAFETY: the read initialised the first `n` bytes of the unfilled part.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Readiness was stale and is now cleared: wait for the next edge.
                Err(_would_block) => {
                    this.read_since_yield = 0;
                    continue;
                }
            }
        }
    }
}

/// The PTY master's write side: input goes straight to the non-blocking descriptor, which is
/// registered with the runtime (for writability) only while the program leaves no room.
struct PtyWriter(OwnedFd);

impl PtyWriter {
    async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match rustix::io::write(&self.0, data) {
                // A PTY never accepts nothing without saying why; never loop on it.
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => {
                    // Registration polls the descriptor at once, so room that appeared since
                    // the failed write is not missed.
                    let waiter = register(self.0.try_clone()?, Interest::WRITABLE)?;
                    drop(waiter.writable().await?);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        let size =
            rustix::termios::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        Ok(rustix::termios::tcsetwinsize(&self.0, size)?)
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
