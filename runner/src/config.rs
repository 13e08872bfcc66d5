//! The runner's configuration: flags, each also settable by an environment variable, checked
//! once at start into a [`RunnerConfig`]. docs/runner.md lists them all.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use url::Url;

use crate::error::{Result, RunnerError};
use crate::net_guard::AddressPolicy;
use cliscale_core::launch;
use cliscale_core::source::{CodeSource, parse_checksum, parse_code_url};

use crate::source::{ExtractLimits, FetchConfig};

/// Default in-memory window: 100k lines of typical (~160-byte, colourful) output.
pub const DEFAULT_LOG_WINDOW_BYTES: usize = 16 * 1024 * 1024;

pub use cliscale_core::launch::RUNNER_ENV_PREFIX;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "cliscale-runner",
    version,
    about = "Hosts one cliscale session's command in a PTY"
)]
pub struct RunnerArgs {
    /// The session this runner serves; tokens must name it.
    #[arg(long, env = launch::SESSION_ID)]
    pub session_id: String,
    /// The command line, run by bash (or sh) -c.
    #[arg(long, env = launch::COMMAND)]
    pub command: String,
    /// Where the code comes from: GitHub tree URL, .zip, .tar.gz/.tgz or git URL.
    #[arg(long, env = launch::CODE_URL)]
    pub code_url: Option<String>,
    /// Expected SHA-256 (hex) of the downloaded archive.
    #[arg(long, env = launch::CODE_CHECKSUM_SHA256)]
    pub code_checksum_sha256: Option<String>,
    /// Run before the command, in the code directory, with output in the session log.
    #[arg(long, env = launch::INSTALL_CMD)]
    pub install_cmd: Option<String>,
    /// Given to the command as CLISCALE_PROMPT.
    #[arg(long, env = launch::PROMPT)]
    pub prompt: Option<String>,
    /// Directory the code is fetched into (must be empty or absent).
    #[arg(long, env = launch::WORK_DIR)]
    pub work_dir: Option<PathBuf>,
    /// Address of the WebSocket, SSE, health and metrics server.
    #[arg(long, env = launch::LISTEN, default_value = "0.0.0.0:7681")]
    pub listen: SocketAddr,
    /// JWKS file holding the public keys session tokens are checked against.
    #[arg(long, env = launch::JWKS_FILE)]
    pub jwks_file: PathBuf,
    /// Accepted token audiences.
    #[arg(long, env = "CLISCALE_RUNNER_TOKEN_AUDIENCE", value_delimiter = ',',
          default_values_t = [cliscale_core::token::TERMINAL_AUDIENCE.to_string(),
                              cliscale_core::token::RUNNER_AUDIENCE.to_string()])]
    pub token_audience: Vec<String>,
    /// Required token issuer, if any.
    #[arg(long, env = "CLISCALE_RUNNER_TOKEN_ISSUER")]
    pub token_issuer: Option<String>,
    /// TERM given to the command.
    #[arg(long, env = "CLISCALE_RUNNER_TERM", default_value = launch::DEFAULT_TERM)]
    pub term: String,
    /// Initial terminal width.
    #[arg(long, env = launch::COLS, default_value_t = 80)]
    pub cols: u16,
    /// Initial terminal height.
    #[arg(long, env = launch::ROWS, default_value_t = 24)]
    pub rows: u16,
    /// Bytes of recent output kept in memory for late or reconnecting clients.
    #[arg(long, env = "CLISCALE_RUNNER_LOG_WINDOW_BYTES", default_value_t = DEFAULT_LOG_WINDOW_BYTES)]
    pub log_window_bytes: usize,
    /// Copy the output log to the runner's stdout (for `kubectl logs`).
    #[arg(long, env = "CLISCALE_RUNNER_TEE_STDOUT", default_value_t = true, action = clap::ArgAction::Set)]
    pub tee_stdout: bool,
    /// How long to keep serving after the command exits, so viewers see the end.
    #[arg(long, env = launch::LINGER, default_value = "30s", value_parser = humantime::parse_duration)]
    pub linger: Duration,
    /// Between SIGTERM and SIGKILL when stopping the command.
    #[arg(long, env = launch::GRACE_PERIOD, default_value = "10s", value_parser = humantime::parse_duration)]
    pub grace_period: Duration,
    /// Stop the command after this long (exit code 124).
    #[arg(long, env = launch::TIMEOUT, value_parser = cliscale_core::args::positive_duration)]
    pub timeout: Option<Duration>,
    /// Time limit of the install command.
    #[arg(long, env = "CLISCALE_RUNNER_INSTALL_TIMEOUT", default_value = "15m", value_parser = cliscale_core::args::positive_duration)]
    pub install_timeout: Duration,
    /// Largest download accepted.
    #[arg(long, env = "CLISCALE_RUNNER_DOWNLOAD_MAX_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub download_max_bytes: u64,
    /// Time limit of a download or clone.
    #[arg(long, env = "CLISCALE_RUNNER_DOWNLOAD_TIMEOUT", default_value = "5m", value_parser = cliscale_core::args::positive_duration)]
    pub download_timeout: Duration,
    /// Largest total size an archive may unpack to.
    #[arg(long, env = "CLISCALE_RUNNER_EXTRACT_MAX_BYTES", default_value_t = 2 * 1024 * 1024 * 1024)]
    pub extract_max_bytes: u64,
    /// Most entries an archive may hold.
    #[arg(long, env = "CLISCALE_RUNNER_EXTRACT_MAX_ENTRIES", default_value_t = 200_000)]
    pub extract_max_entries: u64,
    /// Allow fetching from loopback, private, link-local and other special addresses.
    #[arg(long, env = launch::ALLOW_PRIVATE_CODE_URLS, default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_private_code_urls: bool,
    /// Special ranges allowed anyway (comma-separated CIDRs), e.g. an internal mirror.
    #[arg(long, env = "CLISCALE_RUNNER_ALLOW_CIDRS", value_delimiter = ',')]
    pub allow_cidrs: Vec<ipnet::IpNet>,
    /// Base URL of GitHub's archive endpoint.
    #[arg(
        long,
        env = "CLISCALE_RUNNER_GITHUB_ARCHIVE_BASE",
        default_value = "https://codeload.github.com"
    )]
    pub github_archive_base: Url,
    /// Base URL of GitHub's git endpoint.
    #[arg(long, env = "CLISCALE_RUNNER_GITHUB_GIT_BASE", default_value = "https://github.com")]
    pub github_git_base: Url,
    /// Interval of WebSocket pings; a client silent for three intervals is dropped.
    #[arg(long, env = "CLISCALE_RUNNER_PING_INTERVAL", default_value = "20s", value_parser = cliscale_core::args::positive_duration)]
    pub ping_interval: Duration,
    /// A client that cannot take a frame for this long is dropped.
    #[arg(long, env = "CLISCALE_RUNNER_CLIENT_STALL_TIMEOUT", default_value = "30s", value_parser = cliscale_core::args::positive_duration)]
    pub client_stall_timeout: Duration,
    /// A pipe's write end (inherited file descriptor) to report the session's events on, one
    /// JSON line each (docs/runner.md, "Events"). Never passed on to the command.
    #[arg(long, env = launch::EVENTS_FD)]
    pub events_fd: Option<i32>,
    /// A file to write the final event to: on Kubernetes the container's termination message,
    /// which the kubelet copies into the pod's status for the operator.
    #[arg(long, env = launch::TERMINATION_LOG)]
    pub termination_log: Option<PathBuf>,
    /// The key that seals the final event in the termination message, so the operator can tell
    /// it from one the command wrote (base64url, 32 bytes).
    #[arg(long, env = launch::STATUS_KEY, hide_env_values = true)]
    pub status_key: Option<String>,
    /// Base URL of the API whose output store keeps the session's log (unset: not stored).
    #[arg(long, env = launch::OUTPUT_URL)]
    pub output_url: Option<Url>,
    /// The credential that appends to this session's stored output.
    #[arg(long, env = launch::OUTPUT_TOKEN, hide_env_values = true)]
    pub output_token: Option<String>,
    /// Most bytes per append to the output store.
    #[arg(long, env = "CLISCALE_RUNNER_OUTPUT_BATCH_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub output_batch_bytes: usize,
    /// How long output gathers before an append to the output store.
    #[arg(long, env = "CLISCALE_RUNNER_OUTPUT_INTERVAL", default_value = "25ms", value_parser = humantime::parse_duration)]
    pub output_interval: Duration,
    /// Names of environment variables whose values are masked in the output.
    #[arg(long, env = launch::MASK_ENV, value_delimiter = ',')]
    pub mask_env: Vec<String>,
    /// Log format of the runner's own logs (on stderr): json or text.
    #[arg(long, env = launch::LOG_FORMAT, default_value = "json")]
    pub log_format: String,
    /// Run the install step and the command as this user (the runner must run as root). The
    /// work dir becomes theirs; the runner's own files, memory and credentials stay out of
    /// their reach (docs/security.md).
    #[arg(long, env = launch::COMMAND_UID, requires = "command_gid")]
    pub command_uid: Option<u32>,
    /// The group the install step and the command run as; goes with --command-uid.
    #[arg(long, env = launch::COMMAND_GID, requires = "command_uid")]
    pub command_gid: Option<u32>,
    /// A pipe's read end (inherited descriptor) held open by whoever launched the runner: when
    /// it closes, the launcher is gone and the session stops as if cancelled.
    #[arg(long, env = launch::LIFELINE_FD)]
    pub lifeline_fd: Option<i32>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub args: RunnerArgs,
    pub source: Option<CodeSource>,
    pub fetch: FetchConfig,
    pub work_dir: PathBuf,
    pub jwks: String,
}

