//! The command, hosted in a real PTY as the leader of its own session and process group.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, Interest, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::error::{Result, RunnerError};
use crate::log::OutputLog;

/// What clients may do to the PTY.
#[derive(Debug)]
pub enum PtyInput {
    Data(Bytes),
    Resize { cols: u16, rows: u16 },
}

/// Most input bytes queued for a program that is not reading them, across all clients. Past
/// it, clients' input waits in their sockets (backpressure) rather than in the runner's
/// memory. At least the largest client message (1 MiB), so every message fits.
pub const INPUT_BUDGET: usize = 2 * 1024 * 1024;

/// Most input messages queued (keystrokes are one message each).
const INPUT_QUEUE: usize = 256;

/// Why input could not be queued.
#[derive(Debug)]
pub enum QueueError {
    /// The queue or its byte budget is full right now; here is the input back.
    Full(PtyInput),
    /// The PTY's input side is gone: the command has ended.
    Closed,
}

/// The PTY's input queue, bounded in messages and in bytes.
#[derive(Clone)]
pub struct InputQueue {
    tx: mpsc::Sender<(PtyInput, Option<OwnedSemaphorePermit>)>,
    budget: Arc<Semaphore>,
}

fn permits(input: &PtyInput) -> Option<u32> {
    match input {
        PtyInput::Data(data) => Some(data.len().min(INPUT_BUDGET) as u32),
        PtyInput::Resize { .. } => None,
    }
}

impl InputQueue {
    fn new() -> (Self, mpsc::Receiver<(PtyInput, Option<OwnedSemaphorePermit>)>) {
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        (Self { tx, budget: Arc::new(Semaphore::new(INPUT_BUDGET)) }, rx)
    }

    /// Queues `input` if there is room now.
    pub fn try_send(&self, input: PtyInput) -> std::result::Result<(), QueueError> {
        let permit = match permits(&input) {
            Some(n) => match self.budget.clone().try_acquire_many_owned(n) {
                Ok(permit) => Some(permit),
                Err(_) => return Err(QueueError::Full(input)),
            },
            None => None,
        };
        self.tx.try_send((input, permit)).map_err(|e| match e {
            mpsc::error::TrySendError::Full((input, _)) => QueueError::Full(input),
            mpsc::error::TrySendError::Closed(_) => QueueError::Closed,
        })
    }

    /// Queues `input`, waiting for room.
    pub async fn send(&self, input: PtyInput) -> std::result::Result<(), QueueError> {
        let permit = match permits(&input) {
            Some(n) => Some(
                self.budget.clone().acquire_many_owned(n).await.map_err(|_| QueueError::Closed)?,
            ),
            None => None,
        };
        self.tx.send((input, permit)).await.map_err(|_| QueueError::Closed)
    }
}

/// How to start the command.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub command: String,
    pub dir: std::path::PathBuf,
    pub env: Vec<(String, String)>,
    /// Variables of the runner's own that the command must not inherit.
    pub env_remove: Vec<String>,
    /// The command's own user, when it is not the runner's.
    pub user: Option<crate::user::SessionUser>,
    pub cols: u16,
    pub rows: u16,
}

/// A running command in its PTY.
pub struct PtyProcess {
    pub child: tokio::process::Child,
    pub pid: i32,
    /// Ends when the PTY reports end of output.
    pub reader: tokio::task::JoinHandle<()>,
    pub input: InputQueue,
    /// Keeps the reaper off the command's exit status, which `child` collects.
    _managed: crate::reaper::Managed,
}

/// The shell commands run under: bash when the image has it, else POSIX sh.
pub fn shell() -> &'static str {
    if Path::new("/bin/bash").exists() { "/bin/bash" } else { "/bin/sh" }
}

