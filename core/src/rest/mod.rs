//! The REST API's requests and answers: the contract between the API, which serves them, and
//! every client (the `cliscale` command line, tests, benchmarks). docs/api.md explains them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::phase::{SessionPhase, TerminalReason};
use crate::token::TokenScope;

mod definitions;
pub use definitions::*;

/// `POST /api/sessions`: the CLI Scale seed's fields plus env, size, timeout and TTL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = CreateSession))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreateSessionRequest {
    /// GitHub tree URL, .zip, .tar.gz/.tgz or git URL.
    #[cfg_attr(feature = "openapi", schema(max_length = 2048))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_url: Option<String>,
    /// Expected SHA-256 (hex) of the downloaded archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_checksum_sha256: Option<String>,
    /// The command line, run by bash (or sh) -c in the runner's PTY.
    #[cfg_attr(feature = "openapi", schema(max_length = 8192))]
    pub command: String,
    /// Given to the command as CLISCALE_PROMPT.
    #[cfg_attr(feature = "openapi", schema(max_length = 65536))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Run in the code directory before the command.
    #[cfg_attr(feature = "openapi", schema(max_length = 8192))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_cmd: Option<String>,
    /// Environment variables (at most 64; CLISCALE_* is reserved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Names of `env` variables whose values are masked (`***`) in the session's output, its
    /// stored output, tails and recordings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_env: Option<Vec<String>>,
    /// Variables whose values come from secrets (`/api/secrets`), by name and key. The values
    /// reach the command as env only, and are masked in its output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<BTreeMap<String, SecretRef>>,
    /// Terminal width in columns (default 80).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    /// Terminal height in rows (default 24).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    /// Stop the session after this many seconds.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 604800))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Keep the finished session this many seconds (default 3600).
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 2592000))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Lines the terminal page keeps above the screen (default 100000).
    #[cfg_attr(feature = "openapi", schema(minimum = 1000, maximum = 1000000))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrollback_lines: Option<u32>,
}

impl CreateSessionRequest {
    pub fn new(command: impl Into<String>) -> Self {
        Self { command: command.into(), ..Default::default() }
    }
}

/// What `GET /api/sessions/{id}` answers. Env values are never echoed back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Session))]
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
    /// Variables from secrets: which secret and key each comes from (never a value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, SecretRef>,
    /// The template that made it, and that template's generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_generation: Option<i64>,
    /// The schedule that made it, and for which time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
    /// 1 for a first run; the retry's number after that.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// The first attempt of its retry chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub updated_at: String,
    /// The last few KiB of the session's output as text (`GET /api/sessions/{id}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tail: Option<String>,
}

fn first_attempt() -> u32 {
    1
}

/// `POST /api/sessions` answers this, at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// `POST /api/sessions/{id}/tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = MintToken))]
pub struct MintRequest {
    /// interact (default) or view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<TokenScope>,
}

/// `POST /api/sessions/{id}/tokens` answers this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Token))]
pub struct TokenMinted {
    pub session_id: String,
    pub ws_url: String,
    pub token: String,
    pub terminal_url: String,
    pub scope: TokenScope,
    pub expires_in_seconds: u64,
}

/// The query of `GET /api/sessions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
pub struct ListQuery {
    /// Only sessions in this phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Only sessions of this API key id (admins; operators see only their own anyway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Created at or after (RFC 3339 or Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_after: Option<String>,
    /// Created before (RFC 3339 or Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_before: Option<String>,
    /// Text the session's id or command contains, case-insensitively (at most 200 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 200))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// `nextCursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// The query of `GET /api/sessions/feed`: the list's filters, and where to resume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
pub struct FeedQuery {
    /// Only sessions in this phase (after the change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Only sessions of this API key id (admins and viewers; operators see only their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Created at or after (RFC 3339 or Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_after: Option<String>,
    /// Created before (RFC 3339 or Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_before: Option<String>,
    /// Text the session's id or command contains, case-insensitively (at most 200 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Resume after this feed position (an event's `id`); a `Last-Event-ID` header overrides
    /// it. Default: from now on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
}

// The feed and the list take the same filters; each converts to the other so callers copy no
// field by hand (serde cannot flatten them into one struct and still refuse unknown fields).
impl ListQuery {
    /// The session feed of this list's filters, from `since` (or from now).
    pub fn feed(&self, since: Option<i64>) -> FeedQuery {
        FeedQuery {
            phase: self.phase.clone(),
            owner: self.owner.clone(),
            created_after: self.created_after.clone(),
            created_before: self.created_before.clone(),
            q: self.q.clone(),
            since,
        }
    }
}

impl FeedQuery {
    /// The list query of this feed's filters (first page, default size).
    pub fn list(&self) -> ListQuery {
        ListQuery {
            phase: self.phase.clone(),
            owner: self.owner.clone(),
            created_after: self.created_after.clone(),
            created_before: self.created_before.clone(),
            q: self.q.clone(),
            limit: None,
            cursor: None,
        }
    }
}

/// The feed's first event (`ready`): the position it starts after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeedReady {
    pub position: i64,
}

/// The feed's event names.
pub mod feed {
    /// First: `FeedReady`.
    pub const READY: &str = "ready";
    /// A session was created or changed: a `SessionView` as it is after the change.
    pub const SESSION: &str = "session";
}

/// A page of `GET /api/sessions`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionPage {
    pub items: Vec<SessionView>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// One entry of a session's event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventView {
    pub at: String,
    pub kind: String,
    pub message: String,
}

/// `GET /api/sessions/{id}/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventPage {
    pub items: Vec<EventView>,
}

/// What an API key may do (docs/api.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    /// Keys and everything else.
    Admin,
    /// Create, cancel and drive its own sessions.
    Operator,
    /// Read, and read-only terminals.
    Viewer,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Operator, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// `POST /api/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = CreateKey))]
pub struct CreateKeyRequest {
    /// 1 to 128 characters.
    #[cfg_attr(feature = "openapi", schema(max_length = 128))]
    pub name: String,
    pub role: Role,
}

/// `PATCH /api/keys/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = UpdateKey))]
pub struct UpdateKeyRequest {
    pub role: Role,
}

/// An API key as the API shows it; `key` (the secret) only in the creation answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Key))]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// The full key, shown only when it is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `GET /api/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyPage {
    pub items: Vec<KeyView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_request_sends_only_what_it_names() {
        let req = CreateSessionRequest { ttl_seconds: Some(5), ..CreateSessionRequest::new("ls") };
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(json, serde_json::json!({"command": "ls", "ttl_seconds": 5}));
        assert_eq!(serde_json::from_value::<CreateSessionRequest>(json).unwrap(), req);
    }

    #[test]
    fn roles_read_as_they_are_written() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(serde_json::to_value(role).unwrap(), role.as_str());
        }
        assert_eq!(Role::parse("root"), None);
    }
}
