//! The local executor: each session's `cliscale-runner` as a child process of `cliscale up`.
//!
//! It learns what happens from the runner's events (`cliscale_core::event`) on a pipe of their
//! own, and from the process' exit when the runner could report nothing; it writes that into the
//! store. The runner's own logs (stderr) are passed on to this process' log, never parsed.
//! Sessions found unfinished at start-up belonged to a previous process: they are `Lost`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::os::fd::AsRawFd;

use cliscale_core::event::RunnerEvent;
use cliscale_core::exit;
use cliscale_core::launch::{RunnerLaunch, command_env_name};
use cliscale_core::{SessionPhase, TerminalReason};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

use crate::error::{ApiError, Result};
use crate::executor::{BoxFuture, Executor};
use crate::model::SessionRecord;
use crate::process::Shutdown;
use crate::store::{StatusUpdate, Store, now};

#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub runner_bin: PathBuf,
    /// Where sessions' work dirs are made, one per session, each its command's own.
    pub work_root: PathBuf,
    /// How sessions are kept from this process and from each other.
    pub isolation: Isolation,
    /// JWKS the runners check tokens against.
    pub jwks_path: PathBuf,
    pub grace_period: Duration,
    /// Let sessions fetch code from loopback and private addresses (a laptop's own servers).
    pub allow_private_code_urls: bool,
    /// Where runners store their sessions' output (unset: output is not stored).
    pub output: Option<OutputSink>,
}

/// The API runners append output to, and the keys their credentials are signed with.
#[derive(Clone)]
pub struct OutputSink {
    pub url: String,
    pub keys: Arc<crate::signing::KeyRing>,
    pub issuer: String,
}

impl std::fmt::Debug for OutputSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputSink").field("url", &self.url).finish_non_exhaustive()
    }
}

/// How the local executor keeps a session's command from the server and from other sessions
/// (docs/security.md, "Local mode").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// Each running session has a user and group of its own, from `first..first + count`: it
    /// cannot read the data dir, signal or trace other processes, or read another session's
    /// work dir. Needs this process to run as root.
    Users { first: u32, count: u32 },
    /// Sessions run as this process' own user, so any session could act as the server: only
    /// admin keys are accepted. `why` says why the host gives no isolation.
    SingleTenant { why: String },
}

/// The users sessions get by default: far above people's and system users, and below 2^31,
/// which some tools still read as a signed number.
pub const DEFAULT_SESSION_UIDS: (u32, u32) = (2_000_000_000, 65_536);

impl Isolation {
    /// What this host gives: users of their own when this process is root. Pure but for euid.
    pub fn detect(first: u32, count: u32) -> Self {
        if nix::unistd::geteuid().is_root() {
            Self::Users { first, count }
        } else {
            Self::SingleTenant {
                why: "cliscale up is not running as root, so sessions cannot be given users of \
                      their own and would run as the server's user"
                    .into(),
            }
        }
    }

    /// Why only admin keys are accepted, when they are.
    pub fn admin_only(&self) -> Option<&str> {
        match self {
            Self::Users { .. } => None,
            Self::SingleTenant { why } => Some(why),
        }
    }
}

/// The first free user of `first..first + count`, looking from `start` on: not held by a running
/// session and owning no process (`busy`), so nothing a finished session left behind shares it.
/// Pure but for `busy`.
pub fn pick_uid(
    first: u32,
    count: u32,
    start: u32,
    held: &std::collections::HashSet<u32>,
    busy: impl Fn(u32) -> bool,
) -> Option<u32> {
    (0..count)
        .map(|i| first + (start.wrapping_add(i) % count))
        .find(|uid| !held.contains(uid) && !busy(*uid))
}

/// Whether any process runs as `uid`.
fn uid_has_processes(uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries.flatten().any(|e| {
        e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            && e.metadata().is_ok_and(|m| m.uid() == uid)
    })
}

