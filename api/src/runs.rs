//! Starting sessions, whoever asks: a key (`POST /api/sessions`), a template run, a trigger
//! token, a schedule or a retry. One path records the creation, the secrets referenced and
//! the origin, and hands the session to the executor.

use std::collections::BTreeMap;

use cliscale_core::rest::{CreateSessionRequest, SecretRef};

use crate::error::{ApiError, Result};
use crate::model::{Origin, SessionRecord, SessionSpec, validate_create};
use axum::http::StatusCode;

use crate::keys::Role;
use crate::routes::{AppState, Caller};
use crate::store::NewEvent;

/// Only admins name secrets in a session or a template: whoever names one can read it (the
/// command sees its value), so naming one is as good as reading it. Operators run templates an
/// admin gave secrets to.
pub(crate) fn may_name_secrets(caller: &Caller, request: &CreateSessionRequest) -> Result<()> {
    if request.secret_env.as_ref().is_some_and(|e| !e.is_empty()) && caller.role != Role::Admin {
        return Err(ApiError::refused(
            StatusCode::FORBIDDEN,
            "secret_forbidden",
            "only admin keys name secrets; run a template an admin made instead",
        ));
    }
    Ok(())
}

/// A create request as a spec: validated, its `secret_env` checked against the vault and
/// turned into references. Returns the spec and the variables by the secrets' own names.
pub(crate) async fn session_spec(
    state: &AppState,
    mut request: CreateSessionRequest,
) -> Result<(SessionSpec, BTreeMap<String, SecretRef>)> {
    let secret_env = request.secret_env.take().unwrap_or_default();
    let mut spec = validate_create(request, state.config.spec_defaults)?;
    if !secret_env.is_empty() {
        spec.env_from_secrets =
            crate::secrets::resolve_secret_env(state.vault.as_ref(), &secret_env).await?;
        spec.validate().map_err(|e| ApiError::bad_request(e.code, e.message))?;
    }
    Ok((spec, secret_env))
}

/// A session to start.
pub(crate) struct NewRun {
    pub id: String,
    pub owner: String,
    pub spec: SessionSpec,
    pub origin: Origin,
    /// Who asked: a key id, `trigger:<id>`, `schedule:<name>` or `retry`.
    pub actor: String,
    /// How the creation reads in the event log.
    pub how: String,
}

/// Stores and starts `run`, unless a session of its id exists (runs of schedules and retries
/// have deterministic ids): then `None`, and nothing is started.
pub(crate) async fn launch(state: &AppState, run: NewRun) -> Result<Option<SessionRecord>> {
    if !state.store.insert_run(&run.id, &run.owner, &run.spec, &run.origin).await? {
        return Ok(None);
    }
    started(state, &run.id, &run.actor, &run.how).await.map(Some)
}

/// Records the creation of stored session `id` and hands it to the executor.
pub(crate) async fn started(
    state: &AppState,
    id: &str,
    actor: &str,
    how: &str,
) -> Result<SessionRecord> {
    let record = state
        .store
        .get_session(id)
        .await?
        .ok_or_else(|| ApiError::Internal("session vanished".into()))?;
    state.store.log(&NewEvent::about(&record, "created", how.into()).by(actor)).await?;
    for (env, source) in &record.origin.secret_env {
        let message = format!("{env} from secret {} key {}", source.secret, source.key);
        state.store.log(&NewEvent::about(&record, "secret_referenced", message).by(actor)).await?;
    }
    state.executor.start(record.clone()).await?;
    state.metrics.sessions_created.inc();
    Ok(record)
}
