//! The loop that fires schedules and retries: every second it asks the pure scheduling core
//! (`cliscale_core::schedule`) what each schedule should do now, and the retry policy what
//! each finished attempt should; then it does it. Several replicas may run it at once: a
//! schedule's times are claimed by compare-and-set and runs have deterministic ids, so no
//! scheduled time and no retry starts twice (docs/schedules.md).

use std::path::PathBuf;
use std::time::Duration;

use cliscale_core::SessionPhase;
use cliscale_core::rest::{NotRun, ScheduleSpec};
use cliscale_core::schedule::{self, Cadence, Decision, History, Rules, SkipReason, rfc3339};
use tokio_util::sync::CancellationToken;

use crate::error::{ApiError, Result};
use crate::model::Origin;
use crate::routes::{AppState, caller_of_key};
use crate::store::{NewEvent, RunsOf, ScheduleRow};
use crate::templates::{Starter, bind_params, parse_spec, start_run};

/// The clock schedules and retries are decided by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Clock {
    /// The system's.
    #[default]
    System,
    /// Unix seconds read from a file at every tick (for tests that move time by hand); the
    /// system's when the file holds none.
    File(PathBuf),
}

impl Clock {
    pub fn now(&self) -> i64 {
        match self {
            Self::System => crate::store::now(),
            Self::File(path) => std::fs::read_to_string(path)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or_else(crate::store::now),
        }
    }
}

/// How often the loop looks.
const TICK: Duration = Duration::from_secs(1);
/// Skipped and missed times a schedule's status keeps.
const NOT_RUN_KEPT: usize = 20;