/// Starts `spec` in a new PTY, with every byte it prints appended to `log`.
pub fn spawn(spec: &CommandSpec, log: Arc<OutputLog>) -> Result<PtyProcess> {
    let spawn_err = |e: pty_process::Error| RunnerError::Spawn(e.to_string());
    let (pty, pts) = pty_process::open().map_err(spawn_err)?;
    pty.resize(pty_process::Size::new(spec.rows, spec.cols)).map_err(spawn_err)?;
    let mut cmd = pty_process::Command::new(shell()).arg("-c").arg(&spec.command);
    for key in &spec.env_remove {
        cmd = cmd.env_remove(key);
    }
    cmd = cmd.envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))).current_dir(&spec.dir);
    if let Some(user) = spec.user {
        // The terminal is the command's, as login makes it: programs that reopen it (ssh, sudo
        // prompts, `tty`) then can.
        nix::unistd::fchown(
            &pts,
            Some(nix::unistd::Uid::from_raw(user.uid)),
            Some(nix::unistd::Gid::from_raw(user.gid)),
        )
        .map_err(|e| RunnerError::Spawn(format!("handing the terminal over: {e}")))?;
        cmd = cmd.uid(user.uid).gid(user.gid);
    }
    let child = cmd.spawn(pts).map_err(spawn_err)?;
    let id = child.id().ok_or_else(|| RunnerError::Spawn("no pid".into()))?;
    let managed = crate::reaper::Managed::new(id);
    let pid = id as i32;
    // Taken out of the runtime (`into` deregisters it): the halves below pick their own interest.
    let master: OwnedFd = pty.into();
    let io_err = |e: io::Error| RunnerError::Spawn(format!("PTY master: {e}"));
    let writer = PtyWriter(master.try_clone().map_err(io_err)?);
    let mut reader = PtyReader {
        fd: register(master, Interest::READABLE).map_err(io_err)?,
        read_since_yield: 0,
    };

    let resizes = log.clone();
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

    let (input, mut input_rx) = InputQueue::new();
    tokio::spawn(async move {
        // The permit returns the input's bytes to the budget once they are in the PTY.
        while let Some((message, _permit)) = input_rx.recv().await {
            match message {
                PtyInput::Data(data) => {
                    if writer.write_all(&data).await.is_err() {
                        break;
                    }
                }
                PtyInput::Resize { cols, rows } => match writer.resize(cols, rows) {
                    // Recordings replay the size change where it happened in the output.
                    Ok(()) => resizes.note_resize(cols, rows),
                    Err(e) => tracing::warn!(error = %e, "resize failed"),
                },
            }
        }
    });

    Ok(PtyProcess { child, pid, reader, input, _managed: managed })
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
/// and waking it again cost more than the echo itself (docs/runner.md, "Latency and CPU").
struct PtyReader {
    fd: AsyncFd<OwnedFd>,
    /// Bytes read since the reader last gave the runtime a turn (see `READ_BATCH`).
    read_since_yield: usize,
}

/// After a short read the reader keeps reading (sleeping in the kernel while the PTY's worker
/// refills its 4 KiB) until this much is read, then waits for readiness instead, so the runtime
/// sends the batch as one frame while the worker refills. A frame per read overlapped every
/// refill but gave the same throughput for more CPU and five times the messages on every hop
/// after the runner (docs/runner.md, "Latency and CPU").
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

/// Stops the process group as closing a terminal window and then `kill` would: SIGHUP (an
/// interactive shell ignores SIGTERM but leaves on a hang-up, taking its jobs with it), SIGTERM,
/// SIGCONT (a stopped job cannot act on either until it runs), then SIGKILL after `grace` if
/// anything is still alive.
pub async fn stop(process: &mut PtyProcess, grace: Duration) -> std::process::ExitStatus {
    for signal in [Signal::SIGHUP, Signal::SIGTERM, Signal::SIGCONT] {
        signal_group(process.pid, signal);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> PtyInput {
        PtyInput::Data(Bytes::from(vec![b'x'; len]))
    }

    #[tokio::test]
    async fn queued_input_is_bounded_in_bytes_and_room_returns_as_it_is_written() {
        let (queue, mut rx) = InputQueue::new();
        let half = INPUT_BUDGET / 2;
        assert!(queue.try_send(data(half)).is_ok());
        assert!(queue.try_send(data(half)).is_ok());
        // The budget is spent: even one byte waits, but a resize (no bytes) does not.
        assert!(matches!(queue.try_send(data(1)), Err(QueueError::Full(PtyInput::Data(_)))));
        assert!(queue.try_send(PtyInput::Resize { cols: 80, rows: 24 }).is_ok());
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.send(data(half)).await.is_ok() }
        });
        // Writing the first message to the PTY (dropping its permit) makes room.
        let (first, permit) = rx.recv().await.unwrap();
        assert!(matches!(first, PtyInput::Data(d) if d.len() == half));
        drop(permit);
        assert!(waiting.await.unwrap(), "the waiting input was queued once room returned");
        assert!(matches!(queue.try_send(data(1)), Err(QueueError::Full(_))));
        // Once the PTY's side is gone, input is refused as such.
        drop(rx);
        assert!(matches!(
            queue.try_send(PtyInput::Resize { cols: 1, rows: 1 }),
            Err(QueueError::Closed)
        ));
    }

    #[tokio::test]
    async fn many_small_messages_are_bounded_by_count() {
        let (queue, _rx) = InputQueue::new();
        for _ in 0..INPUT_QUEUE {
            assert!(queue.try_send(data(1)).is_ok());
        }
        assert!(matches!(queue.try_send(data(1)), Err(QueueError::Full(_))));
    }
}
