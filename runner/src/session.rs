//! Drives one session: serve, fetch, install, run in the PTY, report, linger, exit.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cliscale_core::cursor::{Ends, LogCursor, Step};
use cliscale_core::event::RunnerEvent;
use cliscale_core::protocol::SessionStatus;
use cliscale_core::token::JwksVerifier;
use cliscale_core::{SessionPhase, TerminalReason};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{RUNNER_ENV_PREFIX, RunnerConfig};
use crate::error::{Result, RunnerError, exit_code};
use crate::events::EventSink;
use crate::log::OutputLog;
use crate::logged_process::{Outcome, run_logged};
use crate::mask::Masker;
use crate::metrics::Metrics;
use crate::pty::{self, CommandSpec};
use crate::reaper;
use crate::server::{self, Shared};
use crate::source::{self, progress};
use crate::upload::{UploadTarget, Uploader};
use crate::user::SessionUser;
use cliscale_core::launch::{COMMAND_ENV_PREFIX, command_env_name};
use cliscale_core::output::{STATUS_TAIL_BYTES, tail_text};

/// Longest wait for the PTY's last bytes after the command exits (background processes may
/// hold the terminal open).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// SIGTERM, SIGINT and the launcher's end: the ways a runner is told to stop.
struct StopSignals {
    term: Signal,
    int: Signal,
    /// Reaches end of file when the launcher holding its other end is gone, however it died.
    lifeline: Option<tokio::net::unix::pipe::Receiver>,
    orphaned: bool,
}

impl StopSignals {
    fn new(lifeline: Option<std::os::fd::OwnedFd>) -> std::io::Result<Self> {
        let lifeline = lifeline.map(tokio::net::unix::pipe::Receiver::from_owned_fd).transpose()?;
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            lifeline,
            orphaned: false,
        })
    }

    /// Waits for either signal, or the launcher's end (reported as SIGTERM); returns its number.
    async fn recv(&mut self) -> i32 {
        if self.orphaned {
            return libc_signal::SIGTERM;
        }
        let launcher_gone = async {
            match &self.lifeline {
                Some(pipe) => launcher_gone(pipe).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.term.recv() => libc_signal::SIGTERM,
            _ = self.int.recv() => libc_signal::SIGINT,
            _ = launcher_gone => {
                tracing::warn!("the launcher is gone; stopping the session");
                self.orphaned = true;
                libc_signal::SIGTERM
            }
        }
    }
}

