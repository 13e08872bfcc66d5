//! The API's data: requests, their validation (pure functions), stored records and views.

pub use cliscale_core::rest::{
    CreateSessionRequest, EventPage, EventView, KeyPage, KeyView, SessionCreated, SessionPage,
    SessionView, TokenMinted,
};
use cliscale_core::source::parse_checksum;
pub use cliscale_core::spec::SessionSpec;
use cliscale_core::spec::{self, CodeSpec, EnvVar};
use cliscale_core::{SessionPhase, TerminalReason};

use crate::error::{ApiError, Result};

/// What the server fills in for a request that names nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecDefaults {
    pub ttl_secs: u32,
    /// How long terminals stay open after the command exits.
    pub linger_secs: u32,
}

impl Default for SpecDefaults {
    fn default() -> Self {
        Self { ttl_secs: spec::DEFAULT_TTL_SECS, linger_secs: spec::DEFAULT_LINGER_SECS }
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|v| !v.trim().is_empty())
}

fn seconds(value: Option<u64>, code: &'static str, field: &str, max: u32) -> Result<Option<u32>> {
    value
        .map(|v| {
            u32::try_from(v)
                .map_err(|_| ApiError::bad_request(code, format!("{field} must be at most {max}")))
        })
        .transpose()
}

/// Checks a create request and turns it into a spec, with `defaults` for what it does not name.
/// Pure.
pub fn validate_create(req: CreateSessionRequest, defaults: SpecDefaults) -> Result<SessionSpec> {
    let code_url = non_empty(req.code_url);
    let checksum = non_empty(req.code_checksum_sha256);
    let code = match (code_url, checksum) {
        (Some(url), checksum) => Some(CodeSpec { url, checksum_sha256: checksum }),
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_checksum",
                "code_checksum_sha256 was given without code_url",
            ));
        }
        (None, None) => None,
    };
    let env = req.env.unwrap_or_default();
    let masked = req.masked_env.unwrap_or_default();
    if let Some(unknown) = masked.iter().find(|name| !env.contains_key(*name)) {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("masked_env names {unknown:?}, which is not in env"),
        ));
    }
    let mut spec = SessionSpec {
        code,
        install_command: non_empty(req.install_cmd),
        prompt: req.prompt,
        env: env
            .into_iter()
            .map(|(name, value)| EnvVar { secret: masked.contains(&name), name, value })
            .collect(),
        cols: req.cols.unwrap_or(spec::DEFAULT_COLS),
        rows: req.rows.unwrap_or(spec::DEFAULT_ROWS),
        timeout_seconds: seconds(
            req.timeout_seconds,
            "invalid_timeout",
            "timeout_seconds",
            spec::MAX_TIMEOUT_SECS,
        )?,
        ttl_seconds_after_finished: seconds(
            req.ttl_seconds,
            "invalid_ttl",
            "ttl_seconds",
            spec::MAX_TTL_SECS,
        )?
        .unwrap_or(defaults.ttl_secs),
        linger_seconds: defaults.linger_secs,
        scrollback_lines: req.scrollback_lines.unwrap_or(spec::DEFAULT_SCROLLBACK),
        ..SessionSpec::new(req.command)
    };
    spec.validate().map_err(|e| ApiError::bad_request(e.code, e.message))?;
    // Stored normalised: lower-case hex without a `sha256:` prefix.
    if let Some(code) = &mut spec.code {
        code.checksum_sha256 = code
            .checksum_sha256
            .as_deref()
            .map(parse_checksum)
            .transpose()
            .map_err(|e| ApiError::bad_request("invalid_checksum", e.to_string()))?;
    }
    Ok(spec)
}

/// A session as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    pub owner: String,
    pub spec: SessionSpec,
    pub phase: SessionPhase,
    pub exit_code: Option<i64>,
    pub reason: Option<TerminalReason>,
    pub message: Option<String>,
    pub runner_addr: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
    pub origin: Origin,
}

/// Where a session came from, beyond the key that owns it: the template and generation, the
/// schedule and time, the trigger, and its place in a retry chain. Stored with the session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Origin {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    pub attempt: u32,
    /// The chain's first attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
    /// The retry policy the chain follows, as it was when the chain began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<cliscale_core::retry::RetryPolicy>,
    /// Variables from secrets, by the secrets' own names (the spec holds where each is kept).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secret_env: std::collections::BTreeMap<String, cliscale_core::rest::SecretRef>,
}

impl Default for Origin {
    fn default() -> Self {
        Self {
            template: None,
            template_generation: None,
            schedule: None,
            scheduled_at: None,
            trigger: None,
            attempt: 1,
            retry_of: None,
            retry: None,
            secret_env: Default::default(),
        }
    }
}

