//! What a session is: the one specification the REST API validates, the store keeps and the
//! CommandSession custom resource carries (its spec is this, plus Kubernetes' placement knobs).
//! The limits are constants that both [`SessionSpec::validate`] and the CRD schema use.

use serde::{Deserialize, Serialize};

use crate::source::{parse_checksum, parse_code_url};

pub const MAX_COMMAND_LEN: usize = 8192;
pub const MAX_PROMPT_LEN: usize = 65536;
pub const MAX_URL_LEN: usize = 2048;
pub const MAX_ENV_VARS: usize = 64;
pub const MAX_ENV_NAME_LEN: usize = 256;
pub const MAX_ENV_VALUE_LEN: usize = 32768;
pub const MAX_SECRET_REF_LEN: usize = 253;
pub const MAX_TIMEOUT_SECS: u32 = 604_800;
pub const MAX_TTL_SECS: u32 = 2_592_000;
pub const MAX_LINGER_SECS: u32 = 3600;
pub const MIN_SCROLLBACK: u32 = 1000;
pub const MAX_SCROLLBACK: u32 = 1_000_000;
pub const MAX_DIMENSION: u16 = crate::protocol::MAX_TERMINAL_DIMENSION;
pub const DEFAULT_COLS: u16 = 80;
pub const DEFAULT_ROWS: u16 = 24;
pub const DEFAULT_SCROLLBACK: u32 = 100_000;
pub const DEFAULT_TTL_SECS: u32 = 3600;
pub const DEFAULT_LINGER_SECS: u32 = 30;
/// Variable names the command may not set: the runner's own.
pub const RESERVED_ENV_PREFIX: &str = "CLISCALE_";

fn default_cols() -> u16 {
    DEFAULT_COLS
}
fn default_rows() -> u16 {
    DEFAULT_ROWS
}
fn default_scrollback() -> u32 {
    DEFAULT_SCROLLBACK
}
fn default_ttl() -> u32 {
    DEFAULT_TTL_SECS
}
fn default_linger() -> u32 {
    DEFAULT_LINGER_SECS
}

/// A session's specification.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct SessionSpec {
    /// The command line, run by bash (or sh) -c in the runner's PTY.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = MAX_COMMAND_LEN)))]
    pub command: String,
    /// Where the code comes from: a GitHub tree URL, a .zip, .tar.gz or .tgz URL, or a git URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<CodeSpec>,
    /// Run in the code directory before the command, with its output in the session log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_COMMAND_LEN)))]
    pub install_command: Option<String>,
    /// Given to the command as the CLISCALE_PROMPT environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_PROMPT_LEN)))]
    pub prompt: Option<String>,
    /// Plain (non-secret) environment variables for the command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_ENV_VARS)))]
    pub env: Vec<EnvVar>,
    /// Environment variables taken from Secret keys. Secret values are never written into the
    /// session itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_ENV_VARS)))]
    pub env_from_secrets: Vec<SecretEnvVar>,
    /// Initial terminal width, in columns.
    #[serde(default = "default_cols")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_DIMENSION)))]
    pub cols: u16,
    /// Initial terminal height, in rows.
    #[serde(default = "default_rows")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_DIMENSION)))]
    pub rows: u16,
    /// Lines of scrollback the terminal page keeps.
    #[serde(default = "default_scrollback")]
    #[cfg_attr(feature = "schema", schemars(range(min = MIN_SCROLLBACK, max = MAX_SCROLLBACK)))]
    pub scrollback_lines: u32,
    /// Stop the session after this many seconds (TimedOut). Unset means no deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_TIMEOUT_SECS)))]
    pub timeout_seconds: Option<u32>,
    /// Keep the finished session (status and output tail) this many seconds, then delete it.
    #[serde(default = "default_ttl")]
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = MAX_TTL_SECS)))]
    pub ttl_seconds_after_finished: u32,
    /// Keep the terminal open this many seconds after the command exits.
    #[serde(default = "default_linger")]
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = MAX_LINGER_SECS)))]
    pub linger_seconds: u32,
}

/// Where a session's code comes from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct CodeSpec {
    /// GitHub tree URL, .zip, .tar.gz/.tgz or git URL (https).
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = MAX_URL_LEN)))]
    pub url: String,
    /// Expected SHA-256 (hex) of the downloaded archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^(sha256:)?[0-9a-fA-F]{64}$")))]
    pub checksum_sha256: Option<String>,
}

/// A plain environment variable.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EnvVar {
    /// Variable name; CLISCALE_* is reserved.
    #[cfg_attr(
        feature = "schema",
        schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"), length(max = MAX_ENV_NAME_LEN))
    )]
    pub name: String,
    /// Its value. Kept with the session in clear: for values that must not be stored, use
    /// envFromSecrets.
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_ENV_VALUE_LEN)))]
    pub value: String,
    /// Mask this value in the session's output (streams, stored output, tails, recordings).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