/// Variables of this process a session's runner gets when sessions are isolated: enough to
/// find programs and speak the host's language, and nothing else of the server's.
const PASSED_ENV: [&str; 5] = ["PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ"];
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the gateway needs to know of a runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerState {
    pub phase: SessionPhase,
    /// Where the runner listens, once it does.
    pub addr: Option<String>,
    /// The runner process has exited: nothing listens at `addr` any more.
    pub exited: bool,
}

struct RunnerHandle {
    pid: u32,
    state: watch::Sender<RunnerState>,
    cancel_requested: Arc<AtomicBool>,
    /// The session's user, held until its runner exits.
    uid: Option<u32>,
}

pub struct LocalExecutor {
    config: LocalConfig,
    store: Store,
    runners: Mutex<HashMap<String, RunnerHandle>>,
    /// Where the search for a free session user starts next: users are used in turn, not reused
    /// at once.
    next_uid: std::sync::atomic::AtomicU32,
    /// Where secret variables' values are read from, at launch only.
    vault: std::sync::OnceLock<Arc<dyn crate::secrets::SecretVault>>,
}

/// How a runner ended when it did not say so itself: decided from its exit alone. Pure.
pub fn outcome_from_exit(
    status: std::process::ExitStatus,
    cancel_requested: bool,
) -> (SessionPhase, TerminalReason, Option<i64>) {
    let code = status.code();
    let reason = match code {
        _ if cancel_requested => TerminalReason::Cancelled,
        Some(code) => exit::reason_of(code),
        // Killed by a signal before it could say anything.
        None => TerminalReason::RunnerLost,
    };
    let phase = cliscale_core::phase::finished_phase(reason, code);
    (phase, reason, code.map(i64::from))
}

/// The descriptor numbers the runner finds its event pipe and its lifeline at.
const EVENTS_FD: i32 = 3;
const LIFELINE_FD: i32 = 4;

/// What a runner event changes in the store. Pure.
pub fn update_for(event: RunnerEvent) -> StatusUpdate {
    match event {
        RunnerEvent::Listening { addr } => StatusUpdate {
            phase: Some(SessionPhase::Starting),
            runner_addr: Some(addr),
            ..Default::default()
        },
        RunnerEvent::Started { .. } => {
            StatusUpdate { phase: Some(SessionPhase::Running), ..Default::default() }
        }
        RunnerEvent::Finished { status, .. } => StatusUpdate {
            phase: Some(status.phase),
            exit_code: status.exit_code.map(i64::from),
            reason: status.reason,
            message: status.message,
            runner_addr: None,
        },
    }
}

impl LocalExecutor {
    pub fn new(config: LocalConfig, store: Store) -> Arc<Self> {
        Arc::new(Self {
            config,
            store,
            runners: Mutex::new(HashMap::new()),
            next_uid: std::sync::atomic::AtomicU32::new(rand::random()),
            vault: Default::default(),
        })
    }

    /// Reads secret variables from `vault` (without one, a session that has any fails).
    pub fn use_vault(&self, vault: Arc<dyn crate::secrets::SecretVault>) {
        let _ = self.vault.set(vault);
    }

    /// The values of the session's secret variables, under the names the runner passes on.
    /// `Err` names the variable whose secret or key is gone (never a value).
    async fn secret_values(
        &self,
        session: &SessionRecord,
    ) -> std::result::Result<Vec<(String, String)>, String> {
        let mut values = Vec::new();
        for var in &session.spec.env_from_secrets {
            let vault = self.vault.get().ok_or("this server keeps no secrets")?;
            let value = vault
                .reveal(&var.secret_name, &var.key)
                .await
                .map_err(|e| format!("reading secret {} failed: {e}", var.secret_name))?
                .ok_or_else(|| {
                    format!(
                        "{} names secret {} key {}, which no longer exists",
                        var.name, var.secret_name, var.key
                    )
                })?;
            values.push((command_env_name(&var.name), value));
        }
        Ok(values)
    }