/// Runs the loop until `stop`.
pub async fn run(state: AppState, stop: CancellationToken) {
    loop {
        let now = state.config.clock.now();
        if let Err(e) = tick(&state, now).await {
            tracing::warn!(error = %e, "a scheduling pass failed; the next one retries");
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One pass at time `now`: every schedule, then every finished attempt with a retry policy.
pub async fn tick(state: &AppState, now: i64) -> Result<()> {
    for row in state.store.schedules().await? {
        if let Err(e) = tick_schedule(state, &row, now).await {
            tracing::warn!(schedule = %row.name, error = %e, "schedule pass failed");
        }
    }
    crate::retries::tick(state, now).await
}

pub(crate) fn parse_schedule(row: &ScheduleRow) -> Result<ScheduleSpec> {
    serde_json::from_str(&row.spec)
        .map_err(|_| ApiError::Internal(format!("stored schedule {:?} does not parse", row.name)))
}

pub(crate) fn cadence(spec: &ScheduleSpec) -> Result<Cadence> {
    Cadence::parse(&spec.cron, spec.time_zone.as_deref())
        .map_err(|e| ApiError::bad_request("invalid_schedule", e.to_string()))
}

fn schedule_event(name: &str, kind: &str, message: String) -> NewEvent {
    NewEvent {
        schedule: Some(name.into()),
        kind: kind.into(),
        message,
        actor: Some(format!("schedule:{name}")),
        ..Default::default()
    }
}

fn reason_name(reason: SkipReason) -> &'static str {
    match reason {
        SkipReason::ConcurrencyForbid => "ConcurrencyForbid",
        SkipReason::Suspended => "Suspended",
        SkipReason::DeadlineExceeded => "DeadlineExceeded",
    }
}

async fn tick_schedule(state: &AppState, row: &ScheduleRow, now: i64) -> Result<()> {
    let spec = parse_schedule(row)?;
    let cadence = cadence(&spec)?;
    let active = state.store.active_runs(RunsOf::Schedule, &row.name).await?;
    let rules = Rules {
        concurrency: spec.concurrency_policy,
        starting_deadline_seconds: spec.starting_deadline_seconds,
        suspend: spec.suspend,
    };
    let history = History {
        last_considered: row.last_considered,
        active: active.iter().map(|s| s.id.clone()).collect(),
    };
    let plan = schedule::plan(&cadence, &rules, &history, now);
    if plan.decisions.is_empty() {
        return prune(state, row, &spec).await;
    }
    let mut not_run: Vec<NotRun> = serde_json::from_str(&row.not_run).unwrap_or_default();
    let mut noted = |at: i64, reason: &str, message: &str| {
        not_run.insert(
            0,
            NotRun { scheduled_at: rfc3339(at), reason: reason.into(), message: message.into() },
        );
    };
    for decision in &plan.decisions {
        match decision {
            Decision::Missed { first, last, count } => noted(
                *last,
                "Missed",
                &format!("{count} times from {} were passed over", rfc3339(*first)),
            ),
            Decision::Skip { at, reason } => noted(*at, reason_name(*reason), "not started"),
            Decision::Start { .. } => {}
        }
    }
    not_run.truncate(NOT_RUN_KEPT);
    let not_run = serde_json::to_string(&not_run).map_err(|e| ApiError::Internal(e.to_string()))?;
    // Claim the times first: a replica (or a restart) that decided the same loses here.
    if !state
        .store
        .advance_schedule(&row.uid, row.last_considered, plan.last_considered, &not_run)
        .await?
    {
        return Ok(());
    }
    for decision in plan.decisions {
        match decision {
            Decision::Missed { first, last, count } => {
                let message = format!(
                    "{count} scheduled times from {} to {} were missed (nothing was deciding \
                     then); only the latest is considered",
                    rfc3339(first),
                    rfc3339(last)
                );
                state.store.log(&schedule_event(&row.name, "missed", message)).await?;
            }
            Decision::Skip { at, reason } => {
                let message = format!("{} not started: {}", rfc3339(at), reason_name(reason));
                state.store.log(&schedule_event(&row.name, "skipped", message)).await?;
            }
            Decision::Start { at, replace } => {
                start_scheduled(state, row, &spec, at, replace).await?;
            }
        }
    }
    prune(state, row, &spec).await
}

async fn start_scheduled(
    state: &AppState,
    row: &ScheduleRow,
    spec: &ScheduleSpec,
    at: i64,
    replace: Vec<String>,
) -> Result<()> {
    let skip = |why: String| {
        schedule_event(&row.name, "skipped", format!("{} not started: {why}", rfc3339(at)))
    };
    // It runs for the key that made it, as long as that key stands (or for the cluster, when
    // it was applied with kubectl).
    if row.owner != crate::store::CLUSTER_OWNER && caller_of_key(state, &row.owner).await.is_err() {
        return state
            .store
            .log(&skip("OwnerRevoked: the key that made it no longer stands".into()))
            .await;
    }
    let Some(template) = state.store.template(&spec.template).await? else {
        return state
            .store
            .log(&skip(format!("TemplateMissing: no template {:?}", spec.template)))
            .await;
    };
    let bound = match bind_params(&parse_spec(&template)?, &spec.params, None) {
        Ok(bound) => bound,
        Err(e) => return state.store.log(&skip(format!("InvalidParams: {e}"))).await,
    };
    for old in replace {
        state.executor.cancel(&old).await?;
        if let Some(record) = state.store.get_session(&old).await? {
            let message = format!("replaced by the run for {}", rfc3339(at));
            let entry =
                NewEvent::about(&record, "cancel", message).by(format!("schedule:{}", row.name));
            state.store.log(&entry).await?;
        }
    }
    let origin =
        Origin { schedule: Some(row.name.clone()), scheduled_at: Some(at), ..Origin::default() };
    let starter = Starter {
        owner: row.owner.clone(),
        actor: format!("schedule:{}", row.name),
        how: format!("by schedule {} for {}", row.name, rfc3339(at)),
    };
    let id = schedule::run_id(&row.uid, at);
    match start_run(state, &template, bound, origin, id.clone(), starter).await {
        Ok(Some(_)) => {
            let message = format!("{} started as {id}", rfc3339(at));
            let entry = NewEvent {
                session: Some(id),
                template: Some(template.name.clone()),
                ..schedule_event(&row.name, "scheduled", message)
            };
            state.store.log(&entry).await
        }
        // Started already, by another replica.
        Ok(None) => Ok(()),
        Err(e) if e.code() == "run_forbidden" => {
            state.store.log(&skip(format!("TemplateForbid: {e}"))).await
        }
        Err(e) => state.store.log(&skip(format!("StartFailed: {e}"))).await,
    }
}

/// Deletes finished runs beyond the schedule's history limits, oldest first.
async fn prune(state: &AppState, row: &ScheduleRow, spec: &ScheduleSpec) -> Result<()> {
    let keep_ok = spec.successful_runs_history_limit.unwrap_or(3) as usize;
    let keep_failed = spec.failed_runs_history_limit.unwrap_or(1) as usize;
    let runs = state.store.runs_of(RunsOf::Schedule, &row.name, 1000).await?;
    let (mut ok, mut failed) = (0, 0);
    for run in runs.iter().filter(|r| r.phase.is_finished()) {
        let over = if run.phase == SessionPhase::Succeeded {
            ok += 1;
            ok > keep_ok
        } else {
            failed += 1;
            failed > keep_failed
        };
        if over {
            state.executor.discard(&state.store, &run.id).await?;
        }
    }
    Ok(())
}