/// An environment variable read from a key of a Secret in the session's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct SecretEnvVar {
    /// Variable name.
    #[cfg_attr(
        feature = "schema",
        schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"), length(max = MAX_ENV_NAME_LEN))
    )]
    pub name: String,
    /// Name of the Secret.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = MAX_SECRET_REF_LEN)))]
    pub secret_name: String,
    /// Key within the Secret.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = MAX_SECRET_REF_LEN)))]
    pub key: String,
}

/// Why a specification was refused: a stable code (docs/api.md) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    pub code: &'static str,
    pub message: String,
}

fn refuse(code: &'static str, message: impl Into<String>) -> SpecError {
    SpecError { code, message: message.into() }
}

fn too_long(field: &str, max: usize) -> SpecError {
    refuse("field_too_long", format!("{field} is longer than {max} bytes"))
}

/// Whether `name` can be an environment variable's name.
pub fn is_env_name(name: &str) -> bool {
    name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= MAX_ENV_NAME_LEN
}

impl SessionSpec {
    /// The variables whose values the runner masks in the output: env marked secret and every
    /// variable taken from a Secret. Pure.
    pub fn masked_env_names(&self) -> Vec<String> {
        let marked = self.env.iter().filter(|e| e.secret).map(|e| e.name.clone());
        let from_secrets = self.env_from_secrets.iter().map(|e| e.name.clone());
        let mut names: Vec<String> = marked.chain(from_secrets).collect();
        names.sort();
        names.dedup();
        names
    }

