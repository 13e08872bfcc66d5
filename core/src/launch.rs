//! How a runner is launched: one type written by whoever starts runners (the local executor,
//! the operator's desired Job) and read by the runner, whose flags take these same variables.
//! Everything travels as environment, never argv: `ps` shows argv to every local user.

use std::time::Duration;

use crate::spec::SessionSpec;

/// Prefix of the runner's own variables; the command and the install step never inherit them.
pub const RUNNER_ENV_PREFIX: &str = "CLISCALE_RUNNER_";

pub const SESSION_ID: &str = "CLISCALE_SESSION_ID";
pub const COMMAND: &str = "CLISCALE_RUNNER_COMMAND";
pub const CODE_URL: &str = "CLISCALE_RUNNER_CODE_URL";
pub const CODE_CHECKSUM_SHA256: &str = "CLISCALE_RUNNER_CODE_CHECKSUM_SHA256";
pub const INSTALL_CMD: &str = "CLISCALE_RUNNER_INSTALL_CMD";
pub const PROMPT: &str = "CLISCALE_RUNNER_PROMPT";
pub const WORK_DIR: &str = "CLISCALE_RUNNER_WORK_DIR";
pub const LISTEN: &str = "CLISCALE_RUNNER_LISTEN";
pub const JWKS_FILE: &str = "CLISCALE_RUNNER_JWKS_FILE";
pub const COLS: &str = "CLISCALE_RUNNER_COLS";
pub const ROWS: &str = "CLISCALE_RUNNER_ROWS";
pub const LINGER: &str = "CLISCALE_RUNNER_LINGER";
pub const GRACE_PERIOD: &str = "CLISCALE_RUNNER_GRACE_PERIOD";
pub const TIMEOUT: &str = "CLISCALE_RUNNER_TIMEOUT";
pub const ALLOW_PRIVATE_CODE_URLS: &str = "CLISCALE_RUNNER_ALLOW_PRIVATE_CODE_URLS";
pub const LOG_FORMAT: &str = "CLISCALE_RUNNER_LOG_FORMAT";
pub const EVENTS_FD: &str = "CLISCALE_RUNNER_EVENTS_FD";
pub const TERMINATION_LOG: &str = "CLISCALE_RUNNER_TERMINATION_LOG";
pub const OUTPUT_URL: &str = "CLISCALE_RUNNER_OUTPUT_URL";
pub const OUTPUT_TOKEN: &str = "CLISCALE_RUNNER_OUTPUT_TOKEN";
pub const STATUS_KEY: &str = "CLISCALE_RUNNER_STATUS_KEY";
pub const MASK_ENV: &str = "CLISCALE_RUNNER_MASK_ENV";
pub const COMMAND_UID: &str = "CLISCALE_RUNNER_COMMAND_UID";
pub const COMMAND_GID: &str = "CLISCALE_RUNNER_COMMAND_GID";
pub const LIFELINE_FD: &str = "CLISCALE_RUNNER_LIFELINE_FD";

/// Prefix under which the session's own variables reach the runner. The runner gives each to
/// the command and the install step without the prefix, and never uses them itself: a request
/// naming `LD_PRELOAD` or `HTTPS_PROXY` changes the command's world, not the runner's fetches.
pub const COMMAND_ENV_PREFIX: &str = "CLISCALE_ENV_";

/// The runner's name for the session variable `name`. Pure.
pub fn command_env_name(name: &str) -> String {
    format!("{COMMAND_ENV_PREFIX}{name}")
}

/// The terminal type commands see, and recordings name.
pub const DEFAULT_TERM: &str = "xterm-256color";

/// Where a pod's container writes its termination message (the kubelet's default path).
pub const KUBERNETES_TERMINATION_LOG: &str = "/dev/termination-log";

/// One runner's launch settings. Unset options keep the runner's defaults (docs/runner.md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunnerLaunch {
    pub session_id: String,
    pub command: String,
    pub code_url: Option<String>,
    pub code_checksum_sha256: Option<String>,
    pub install_cmd: Option<String>,
    pub prompt: Option<String>,
    pub listen: Option<String>,
    pub jwks_file: Option<String>,
    pub work_dir: Option<String>,
    pub cols: u16,
    pub rows: u16,
    pub linger: Option<Duration>,
    pub grace_period: Option<Duration>,
    pub timeout: Option<Duration>,
    pub allow_private_code_urls: bool,
    pub log_format: Option<String>,
    /// A pipe's write end the runner reports [`crate::event::RunnerEvent`]s on.
    pub events_fd: Option<i32>,
    /// A file the runner writes its final event to (a pod's termination message).
    pub termination_log: Option<String>,
    /// Base URL of the API whose output store keeps the session's log.
    pub output_url: Option<String>,
    /// The credential that appends to this session's stored output, and does nothing else.
    pub output_token: Option<String>,
    /// The key that seals the final event in the termination message
    /// ([`crate::event::encode_status_key`]).
    pub status_key: Option<String>,
    /// Names of the command's environment variables whose values are masked in the output.
    pub mask_env: Vec<String>,
    /// The user and group the install step and the command run as (the runner must be root).
    pub command_uid: Option<u32>,
    pub command_gid: Option<u32>,
    /// A pipe's read end whose writer is the launcher: when it closes, the launcher is gone and
    /// the runner stops the session.
    pub lifeline_fd: Option<i32>,
}