    /// Marks sessions left unfinished by a previous process as `Lost`.
    pub async fn recover(&self) -> Result<usize> {
        let orphans = self.store.unfinished_sessions().await?;
        for s in &orphans {
            let update = StatusUpdate {
                phase: Some(SessionPhase::Lost),
                reason: Some(TerminalReason::RunnerLost),
                // A runner stops its session when the process that launched it goes.
                message: Some(
                    "cliscale up stopped while the session ran, and its runner stopped with it"
                        .into(),
                ),
                ..Default::default()
            };
            self.store.update_status(&s.id, &update).await?;
        }
        Ok(orphans.len())
    }

    /// Watches a session's runner; `None` when this process does not run it.
    pub fn runner_state(&self, session_id: &str) -> Option<watch::Receiver<RunnerState>> {
        self.runners.lock().expect("runners lock").get(session_id).map(|h| h.state.subscribe())
    }

    async fn delete_files_and_rows(&self, id: &str) -> Result<()> {
        let _ = tokio::fs::remove_dir_all(self.config.work_root.join(id)).await;
        self.store.delete_session(id).await?;
        self.runners.lock().expect("runners lock").remove(id);
        Ok(())
    }

    /// Deletes finished sessions whose TTL has passed, with their files, and old token ids.
    pub async fn collect_garbage(&self) -> Result<usize> {
        let expired = self.store.expired_sessions(now()).await?;
        for s in &expired {
            self.delete_files_and_rows(&s.id).await?;
            tracing::info!(session_id = %s.id, "session expired and was deleted");
        }
        self.store.prune_jtis(now()).await?;
        Ok(expired.len())
    }

