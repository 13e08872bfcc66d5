//! The local executor: each session's `cliscale-runner` as a child process of `cliscale up`.
//!
//! It learns what happens from the runner's structured log lines on stderr ("listening",
//! "command started", "session finished") and from the process' exit, and writes that into the
//! store. Sessions found unfinished at start-up belonged to a previous process: they are `Lost`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cliscale_core::{SessionPhase, TerminalReason};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

use crate::error::{ApiError, Result};
use crate::executor::{BoxFuture, Executor};
use crate::model::{SessionRecord, phase_from_str, reason_from_str};
use crate::store::{StatusUpdate, Store, now};

#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub runner_bin: PathBuf,
    /// One directory per session: its work dir and its full output log.
    pub sessions_dir: PathBuf,
    /// JWKS the runners check tokens against.
    pub jwks_path: PathBuf,
    pub linger: Duration,
    pub grace_period: Duration,
    /// Let sessions fetch code from loopback and private addresses (a laptop's own servers).
    pub allow_private_code_urls: bool,
}

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
}

pub struct LocalExecutor {
    config: LocalConfig,
    store: Store,
    runners: Mutex<HashMap<String, RunnerHandle>>,
}

/// How a runner ended when it did not say so itself: decided from its exit alone. Pure.
pub fn outcome_from_exit(
    code: Option<i32>,
    cancel_requested: bool,
) -> (SessionPhase, TerminalReason, Option<i64>) {
    use cliscale_runner::exit_code as ec;
    let reason = match code {
        _ if cancel_requested => TerminalReason::Cancelled,
        None => TerminalReason::RunnerLost,
        Some(ec::CONFIG_INVALID) => TerminalReason::ConfigInvalid,
        Some(ec::FETCH_FAILED) => TerminalReason::FetchFailed,
        Some(ec::CHECKSUM_MISMATCH) => TerminalReason::ChecksumMismatch,
        Some(ec::INSTALL_FAILED) => TerminalReason::InstallFailed,
        Some(ec::DEADLINE_EXCEEDED) => TerminalReason::DeadlineExceeded,
        Some(ec::RUNNER_FAILED) => TerminalReason::SpawnFailed,
        Some(_) => TerminalReason::Exited,
    };
    let phase = cliscale_core::phase::finished_phase(reason, code);
    (phase, reason, code.map(i64::from))
}

impl LocalExecutor {
    pub fn new(config: LocalConfig, store: Store) -> Arc<Self> {
        Arc::new(Self { config, store, runners: Mutex::new(HashMap::new()) })
    }

    /// Marks sessions left unfinished by a previous process as `Lost`.
    pub async fn recover(&self) -> Result<usize> {
        let orphans = self.store.unfinished_sessions().await?;
        for s in &orphans {
            let update = StatusUpdate {
                phase: Some(SessionPhase::Lost),
                reason: Some(TerminalReason::RunnerLost),
                message: Some("the runner was gone when cliscale restarted".into()),
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

    /// Deletes finished sessions whose TTL has passed, with their files, and old token ids.
    pub async fn collect_garbage(&self) -> Result<usize> {
        let expired = self.store.expired_sessions(now()).await?;
        for s in &expired {
            let _ = tokio::fs::remove_dir_all(self.config.sessions_dir.join(&s.id)).await;
            self.store.delete_session(&s.id).await?;
            self.runners.lock().expect("runners lock").remove(&s.id);
            tracing::info!(session_id = %s.id, "session expired and was deleted");
        }
        self.store.prune_jtis(now()).await?;
        Ok(expired.len())
    }

    /// Runs [`Self::collect_garbage`] every `every` until the process ends.
    pub fn spawn_janitor(self: &Arc<Self>, every: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = this.collect_garbage().await {
                    tracing::warn!(error = %e, "garbage collection failed");
                }
            }
        });
    }

    /// SIGTERM to every runner, then waits up to the grace period for them to report.
    pub async fn shutdown(&self) {
        let receivers: Vec<_> = {
            let runners = self.runners.lock().expect("runners lock");
            runners
                .values()
                .filter(|h| !h.state.borrow().phase.is_finished())
                .map(|h| {
                    h.cancel_requested.store(true, Ordering::Release);
                    terminate(h.pid);
                    h.state.subscribe()
                })
                .collect()
        };
        let all = wait_until_finished(receivers);
        let _ = tokio::time::timeout(self.config.grace_period + Duration::from_secs(2), all).await;
    }

