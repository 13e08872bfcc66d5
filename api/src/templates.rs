//! Templates: named session definitions with typed parameters, a retry policy and a
//! concurrency policy; their runs, and the trigger tokens CI systems run them with
//! (docs/templates.md).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cliscale_core::rest::{
    CreateSessionRequest, CreateTriggerRequest, ParamSpec, ParamType, RunRequest, RunSummary,
    SessionCreated, TemplatePage, TemplateSpec, TemplateView, TriggerPage, TriggerView,
};
use cliscale_core::schedule::ConcurrencyPolicy;
use cliscale_core::token::TokenScope;

use crate::error::{ApiError, Result};
use crate::executor::{Definition, DefinitionKind};
use crate::keys::{Role, hash_secret, random_token, secret_matches};
use crate::model::{Origin, SessionRecord, rfc3339};
use crate::routes::{AppState, Caller, JsonBody, Peer, caller_of_key, created_answer, require};
use crate::runs::{NewRun, launch, session_spec};
use crate::secrets::valid_name;
use crate::store::{NewEvent, RunsOf, TemplateRow, TriggerRow, now};

/// Runs shown in a template's status.
const RECENT_RUNS: i64 = 20;
/// The most parameters a template takes.
pub const MAX_PARAMS: usize = 32;
/// The longest value a parameter takes.
pub const MAX_PARAM_LEN: usize = 4096;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_template", message)
}

/// "a string", "an integer", "a boolean".
fn kind_name(kind: ParamType) -> &'static str {
    match kind {
        ParamType::String => "a string",
        ParamType::Integer => "an integer",
        ParamType::Boolean => "a boolean (true or false)",
    }
}

fn env_name_ok(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.to_ascii_uppercase().starts_with("CLISCALE_")
}

/// A parameter's value as the text its variable holds, if it has the parameter's type. Pure.
fn typed(param: &ParamSpec, value: &serde_json::Value) -> Option<String> {
    let text = match (param.kind, value) {
        (ParamType::String, serde_json::Value::String(s)) => s.clone(),
        (ParamType::Integer, serde_json::Value::Number(n)) if n.is_i64() => n.to_string(),
        (ParamType::Integer, serde_json::Value::String(s)) if s.parse::<i64>().is_ok() => s.clone(),
        (ParamType::Boolean, serde_json::Value::Bool(b)) => b.to_string(),
        (ParamType::Boolean, serde_json::Value::String(s)) if s == "true" || s == "false" => {
            s.clone()
        }
        _ => return None,
    };
    (text.len() <= MAX_PARAM_LEN && !text.contains('\0')).then_some(text)
}

/// What is wrong with a template, if anything (its session is checked when it is validated
/// as a create request). Pure.
pub fn template_problem(spec: &TemplateSpec) -> Option<String> {
    if !valid_name(&spec.name) {
        return Some(
            "a template's name is 1-63 lower-case letters, digits and '-', starting with a letter"
                .into(),
        );
    }
    if spec.description.as_ref().is_some_and(|d| d.len() > 1024) {
        return Some("description must be at most 1024 characters".into());
    }
    if spec.labels.len() > 32
        || spec.labels.iter().any(|(k, v)| k.is_empty() || k.len() > 63 || v.len() > 253)
    {
        return Some("labels: at most 32, keys 1-63 and values at most 253 characters".into());
    }
    if spec.params.len() > MAX_PARAMS {
        return Some(format!("a template takes at most {MAX_PARAMS} parameters"));
    }
    let session_env: Vec<&String> = spec
        .session
        .env
        .iter()
        .flat_map(|e| e.keys())
        .chain(spec.session.secret_env.iter().flat_map(|e| e.keys()))
        .collect();
    let mut seen = std::collections::HashSet::new();
    for p in &spec.params {
        if !env_name_ok(&p.name) {
            return Some(format!(
                "parameter {:?}: a parameter is named as the environment variable it sets \
                 (letters, digits, '_'; not CLISCALE_*)",
                p.name
            ));
        }
        if !seen.insert(&p.name) || session_env.contains(&&p.name) {
            return Some(format!("parameter {:?} is named twice (or is also in env)", p.name));
        }
        if let Some(default) = &p.default {
            let Some(text) = typed(p, default) else {
                return Some(format!(
                    "parameter {:?}: the default is not {}",
                    p.name,
                    kind_name(p.kind)
                ));
            };
            if !p.allowed.is_empty() && !p.allowed.contains(&text) {
                return Some(format!(
                    "parameter {:?}: the default is not an allowed value",
                    p.name
                ));
            }
        }
        if p.allowed.len() > 64 {
            return Some(format!("parameter {:?}: at most 64 allowed values", p.name));
        }
    }
    if let Some(problem) = spec.retry.as_ref().and_then(|r| r.problem()) {
        return Some(problem);
    }
    None
}