impl RunnerConfig {
    /// Checks the arguments; every problem is a [`RunnerError::Config`] naming the setting.
    pub fn from_args(args: RunnerArgs) -> Result<Self> {
        let bad = |m: String| Err(RunnerError::Config(m));
        if args.session_id.is_empty()
            || args.session_id.len() > 128
            || !args.session_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("session id must be 1-128 characters of [A-Za-z0-9_-]".into());
        }
        if args.command.trim().is_empty() {
            return bad("command must not be empty".into());
        }
        if let Err(e) = cliscale_core::protocol::validate_size(args.cols, args.rows) {
            return bad(format!("terminal size: {e}"));
        }
        if args.log_window_bytes < 64 * 1024 {
            return bad("log window must be at least 65536 bytes".into());
        }
        if args.output_url.is_some() != args.output_token.is_some() {
            return bad("the output URL and the output token go together".into());
        }
        if !(4096..=cliscale_core::output::MAX_APPEND_BYTES).contains(&args.output_batch_bytes) {
            return bad(format!(
                "output batch must be 4096 to {} bytes",
                cliscale_core::output::MAX_APPEND_BYTES
            ));
        }
        if args.command_uid.is_some() && !nix::unistd::geteuid().is_root() {
            return bad("--command-uid needs the runner to run as root".into());
        }
        if args.command_uid == Some(0) || args.command_gid == Some(0) {
            return bad("--command-uid and --command-gid must not be root's".into());
        }
        if !matches!(args.log_format.as_str(), "json" | "text") {
            return bad(format!("log format {:?} is not json or text", args.log_format));
        }
        let source = match args.code_url.as_deref().filter(|s| !s.trim().is_empty()) {
            Some(url) => Some(parse_code_url(url).map_err(|e| RunnerError::Config(e.to_string()))?),
            None => None,
        };
        let checksum = args
            .code_checksum_sha256
            .as_deref()
            .map(parse_checksum)
            .transpose()
            .map_err(|e| RunnerError::Config(e.to_string()))?;
        if checksum.is_some() && source.is_none() {
            return bad("a code checksum was given without a code URL".into());
        }
        let jwks = std::fs::read_to_string(&args.jwks_file).map_err(|e| {
            RunnerError::Config(format!("reading JWKS file {}: {e}", args.jwks_file.display()))
        })?;
        let work_dir = args
            .work_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("cliscale-{}", args.session_id)));
        let fetch = FetchConfig {
            policy: Arc::new(AddressPolicy {
                allow_all: args.allow_private_code_urls,
                allowed: args.allow_cidrs.clone(),
            }),
            checksum_sha256: checksum,
            max_download_bytes: args.download_max_bytes,
            download_timeout: args.download_timeout,
            limits: ExtractLimits {
                max_bytes: args.extract_max_bytes,
                max_entries: args.extract_max_entries,
            },
            github_archive_base: args.github_archive_base.clone(),
            github_git_base: args.github_git_base.clone(),
        };
        Ok(Self { args, source, fetch, work_dir, jwks })
    }
}
