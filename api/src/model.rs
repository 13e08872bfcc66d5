//! The API's data: requests, their validation (pure functions), stored records and views.

use std::collections::BTreeMap;

use cliscale_core::{SessionPhase, TerminalReason};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, Result};

pub const MAX_COMMAND_LEN: usize = 8 * 1024;
pub const MAX_PROMPT_LEN: usize = 64 * 1024;
pub const MAX_URL_LEN: usize = 2048;
pub const MAX_ENV_VARS: usize = 64;
pub const MAX_ENV_VALUE_LEN: usize = 32 * 1024;
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;
pub const DEFAULT_TTL_SECS: u64 = 3600;

/// `POST /api/sessions`: the CLI Scale seed's fields plus env, size, timeout and TTL. The bounds
/// in the schema attributes are the constants above (a test holds them equal).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreateSession)]
pub struct CreateSessionRequest {
    /// GitHub tree URL, .zip, .tar.gz/.tgz or git URL.
    #[schema(max_length = 2048)]
    pub code_url: Option<String>,
    /// Expected SHA-256 (hex) of the downloaded archive.
    pub code_checksum_sha256: Option<String>,
    /// The command line, run by bash (or sh) -c in the runner's PTY.
    #[schema(max_length = 8192)]
    pub command: String,
    /// Given to the command as CLISCALE_PROMPT.
    #[schema(max_length = 65536)]
    pub prompt: Option<String>,
    /// Run in the code directory before the command.
    #[schema(max_length = 8192)]
    pub install_cmd: Option<String>,
    /// Environment variables (at most 64; CLISCALE_* is reserved).
    pub env: Option<BTreeMap<String, String>>,
    #[schema(minimum = 1, maximum = 1000)]
    pub cols: Option<u16>,
    #[schema(minimum = 1, maximum = 1000)]
    pub rows: Option<u16>,
    /// Stop the session after this many seconds.
    #[schema(minimum = 1, maximum = 604800)]
    pub timeout_seconds: Option<u64>,
    /// Keep the finished session this many seconds (default 3600).
    #[schema(minimum = 0, maximum = 2592000)]
    pub ttl_seconds: Option<u64>,
}

/// A validated session specification, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSpec {
    pub code_url: Option<String>,
    pub code_checksum_sha256: Option<String>,
    pub command: String,
    pub prompt: Option<String>,
    pub install_cmd: Option<String>,
    pub env: BTreeMap<String, String>,
    pub cols: u16,
    pub rows: u16,
    pub timeout_seconds: Option<u64>,
    pub ttl_seconds: u64,
}

fn too_long(field: &str, max: usize) -> ApiError {
    ApiError::bad_request("field_too_long", format!("{field} is longer than {max} bytes"))
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|v| !v.trim().is_empty())
}

/// Checks a create request and turns it into a spec, with `default_ttl_secs` for a request that
/// names no TTL. Pure.
pub fn validate_create(req: CreateSessionRequest, default_ttl_secs: u64) -> Result<SessionSpec> {
    if req.command.trim().is_empty() {
        return Err(ApiError::bad_request("invalid_field", "command must not be empty"));
    }
    if req.command.len() > MAX_COMMAND_LEN {
        return Err(too_long("command", MAX_COMMAND_LEN));
    }
    if req.install_cmd.as_ref().is_some_and(|c| c.len() > MAX_COMMAND_LEN) {
        return Err(too_long("install_cmd", MAX_COMMAND_LEN));
    }
    if req.prompt.as_ref().is_some_and(|p| p.len() > MAX_PROMPT_LEN) {
        return Err(too_long("prompt", MAX_PROMPT_LEN));
    }
    let code_url = non_empty(req.code_url);
    if let Some(url) = &code_url {
        if url.len() > MAX_URL_LEN {
            return Err(too_long("code_url", MAX_URL_LEN));
        }
        cliscale_runner::source::parse_code_url(url)
            .map_err(|e| ApiError::bad_request("invalid_code_url", e.to_string()))?;
    }
    let checksum = non_empty(req.code_checksum_sha256)
        .map(|c| cliscale_runner::source::parse_checksum(&c))
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_checksum", e.to_string()))?;
    if checksum.is_some() && code_url.is_none() {
        return Err(ApiError::bad_request(
            "invalid_checksum",
            "code_checksum_sha256 was given without code_url",
        ));
    }
    let env = req.env.unwrap_or_default();
    if env.len() > MAX_ENV_VARS {
        return Err(ApiError::bad_request(
            "invalid_env",
            format!("at most {MAX_ENV_VARS} env variables"),
        ));
    }
    for (name, value) in &env {
        let valid = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && name.len() <= 256;
        if !valid {
            return Err(ApiError::bad_request(
                "invalid_env",
                format!("{name:?} is not a valid variable name"),
            ));
        }
        if name.starts_with("CLISCALE_") {
            return Err(ApiError::bad_request("invalid_env", format!("{name} is reserved")));
        }
        if value.len() > MAX_ENV_VALUE_LEN {
            return Err(too_long(&format!("env.{name}"), MAX_ENV_VALUE_LEN));
        }
    }
    let cols = req.cols.unwrap_or(80);
    let rows = req.rows.unwrap_or(24);
    cliscale_core::protocol::validate_size(cols, rows)
        .map_err(|e| ApiError::bad_request("invalid_size", e.to_string()))?;
    if let Some(t) = req.timeout_seconds
        && !(1..=MAX_TIMEOUT_SECS).contains(&t)
    {
        return Err(ApiError::bad_request(
            "invalid_timeout",
            format!("timeout_seconds must be 1..={MAX_TIMEOUT_SECS}"),
        ));
    }
    let ttl_seconds = req.ttl_seconds.unwrap_or(default_ttl_secs);
    if ttl_seconds > MAX_TTL_SECS {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            format!("ttl_seconds must be at most {MAX_TTL_SECS}"),
        ));
    }
    Ok(SessionSpec {
        code_url,
        code_checksum_sha256: checksum,
        command: req.command,
        prompt: req.prompt,
        install_cmd: non_empty(req.install_cmd),
        env,
        cols,
        rows,
        timeout_seconds: req.timeout_seconds,
        ttl_seconds,
    })
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
}