/// Resolves at end of file (or an error) on the lifeline: every writer has closed it.
async fn launcher_gone(pipe: &tokio::net::unix::pipe::Receiver) {
    let mut buf = [0u8; 64];
    loop {
        if pipe.readable().await.is_err() {
            return;
        }
        match pipe.try_read(&mut buf) {
            Ok(0) => return,
            // Nothing is meant to be written; whatever is, is ignored.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

mod libc_signal {
    pub const SIGINT: i32 = nix::sys::signal::Signal::SIGINT as i32;
    pub const SIGTERM: i32 = nix::sys::signal::Signal::SIGTERM as i32;
}

/// Reports a session that could not start and returns the runner's exit code for it.
pub fn could_not_start(events: &mut EventSink, error: RunnerError) -> i32 {
    tracing::error!(%error, "the session could not start");
    let (reason, code) = (error.reason(), error.exit_code());
    let status = SessionStatus::finished(reason, code, Some(error.to_string()));
    events.send(&RunnerEvent::finished(status, None));
    code
}

/// Runs the session to the end, reporting it on `events`, and returns the runner's exit code.
pub async fn run(
    config: RunnerConfig,
    mut events: EventSink,
    lifeline: Option<std::os::fd::OwnedFd>,
) -> i32 {
    let args = &config.args;
    let audiences: Vec<&str> = args.token_audience.iter().map(String::as_str).collect();
    let verifier = match JwksVerifier::from_jwks_json(
        &config.jwks,
        &audiences,
        args.token_issuer.as_deref(),
    ) {
        Ok(v) => v,
        Err(e) => {
            let error = RunnerError::Config(format!("invalid JWKS file: {e}"));
            return could_not_start(&mut events, error);
        }
    };
    let mut signals = match StopSignals::new(lifeline) {
        Ok(s) => s,
        Err(e) => {
            return could_not_start(&mut events, RunnerError::io("installing signal handlers", e));
        }
    };
    // Before anything is spawned: every orphan of the session is ours to reap and to stop.
    reaper::become_subreaper();
    tokio::spawn(reaper::reap_orphans_forever());
    let secrets: Vec<String> =
        args.mask_env.iter().filter_map(|n| std::env::var(command_env_name(n)).ok()).collect();
    let masker = Masker::new(secrets.iter().map(|s| s.as_bytes()));
    let masking = masker.is_some();
    let log = Arc::new(OutputLog::with_masker(args.log_window_bytes, masker));
    if masking {
        tokio::spawn(release_held_output(log.clone()));
    }
    let mut upload = match upload_target(args) {
        None => None,
        Some(target) => match Uploader::new(target, log.clone()) {
            Ok(uploader) => match spawn_uploader(uploader) {
                Ok(done) => Some(done),
                Err(e) => {
                    return could_not_start(
                        &mut events,
                        RunnerError::io("cannot start the output uploader", e),
                    );
                }
            },
            Err(e) => {
                return could_not_start(
                    &mut events,
                    RunnerError::Config(format!("output store: {e}")),
                );
            }
        },
    };
    let (status, _) = watch::channel(SessionStatus::new(SessionPhase::Starting));
    let shared = Arc::new(Shared {
        session_id: args.session_id.clone(),
        log: log.clone(),
        status,
        input: OnceLock::new(),
        accepting_input: AtomicBool::new(false),
        started: OnceLock::new(),
        ended: OnceLock::new(),
        verifier: Arc::new(verifier),
        metrics: Metrics::default(),
        ping_interval: args.ping_interval,
        stall_timeout: args.client_stall_timeout,
        shutdown: CancellationToken::new(),
        connections: tokio_util::task::TaskTracker::new(),
        spent: Default::default(),
        early_size: Default::default(),
    });

    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            return could_not_start(
                &mut events,
                RunnerError::io(format!("cannot listen on {}", args.listen), e),
            );
        }
    };
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(addr, session_id = %args.session_id, "listening");
    events.send(&RunnerEvent::Listening { addr });
    // Keystrokes and echoes are tiny writes: never let Nagle hold them back.
    let server = tokio::spawn(cliscale_serve::serve(
        listener,
        server::router(shared.clone()),
        cliscale_serve::Limits::default(),
        cliscale_serve::no_delay,
        shared.shutdown.clone().cancelled_owned(),
    ));
    let tee = args.tee_stdout.then(|| tokio::spawn(tee_stdout(log.clone())));

    let code = drive(&config, &shared, &mut signals, &mut events).await;
    // The runner's own children are done: whatever the session left running stops now, while
    // viewers see the end.
    let leftovers = tokio::spawn(reaper::stop_leftovers(args.grace_period));
    let final_status = shared.status.borrow().clone();
    // A runner told to stop (its pod deleted, `cliscale up` stopping, a cancel) leaves once
    // the viewers have the final status; lingering would only hold up whoever asked.
    let linger = match final_status.reason {
        Some(TerminalReason::Cancelled) => Duration::ZERO,
        _ => args.linger,
    };
    tracing::info!(
        phase = final_status.phase.as_str(),
        exit_code = code,
        reason = final_status.reason.map(|r| r.as_str()),
        detail = final_status.message.as_deref(),
        ?linger,
        "session finished"
    );
    // Whoever learns of the end from this event reads the stored output next: give the store
    // a moment to take the rest, without letting a slow store hold up the status.
    if let Some(handle) = upload.as_mut()
        && tokio::time::timeout(FINAL_UPLOAD_WAIT, handle).await.is_ok()
    {
        upload = None;
    }
    events.send(&RunnerEvent::finished(final_status, Some(output_tail(&log))));

    tokio::select! {
        _ = tokio::time::sleep(linger) => {}
        _ = signals.recv() => tracing::info!("stop signal during linger; exiting now"),
    }
    let _ = leftovers.await;
    if let Some(upload) = upload
        && tokio::time::timeout(UPLOAD_DRAIN, upload).await.is_err()
    {
        tracing::warn!("the output store did not take the whole log in time");
    }
    shared.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    shared.connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), shared.connections.wait()).await;
    if let Some(tee) = tee {
        let _ = tokio::time::timeout(Duration::from_secs(5), tee).await;
    }
    code
}