    /// Runs [`Self::collect_garbage`] every `every` until `shutdown`.
    pub fn spawn_janitor(self: &Arc<Self>, every: Duration, shutdown: &Shutdown) {
        let this = self.clone();
        let stop = shutdown.token();
        shutdown.spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return,
                }
                if let Err(e) = this.collect_garbage().await {
                    tracing::warn!(error = %e, "garbage collection failed");
                }
            }
        });
    }

    /// SIGTERM to every runner, then waits up to the grace period for them to exit.
    pub async fn shutdown(&self) {
        let receivers: Vec<_> = {
            let runners = self.runners.lock().expect("runners lock");
            runners
                .values()
                // What runs, not what was recorded: a runner lingering after its command ended
                // is still a process to stop.
                .filter(|h| !h.state.borrow().exited)
                .map(|h| {
                    h.cancel_requested.store(true, Ordering::Release);
                    terminate(h.pid);
                    h.state.subscribe()
                })
                .collect()
        };
        let all = wait_until_exited(receivers);
        let _ = tokio::time::timeout(self.config.grace_period + Duration::from_secs(2), all).await;
    }

    /// How this session's runner is launched, as user `uid` when it has one. Pure.
    pub fn runner_launch(&self, session: &SessionRecord, uid: Option<u32>) -> RunnerLaunch {
        RunnerLaunch {
            listen: Some("127.0.0.1:0".into()),
            jwks_file: Some(self.config.jwks_path.display().to_string()),
            work_dir: Some(self.config.work_root.join(&session.id).display().to_string()),
            grace_period: Some(self.config.grace_period),
            allow_private_code_urls: self.config.allow_private_code_urls,
            log_format: Some("json".into()),
            events_fd: Some(EVENTS_FD),
            lifeline_fd: Some(LIFELINE_FD),
            command_uid: uid,
            command_gid: uid,
            ..RunnerLaunch::for_session(&session.id, &session.spec)
        }
    }

    /// A free user for a new session, when sessions get their own.
    fn session_uid(&self) -> Result<Option<u32>> {
        let Isolation::Users { first, count } = self.config.isolation else { return Ok(None) };
        let held: std::collections::HashSet<u32> =
            self.runners.lock().expect("runners lock").values().filter_map(|h| h.uid).collect();
        let start = self.next_uid.fetch_add(1, Ordering::Relaxed);
        let uid = pick_uid(first, count, start, &held, uid_has_processes).ok_or_else(|| {
            ApiError::Unavailable(format!("all {count} session users are in use"))
        })?;
        self.next_uid.store(uid.wrapping_sub(first).wrapping_add(1), Ordering::Relaxed);
        Ok(Some(uid))
    }

    fn launch(
        self: Arc<Self>,
        session: SessionRecord,
        secrets: Vec<(String, String)>,
    ) -> Result<()> {
        // Root's until the runner hands it to the session's user.
        private_dir(&self.config.work_root.join(&session.id))?;
        let uid = self.session_uid()?;
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| ApiError::Internal(format!("creating a pipe: {e}")))
        };
        let (events_rx, events_tx) = pipe()?;
        // The runner reads; this process holds the write end until it dies, however it dies.
        let (lifeline_rx, lifeline_tx) = pipe()?;
        let mut cmd = tokio::process::Command::new(&self.config.runner_bin);
        // Everything of the session's own travels by environment, not argv (`ps` shows argv).
        // Nothing of this process' own configuration reaches the runner; with isolation, nothing
        // of its environment but the few variables every program needs.
        match self.config.isolation {
            Isolation::Users { .. } => {
                cmd.env_clear();
                for name in PASSED_ENV {
                    if let Some(value) = std::env::var_os(name) {
                        cmd.env(name, value);
                    }
                }
                if std::env::var_os("PATH").is_none() {
                    cmd.env("PATH", DEFAULT_PATH);
                }
            }
            Isolation::SingleTenant { .. } => {
                for (key, _) in std::env::vars_os() {
                    if key.to_string_lossy().starts_with("CLISCALE_") {
                        cmd.env_remove(key);
                    }
                }
            }
        }
        let mut launch = self.runner_launch(&session, uid);
        if let Some(sink) = &self.config.output {
            launch.output_url = Some(sink.url.clone());
            launch.output_token = Some(sink.keys.output_token(
                &sink.issuer,
                &session.id,
                session.spec.timeout_seconds,
            )?);
        }
        cmd.env("CLISCALE_LOG", "info").envs(launch.env());
        // Under a prefix: the runner gives them to the command, and never uses them itself.
        cmd.envs(session.spec.env.iter().map(|e| (command_env_name(&e.name), &e.value)));
        // Secret values too travel by environment only, and the runner masks them.
        cmd.envs(secrets);
        // The output store keeps the output here: a copy on the runner's stdout (what
        // `kubectl logs` reads in a pod) would only cost the runner a second write per byte.
        cmd.env("CLISCALE_RUNNER_TEE_STDOUT", "false");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let passed = [(events_tx.as_raw_fd(), EVENTS_FD), (lifeline_rx.as_raw_fd(), LIFELINE_FD)];
        // SAFETY: between fork and exec only setsid, fcntl and dup2 run, all async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                // A session of its own: a Ctrl-C at `cliscale up`'s terminal reaches only the
                // server (which stops its runners in order), and where the scheduler groups
                // CPU time by session (autogroup), a runner's PTY work is weighed on its own,
                // not shared with the server's.
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                pass_fds(&passed)
            });
        }
        let spawned = cmd.spawn();
        // The runner holds these ends now; ours must go, or the pipe never reports its end.
        drop(events_tx);
        drop(lifeline_rx);
        let mut child = spawned.map_err(|e| {
            ApiError::Internal(format!("starting {}: {e}", self.config.runner_bin.display()))
        })?;
        let events = tokio::net::unix::pipe::Receiver::from_owned_fd(events_rx)
            .map_err(|e| ApiError::Internal(format!("reading the event pipe: {e}")))?;
        let pid = child.id().unwrap_or_default();
        let (state, _) =
            watch::channel(RunnerState { phase: SessionPhase::Pending, addr: None, exited: false });
        let cancel_requested = Arc::new(AtomicBool::new(false));
        self.runners.lock().expect("runners lock").insert(
            session.id.clone(),
            RunnerHandle {
                pid,
                state: state.clone(),
                cancel_requested: cancel_requested.clone(),
                uid,
            },
        );
        let stderr = child.stderr.take().expect("stderr is piped");
        tokio::spawn(pass_on_logs(session.id.clone(), stderr));
        let this = self.clone();
        let id = session.id.clone();
        tokio::spawn(async move {
            let reported = this.follow_events(&id, events, &state).await;
            let status = child.wait().await;
            drop(lifeline_tx);
            state.send_modify(|s| s.exited = true);
            // Its user is free again once nothing runs as it (checked when next picked).
            if let Some(handle) = this.runners.lock().expect("runners lock").get_mut(&id) {
                handle.uid = None;
            }
            if reported {
                return;
            }
            let (update, how) = match status {
                Ok(status) => {
                    let (phase, reason, exit_code) =
                        outcome_from_exit(status, cancel_requested.load(Ordering::Acquire));
                    let update = StatusUpdate {
                        phase: Some(phase),
                        exit_code,
                        reason: Some(reason),
                        message: Some(format!(
                            "the runner exited ({status}) without reporting how the session ended"
                        )),
                        runner_addr: None,
                    };
                    (update, status.to_string())
                }
                Err(e) => {
                    let update = StatusUpdate {
                        phase: Some(SessionPhase::Lost),
                        reason: Some(TerminalReason::RunnerLost),
                        message: Some(format!("lost track of the runner: {e}")),
                        ..Default::default()
                    };
                    (update, e.to_string())
                }
            };
            tracing::warn!(session_id = %id, runner = %how, "the runner ended without a final event");
            this.record(&id, &state, update).await;
        });
        Ok(())
    }

    /// Follows the runner's events; returns whether it reported the session's end.
    async fn follow_events(
        &self,
        id: &str,
        events: tokio::net::unix::pipe::Receiver,
        state: &watch::Sender<RunnerState>,
    ) -> bool {
        let mut lines = BufReader::new(events).lines();
        let mut reported = false;
        while let Ok(Some(line)) = lines.next_line().await {
            let Some(event) = RunnerEvent::parse(&line) else {
                tracing::warn!(
                    session_id = id,
                    line,
                    "the runner sent an event this version does not know"
                );
                continue;
            };
            reported |= matches!(event, RunnerEvent::Finished { .. });
            self.record(id, state, update_for(event)).await;
        }
        reported
    }

    async fn record(&self, id: &str, state: &watch::Sender<RunnerState>, update: StatusUpdate) {
        state.send_modify(|s| {
            if let Some(phase) = update.phase
                && !s.phase.is_finished()
            {
                s.phase = phase;
            }
            if update.runner_addr.is_some() {
                s.addr = update.runner_addr.clone();
            }
        });
        // A database that is down for a while must not lose how a session ended: retry, with
        // backoff, for about two minutes.
        let mut wait = Duration::from_millis(100);
        for attempt in 1.. {
            match self.store.update_status(id, &update).await {
                Ok(_) => return,
                Err(e) if attempt < 12 => {
                    tracing::warn!(session_id = id, error = %e, ?wait, "could not record the session's status; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(15));
                }
                Err(e) => {
                    tracing::error!(session_id = id, error = %e, "could not record the session's status");
                    return;
                }
            }
        }
    }
}

