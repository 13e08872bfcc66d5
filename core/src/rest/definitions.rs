//! The REST API's secrets, templates, trigger tokens, schedules and the event log: what
//! `/api/secrets`, `/api/templates`, `/api/schedules` and `/api/events` take and answer.
//! docs/templates.md and docs/schedules.md explain them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::CreateSessionRequest;
use crate::retry::RetryPolicy;
use crate::schedule::ConcurrencyPolicy;

/// `POST /api/secrets`: a named set of values. Values are write-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = CreateSecret))]
pub struct CreateSecretRequest {
    /// Lower-case letters, digits and `-`, 1 to 63 characters, starting with a letter.
    pub name: String,
    /// KEY → value; keys are letters, digits, `_`, `-` and `.` (at most 64 keys, 64 KiB in all).
    pub data: BTreeMap<String, String>,
}

/// `PUT /api/secrets/{name}`: replaces every value of a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = UpdateSecret))]
pub struct UpdateSecretRequest {
    pub data: BTreeMap<String, String>,
}

/// A secret as the API shows it: its name and key names, never a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Secret))]
pub struct SecretView {
    pub name: String,
    pub keys: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Templates whose sessions refer to it.
    #[serde(default)]
    pub used_by: Vec<String>,
}

/// `GET /api/secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretPage {
    pub items: Vec<SecretView>,
}

/// One variable of `secret_env`: which secret, which key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretRef {
    pub secret: String,
    pub key: String,
}

/// The type of a template parameter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ParamType {
    #[default]
    String,
    Integer,
    Boolean,
}

/// A template parameter. Its value reaches the command as the environment variable of the
/// same name, never spliced into the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParamSpec {
    /// An environment variable name (letters, digits, `_`; not CLISCALE_*).
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: ParamType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Used when a run names no value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    /// A run must name a value (a default does not count).
    #[serde(default)]
    pub required: bool,
    /// When given, the value must be one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
}

/// `POST /api/templates` (and `PUT /api/templates/{name}` without `name`): a named definition
/// of a session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = TemplateSpec))]
pub struct TemplateSpec {
    /// Lower-case letters, digits and `-`, 1 to 63 characters, starting with a letter.
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Every session field, as `POST /api/sessions` takes it (with `secret_env`).
    pub session: CreateSessionRequest,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<ParamSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// What a run does while another run of this template is active.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
}

/// A template as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Template))]
pub struct TemplateView {
    #[serde(flatten)]
    pub spec: TemplateSpec,
    /// Bumped by every update; each run records the generation it ran.
    pub generation: i64,
    pub owner: String,
    pub created_at: String,
    pub updated_at: String,
    /// Its latest runs, newest first, each attempt of a retry chain included.
    #[serde(default)]
    pub recent_runs: Vec<RunSummary>,
}

/// One run in a template's or schedule's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunSummary {
    pub session_id: String,
    pub phase: crate::SessionPhase,
    pub exit_code: Option<i64>,
    pub attempt: u32,
    pub retry_of: Option<String>,
    pub created_at: String,
}

/// `GET /api/templates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TemplatePage {
    pub items: Vec<TemplateView>,
}

/// `POST /api/templates/{name}/runs` and `POST /api/templates/{name}/trigger`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = RunTemplate))]
pub struct RunRequest {
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
}

/// `POST /api/templates/{name}/triggers`: a token a CI system runs the template with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = CreateTrigger))]
pub struct CreateTriggerRequest {
    /// 1 to 128 characters, for people.
    pub name: String,
    /// The parameters a call with this token may set; the others keep their defaults.
    #[serde(default)]
    pub params: Vec<String>,
}

/// A trigger token as the API shows it; `token` only in the creation answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Trigger))]
pub struct TriggerView {
    pub id: String,
    pub template: String,
    pub name: String,
    pub params: Vec<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `GET /api/templates/{name}/triggers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TriggerPage {
    pub items: Vec<TriggerView>,
}

/// `POST /api/schedules` (and `PUT /api/schedules/{name}` without `name`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = ScheduleSpec))]
pub struct ScheduleSpec {
    #[serde(default)]
    pub name: String,
    /// The template each run runs.
    pub template: String,
    /// Its parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Five fields (minute hour day-of-month month day-of-week) or `@hourly`, `@daily`, ….
    pub cron: String,
    /// An IANA zone name (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// A run that cannot start within this many seconds of its time is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_deadline_seconds: Option<u64>,
    #[serde(default)]
    pub suspend: bool,
    /// Finished runs kept: successful (default 3) and failed (default 1); older ones are
    /// deleted with their output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successful_runs_history_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_runs_history_limit: Option<u32>,
}

/// `POST /api/schedules/preview`: when a cron in a zone would fire, before saving it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PreviewRequest {
    pub cron: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// The answer of `POST /api/schedules/preview`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Preview {
    pub next_run_times: Vec<String>,
}

/// Why a scheduled time did not start, as a schedule's status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NotRun {
    pub scheduled_at: String,
    /// ConcurrencyForbid, Suspended, DeadlineExceeded or Missed.
    pub reason: String,
    pub message: String,
}

/// What a schedule has done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleStatus {
    pub last_schedule_time: Option<String>,
    pub last_successful_time: Option<String>,
    pub next_run_times: Vec<String>,
    pub active: Vec<String>,
    pub recent_runs: Vec<RunSummary>,
    /// The latest skipped and missed times, newest first.
    pub not_run: Vec<NotRun>,
}

/// A schedule as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Schedule))]
pub struct ScheduleView {
    #[serde(flatten)]
    pub spec: ScheduleSpec,
    pub owner: String,
    pub created_at: String,
    pub updated_at: String,
    pub status: ScheduleStatus,
}

/// `GET /api/schedules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SchedulePage {
    pub items: Vec<ScheduleView>,
}

/// The query of `GET /api/events`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
pub struct EventQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// created, phase, cancel, scheduled, skipped, missed, retried, trigger_used,
    /// secret_referenced, …
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// An API key id, `trigger:<id>` or `schedule:<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// At or after (RFC 3339 or Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Before (RFC 3339 or Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// `asc` (oldest first, the default) or `desc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// 1 to 500 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// `nextCursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogEntry {
    /// The log's monotonic sequence: later entries have larger numbers.
    pub seq: i64,
    pub at: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub session: Option<String>,
    pub template: Option<String>,
    pub schedule: Option<String>,
    pub actor: Option<String>,
    pub message: String,
}

/// `GET /api/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogPage {
    pub items: Vec<LogEntry>,
    pub next_cursor: Option<String>,
}