    fn launch(self: Arc<Self>, session: SessionRecord) -> Result<()> {
        let dir = self.config.sessions_dir.join(&session.id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::Internal(format!("creating {}: {e}", dir.display())))?;
        let output = std::fs::File::create(dir.join("output.log"))
            .map_err(|e| ApiError::Internal(format!("creating output log: {e}")))?;
        let spec = &session.spec;
        let mut cmd = tokio::process::Command::new(&self.config.runner_bin);
        cmd.args(["--session-id", &session.id, "--listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--jwks-file")
            .arg(&self.config.jwks_path)
            .arg("--work-dir")
            .arg(dir.join("work"))
            .args(["--cols", &spec.cols.to_string(), "--rows", &spec.rows.to_string()])
            .args(["--linger", &format!("{}ms", self.config.linger.as_millis())])
            .args(["--grace-period", &format!("{}ms", self.config.grace_period.as_millis())]);
        if let Some(t) = spec.timeout_seconds {
            cmd.args(["--timeout", &format!("{t}s")]);
        }
        if self.config.allow_private_code_urls {
            cmd.args(["--allow-private-addresses", "true"]);
        }
        // Everything of the session's own travels by environment, not argv (`ps` shows argv).
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CLISCALE_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("CLISCALE_LOG", "info").env("CLISCALE_RUNNER_COMMAND", &spec.command);
        let optional = [
            ("CLISCALE_RUNNER_CODE_URL", &spec.code_url),
            ("CLISCALE_RUNNER_CODE_CHECKSUM_SHA256", &spec.code_checksum_sha256),
            ("CLISCALE_RUNNER_INSTALL_CMD", &spec.install_cmd),
            ("CLISCALE_RUNNER_PROMPT", &spec.prompt),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                cmd.env(key, value);
            }
        }
        cmd.envs(&spec.env).stdin(Stdio::null()).stdout(Stdio::from(output)).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            ApiError::Internal(format!("starting {}: {e}", self.config.runner_bin.display()))
        })?;
        let pid = child.id().unwrap_or_default();
        let (state, _) =
            watch::channel(RunnerState { phase: SessionPhase::Pending, addr: None, exited: false });
        let cancel_requested = Arc::new(AtomicBool::new(false));
        self.runners.lock().expect("runners lock").insert(
            session.id.clone(),
            RunnerHandle { pid, state: state.clone(), cancel_requested: cancel_requested.clone() },
        );
        let stderr = child.stderr.take().expect("stderr is piped");
        let this = self.clone();
        let id = session.id.clone();
        tokio::spawn(async move {
            let reported = this.follow_log(&id, stderr, &state).await;
            let status = child.wait().await.ok();
            state.send_modify(|s| s.exited = true);
            if !reported {
                let (phase, reason, exit_code) = outcome_from_exit(
                    status.and_then(|s| s.code()),
                    cancel_requested.load(Ordering::Acquire),
                );
                let message = format!(
                    "the runner exited ({})",
                    status.map(|s| s.to_string()).unwrap_or_default()
                );
                this.record(
                    &id,
                    &state,
                    StatusUpdate {
                        phase: Some(phase),
                        exit_code,
                        reason: Some(reason),
                        message: Some(message),
                        runner_addr: None,
                    },
                )
                .await;
            }
        });
        Ok(())
    }

    /// Follows the runner's log lines; returns whether it reported the session's end.
    async fn follow_log(
        &self,
        id: &str,
        stderr: tokio::process::ChildStderr,
        state: &watch::Sender<RunnerState>,
    ) -> bool {
        let mut lines = BufReader::new(stderr).lines();
        let mut reported = false;
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            let update = match v["message"].as_str() {
                Some("listening") => StatusUpdate {
                    phase: Some(SessionPhase::Starting),
                    runner_addr: v["addr"].as_str().map(String::from),
                    ..Default::default()
                },
                Some("command started") => {
                    StatusUpdate { phase: Some(SessionPhase::Running), ..Default::default() }
                }
                Some("session finished") => {
                    reported = true;
                    StatusUpdate {
                        phase: v["phase"].as_str().and_then(phase_from_str),
                        exit_code: v["exit_code"].as_i64(),
                        reason: v["reason"].as_str().and_then(reason_from_str),
                        message: v["message"].as_str().map(String::from),
                        runner_addr: None,
                    }
                }
                _ => {
                    if v["level"] == "ERROR" {
                        tracing::warn!(session_id = id, runner_log = %line, "runner error");
                    }
                    continue;
                }
            };
            self.record(id, state, update).await;
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
        if let Err(e) = self.store.update_status(id, &update).await {
            tracing::error!(session_id = id, error = %e, "could not record the session's status");
        }
    }
}

fn terminate(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
}

/// Waits until every receiver's runner has finished.
async fn wait_until_finished(receivers: Vec<watch::Receiver<RunnerState>>) {
    for mut rx in receivers {
        let _ = rx.wait_for(|s| s.phase.is_finished()).await;
    }
}

impl Executor for Arc<LocalExecutor> {
    fn start(&self, session: SessionRecord) -> BoxFuture<'_, Result<()>> {
        let this = self.clone();
        Box::pin(async move { this.launch(session) })
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

    #[test]
    fn runner_exit_codes_map_to_typed_reasons() {
        use SessionPhase as P;
        use TerminalReason as R;
        let cases = [
            (Some(0), false, P::Succeeded, R::Exited),
            (Some(3), false, P::Failed, R::Exited),
            (Some(120), false, P::Failed, R::ConfigInvalid),
            (Some(121), false, P::Failed, R::FetchFailed),
            (Some(122), false, P::Failed, R::ChecksumMismatch),
            (Some(123), false, P::Failed, R::InstallFailed),
            (Some(124), false, P::TimedOut, R::DeadlineExceeded),
            (Some(125), false, P::Failed, R::SpawnFailed),
            (None, false, P::Lost, R::RunnerLost),
            (Some(143), true, P::Cancelled, R::Cancelled),
        ];
        for (code, cancelled, phase, reason) in cases {
            let (p, r, _) = outcome_from_exit(code, cancelled);
            assert_eq!((p, r), (phase, reason), "{code:?} cancelled={cancelled}");
        }
    }
}