impl SessionRecord {
    /// The session's status as the terminal protocol carries it.
    pub fn status(&self) -> cliscale_core::protocol::SessionStatus {
        cliscale_core::protocol::SessionStatus {
            phase: self.phase,
            exit_code: self.exit_code.and_then(|c| i32::try_from(c).ok()),
            reason: self.reason,
            message: self.message.clone(),
        }
    }
}

pub fn rfc3339(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

impl From<&SessionRecord> for SessionView {
    fn from(r: &SessionRecord) -> Self {
        Self {
            session_id: r.id.clone(),
            owner: r.owner.clone(),
            phase: r.phase,
            exit_code: r.exit_code,
            reason: r.reason,
            message: r.message.clone(),
            command: r.spec.command.clone(),
            code_url: r.spec.code.as_ref().map(|c| c.url.clone()),
            env_names: r.spec.env.iter().map(|e| e.name.clone()).collect(),
            secret_env: r.origin.secret_env.clone(),
            template: r.origin.template.clone(),
            template_generation: r.origin.template_generation,
            schedule: r.origin.schedule.clone(),
            scheduled_at: r.origin.scheduled_at.map(rfc3339),
            attempt: r.origin.attempt,
            retry_of: r.origin.retry_of.clone(),
            created_at: rfc3339(r.created_at),
            started_at: r.started_at.map(rfc3339),
            finished_at: r.finished_at.map(rfc3339),
            updated_at: rfc3339(r.updated_at),
            output_tail: None,
        }
    }
}

pub fn phase_from_str(s: &str) -> Option<SessionPhase> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
}

pub fn reason_from_str(s: &str) -> Option<TerminalReason> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(command: &str) -> CreateSessionRequest {
        CreateSessionRequest { command: command.into(), ..Default::default() }
    }

    #[test]
    fn a_minimal_request_gets_defaults() {
        let spec = validate_create(req("echo hi"), SpecDefaults::default()).unwrap();
        let defaults = (spec.cols, spec.rows, spec.ttl_seconds_after_finished, spec.linger_seconds);
        assert_eq!(defaults, (80, 24, spec::DEFAULT_TTL_SECS, spec::DEFAULT_LINGER_SECS));
    }

    #[test]
    fn the_configured_default_ttl_applies_only_when_the_request_names_none() {
        let defaults = SpecDefaults { ttl_secs: 120, linger_secs: 5 };
        let spec = validate_create(req("x"), defaults).unwrap();
        assert_eq!((spec.ttl_seconds_after_finished, spec.linger_seconds), (120, 5));
        let named = CreateSessionRequest { ttl_seconds: Some(7), ..req("x") };
        assert_eq!(validate_create(named, defaults).unwrap().ttl_seconds_after_finished, 7);
    }

    #[test]
    fn bad_fields_are_refused_with_their_code() {
        let cases: Vec<(CreateSessionRequest, &str)> = vec![
            (req(""), "invalid_field"),
            (req(&"x".repeat(spec::MAX_COMMAND_LEN + 1)), "field_too_long"),
            (
                CreateSessionRequest { code_url: Some("file:///etc/passwd".into()), ..req("x") },
                "invalid_code_url",
            ),
            (
                CreateSessionRequest { code_checksum_sha256: Some("ab".into()), ..req("x") },
                "invalid_checksum",
            ),
            (
                CreateSessionRequest {
                    env: Some([("CLISCALE_X".to_string(), "1".to_string())].into()),
                    ..req("x")
                },
                "invalid_env",
            ),
            (
                CreateSessionRequest {
                    env: Some([("1BAD".to_string(), "1".to_string())].into()),
                    ..req("x")
                },
                "invalid_env",
            ),
            (CreateSessionRequest { cols: Some(0), ..req("x") }, "invalid_size"),
            (CreateSessionRequest { scrollback_lines: Some(10), ..req("x") }, "invalid_scrollback"),
            (
                CreateSessionRequest { scrollback_lines: Some(2_000_000), ..req("x") },
                "invalid_scrollback",
            ),
            (CreateSessionRequest { timeout_seconds: Some(0), ..req("x") }, "invalid_timeout"),
            (CreateSessionRequest { ttl_seconds: Some(u64::MAX), ..req("x") }, "invalid_ttl"),
            (CreateSessionRequest { ttl_seconds: Some(30 * 86400 + 1), ..req("x") }, "invalid_ttl"),
            (
                CreateSessionRequest { timeout_seconds: Some(u64::MAX), ..req("x") },
                "invalid_timeout",
            ),
        ];
        for (request, code) in cases {
            let refused = validate_create(request, SpecDefaults::default()).unwrap_err();
            assert_eq!(refused.code(), code);
        }
    }
}
