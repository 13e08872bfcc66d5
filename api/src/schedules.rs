//! `/api/schedules`: templates run on cron, in a time zone, with a concurrency policy, a
//! starting deadline, suspend and history limits (docs/schedules.md). The scheduler
//! (`crate::scheduler`) fires them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cliscale_core::SessionPhase;
use cliscale_core::rest::{
    NotRun, Preview, PreviewRequest, SchedulePage, ScheduleSpec, ScheduleStatus, ScheduleView,
};
use cliscale_core::schedule::rfc3339 as at_rfc3339;

use crate::error::{ApiError, Result};
use crate::executor::{Definition, DefinitionKind};
use crate::keys::Role;
use crate::model::{SessionRecord, rfc3339};
use crate::routes::{AppState, Caller, JsonBody, require};
use crate::scheduler::{cadence, parse_schedule};
use crate::secrets::valid_name;
use crate::store::{NewEvent, RunsOf, ScheduleRow};
use crate::templates::{bind_params, parse_spec, summary};

/// Next run times a schedule's status shows.
const NEXT_SHOWN: usize = 5;
/// Runs a schedule's status shows.
const RECENT_RUNS: i64 = 20;
/// The most finished runs a history limit keeps.
pub const MAX_HISTORY: u32 = 100;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_schedule", message)
}

/// Checks a schedule against itself and its template.
async fn checked(state: &AppState, spec: &ScheduleSpec) -> Result<String> {
    if !valid_name(&spec.name) || spec.name == "preview" {
        return Err(invalid(
            "a schedule's name is 1-63 lower-case letters, digits and '-', starting with a \
             letter, and not \"preview\"",
        ));
    }
    cadence(spec)?;
    if spec.starting_deadline_seconds.is_some_and(|d| d == 0 || d > 86_400) {
        return Err(invalid("startingDeadlineSeconds must be 1 to 86400"));
    }
    let limits = [spec.successful_runs_history_limit, spec.failed_runs_history_limit];
    if limits.iter().flatten().any(|l| *l > MAX_HISTORY) {
        return Err(invalid(format!("history limits must be at most {MAX_HISTORY}")));
    }
    let template = state.store.template(&spec.template).await?.ok_or_else(|| {
        ApiError::bad_request("unknown_template", format!("no template {:?}", spec.template))
    })?;
    bind_params(&parse_spec(&template)?, &spec.params, None)?;
    serde_json::to_string(spec).map_err(|e| ApiError::Internal(e.to_string()))
}

/// A schedule's status at the clock's now: its runs that `visible` lets through, its next
/// times, and what it skipped or missed.
pub async fn status(
    state: &AppState,
    row: &ScheduleRow,
    visible: impl Fn(&SessionRecord) -> bool,
) -> Result<ScheduleStatus> {
    let spec = parse_schedule(row)?;
    let runs = state.store.runs_of(RunsOf::Schedule, &row.name, RECENT_RUNS).await?;
    let shown: Vec<&SessionRecord> = runs.iter().filter(|s| visible(s)).collect();
    let now = state.config.clock.now();
    let next_run_times = if spec.suspend {
        vec![]
    } else {
        cadence(&spec)?
            .upcoming(now.max(row.last_considered), NEXT_SHOWN)
            .into_iter()
            .map(at_rfc3339)
            .collect()
    };
    Ok(ScheduleStatus {
        last_schedule_time: runs.iter().filter_map(|s| s.origin.scheduled_at).max().map(at_rfc3339),
        last_successful_time: runs
            .iter()
            .filter(|s| s.phase == SessionPhase::Succeeded)
            .filter_map(|s| s.finished_at)
            .max()
            .map(rfc3339),
        next_run_times,
        active: shown.iter().filter(|s| !s.phase.is_finished()).map(|s| s.id.clone()).collect(),
        recent_runs: shown.iter().map(|s| summary(s)).collect(),
        not_run: serde_json::from_str::<Vec<NotRun>>(&row.not_run).unwrap_or_default(),
    })
}

async fn view(state: &AppState, caller: &Caller, row: &ScheduleRow) -> Result<ScheduleView> {
    let visible = |s: &SessionRecord| caller.sees(&s.owner);
    Ok(ScheduleView {
        spec: parse_schedule(row)?,
        owner: row.owner.clone(),
        created_at: rfc3339(row.created_at),
        updated_at: rfc3339(row.updated_at),
        status: status(state, row, visible).await?,
    })
}

async fn found(state: &AppState, name: &str) -> Result<ScheduleRow> {
    state
        .store
        .schedule(name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("schedule {name:?}")))
}

fn event(name: &str, kind: &str, caller: &Caller) -> NewEvent {
    NewEvent {
        schedule: Some(name.into()),
        kind: kind.into(),
        message: format!("schedule {name}"),
        ..Default::default()
    }
    .by(&caller.key_id)
}