/// Longest wait for the output store to take the rest of the log before the final status.
const FINAL_UPLOAD_WAIT: Duration = Duration::from_secs(2);
/// Longest wait at exit for the output store to take the rest of the log.
const UPLOAD_DRAIN: Duration = Duration::from_secs(10);

/// The output store's address and credential, when the session's log is stored.
/// Runs the uploader on a thread of its own, so the appends' HTTP work never shares the PTY's
/// thread (the runner's runtime has one), at a lower priority than the PTY's work: when the
/// CPUs are busy the store waits, and if it falls behind the window it records a gap, rather
/// than the command's output slowing down. The receiver resolves when the uploader is done.
fn spawn_uploader(uploader: Uploader) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("uploader".into()).spawn(move || {
        // Niceness is per thread on Linux: only this one yields.
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), UPLOADER_NICE) {
            tracing::debug!(error = %e, "the uploader runs at the runner's priority");
        }
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(uploader.run()),
            Err(e) => tracing::error!(error = %e, "cannot start the output uploader"),
        }
        let _ = done_tx.send(());
    })?;
    Ok(done_rx)
}

/// The uploader's nice value (0 is the runner's own; 19 the lowest priority).
const UPLOADER_NICE: i32 = 10;

fn upload_target(args: &crate::config::RunnerArgs) -> Option<UploadTarget> {
    let (base, token) = (args.output_url.as_ref()?, args.output_token.clone()?);
    let url =
        format!("{}/api/sessions/{}/output", base.as_str().trim_end_matches('/'), args.session_id);
    Some(UploadTarget {
        url: url.parse().ok()?,
        token,
        batch_bytes: args.output_batch_bytes,
        interval: args.output_interval,
    })
}

/// The end of the log as text, for the final event (and so a CommandSession's status).
fn output_tail(log: &OutputLog) -> String {
    let want = STATUS_TAIL_BYTES as u64 * 4;
    let from = log.end().saturating_sub(want).max(log.start());
    match log.read_since(from, want as usize) {
        crate::log::LogRead::Data { data, .. } => tail_text(&data, STATUS_TAIL_BYTES),
        _ => String::new(),
    }
}

/// Lets output held back as a possible secret's start go once it has waited long enough.
async fn release_held_output(log: Arc<OutputLog>) {
    let mut end_rx = log.subscribe();
    loop {
        if log.flush_masked(false) {
            tokio::time::sleep(crate::mask::HOLD / 2).await;
        } else if end_rx.changed().await.is_err() || end_rx.borrow().1 {
            return;
        }
    }
}

/// Ends the session with `reason`: the log closes, then the final status goes out.
fn finish(shared: &Shared, reason: TerminalReason, code: i32, message: Option<String>) -> i32 {
    shared.accepting_input.store(false, Ordering::Release);
    let _ = shared.ended.set(std::time::Instant::now());
    if let Some(message) = &message
        && reason != TerminalReason::Exited
    {
        progress(&shared.log, message);
    }
    shared.log.close();
    shared.status.send_replace(SessionStatus::finished(reason, code, message));
    code
}