/// The variables a run's parameters set: every given value checked against its type and
/// allowed values, defaults for the rest, required ones present. `may_set` limits which a
/// caller may give (a trigger token's list). Pure.
pub fn bind_params(
    spec: &TemplateSpec,
    given: &BTreeMap<String, serde_json::Value>,
    may_set: Option<&[String]>,
) -> Result<BTreeMap<String, String>> {
    if let Some(unknown) = given.keys().find(|k| !spec.params.iter().any(|p| &p.name == *k)) {
        return Err(ApiError::bad_request(
            "unknown_param",
            format!("template {:?} has no parameter {unknown:?}", spec.name),
        ));
    }
    if let Some(may) = may_set
        && let Some(denied) = given.keys().find(|k| !may.contains(k))
    {
        return Err(ApiError::refused(
            StatusCode::FORBIDDEN,
            "param_not_allowed",
            format!("this trigger token may not set {denied:?}"),
        ));
    }
    let mut bound = BTreeMap::new();
    for p in &spec.params {
        let value = match (given.get(&p.name), &p.default) {
            (Some(v), _) => v,
            (None, _) if p.required => {
                return Err(ApiError::bad_request(
                    "missing_param",
                    format!("parameter {:?} is required", p.name),
                ));
            }
            (None, Some(default)) => default,
            (None, None) => continue,
        };
        let text = typed(p, value).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_param",
                format!("parameter {:?} must be {}", p.name, kind_name(p.kind)),
            )
        })?;
        if !p.allowed.is_empty() && !p.allowed.contains(&text) {
            return Err(ApiError::bad_request(
                "invalid_param",
                format!("parameter {:?} must be one of {:?}", p.name, p.allowed),
            ));
        }
        bound.insert(p.name.clone(), text);
    }
    Ok(bound)
}

/// The create request a run makes: the template's session, its parameters added as plain
/// environment variables (never spliced into the command). Pure.
pub fn run_request(spec: &TemplateSpec, bound: BTreeMap<String, String>) -> CreateSessionRequest {
    let mut request = spec.session.clone();
    if !bound.is_empty() {
        request.env.get_or_insert_with(BTreeMap::new).extend(bound);
    }
    request
}

pub(crate) fn parse_spec(row: &TemplateRow) -> Result<TemplateSpec> {
    serde_json::from_str(&row.spec)
        .map_err(|_| ApiError::Internal(format!("stored template {:?} does not parse", row.name)))
}

pub(crate) fn summary(s: &SessionRecord) -> RunSummary {
    RunSummary {
        session_id: s.id.clone(),
        phase: s.phase,
        exit_code: s.exit_code,
        attempt: s.origin.attempt,
        retry_of: s.origin.retry_of.clone(),
        created_at: rfc3339(s.created_at),
    }
}

async fn view(state: &AppState, caller: &Caller, row: &TemplateRow) -> Result<TemplateView> {
    let runs = state.store.runs_of(RunsOf::Template, &row.name, RECENT_RUNS).await?;
    let recent_runs = runs.iter().filter(|s| caller.sees(&s.owner)).map(summary).collect();
    Ok(TemplateView {
        spec: parse_spec(row)?,
        generation: row.generation,
        owner: row.owner.clone(),
        created_at: rfc3339(row.created_at),
        updated_at: rfc3339(row.updated_at),
        recent_runs,
    })
}

