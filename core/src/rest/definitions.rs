//! The REST API's secrets, templates, trigger tokens, schedules and the event log: what
//! `/api/secrets`, `/api/templates`, `/api/schedules` and `/api/events` take and answer.
//! docs/templates.md and docs/schedules.md explain them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::CreateSessionRequest;
use crate::retry::RetryPolicy;
use crate::schedule::ConcurrencyPolicy;

/// Any JSON value, in a CRD's schema (a parameter's value: a string, number or boolean).
#[cfg(feature = "schema")]
fn any_value(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "A parameter's value: a string, a number or a boolean.",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A map of parameter names to values, in a CRD's schema.
#[cfg(feature = "schema")]
fn any_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Its parameters: name to value (a string, a number or a boolean).",
        "type": "object",
        "additionalProperties": {"x-kubernetes-preserve-unknown-fields": true}
    })
}

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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretRef {
    /// The secret's name (`/api/secrets`).
    pub secret: String,
    /// The key within it.
    pub key: String,
}

/// The type of a template parameter.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ParamType {
    /// Any text.
    #[default]
    String,
    /// A whole number.
    Integer,
    /// true or false.
    Boolean,
}

/// A template parameter. Its value reaches the command as the environment variable of the
/// same name, never spliced into the command line.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParamSpec {
    /// An environment variable name (letters, digits, `_`; not CLISCALE_*).
    pub name: String,
    /// string (the default), integer or boolean.
    #[serde(default, rename = "type")]
    pub kind: ParamType,
    /// What it is for, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Used when a run names no value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "any_value"))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = TemplateSpec))]
pub struct TemplateSpec {
    /// Lower-case letters, digits and `-`, 1 to 63 characters, starting with a letter. In a
    /// CommandTemplate it may be left out: the resource's name is the template's.
    #[serde(default)]
    pub name: String,
    /// What it does, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Labels, for people and filters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Every session field, as `POST /api/sessions` takes it (with `secret_env`).
    pub session: CreateSessionRequest,
    /// Typed parameters; each reaches the command as the environment variable of its name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<ParamSpec>,
    /// How a failed run is tried again.
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunSummary {
    /// The run's session.
    pub session_id: String,
    /// Where the session is.
    pub phase: crate::SessionPhase,
    /// Its command's exit code, once it exited.
    pub exit_code: Option<i64>,
    /// 1 for a first run; the retry's number after that.
    pub attempt: u32,
    /// The first attempt of its retry chain.
    pub retry_of: Option<String>,
    /// When it was made (RFC 3339).
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = ScheduleSpec))]
pub struct ScheduleSpec {
    /// Lower-case letters, digits and `-`, 1 to 63 characters. In a CommandSchedule it may be
    /// left out: the resource's name is the schedule's.
    #[serde(default)]
    pub name: String,
    /// The template each run runs.
    pub template: String,
    /// Its parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "any_map"))]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Five fields (minute hour day-of-month month day-of-week) or `@hourly`, `@daily`, ….
    pub cron: String,
    /// An IANA zone name (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// What a due run does while one of this schedule's runs is active.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// A run that cannot start within this many seconds of its time is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_deadline_seconds: Option<u64>,
    /// Start nothing while true.
    #[serde(default)]
    pub suspend: bool,
    /// Finished runs kept: successful (default 3) and failed (default 1); older ones are
    /// deleted with their output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successful_runs_history_limit: Option<u32>,
    /// Failed (or otherwise unsuccessful) runs kept (default 1).
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NotRun {
    /// The time it was due (RFC 3339).
    pub scheduled_at: String,
    /// ConcurrencyForbid, Suspended, DeadlineExceeded or Missed.
    pub reason: String,
    /// More about it.
    pub message: String,
}

/// What a schedule has done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ScheduleStatus {
    /// The latest time a run was started for (RFC 3339).
    pub last_schedule_time: Option<String>,
    /// When its latest successful run finished.
    pub last_successful_time: Option<String>,
    /// The next times it fires (none while suspended).
    pub next_run_times: Vec<String>,
    /// Its runs that have not finished.
    pub active: Vec<String>,
    /// Its latest runs, newest first, each retry attempt included.
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
