//! The runner's one error type, and the process exit codes it maps to.

use std::net::IpAddr;

use cliscale_core::TerminalReason;

/// Exit codes for the runner's own failures (docs/runner.md). Any other exit code is the
/// command's own.
pub use cliscale_core::exit as exit_code;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("could not resolve {host}: {message}")]
    Resolve { host: String, message: String },
    #[error("refusing to fetch from {host}: it resolves to {ip}, a {range} address")]
    BlockedAddress { host: String, ip: IpAddr, range: &'static str },
    #[error("download of {url} failed: {message}")]
    Download { url: String, message: String },
    #[error("download of {url} exceeds the limit of {limit} bytes")]
    DownloadTooLarge { url: String, limit: u64 },
    #[error("checksum mismatch for {url}: expected sha256 {expected}, got {actual}")]
    ChecksumMismatch { url: String, expected: String, actual: String },
    #[error("archive rejected: {0}")]
    UnsafeArchive(String),
    #[error("could not unpack archive: {0}")]
    Extract(String),
    #[error("git {action} failed: {message}")]
    Git { action: &'static str, message: String },
    #[error("no branch or tag of {repo} matches the start of {path:?}")]
    UnknownRef { repo: String, path: String },
    #[error("install command failed: {0}")]
    Install(String),
    #[error("could not start the command in a PTY: {0}")]
    Spawn(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl RunnerError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    /// The typed reason reported in the session's final status.
    pub fn reason(&self) -> TerminalReason {
        match self {
            Self::Config(_) => TerminalReason::ConfigInvalid,
            Self::ChecksumMismatch { .. } => TerminalReason::ChecksumMismatch,
            Self::Install(_) => TerminalReason::InstallFailed,
            Self::Spawn(_) | Self::Io { .. } => TerminalReason::SpawnFailed,
            Self::Resolve { .. }
            | Self::BlockedAddress { .. }
            | Self::Download { .. }
            | Self::DownloadTooLarge { .. }
            | Self::UnsafeArchive(_)
            | Self::Extract(_)
            | Self::Git { .. }
            | Self::UnknownRef { .. } => TerminalReason::FetchFailed,
        }
    }

    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        exit_code::code_of(self.reason())
    }
}

pub type Result<T, E = RunnerError> = std::result::Result<T, E>;