async fn found(state: &AppState, name: &str) -> Result<TemplateRow> {
    state
        .store
        .template(name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("template {name:?}")))
}

/// Checks a template fully, its session as a create request included (secrets must exist).
async fn checked(state: &AppState, caller: &Caller, spec: &TemplateSpec) -> Result<String> {
    if let Some(problem) = template_problem(spec) {
        return Err(invalid(problem));
    }
    crate::runs::may_name_secrets(caller, &spec.session)?;
    // Its session with every default given must make a valid session.
    let defaults: BTreeMap<String, String> = spec
        .params
        .iter()
        .map(|p| (p.name.clone(), p.default.as_ref().and_then(|d| typed(p, d)).unwrap_or_default()))
        .collect();
    session_spec(state, run_request(spec, defaults)).await?;
    serde_json::to_string(spec).map_err(|e| ApiError::Internal(e.to_string()))
}

#[utoipa::path(post, path = "/api/templates", tag = "templates", summary = "Create a template",
    request_body = TemplateSpec,
    responses((status = 201, description = "Created", body = TemplateView),
        (status = 400, description = "invalid_template, or a session field's own code", body = crate::error::ErrorBody),
        (status = 409, description = "template_exists", body = crate::error::ErrorBody)))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(spec): JsonBody<TemplateSpec>,
) -> Result<Response> {
    require(&caller, &[Role::Admin, Role::Operator])?;
    let json = checked(&state, &caller, &spec).await?;
    if !state.store.insert_template(&spec.name, &json, &caller.key_id).await? {
        return Err(ApiError::refused(
            StatusCode::CONFLICT,
            "template_exists",
            format!(
                "template {:?} exists; PUT /api/templates/{} replaces it",
                spec.name, spec.name
            ),
        ));
    }
    let entry = NewEvent {
        template: Some(spec.name.clone()),
        kind: "template_created".into(),
        message: format!("template {} generation 1", spec.name),
        ..Default::default()
    };
    state.store.log(&entry.by(&caller.key_id)).await?;
    let row = found(&state, &spec.name).await?;
    state.executor.publish(Definition::Template(&parse_spec(&row)?, &row.owner)).await?;
    Ok((StatusCode::CREATED, axum::Json(view(&state, &caller, &row).await?)).into_response())
}

#[utoipa::path(put, path = "/api/templates/{name}", tag = "templates",
    summary = "Replace a template (its generation goes up)", request_body = TemplateSpec,
    params(("name" = String, Path, description = "Template name")),
    responses((status = 200, description = "Replaced", body = TemplateView),
        (status = 404, description = "No such template", body = crate::error::ErrorBody)))]
pub(crate) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(mut spec): JsonBody<TemplateSpec>,
) -> Result<axum::Json<TemplateView>> {
    let row = found(&state, &name).await?;
    caller.may_change(&row.owner, "templates")?;
    if !spec.name.is_empty() && spec.name != name {
        return Err(invalid("a template's name cannot change"));
    }
    spec.name = name.clone();
    let json = checked(&state, &caller, &spec).await?;
    state.store.update_template(&name, &json).await?;
    let row = found(&state, &name).await?;
    state.executor.publish(Definition::Template(&parse_spec(&row)?, &row.owner)).await?;
    let entry = NewEvent {
        template: Some(name.clone()),
        kind: "template_updated".into(),
        message: format!("template {name} generation {}", row.generation),
        ..Default::default()
    };
    state.store.log(&entry.by(&caller.key_id)).await?;
    Ok(axum::Json(view(&state, &caller, &row).await?))
}