#[utoipa::path(post, path = "/api/schedules", tag = "schedules", summary = "Create a schedule",
    description = "Its runs are owned by the creating key and stop (skipped, OwnerRevoked) if that key is revoked.",
    request_body = ScheduleSpec,
    responses((status = 201, description = "Created", body = ScheduleView),
        (status = 400, description = "invalid_schedule, unknown_template, or a parameter's code", body = crate::error::ErrorBody),
        (status = 409, description = "schedule_exists", body = crate::error::ErrorBody)))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(spec): JsonBody<ScheduleSpec>,
) -> Result<Response> {
    require(&caller, &[Role::Admin, Role::Operator])?;
    let json = checked(&state, &spec).await?;
    let now = state.config.clock.now();
    if !state.store.insert_schedule(&spec.name, &json, &caller.key_id, now).await? {
        return Err(ApiError::refused(
            StatusCode::CONFLICT,
            "schedule_exists",
            format!(
                "schedule {:?} exists; PUT /api/schedules/{} replaces it",
                spec.name, spec.name
            ),
        ));
    }
    state.store.log(&event(&spec.name, "schedule_created", &caller)).await?;
    let row = found(&state, &spec.name).await?;
    state.executor.publish(Definition::Schedule(&parse_schedule(&row)?, &row.owner)).await?;
    Ok((StatusCode::CREATED, axum::Json(view(&state, &caller, &row).await?)).into_response())
}

#[utoipa::path(put, path = "/api/schedules/{name}", tag = "schedules",
    summary = "Replace a schedule (suspend and resume with it)", request_body = ScheduleSpec,
    params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, description = "Replaced", body = ScheduleView),
        (status = 404, description = "No such schedule", body = crate::error::ErrorBody)))]
pub(crate) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(mut spec): JsonBody<ScheduleSpec>,
) -> Result<axum::Json<ScheduleView>> {
    let row = found(&state, &name).await?;
    caller.may_change(&row.owner, "schedules")?;
    if !spec.name.is_empty() && spec.name != name {
        return Err(invalid("a schedule's name cannot change"));
    }
    spec.name = name.clone();
    let json = checked(&state, &spec).await?;
    state.store.update_schedule(&name, &json).await?;
    state.store.log(&event(&name, "schedule_updated", &caller)).await?;
    let row = found(&state, &name).await?;
    state.executor.publish(Definition::Schedule(&parse_schedule(&row)?, &row.owner)).await?;
    Ok(axum::Json(view(&state, &caller, &row).await?))
}

#[utoipa::path(get, path = "/api/schedules", tag = "schedules", summary = "List schedules",
    responses((status = 200, description = "Every schedule, with its status", body = SchedulePage)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<SchedulePage>> {
    let mut items = Vec::new();
    for row in state.store.schedules().await? {
        items.push(view(&state, &caller, &row).await?);
    }
    Ok(axum::Json(SchedulePage { items }))
}

#[utoipa::path(get, path = "/api/schedules/{name}", tag = "schedules",
    summary = "Get a schedule: spec and status (next run times, active, skipped and missed)",
    params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, description = "The schedule", body = ScheduleView),
        (status = 404, description = "No such schedule", body = crate::error::ErrorBody)))]
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<axum::Json<ScheduleView>> {
    let row = found(&state, &name).await?;
    Ok(axum::Json(view(&state, &caller, &row).await?))
}

#[utoipa::path(delete, path = "/api/schedules/{name}", tag = "schedules",
    summary = "Delete a schedule (its sessions stay until their TTL)",
    params(("name" = String, Path, description = "Schedule name")),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "No such schedule", body = crate::error::ErrorBody)))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    let row = found(&state, &name).await?;
    caller.may_change(&row.owner, "schedules")?;
    state.store.delete_schedule(&name).await?;
    state.executor.withdraw(DefinitionKind::Schedule, &name).await?;
    state.store.log(&event(&name, "schedule_deleted", &caller)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/schedules/preview", tag = "schedules",
    summary = "The next times a cron in a time zone fires, without saving anything",
    request_body = PreviewRequest,
    responses((status = 200, description = "The next five times (UTC)", body = Preview),
        (status = 400, description = "invalid_schedule", body = crate::error::ErrorBody)))]
pub(crate) async fn preview(
    State(state): State<AppState>,
    _caller: Caller,
    JsonBody(request): JsonBody<PreviewRequest>,
) -> Result<axum::Json<Preview>> {
    let spec =
        ScheduleSpec { cron: request.cron, time_zone: request.time_zone, ..Default::default() };
    let now = state.config.clock.now();
    let next_run_times =
        cadence(&spec)?.upcoming(now, NEXT_SHOWN).into_iter().map(at_rfc3339).collect();
    Ok(axum::Json(Preview { next_run_times }))
}