    /// A spec running `command` with every default.
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
            code: None,
            install_command: None,
            prompt: None,
            env: Vec::new(),
            env_from_secrets: Vec::new(),
            cols: DEFAULT_COLS,
            rows: DEFAULT_ROWS,
            scrollback_lines: DEFAULT_SCROLLBACK,
            timeout_seconds: None,
            ttl_seconds_after_finished: DEFAULT_TTL_SECS,
            linger_seconds: DEFAULT_LINGER_SECS,
        }
    }

    /// Checks every limit and rule; the first problem found is the error. Pure.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.command.trim().is_empty() {
            return Err(refuse("invalid_field", "command must not be empty"));
        }
        if self.command.len() > MAX_COMMAND_LEN {
            return Err(too_long("command", MAX_COMMAND_LEN));
        }
        if self.install_command.as_ref().is_some_and(|c| c.len() > MAX_COMMAND_LEN) {
            return Err(too_long("install_cmd", MAX_COMMAND_LEN));
        }
        if self.prompt.as_ref().is_some_and(|p| p.len() > MAX_PROMPT_LEN) {
            return Err(too_long("prompt", MAX_PROMPT_LEN));
        }
        // The OS carries these as C strings: a NUL would cut them short or fail the launch after
        // the session exists, so it is refused here.
        let texts =
            [("command", Some(&self.command)), ("install_cmd", self.install_command.as_ref())]
                .into_iter()
                .chain([("prompt", self.prompt.as_ref())])
                .chain(self.env.iter().map(|e| ("env", Some(&e.value))));
        if let Some((field, _)) =
            texts.into_iter().find(|(_, v)| v.is_some_and(|v| v.contains('\0')))
        {
            return Err(refuse("invalid_field", format!("{field} must not contain a NUL byte")));
        }
        if let Some(code) = &self.code {
            if code.url.len() > MAX_URL_LEN {
                return Err(too_long("code_url", MAX_URL_LEN));
            }
            parse_code_url(&code.url).map_err(|e| refuse("invalid_code_url", e.to_string()))?;
            if let Some(sum) = &code.checksum_sha256 {
                parse_checksum(sum).map_err(|e| refuse("invalid_checksum", e.to_string()))?;
            }
        }
        if self.env.len() > MAX_ENV_VARS || self.env_from_secrets.len() > MAX_ENV_VARS {
            return Err(refuse("invalid_env", format!("at most {MAX_ENV_VARS} env variables")));
        }
        let names =
            self.env.iter().map(|e| &e.name).chain(self.env_from_secrets.iter().map(|e| &e.name));
        for name in names {
            if !is_env_name(name) {
                return Err(refuse(
                    "invalid_env",
                    format!("{name:?} is not a valid variable name"),
                ));
            }
            if name.starts_with(RESERVED_ENV_PREFIX) {
                return Err(refuse("invalid_env", format!("{name} is reserved")));
            }
        }
        if let Some(var) = self.env.iter().find(|e| e.value.len() > MAX_ENV_VALUE_LEN) {
            return Err(too_long(&format!("env.{}", var.name), MAX_ENV_VALUE_LEN));
        }
        let bad_ref = |s: &str| s.is_empty() || s.len() > MAX_SECRET_REF_LEN;
        if let Some(var) =
            self.env_from_secrets.iter().find(|e| bad_ref(&e.secret_name) || bad_ref(&e.key))
        {
            return Err(refuse(
                "invalid_env",
                format!("{}: secret name and key must be 1-{MAX_SECRET_REF_LEN} bytes", var.name),
            ));
        }
        crate::protocol::validate_size(self.cols, self.rows)
            .map_err(|e| refuse("invalid_size", e.to_string()))?;
        if !(MIN_SCROLLBACK..=MAX_SCROLLBACK).contains(&self.scrollback_lines) {
            return Err(refuse(
                "invalid_scrollback",
                format!("scrollback_lines must be {MIN_SCROLLBACK}..={MAX_SCROLLBACK}"),
            ));
        }
        if self.timeout_seconds.is_some_and(|t| !(1..=MAX_TIMEOUT_SECS).contains(&t)) {
            return Err(refuse(
                "invalid_timeout",
                format!("timeout_seconds must be 1..={MAX_TIMEOUT_SECS}"),
            ));
        }
        if self.ttl_seconds_after_finished > MAX_TTL_SECS {
            return Err(refuse(
                "invalid_ttl",
                format!("ttl_seconds must be at most {MAX_TTL_SECS}"),
            ));
        }
        if self.linger_seconds > MAX_LINGER_SECS {
            return Err(refuse(
                "invalid_linger",
                format!("linger_seconds must be at most {MAX_LINGER_SECS}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in_and_the_json_is_camel_case() {
        let spec: SessionSpec = serde_json::from_str(r#"{"command":"make"}"#).unwrap();
        assert_eq!(spec, SessionSpec::new("make"));
        let json = serde_json::to_value(SessionSpec {
            env_from_secrets: vec![SecretEnvVar {
                name: "TOKEN".into(),
                secret_name: "keys".into(),
                key: "t".into(),
            }],
            ..SessionSpec::new("make")
        })
        .unwrap();
        assert_eq!(json["envFromSecrets"][0]["secretName"], "keys");
        assert_eq!(json["ttlSecondsAfterFinished"], DEFAULT_TTL_SECS);
    }

    #[test]
    fn every_rule_refuses_with_its_code() {
        let ok = SessionSpec::new("make");
        assert_eq!(ok.validate(), Ok(()));
        let var = |name: &str, value: &str| EnvVar {
            name: name.into(),
            value: value.into(),
            secret: false,
        };
        let cases: Vec<(SessionSpec, &str)> = vec![
            (SessionSpec::new("  "), "invalid_field"),
            (SessionSpec::new("x".repeat(MAX_COMMAND_LEN + 1)), "field_too_long"),
            (
                SessionSpec { prompt: Some("p".repeat(MAX_PROMPT_LEN + 1)), ..ok.clone() },
                "field_too_long",
            ),
            (
                SessionSpec {
                    code: Some(CodeSpec { url: "file:///etc".into(), checksum_sha256: None }),
                    ..ok.clone()
                },
                "invalid_code_url",
            ),
            (
                SessionSpec {
                    code: Some(CodeSpec {
                        url: "https://example.com/a.zip".into(),
                        checksum_sha256: Some("abc".into()),
                    }),
                    ..ok.clone()
                },
                "invalid_checksum",
            ),
            (SessionSpec { env: vec![var("1X", "")], ..ok.clone() }, "invalid_env"),
            (SessionSpec { env: vec![var("CLISCALE_X", "")], ..ok.clone() }, "invalid_env"),
            (
                SessionSpec {
                    env: vec![var("X", &"v".repeat(MAX_ENV_VALUE_LEN + 1))],
                    ..ok.clone()
                },
                "field_too_long",
            ),
            (
                SessionSpec {
                    env_from_secrets: vec![SecretEnvVar {
                        name: "T".into(),
                        secret_name: String::new(),
                        key: "k".into(),
                    }],
                    ..ok.clone()
                },
                "invalid_env",
            ),
            (SessionSpec { cols: 0, ..ok.clone() }, "invalid_size"),
            (SessionSpec { scrollback_lines: 10, ..ok.clone() }, "invalid_scrollback"),
            (SessionSpec { timeout_seconds: Some(0), ..ok.clone() }, "invalid_timeout"),
            (
                SessionSpec { ttl_seconds_after_finished: MAX_TTL_SECS + 1, ..ok.clone() },
                "invalid_ttl",
            ),
            (SessionSpec { linger_seconds: MAX_LINGER_SECS + 1, ..ok.clone() }, "invalid_linger"),
        ];
        for (spec, code) in cases {
            assert_eq!(spec.validate().unwrap_err().code, code, "{spec:?}");
        }
    }
}