async fn drive(
    config: &RunnerConfig,
    shared: &Shared,
    signals: &mut StopSignals,
    events: &mut EventSink,
) -> i32 {
    let prepared = tokio::select! {
        result = prepare(config, &shared.log) => result,
        signal = signals.recv() => {
            let message = "cancelled before the command started".to_string();
            return finish(shared, TerminalReason::Cancelled, 128 + signal, Some(message));
        }
    };
    let (dir, world) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            tracing::error!(error = %e, "session could not start");
            return finish(shared, e.reason(), e.exit_code(), Some(e.to_string()));
        }
    };

    let args = &config.args;
    let (cols, rows) = shared.take_early_size().unwrap_or((args.cols, args.rows));
    if (cols, rows) != (args.cols, args.rows) {
        // Recordings replay the size change where it happened in the output.
        shared.log.note_resize(cols, rows);
    }
    let spec = CommandSpec {
        command: args.command.clone(),
        dir,
        env: world.env,
        env_remove: world.remove,
        user: world.user,
        cols,
        rows,
    };
    let mut process = match pty::spawn(&spec, shared.log.clone()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the command");
            return finish(shared, e.reason(), e.exit_code(), Some(e.to_string()));
        }
    };
    let _ = shared.input.set(process.input.clone());
    shared.accepting_input.store(true, Ordering::Release);
    // A resize asked for while the PTY was being made.
    if let Some((cols, rows)) = shared.take_early_size() {
        let _ = process.input.try_send(pty::PtyInput::Resize { cols, rows });
    }
    let _ = shared.started.set(std::time::Instant::now());
    shared.status.send_replace(SessionStatus::new(SessionPhase::Running));
    tracing::info!(pid = process.pid, "command started");
    events.send(&RunnerEvent::Started { pid: process.pid });

    let deadline = async {
        match args.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let (status, stopped_by) = tokio::select! {
        status = process.child.wait() => (status.ok(), None),
        signal = signals.recv() => {
            tracing::info!(signal, "stopping the command");
            (Some(pty::stop(&mut process, args.grace_period).await), Some(TerminalReason::Cancelled))
        }
        _ = deadline => {
            tracing::info!("deadline passed; stopping the command");
            (Some(pty::stop(&mut process, args.grace_period).await), Some(TerminalReason::DeadlineExceeded))
        }
    };
    shared.accepting_input.store(false, Ordering::Release);
    // The last bytes the command wrote must reach the log before the exit status.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, &mut process.reader).await;

    let Some(status) = status else {
        return finish(
            shared,
            TerminalReason::RunnerLost,
            exit_code::RUNNER_FAILED,
            Some("lost track of the command".into()),
        );
    };
    let (code, signal) = pty::exit_code_of(status);
    match stopped_by {
        Some(TerminalReason::DeadlineExceeded) => finish(
            shared,
            TerminalReason::DeadlineExceeded,
            exit_code::DEADLINE_EXCEEDED,
            Some(format!(
                "the command ran past its {:?} deadline",
                args.timeout.unwrap_or_default()
            )),
        ),
        Some(reason) => finish(shared, reason, code, Some("the session was cancelled".into())),
        None if signal.is_some() => finish(
            shared,
            TerminalReason::Signaled,
            code,
            Some(format!("the command was killed by signal {}", signal.unwrap_or_default())),
        ),
        None => finish(shared, TerminalReason::Exited, code, None),
    }
}

/// What the install step and the command are given: their variables (the runner's own taken
/// out, the session's put in) and, when set, their own user.
struct CommandWorld {
    env: Vec<(String, String)>,
    remove: Vec<String>,
    user: Option<SessionUser>,
}

impl CommandWorld {
    fn new(config: &RunnerConfig, dir: &std::path::Path) -> Self {
        let args = &config.args;
        let user = SessionUser::from_args(args.command_uid, args.command_gid);
        let (env, remove) = command_env(
            std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))),
            &args.term,
            &args.session_id,
            args.prompt.as_deref(),
            user.map(|_| dir),
        );
        Self { env, remove, user }
    }
}

/// The command's variables from the runner's: the runner's own (`CLISCALE_RUNNER_*`) and the
/// session's prefixed ones are removed; the session's are set under their own names, last, so
/// they win. A session with a user of its own gets its work dir as HOME. Pure.
fn command_env(
    runner_env: impl Iterator<Item = (String, std::ffi::OsString)>,
    term: &str,
    session_id: &str,
    prompt: Option<&str>,
    home: Option<&std::path::Path>,
) -> (Vec<(String, String)>, Vec<String>) {
    let mut env = vec![
        ("TERM".to_string(), term.to_string()),
        ("COLORTERM".to_string(), "truecolor".to_string()),
        ("CLISCALE_SESSION_ID".to_string(), session_id.to_string()),
    ];
    if let Some(prompt) = prompt {
        env.push(("CLISCALE_PROMPT".to_string(), prompt.to_string()));
    }
    if let Some(home) = home {
        env.push(("HOME".to_string(), home.display().to_string()));
    }
    let mut remove = Vec::new();
    for (key, value) in runner_env {
        if let Some(name) = key.strip_prefix(COMMAND_ENV_PREFIX) {
            env.push((name.to_string(), value.to_string_lossy().into_owned()));
            remove.push(key);
        } else if key.starts_with(RUNNER_ENV_PREFIX) {
            remove.push(key);
        }
    }
    (env, remove)
}

