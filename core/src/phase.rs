//! The session lifecycle shared by the runner, the local executor and the operator.

use serde::{Deserialize, Serialize};

/// Where a session is in its life (docs/architecture.md, "How a session travels").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SessionPhase {
    /// Accepted, no runner yet.
    Pending,
    /// Runner scheduled: fetching code or installing.
    Starting,
    /// The command runs in its PTY and the terminal is reachable.
    Running,
    /// The command exited 0.
    Succeeded,
    /// The command exited non-zero or was killed by a signal, or the runner could not start it.
    Failed,
    /// The session's deadline passed.
    TimedOut,
    /// A user deleted or cancelled the session.
    Cancelled,
    /// The runner vanished (evicted, OOM-killed, node lost).
    Lost,
}

impl SessionPhase {
    pub const ALL: [SessionPhase; 8] = [
        Self::Pending,
        Self::Starting,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::TimedOut,
        Self::Cancelled,
        Self::Lost,
    ];

    /// True once the session can no longer change phase.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::TimedOut | Self::Cancelled | Self::Lost
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Starting => "Starting",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::TimedOut => "TimedOut",
            Self::Cancelled => "Cancelled",
            Self::Lost => "Lost",
        }
    }
}

impl std::fmt::Display for SessionPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a session finished. Typed so that clients can branch on it; the human detail goes in a
/// separate message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TerminalReason {
    /// The command exited by itself; see `exitCode`.
    Exited,
    /// The command was killed by a signal it did not ask for.
    Signaled,
    /// The session's deadline passed and the command was stopped.
    DeadlineExceeded,
    /// A user cancelled the session (the runner got SIGTERM or SIGINT).
    Cancelled,
    /// The runner's configuration was invalid.
    ConfigInvalid,
    /// The code could not be downloaded or unpacked.
    FetchFailed,
    /// The downloaded archive did not match the expected SHA-256.
    ChecksumMismatch,
    /// The install command failed.
    InstallFailed,
    /// The command could not be started in a PTY.
    SpawnFailed,
    /// The container was killed for exceeding its memory limit.
    OomKilled,
    /// The pod was evicted.
    Evicted,
    /// The runner disappeared without reporting an end.
    RunnerLost,
    /// The image could not be pulled (while waiting: the session is not failed for it).
    ImagePullFailed,
    /// No node can take the runner pod (while waiting).
    Unschedulable,
    /// The session's resource was deleted by a user.
    DeletedByUser,
    /// The runner container could not be made: a missing Secret, ConfigMap or key, or a bad
    /// container setting (while waiting, then fatal at the start deadline).
    ContainerConfigError,
    /// A volume of the runner pod could not be mounted (fatal at the start deadline).
    MountFailed,
    /// The cluster refused the Job or its pod: admission, quota or validation.
    JobRejected,
    /// The runner pod was preempted by a higher-priority pod.
    Preempted,
    /// The runner's node was lost or shut down.
    NodeLost,
    /// The session's Job was deleted by someone other than the operator. The command is not
    /// run again.
    JobDeleted,
    /// The runner did not start before the start deadline.
    StartDeadlineExceeded,
}

impl TerminalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exited => "Exited",
            Self::Signaled => "Signaled",
            Self::DeadlineExceeded => "DeadlineExceeded",
            Self::Cancelled => "Cancelled",
            Self::ConfigInvalid => "ConfigInvalid",
            Self::FetchFailed => "FetchFailed",
            Self::ChecksumMismatch => "ChecksumMismatch",
            Self::InstallFailed => "InstallFailed",
            Self::SpawnFailed => "SpawnFailed",
            Self::OomKilled => "OomKilled",
            Self::Evicted => "Evicted",
            Self::RunnerLost => "RunnerLost",
            Self::ImagePullFailed => "ImagePullFailed",
            Self::Unschedulable => "Unschedulable",
            Self::DeletedByUser => "DeletedByUser",
            Self::ContainerConfigError => "ContainerConfigError",
            Self::MountFailed => "MountFailed",
            Self::JobRejected => "JobRejected",
            Self::Preempted => "Preempted",
            Self::NodeLost => "NodeLost",
            Self::JobDeleted => "JobDeleted",
            Self::StartDeadlineExceeded => "StartDeadlineExceeded",
        }
    }
}

/// The phase a session ends in for a given reason and exit code: a pure decision shared by the
/// runner and the control plane.
pub fn finished_phase(reason: TerminalReason, exit_code: Option<i32>) -> SessionPhase {
    match reason {
        TerminalReason::Exited if exit_code == Some(0) => SessionPhase::Succeeded,
        TerminalReason::DeadlineExceeded => SessionPhase::TimedOut,
        TerminalReason::Cancelled | TerminalReason::DeletedByUser => SessionPhase::Cancelled,
        TerminalReason::OomKilled
        | TerminalReason::Evicted
        | TerminalReason::RunnerLost
        | TerminalReason::Preempted
        | TerminalReason::NodeLost
        | TerminalReason::JobDeleted => SessionPhase::Lost,
        _ => SessionPhase::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_zero_succeeds_and_everything_else_maps_to_its_phase() {
        assert_eq!(finished_phase(TerminalReason::Exited, Some(0)), SessionPhase::Succeeded);
        assert_eq!(finished_phase(TerminalReason::Exited, Some(3)), SessionPhase::Failed);
        assert_eq!(finished_phase(TerminalReason::Signaled, None), SessionPhase::Failed);
        assert_eq!(
            finished_phase(TerminalReason::DeadlineExceeded, Some(124)),
            SessionPhase::TimedOut
        );
        assert_eq!(finished_phase(TerminalReason::Cancelled, None), SessionPhase::Cancelled);
        assert_eq!(finished_phase(TerminalReason::OomKilled, None), SessionPhase::Lost);
        assert_eq!(finished_phase(TerminalReason::FetchFailed, None), SessionPhase::Failed);
        assert_eq!(finished_phase(TerminalReason::JobDeleted, None), SessionPhase::Lost);
        assert_eq!(finished_phase(TerminalReason::NodeLost, None), SessionPhase::Lost);
        assert_eq!(finished_phase(TerminalReason::JobRejected, None), SessionPhase::Failed);
        assert_eq!(
            finished_phase(TerminalReason::StartDeadlineExceeded, None),
            SessionPhase::Failed
        );
    }

    #[test]
    fn only_end_states_are_finished() {
        assert!(!SessionPhase::Running.is_finished());
        assert!(!SessionPhase::Starting.is_finished());
        assert!(SessionPhase::Lost.is_finished());
        assert!(SessionPhase::Succeeded.is_finished());
    }
}