impl RunnerLaunch {
    /// What every launcher sets alike for `spec`: the command, its code, size, linger and
    /// timeout. Where the runner listens, its files and its event channels are the launcher's.
    /// Pure.
    pub fn for_session(session_id: &str, spec: &SessionSpec) -> Self {
        let secs = |s: u32| Duration::from_secs(s.into());
        Self {
            session_id: session_id.to_owned(),
            command: spec.command.clone(),
            code_url: spec.code.as_ref().map(|c| c.url.clone()),
            code_checksum_sha256: spec.code.as_ref().and_then(|c| c.checksum_sha256.clone()),
            install_cmd: spec.install_command.clone(),
            prompt: spec.prompt.clone(),
            cols: spec.cols,
            rows: spec.rows,
            linger: Some(secs(spec.linger_seconds)),
            timeout: spec.timeout_seconds.map(secs),
            mask_env: spec.masked_env_names(),
            ..Default::default()
        }
    }
}

fn duration(d: Duration) -> String {
    // Milliseconds always parse back exactly, whatever the value.
    format!("{}ms", d.as_millis())
}

impl RunnerLaunch {
    /// The runner's environment, in a stable order. Pure.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            (SESSION_ID, self.session_id.clone()),
            (COMMAND, self.command.clone()),
            (COLS, self.cols.to_string()),
            (ROWS, self.rows.to_string()),
        ];
        let optional = [
            (CODE_URL, self.code_url.clone()),
            (CODE_CHECKSUM_SHA256, self.code_checksum_sha256.clone()),
            (INSTALL_CMD, self.install_cmd.clone()),
            (PROMPT, self.prompt.clone()),
            (LISTEN, self.listen.clone()),
            (JWKS_FILE, self.jwks_file.clone()),
            (WORK_DIR, self.work_dir.clone()),
            (LINGER, self.linger.map(duration)),
            (GRACE_PERIOD, self.grace_period.map(duration)),
            (TIMEOUT, self.timeout.map(duration)),
            (ALLOW_PRIVATE_CODE_URLS, self.allow_private_code_urls.then(|| "true".into())),
            (LOG_FORMAT, self.log_format.clone()),
            (EVENTS_FD, self.events_fd.map(|fd| fd.to_string())),
            (TERMINATION_LOG, self.termination_log.clone()),
            (OUTPUT_URL, self.output_url.clone()),
            (OUTPUT_TOKEN, self.output_token.clone()),
            (STATUS_KEY, self.status_key.clone()),
            (MASK_ENV, (!self.mask_env.is_empty()).then(|| self.mask_env.join(","))),
            (COMMAND_UID, self.command_uid.map(|id| id.to_string())),
            (COMMAND_GID, self.command_gid.map(|id| id.to_string())),
            (LIFELINE_FD, self.lifeline_fd.map(|fd| fd.to_string())),
        ];
        env.extend(optional.into_iter().filter_map(|(k, v)| Some((k, v?))));
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_options_stay_out_and_durations_parse_back() {
        let launch = RunnerLaunch {
            session_id: "s1".into(),
            command: "make".into(),
            cols: 80,
            rows: 24,
            linger: Some(Duration::from_millis(1500)),
            timeout: Some(Duration::from_secs(600)),
            ..Default::default()
        };
        let env = launch.env();
        let get = |k: &str| env.iter().find(|(name, _)| *name == k).map(|(_, v)| v.as_str());
        assert_eq!(get(COMMAND), Some("make"));
        assert_eq!(get(CODE_URL), None);
        assert_eq!(get(ALLOW_PRIVATE_CODE_URLS), None);
        assert_eq!(
            humantime::parse_duration(get(LINGER).unwrap()).unwrap(),
            launch.linger.unwrap()
        );
        assert_eq!(
            humantime::parse_duration(get(TIMEOUT).unwrap()).unwrap(),
            launch.timeout.unwrap()
        );
        assert!(env.iter().all(|(k, _)| k.starts_with("CLISCALE_")));
    }
}