/// What `GET /api/sessions/{id}` answers. Env values are never echoed back.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Session)]
pub struct SessionView {
    pub session_id: String,
    pub owner: String,
    pub phase: SessionPhase,
    pub exit_code: Option<i64>,
    pub reason: Option<TerminalReason>,
    pub message: Option<String>,
    pub command: String,
    pub code_url: Option<String>,
    pub env_names: Vec<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub updated_at: String,
}

/// `POST /api/sessions` answers this, at once.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionCreated {
    pub session_id: String,
    /// The terminal WebSocket's path on the gateway.
    pub ws_url: String,
    /// A one-time terminal token (interact scope).
    pub token: String,
    /// The terminal page, with the token in the URL fragment.
    pub terminal_url: String,
    pub phase: SessionPhase,
}

/// `POST /api/sessions/{id}/tokens` answers this.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Token)]
pub struct TokenMinted {
    pub session_id: String,
    pub ws_url: String,
    pub token: String,
    pub terminal_url: String,
    pub scope: cliscale_core::token::TokenScope,
    pub expires_in_seconds: u64,
}

/// A page of `GET /api/sessions`, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionPage {
    pub items: Vec<SessionView>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// One entry of a session's event log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    pub at: String,
    pub kind: String,
    pub message: String,
}

/// `GET /api/sessions/{id}/events`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventPage {
    pub items: Vec<EventView>,
}

/// An API key as the API shows it; `key` (the secret) only in the creation answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Key)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub role: crate::keys::Role,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// The full key, shown only when it is created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `GET /api/keys`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyPage {
    pub items: Vec<KeyView>,
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
            code_url: r.spec.code_url.clone(),
            env_names: r.spec.env.keys().cloned().collect(),
            created_at: rfc3339(r.created_at),
            started_at: r.started_at.map(rfc3339),
            finished_at: r.finished_at.map(rfc3339),
            updated_at: rfc3339(r.updated_at),
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
        let spec = validate_create(req("echo hi"), DEFAULT_TTL_SECS).unwrap();
        assert_eq!((spec.cols, spec.rows, spec.ttl_seconds), (80, 24, DEFAULT_TTL_SECS));
    }

    #[test]
    fn the_configured_default_ttl_applies_only_when_the_request_names_none() {
        assert_eq!(validate_create(req("x"), 120).unwrap().ttl_seconds, 120);
        let named = CreateSessionRequest { ttl_seconds: Some(7), ..req("x") };
        assert_eq!(validate_create(named, 120).unwrap().ttl_seconds, 7);
    }

    #[test]
    fn bad_fields_are_refused_with_their_code() {
        let cases: Vec<(CreateSessionRequest, &str)> = vec![
            (req(""), "invalid_field"),
            (req(&"x".repeat(MAX_COMMAND_LEN + 1)), "field_too_long"),
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
            (CreateSessionRequest { timeout_seconds: Some(0), ..req("x") }, "invalid_timeout"),
            (CreateSessionRequest { ttl_seconds: Some(u64::MAX), ..req("x") }, "invalid_ttl"),
        ];
        for (request, code) in cases {
            assert_eq!(validate_create(request, DEFAULT_TTL_SECS).unwrap_err().code(), code);
        }
    }
}