/// In the child between fork and exec: makes each `from` descriptor available as its `to`
/// across the exec, and only those (the pipes were made close-on-exec). Each is first copied
/// above every target, so a source already sitting on another's target survives; `dup2` then
/// clears close-on-exec on the target, and the close-on-exec copies vanish at the exec.
fn pass_fds(pairs: &[(i32, i32)]) -> std::io::Result<()> {
    const ABOVE_TARGETS: i32 = 64;
    let mut copies = [(-1, -1); 4];
    assert!(pairs.len() <= copies.len(), "at most four descriptors");
    for (slot, &(from, to)) in copies.iter_mut().zip(pairs) {
        // SAFETY: a plain system call on a descriptor; no memory is touched.
        let copy = unsafe { nix::libc::fcntl(from, nix::libc::F_DUPFD_CLOEXEC, ABOVE_TARGETS) };
        if copy < 0 {
            return Err(std::io::Error::last_os_error());
        }
        *slot = (copy, to);
    }
    for &(copy, to) in copies.iter().take(pairs.len()) {
        // SAFETY: as above.
        if unsafe { nix::libc::dup2(copy, to) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes `dir` (and missing parents) with mode 0700, whatever the umask.
pub fn private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |e: std::io::Error| ApiError::Internal(format!("creating {}: {e}", dir.display()));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// Creates (or truncates) `path` with mode 0600, whatever the umask.
pub fn private_file(path: &std::path::Path) -> Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |e: std::io::Error| ApiError::Internal(format!("creating {}: {e}", path.display()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(file)
}

/// Passes the runner's own log lines on to this process' log, tagged with the session. They
/// are for people; nothing is decided from them.
async fn pass_on_logs(session_id: String, stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            tracing::info!(%session_id, runner_log = %line, "runner");
            continue;
        };
        if matches!(v["level"].as_str(), Some("ERROR" | "WARN")) {
            tracing::warn!(%session_id, runner_log = %line, "runner");
        } else {
            tracing::debug!(%session_id, runner_log = %line, "runner");
        }
    }
}

fn terminate(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
}

/// Waits until every receiver's runner process has exited: by then its viewers have had the
/// final status and its connections are closed.
async fn wait_until_exited(receivers: Vec<watch::Receiver<RunnerState>>) {
    for mut rx in receivers {
        let _ = rx.wait_for(|s| s.exited).await;
    }
}

impl Executor for Arc<LocalExecutor> {
    fn runner_alive(&self, session_id: &str) -> bool {
        let runners = self.runners.lock().expect("runners lock");
        runners.get(session_id).is_some_and(|h| !h.state.borrow().exited)
    }

    fn start(&self, session: SessionRecord) -> BoxFuture<'_, Result<()>> {
        let this = self.clone();
        Box::pin(async move {
            match this.secret_values(&session).await {
                Ok(secrets) => this.launch(session, secrets),
                Err(why) => {
                    let update = StatusUpdate {
                        phase: Some(SessionPhase::Failed),
                        reason: Some(TerminalReason::ContainerConfigError),
                        message: Some(why),
                        ..Default::default()
                    };
                    this.store.update_status(&session.id, &update).await.map(|_| ())
                }
            }
        })
    }

    fn discard<'a>(&'a self, _: &'a Store, session_id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.delete_files_and_rows(session_id))
    }

    fn cancel(&self, session_id: &str) -> BoxFuture<'_, Result<()>> {
        let id = session_id.to_owned();
        Box::pin(async move {
            let pid = {
                let runners = self.runners.lock().expect("runners lock");
                runners.get(&id).map(|h| {
                    h.cancel_requested.store(true, Ordering::Release);
                    h.pid
                })
            };
            match pid {
                Some(pid) => terminate(pid),
                // Not ours (or already gone): nothing runs, so record the end directly.
                None => {
                    let update = StatusUpdate {
                        phase: Some(SessionPhase::Cancelled),
                        reason: Some(TerminalReason::Cancelled),
                        message: Some("cancelled; no runner was running".into()),
                        ..Default::default()
                    };
                    self.store.update_status(&id, &update).await?;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    #[test]
    fn runner_exit_codes_map_to_typed_reasons() {
        use SessionPhase as P;
        use TerminalReason as R;
        let exited = |code: i32| ExitStatus::from_raw(code << 8);
        let cases = [
            (exited(0), false, P::Succeeded, R::Exited),
            (exited(3), false, P::Failed, R::Exited),
            (exited(120), false, P::Failed, R::ConfigInvalid),
            (exited(121), false, P::Failed, R::FetchFailed),
            (exited(122), false, P::Failed, R::ChecksumMismatch),
            (exited(123), false, P::Failed, R::InstallFailed),
            (exited(124), false, P::TimedOut, R::DeadlineExceeded),
            (exited(125), false, P::Failed, R::SpawnFailed),
            (ExitStatus::from_raw(9), false, P::Lost, R::RunnerLost),
            (exited(143), true, P::Cancelled, R::Cancelled),
        ];
        for (status, cancelled, phase, reason) in cases {
            let (p, r, _) = outcome_from_exit(status, cancelled);
            assert_eq!((p, r), (phase, reason), "{status:?} cancelled={cancelled}");
        }
    }

    #[test]
    fn descriptors_are_passed_whatever_numbers_they_have() {
        use std::os::fd::AsRawFd;
        let cloexec =
            |fd: i32| unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } & nix::libc::FD_CLOEXEC;
        let same = |a: i32, b: i32| {
            use std::os::unix::fs::MetadataExt;
            let ino = |fd: i32| std::fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino();
            ino(a) == ino(b)
        };
        let (r1, w1) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (r2, _w2) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (a, b) = (w1.as_raw_fd(), r2.as_raw_fd());
        // Crossed over: each source sits on the other's target, and one is already its own.
        pass_fds(&[(a, b), (b, a)]).unwrap();
        assert_eq!((cloexec(a), cloexec(b)), (0, 0));
        assert!(
            same(b, r1.as_raw_fd()),
            "the first pipe's write end is now at the second's number"
        );
        let (r3, w3) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let target = 900;
        pass_fds(&[(w3.as_raw_fd(), target)]).unwrap();
        assert_eq!(cloexec(target), 0);
        assert!(same(target, r3.as_raw_fd()));
        assert_ne!(cloexec(w3.as_raw_fd()), 0);
        unsafe { nix::libc::close(target) };
    }

    #[test]
    fn session_users_are_taken_in_turn_and_never_shared() {
        let held: std::collections::HashSet<u32> = [101, 102].into();
        assert_eq!(pick_uid(100, 4, 0, &held, |_| false), Some(100));
        assert_eq!(pick_uid(100, 4, 1, &held, |_| false), Some(103), "held users are skipped");
        assert_eq!(pick_uid(100, 4, 1, &held, |u| u == 103), Some(100), "and wraps around");
        assert_eq!(pick_uid(100, 4, 5, &held, |u| u == 100 || u == 103), None);
    }

    #[test]
    fn events_become_store_updates() {
        let listening = update_for(RunnerEvent::Listening { addr: "127.0.0.1:9".into() });
        assert_eq!(listening.phase, Some(SessionPhase::Starting));
        assert_eq!(listening.runner_addr.as_deref(), Some("127.0.0.1:9"));
        assert_eq!(update_for(RunnerEvent::Started { pid: 7 }).phase, Some(SessionPhase::Running));
        let finished = update_for(RunnerEvent::finished(
            cliscale_core::protocol::SessionStatus {
                phase: SessionPhase::Failed,
                exit_code: Some(137),
                reason: Some(TerminalReason::Signaled),
                message: Some("the command was killed by signal 9".into()),
            },
            None,
        ));
        assert_eq!(
            (finished.phase, finished.reason, finished.exit_code),
            (Some(SessionPhase::Failed), Some(TerminalReason::Signaled), Some(137))
        );
        assert_eq!(finished.message.as_deref(), Some("the command was killed by signal 9"));
    }
}