#[utoipa::path(get, path = "/api/templates", tag = "templates", summary = "List templates",
    responses((status = 200, description = "Every template", body = TemplatePage)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<TemplatePage>> {
    let mut items = Vec::new();
    for row in state.store.templates().await? {
        items.push(view(&state, &caller, &row).await?);
    }
    Ok(axum::Json(TemplatePage { items }))
}

#[utoipa::path(get, path = "/api/templates/{name}", tag = "templates",
    summary = "Get a template, with its latest runs",
    params(("name" = String, Path, description = "Template name")),
    responses((status = 200, description = "The template", body = TemplateView),
        (status = 404, description = "No such template", body = crate::error::ErrorBody)))]
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<axum::Json<TemplateView>> {
    let row = found(&state, &name).await?;
    Ok(axum::Json(view(&state, &caller, &row).await?))
}

#[utoipa::path(delete, path = "/api/templates/{name}", tag = "templates",
    summary = "Delete a template (its trigger tokens are revoked; its sessions stay)",
    params(("name" = String, Path, description = "Template name")),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "No such template", body = crate::error::ErrorBody)))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    let row = found(&state, &name).await?;
    caller.may_change(&row.owner, "templates")?;
    state.store.delete_template(&name).await?;
    state.executor.withdraw(DefinitionKind::Template, &name).await?;
    let entry = NewEvent {
        template: Some(name.clone()),
        kind: "template_deleted".into(),
        message: format!("template {name}"),
        ..Default::default()
    };
    state.store.log(&entry.by(&caller.key_id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who starts a run and on whose behalf.
pub(crate) struct Starter {
    /// The key that owns the session.
    pub owner: String,
    /// Who the event log names.
    pub actor: String,
    pub how: String,
}

/// Starts a run of `row` with `bound` parameters under the template's concurrency policy:
/// Forbid refuses while a run is active (409 `run_forbidden`), Replace cancels the active ones
/// first. `origin` says where it came from beyond the template. `None`: a run of that id
/// exists.
pub(crate) async fn start_run(
    state: &AppState,
    row: &TemplateRow,
    bound: BTreeMap<String, String>,
    mut origin: Origin,
    id: String,
    starter: Starter,
) -> Result<Option<SessionRecord>> {
    let spec = parse_spec(row)?;
    let active = state.store.active_runs(RunsOf::Template, &row.name).await?;
    match spec.concurrency_policy {
        ConcurrencyPolicy::Forbid if !active.is_empty() => {
            return Err(ApiError::refused(
                StatusCode::CONFLICT,
                "run_forbidden",
                format!(
                    "template {:?} allows one run at a time and {} is active",
                    row.name, active[0].id
                ),
            ));
        }
        ConcurrencyPolicy::Replace => {
            for old in active {
                state.executor.cancel(&old.id).await?;
                let message = format!("replaced by a new run of template {}", row.name);
                state
                    .store
                    .log(&NewEvent::about(&old, "cancel", message).by(&starter.actor))
                    .await?;
            }
        }
        _ => {}
    }
    let (session, secret_env) = session_spec(state, run_request(&spec, bound)).await?;
    origin.template = Some(row.name.clone());
    origin.template_generation = Some(row.generation);
    origin.secret_env = secret_env;
    if origin.retry.is_none() {
        origin.retry = spec.retry.clone().filter(|r| r.limit > 0);
    }
    let run = NewRun {
        id,
        owner: starter.owner,
        spec: session,
        origin,
        actor: starter.actor,
        how: starter.how,
    };
    launch(state, run).await
}

#[utoipa::path(post, path = "/api/templates/{name}/runs", tag = "templates",
    summary = "Run a template (answers as POST /api/sessions does)", request_body = RunRequest,
    params(("name" = String, Path, description = "Template name")),
    responses((status = 201, description = "Started", body = SessionCreated),
        (status = 400, description = "unknown_param, missing_param or invalid_param", body = crate::error::ErrorBody),
        (status = 404, description = "No such template", body = crate::error::ErrorBody),
        (status = 409, description = "run_forbidden: the template's Forbid policy and an active run", body = crate::error::ErrorBody)))]