/// Fetches the code and runs the install command; returns the directory to run in, and the
/// world the install step had, which the command gets too.
async fn prepare(config: &RunnerConfig, log: &Arc<OutputLog>) -> Result<(PathBuf, CommandWorld)> {
    let dir = match &config.source {
        Some(source) => source::fetch(&config.fetch, source, &config.work_dir, log).await?,
        None => {
            tokio::fs::create_dir_all(&config.work_dir).await.map_err(|e| {
                RunnerError::io(format!("creating work dir {}", config.work_dir.display()), e)
            })?;
            config.work_dir.clone()
        }
    };
    let world = CommandWorld::new(config, &dir);
    if let Some(user) = world.user {
        let root = config.work_dir.clone();
        tokio::task::spawn_blocking(move || user.give_tree(&root))
            .await
            .map_err(|e| RunnerError::Spawn(format!("handing the work dir over: {e}")))??;
    }
    if let Some(install) = config.args.install_cmd.as_deref().filter(|c| !c.trim().is_empty()) {
        progress(log, &format!("installing: {install}"));
        let mut cmd = tokio::process::Command::new(pty::shell());
        cmd.arg("-c").arg(install).current_dir(&dir);
        for key in &world.remove {
            cmd.env_remove(key);
        }
        cmd.envs(world.env.iter().map(|(k, v)| (k, v)));
        if let Some(user) = world.user {
            // std drops supplementary groups when root changes user.
            cmd.uid(user.uid).gid(user.gid);
        }
        match run_logged(cmd, log, config.args.install_timeout).await {
            Outcome::Exited(status) if status.success() => {}
            Outcome::Exited(status) => {
                return Err(RunnerError::Install(format!("{install:?} exited with {status}")));
            }
            Outcome::TimedOut => {
                return Err(RunnerError::Install(format!(
                    "{install:?} ran past {:?}",
                    config.args.install_timeout
                )));
            }
            Outcome::SpawnFailed(e) => return Err(RunnerError::Install(e.to_string())),
        }
    }
    Ok((dir, world))
}

/// How long the stdout tee gathers output before writing it. A log reader needs no keystroke
/// latency, and each write to stdout is a hand-off to the blocking pool: written as the PTY
/// yields it (a write per 16 KiB batch), the tee took the runner from 6.5 to about 9 ms of CPU
/// per MB; gathering brings it to about 7.7 (docs/benchmarks.md).
const TEE_INTERVAL: Duration = Duration::from_millis(20);
/// The most the tee writes at once.
const TEE_MAX_WRITE: usize = 1024 * 1024;

/// Copies the log to stdout, so `kubectl logs` shows the session. A stdout slower than the
/// output falls behind the window like any other reader and notes the gap on stderr.
async fn tee_stdout(log: Arc<OutputLog>) {
    let mut out = tokio::io::stdout();
    let mut end_rx = log.subscribe();
    let mut cursor = LogCursor::new(0, Ends::WhenClosed);
    loop {
        match cursor.next(log.read_since(cursor.offset(), TEE_MAX_WRITE)) {
            Step::Output { data, .. } => {
                if out.write_all(&data).await.is_err() {
                    return;
                }
            }
            Step::Gap { from, to } => tracing::warn!(from, to, "stdout fell behind; bytes skipped"),
            // The tee takes no status.
            Step::Status(_) => {}
            Step::Wait => {
                let _ = out.flush().await;
                if end_rx.changed().await.is_err() {
                    return;
                }
                tokio::time::sleep(TEE_INTERVAL).await;
            }
            Step::End => {
                let _ = out.flush().await;
                return;
            }
        }
    }
}