pub(crate) async fn run(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<RunRequest>,
) -> Result<Response> {
    require(&caller, &[Role::Admin, Role::Operator])?;
    let row = found(&state, &name).await?;
    let bound = bind_params(&parse_spec(&row)?, &request.params, None)?;
    let starter = Starter {
        owner: caller.key_id.clone(),
        actor: caller.key_id.clone(),
        how: format!("by key {} from template {name} generation {}", caller.key_id, row.generation),
    };
    let id = uuid::Uuid::new_v4().to_string();
    let record = start_run(&state, &row, bound, Origin::default(), id, starter)
        .await?
        .ok_or_else(|| ApiError::Internal("a fresh run id was taken".into()))?;
    created_answer(&state, &headers, peer, &caller, &record, TokenScope::Interact)
}

// --- trigger tokens -------------------------------------------------------------------------

/// A trigger token reads `cst_<id>_<secret>`, as API keys do with `csk_`.
fn new_trigger_token() -> (String, String, String) {
    let id = hex::encode(rand::random::<[u8; 8]>());
    let secret = random_token(32);
    let hash = hash_secret(&secret);
    (format!("cst_{id}_{secret}"), id, hash)
}

fn parse_trigger_token(full: &str) -> Option<(&str, &str)> {
    let (id, secret) = full.strip_prefix("cst_")?.split_once('_')?;
    let valid = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty();
    valid.then_some((id, secret))
}

fn trigger_view(row: &TriggerRow, token: Option<String>) -> TriggerView {
    TriggerView {
        id: row.id.clone(),
        template: row.template.clone(),
        name: row.name.clone(),
        params: row.params.clone(),
        created_at: rfc3339(row.created_at),
        revoked_at: row.revoked_at.map(rfc3339),
        last_used_at: row.last_used_at.map(rfc3339),
        token,
    }
}

#[utoipa::path(post, path = "/api/templates/{name}/triggers", tag = "templates",
    summary = "Make a trigger token for a template (admin; shown once)",
    request_body = CreateTriggerRequest,
    params(("name" = String, Path, description = "Template name")),
    responses((status = 201, description = "Made; `token` is shown this once", body = TriggerView),
        (status = 400, description = "invalid_trigger: a bad name or an unknown parameter", body = crate::error::ErrorBody),
        (status = 404, description = "No such template", body = crate::error::ErrorBody)))]
pub(crate) async fn create_trigger(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<CreateTriggerRequest>,
) -> Result<Response> {
    require(&caller, &[Role::Admin])?;
    let row = found(&state, &name).await?;
    let spec = parse_spec(&row)?;
    if request.name.trim().is_empty() || request.name.len() > 128 {
        return Err(ApiError::bad_request("invalid_trigger", "name must be 1-128 characters"));
    }
    if let Some(unknown) =
        request.params.iter().find(|p| !spec.params.iter().any(|q| &q.name == *p))
    {
        return Err(ApiError::bad_request(
            "invalid_trigger",
            format!("template {name:?} has no parameter {unknown:?}"),
        ));
    }
    let (full, id, secret_hash) = new_trigger_token();
    let trigger = TriggerRow {
        id,
        template: name.clone(),
        name: request.name,
        secret_hash,
        params: request.params,
        owner: caller.key_id.clone(),
        created_at: now(),
        revoked_at: None,
        last_used_at: None,
    };
    state.store.insert_trigger(&trigger).await?;
    let entry = NewEvent {
        template: Some(name.clone()),
        kind: "trigger_created".into(),
        message: format!("trigger {} ({}) for template {name}", trigger.id, trigger.name),
        ..Default::default()
    };
    state.store.log(&entry.by(&caller.key_id)).await?;
    Ok((StatusCode::CREATED, axum::Json(trigger_view(&trigger, Some(full)))).into_response())
}

#[utoipa::path(get, path = "/api/templates/{name}/triggers", tag = "templates",
    summary = "List a template's trigger tokens (admin; never the tokens)",
    params(("name" = String, Path, description = "Template name")),
    responses((status = 200, description = "Its tokens", body = TriggerPage)))]
pub(crate) async fn list_triggers(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<axum::Json<TriggerPage>> {
    require(&caller, &[Role::Admin])?;
    found(&state, &name).await?;
    let items = state.store.triggers(&name).await?.iter().map(|t| trigger_view(t, None)).collect();
    Ok(axum::Json(TriggerPage { items }))
}

#[utoipa::path(delete, path = "/api/templates/{name}/triggers/{id}", tag = "templates",
    summary = "Revoke a trigger token (admin)",
    params(("name" = String, Path, description = "Template name"),
        ("id" = String, Path, description = "Trigger id")),
    responses((status = 204, description = "Revoked"),
        (status = 404, description = "No such standing token of this template", body = crate::error::ErrorBody)))]
pub(crate) async fn revoke_trigger(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode> {
    require(&caller, &[Role::Admin])?;
    if !state.store.revoke_trigger(&name, &id).await? {
        return Err(ApiError::NotFound(format!("trigger {id:?}")));
    }
    let entry = NewEvent {
        template: Some(name.clone()),
        kind: "trigger_revoked".into(),
        message: format!("trigger {id} of template {name}"),
        ..Default::default()
    };
    state.store.log(&entry.by(&caller.key_id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn bad_trigger() -> ApiError {
    ApiError::unauthorized("invalid_trigger_token", "the trigger token is not valid")
}

/// The standing trigger token a request presents as its Bearer credential.
async fn trigger_token(state: &AppState, headers: &HeaderMap) -> Result<TriggerRow> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(bad_trigger)?;
    let (id, secret) = parse_trigger_token(presented.trim()).ok_or_else(bad_trigger)?;
    let token = state.store.trigger(id).await?.ok_or_else(bad_trigger)?;
    if token.revoked_at.is_some() || !secret_matches(secret, &token.secret_hash) {
        return Err(bad_trigger());
    }
    Ok(token)
}

#[utoipa::path(post, path = "/api/templates/{name}/trigger", tag = "templates",
    summary = "Run a template with a trigger token (Bearer cst_…)",
    description = "The token is the Bearer credential; it may set only the parameters it names. Answers as POST /api/sessions does, with a view-scope terminal token.",
    request_body = RunRequest, security(()),
    params(("name" = String, Path, description = "Template name")),
    responses((status = 201, description = "Started", body = SessionCreated),
        (status = 401, description = "invalid_trigger_token: missing, unknown, revoked, or its owner key no longer stands", body = crate::error::ErrorBody),
        (status = 403, description = "trigger_scope (a token of another template) or param_not_allowed", body = crate::error::ErrorBody),
        (status = 409, description = "run_forbidden", body = crate::error::ErrorBody),
        (status = 429, description = "This token's rate limit", body = crate::error::ErrorBody)))]
pub(crate) async fn trigger(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<RunRequest>,
) -> Result<Response> {
    // A wrong token is charged to the caller's address, as a wrong API key is.
    let token = match trigger_token(&state, &headers).await {
        Ok(token) => token,
        Err(e) => {
            state.charge_address(&headers, peer)?;
            return Err(e);
        }
    };
    state.charge(format!("trigger:{}", token.id))?;
    if token.template != name {
        return Err(ApiError::refused(
            StatusCode::FORBIDDEN,
            "trigger_scope",
            "this trigger token runs another template",
        ));
    }
    // It acts for the key that made it, as long as that key stands.
    let owner = caller_of_key(&state, &token.owner).await.map_err(|_| bad_trigger())?;
    let row = found(&state, &name).await?;
    let bound = bind_params(&parse_spec(&row)?, &request.params, Some(&token.params))?;
    let actor = format!("trigger:{}", token.id);
    state.store.touch_trigger(&token.id).await?;
    let used = NewEvent {
        template: Some(name.clone()),
        kind: "trigger_used".into(),
        message: format!("trigger {} ({}) with {:?}", token.id, token.name, bound.keys()),
        ..Default::default()
    };
    state.store.log(&used.by(&actor)).await?;
    let starter = Starter {
        owner: owner.key_id.clone(),
        actor: actor.clone(),
        how: format!("by trigger {} from template {name} generation {}", token.id, row.generation),
    };
    let origin = Origin { trigger: Some(token.id.clone()), ..Origin::default() };
    let id = uuid::Uuid::new_v4().to_string();
    let record = start_run(&state, &row, bound, origin, id, starter)
        .await?
        .ok_or_else(|| ApiError::Internal("a fresh run id was taken".into()))?;
    created_answer(&state, &headers, peer, &owner, &record, TokenScope::View)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template() -> TemplateSpec {
        serde_json::from_value(json!({
            "name": "deploy",
            "session": {"command": "./deploy.sh \"$TARGET\"", "env": {"MODE": "ci"}},
            "params": [
                {"name": "TARGET", "type": "string", "required": true, "allowed": ["staging", "prod"]},
                {"name": "REPLICAS", "type": "integer", "default": 2},
                {"name": "DRY_RUN", "type": "boolean", "default": false}
            ]
        }))
        .unwrap()
    }

    fn given(v: serde_json::Value) -> BTreeMap<String, serde_json::Value> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn parameters_become_variables_with_defaults_and_never_touch_the_command() {
        let spec = template();
        let bound = bind_params(&spec, &given(json!({"TARGET": "prod; rm -rf /"})), None);
        assert_eq!(bound.unwrap_err().code(), "invalid_param");
        let bound =
            bind_params(&spec, &given(json!({"TARGET": "prod", "REPLICAS": "5"})), None).unwrap();
        assert_eq!(
            bound,
            BTreeMap::from([
                ("DRY_RUN".into(), "false".into()),
                ("REPLICAS".into(), "5".into()),
                ("TARGET".into(), "prod".into())
            ])
        );
        let request = run_request(&spec, bound);
        assert_eq!(request.command, spec.session.command);
        assert_eq!(request.env.unwrap()["MODE"], "ci");
    }

    #[test]
    fn bad_runs_are_named() {
        let spec = template();
        let code =
            |v, may: Option<&[String]>| bind_params(&spec, &given(v), may).unwrap_err().code();
        assert_eq!(code(json!({}), None), "missing_param");
        assert_eq!(code(json!({"TARGET": "prod", "NOPE": 1}), None), "unknown_param");
        assert_eq!(code(json!({"TARGET": "prod", "REPLICAS": "two"}), None), "invalid_param");
        assert_eq!(code(json!({"TARGET": "prod", "DRY_RUN": 1}), None), "invalid_param");
        let only_target = ["TARGET".to_string()];
        assert_eq!(
            code(json!({"TARGET": "prod", "REPLICAS": 3}), Some(&only_target)),
            "param_not_allowed"
        );
        assert!(bind_params(&spec, &given(json!({"TARGET": "prod"})), Some(&only_target)).is_ok());
    }

    #[test]
    fn bad_templates_are_named() {
        assert!(template_problem(&template()).is_none());
        let mut t = template();
        t.name = "Deploy".into();
        assert!(template_problem(&t).is_some());
        let mut t = template();
        t.params[0].name = "CLISCALE_X".into();
        assert!(template_problem(&t).is_some());
        let mut t = template();
        t.params[1].name = "MODE".into();
        assert!(template_problem(&t).unwrap().contains("twice"));
        let mut t = template();
        t.params[1].default = Some(json!("many"));
        assert!(template_problem(&t).unwrap().contains("default"));
    }

    #[test]
    fn trigger_tokens_parse_and_hash() {
        let (full, id, hash) = new_trigger_token();
        let (pid, secret) = parse_trigger_token(&full).unwrap();
        assert_eq!(pid, id);
        assert!(secret_matches(secret, &hash));
        assert!(parse_trigger_token("csk_0123456789abcdef_x").is_none());
        assert!(parse_trigger_token("cst_short_x").is_none());
    }
}
