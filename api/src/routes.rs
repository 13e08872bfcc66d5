//! The REST API (docs/api.md): sessions, terminal tokens, API keys, JWKS, health and metrics.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cliscale_core::token::{TERMINAL_AUDIENCE, TokenScope, new_claims};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

use crate::error::{ApiError, Result};
use crate::executor::Executor;
use crate::keys::{self, Role};
pub(crate) use cliscale_core::rest::{CreateKeyRequest, ListQuery, MintRequest, UpdateKeyRequest};

use crate::model::{
    CreateSessionRequest, EventPage, EventView, KeyPage, KeyView, Origin, SessionCreated,
    SessionPage, SessionRecord, SessionView, SpecDefaults, TokenMinted,
};
use crate::output_routes;
use crate::signing::KeyRing;
use crate::store::{ApiKeyRecord, Created, KeyChange, NewEvent, SessionQuery, Store, now};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
pub const MAX_PAGE: i64 = 200;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Base of absolute URLs handed out (`https://cliscale.example.com`); from the request's
    /// Host (or trusted forwarded headers) when unset.
    pub public_url: Option<String>,
    pub token_ttl: Duration,
    pub issuer: String,
    /// Requests per minute per API key, and per client address for unauthenticated requests.
    pub rate_per_minute: u32,
    /// Proxies whose X-Forwarded-For / -Proto / -Host are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// What sessions whose request names no TTL get, and how long their terminals linger.
    pub spec_defaults: SpecDefaults,
    /// Most bytes of output stored per session (head and tail kept, a gap between).
    pub output_cap_bytes: u64,
    /// Set when sessions cannot be isolated from the server: why. Only admin keys are then
    /// accepted, and no other kind can be made.
    pub admin_only: Option<String>,
    /// How long a console login lasts.
    pub console_session_ttl: Duration,
    /// The clock schedules and retries are decided by.
    pub clock: crate::scheduler::Clock,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            public_url: None,
            token_ttl: Duration::from_secs(300),
            issuer: "cliscale".into(),
            rate_per_minute: 600,
            trusted_proxies: Vec::new(),
            spec_defaults: SpecDefaults::default(),
            output_cap_bytes: crate::output::DEFAULT_CAP_BYTES,
            admin_only: None,
            console_session_ttl: DEFAULT_CONSOLE_SESSION_TTL,
            clock: crate::scheduler::Clock::System,
        }
    }
}

/// How long a console login lasts unless configured: a working day.
pub const DEFAULT_CONSOLE_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

pub struct ApiState {
    pub store: Store,
    pub keys: Arc<KeyRing>,
    pub executor: Arc<dyn Executor>,
    pub config: ApiConfig,
    limiter: DefaultKeyedRateLimiter<String>,
    pub metrics: crate::metrics::ApiMetrics,
    pub output: crate::output::Output,
    /// Checks runners' append credentials.
    pub output_verifier: cliscale_core::token::JwksVerifier,
    /// Cancelled when the server stops: open event streams end, so shutdown is not held up.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Where secrets are kept.
    pub vault: Arc<dyn crate::secrets::SecretVault>,
}

impl ApiState {
    pub fn new(
        store: Store,
        keys: Arc<KeyRing>,
        executor: Arc<dyn Executor>,
        config: ApiConfig,
    ) -> Arc<Self> {
        Self::with_vault(store, keys, executor, config, Arc::new(crate::secrets::NoVault))
    }

    /// An API whose secrets are kept in `vault`.
    pub fn with_vault(
        store: Store,
        keys: Arc<KeyRing>,
        executor: Arc<dyn Executor>,
        config: ApiConfig,
        vault: Arc<dyn crate::secrets::SecretVault>,
    ) -> Arc<Self> {
        let per_minute = NonZeroU32::new(config.rate_per_minute.max(1)).expect("at least 1");
        let limiter = RateLimiter::keyed(Quota::per_minute(per_minute));
        let output = crate::output::Output::new(Arc::new(store.clone()), config.output_cap_bytes);
        let output_verifier =
            keys.output_verifier(&config.issuer).expect("the ring's own JWKS always verifies");
        Arc::new(Self {
            store,
            keys,
            executor,
            config,
            limiter,
            metrics: Default::default(),
            output,
            output_verifier,
            shutdown: Default::default(),
            vault,
        })
    }

    /// Charges one request to the client's address (a request without a standing credential).
    pub(crate) fn charge_address(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Result<()> {
        match client_ip(self, headers, peer) {
            Some(ip) => self.charge(format!("ip:{ip}")),
            None => Ok(()),
        }
    }

    /// Charges one request to `key` (`key:<id>`, `ip:<address>`, `trigger:<id>`); refuses with
    /// Retry-After when over the limit.
    pub(crate) fn charge(&self, key: String) -> Result<()> {
        self.limiter.check_key(&key).map_err(|not_until| {
            self.metrics.rate_limited.inc();
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::TooManyRequests { retry_after_secs: wait.as_secs() + 1 }
        })
    }
}

pub(crate) type AppState = Arc<ApiState>;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/sessions", post(create_session).get(list_sessions))
        .route("/api/sessions/feed", get(crate::feed::session_feed))
        .route("/api/sessions/{id}", get(get_session).delete(cancel_session))
        .route("/api/sessions/{id}/tokens", post(mint_token))
        .route("/api/sessions/{id}/events", get(session_events))
        .route(
            "/api/sessions/{id}/output",
            get(output_routes::read)
                .post(output_routes::append)
                .layer(axum::extract::DefaultBodyLimit::max(output_routes::MAX_APPEND_BYTES)),
        )
        .route("/api/sessions/{id}/output/stream", get(output_routes::stream))
        .route("/api/sessions/{id}/recording", get(output_routes::recording))
        .route("/api/keys", post(create_key).get(list_keys))
        .route("/api/secrets", post(crate::secrets::create).get(crate::secrets::list))
        .route("/api/secrets/{name}", put(crate::secrets::update).delete(crate::secrets::delete))
        .route("/api/templates", post(crate::templates::create).get(crate::templates::list))
        .route(
            "/api/templates/{name}",
            get(crate::templates::get)
                .put(crate::templates::update)
                .delete(crate::templates::delete),
        )
        .route("/api/templates/{name}/runs", post(crate::templates::run))
        .route("/api/templates/{name}/trigger", post(crate::templates::trigger))
        .route(
            "/api/templates/{name}/triggers",
            post(crate::templates::create_trigger).get(crate::templates::list_triggers),
        )
        .route("/api/templates/{name}/triggers/{id}", delete(crate::templates::revoke_trigger))
        .route("/api/schedules", post(crate::schedules::create).get(crate::schedules::list))
        .route("/api/schedules/preview", post(crate::schedules::preview))
        .route(
            "/api/schedules/{name}",
            get(crate::schedules::get)
                .put(crate::schedules::update)
                .delete(crate::schedules::delete),
        )
        .route("/api/events", get(crate::events::list))
        .route("/api/console/login", post(crate::console::login))
        .route("/api/console/logout", post(crate::console::logout))
        .route("/api/console/me", get(crate::console::me))
        .route("/", get(crate::console::page))
        .route("/console/console.js", get(crate::console::script))
        .route("/console/console.css", get(crate::console::style))
        .route("/console/favicon.svg", get(crate::console::icon))
        .route("/console/player", get(crate::console::player_page))
        .route("/console/player.js", get(crate::console::player))
        .route("/console/player.css", get(crate::console::player_style))
        .route("/api/keys/{id}", delete(revoke_key).patch(update_key))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { axum::Json(crate::openapi::document()) }))
        .fallback(|| async { ApiError::NotFound("route".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

// --- extractors ---------------------------------------------------------------------------

/// The client's address: the peer, or the forwarded address when the peer is a trusted proxy.
fn client_ip(state: &ApiState, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
    let peer = peer?;
    if !state.config.trusted_proxies.iter().any(|n| n.contains(&peer)) {
        return Some(peer);
    }
    // The rightmost address not itself a trusted proxy is the client.
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or("");
    forwarded
        .split(',')
        .rev()
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .find(|ip| !state.config.trusted_proxies.iter().any(|n| n.contains(ip)))
        .or(Some(peer))
}

/// An authenticated caller, already charged against the rate limit.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: String,
    pub role: Role,
}

impl Caller {
    /// Whether this caller sees what `owner` made: an operator sees only its own.
    pub fn sees(&self, owner: &str) -> bool {
        self.role != Role::Operator || owner == self.key_id
    }

    /// Refuses a change to what `owner` made (`what`: "templates", …) unless this caller is an
    /// admin, or the operator who made it.
    pub(crate) fn may_change(&self, owner: &str, what: &str) -> Result<()> {
        require(self, &[Role::Admin, Role::Operator])?;
        if !self.sees(owner) {
            return Err(ApiError::Forbidden(format!("an operator changes only its own {what}")));
        }
        Ok(())
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let authenticated = match presented {
            Some(full) => authenticate(state, full).await,
            // No key: a console login's cookie, if there is one.
            None => match crate::console::cookie_caller(parts, state).await {
                Some(result) => result,
                None => Err(ApiError::unauthorized(
                    "missing_api_key",
                    "send Authorization: Bearer <API key>",
                )),
            },
        };
        charge_caller(state, &parts.headers, peer, authenticated)
    }
}

/// Charges an authenticated request to its key, and a failed one to its client address,
/// which slows key guessing.
fn charge_caller(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    authenticated: Result<Caller>,
) -> Result<Caller> {
    match authenticated {
        Ok(caller) => {
            state.charge(format!("key:{}", caller.key_id))?;
            Ok(caller)
        }
        Err(e) => {
            if let Some(ip) = client_ip(state, headers, peer) {
                state.charge(format!("ip:{ip}"))?;
            }
            Err(e)
        }
    }
}

/// Checks a full API key as a request's credential would be checked, rate limits included.
pub(crate) async fn authenticate_key(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    full: &str,
) -> Result<Caller> {
    let authenticated = authenticate(state, full).await;
    charge_caller(state, headers, peer, authenticated)
}

/// The caller that key `id` is now: refused if it was revoked, with its current role.
pub(crate) async fn caller_of_key(state: &AppState, id: &str) -> Result<Caller> {
    let record = state.store.get_api_key(id).await?.filter(|k| k.revoked_at.is_none());
    let record = record
        .ok_or_else(|| ApiError::unauthorized("invalid_api_key", "the API key is not valid"))?;
    role_allowed(&state.config, record.role)?;
    Ok(Caller { key_id: record.id, role: record.role })
}

/// The refusal of a non-admin key where sessions cannot be isolated.
fn single_tenant(why: &str) -> ApiError {
    ApiError::refused(
        StatusCode::FORBIDDEN,
        "single_tenant",
        format!("this server accepts only admin keys: {why}"),
    )
}

/// Whether a key may have `role` here: where sessions cannot be isolated, only admin.
fn role_allowed(config: &ApiConfig, role: Role) -> Result<()> {
    match &config.admin_only {
        Some(why) if role != Role::Admin => Err(single_tenant(why)),
        _ => Ok(()),
    }
}

async fn authenticate(state: &AppState, full: &str) -> Result<Caller> {
    let invalid = || ApiError::unauthorized("invalid_api_key", "the API key is not valid");
    let (id, secret) = keys::parse(full).ok_or_else(invalid)?;
    let record = state.store.get_api_key(id).await?.ok_or_else(invalid)?;
    if record.revoked_at.is_some() || !keys::secret_matches(secret, &record.secret_hash) {
        return Err(invalid());
    }
    role_allowed(&state.config, record.role)?;
    Ok(Caller { key_id: record.id, role: record.role })
}

/// A JSON body: bounded in size, unknown fields and wrong types refused with a 400.
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::PayloadTooLarge(MAX_BODY_BYTES))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))
    }
}

// --- helpers ------------------------------------------------------------------------------

fn is_safe_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// The base for absolute URLs: configured, else from trusted forwarded headers, else Host.
pub(crate) fn base_url(
    state: &ApiState,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Result<String> {
    if let Some(public) = &state.config.public_url {
        return Ok(public.trim_end_matches('/').to_owned());
    }
    let header_str = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let trusted =
        peer.is_some_and(|ip| state.config.trusted_proxies.iter().any(|n| n.contains(&ip)));
    let forwarded_host = trusted.then(|| header_str("x-forwarded-host")).flatten();
    let host =
        forwarded_host.or(header_str("host")).map(|h| h.split(',').next().unwrap_or("").trim());
    let host = host.filter(|h| is_safe_host(h)).ok_or_else(|| {
        ApiError::bad_request(
            "bad_host",
            "cannot build URLs: no valid Host header and no public URL configured",
        )
    })?;
    let proto = trusted
        .then(|| header_str("x-forwarded-proto"))
        .flatten()
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    Ok(format!("{proto}://{host}"))
}

/// What a client needs to open a session's terminal: (wsUrl, terminalUrl). A session's own
/// scrollback (`scrollbackLines`) rides in the page's query, so the page keeps that many lines,
/// live or replayed, and across reloads.
fn terminal_links(base: &str, id: &str, token: &str, scrollback: u32) -> (String, String) {
    let query = if scrollback == cliscale_core::spec::DEFAULT_SCROLLBACK {
        String::new()
    } else {
        format!("?scrollback={scrollback}")
    };
    // The token rides in the fragment: browsers never send it to a server or a log.
    (format!("/ws/{id}"), format!("{base}/t/{id}{query}#token={token}"))
}

fn sign_token(
    state: &ApiState,
    caller: &Caller,
    session_id: &str,
    scope: TokenScope,
) -> Result<String> {
    let claims = new_claims(
        &state.config.issuer,
        TERMINAL_AUDIENCE,
        &caller.key_id,
        session_id,
        scope,
        state.config.token_ttl.as_secs(),
    );
    state.metrics.tokens_minted.inc();
    state.keys.active().sign(&claims).map_err(|e| ApiError::Internal(e.to_string()))
}

/// A session the caller may see; others' sessions are "not found" to operators.
pub(crate) async fn visible_session(
    state: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<SessionRecord> {
    let session = state.store.get_session(id).await?;
    match session {
        Some(s) if caller.sees(&s.owner) => Ok(s),
        _ => Err(ApiError::NotFound(format!("session {id:?}"))),
    }
}

pub(crate) fn require(caller: &Caller, allowed: &[Role]) -> Result<()> {
    if allowed.contains(&caller.role) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!("the {} role may not do this", caller.role.as_str())))
    }
}

/// The TCP peer's address, when the server was started with connect info.
pub struct Peer(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _: &S,
    ) -> std::result::Result<Self, Self::Rejection> {
        Ok(Peer(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())))
    }
}

// --- sessions -----------------------------------------------------------------------------

/// The `Idempotency-Key` of a request, if it has a usable one. Pure.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()));
    key.map(Some).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1-255 visible ASCII characters",
        )
    })
}

#[utoipa::path(post, path = "/api/sessions", tag = "sessions",
    summary = "Create a session (returns at once)",
    description = "With an `Idempotency-Key` header, a retry by the same API key returns the session the first request made (200, with a fresh token) instead of making another.",
    request_body = CreateSessionRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters")),
    responses((status = 201, description = "Created", body = SessionCreated),
        (status = 200, description = "Made already by an earlier request with this Idempotency-Key", body = SessionCreated),
        (status = 403, description = "This role may not create sessions", body = crate::error::ErrorBody),
        (status = 409, description = "The Idempotency-Key was used for a different session (idempotency_key_reused)", body = crate::error::ErrorBody)))]
pub(crate) async fn create_session(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    caller: Caller,
    JsonBody(request): JsonBody<CreateSessionRequest>,
) -> Result<Response> {
    require(&caller, &[Role::Admin, Role::Operator])?;
    let key = idempotency_key(&headers)?;
    crate::runs::may_name_secrets(&caller, &request)?;
    let (spec, secret_env) = crate::runs::session_spec(&state, request).await?;
    let origin = Origin { secret_env, ..Origin::default() };
    let base = base_url(&state, &headers, peer)?;
    let id = uuid::Uuid::new_v4().to_string();
    let (id, status, phase) =
        match state.store.create_session(&id, &caller.key_id, &spec, &origin, key).await? {
            Created::New => {
                let how = format!("by key {}", caller.key_id);
                crate::runs::started(&state, &id, &caller.key_id, &how).await?;
                (id, StatusCode::CREATED, cliscale_core::SessionPhase::Pending)
            }
            Created::Existing(existing) => {
                let record = state
                    .store
                    .get_session(&existing)
                    .await?
                    .ok_or_else(|| ApiError::Internal("session vanished".into()))?;
                if record.spec != spec {
                    return Err(ApiError::refused(
                        StatusCode::CONFLICT,
                        "idempotency_key_reused",
                        "this Idempotency-Key made a different session",
                    ));
                }
                (existing, StatusCode::OK, record.phase)
            }
        };
    let token = sign_token(&state, &caller, &id, TokenScope::Interact)?;
    let (ws_url, terminal_url) = terminal_links(&base, &id, &token, spec.scrollback_lines);
    let body = SessionCreated { session_id: id, ws_url, token, terminal_url, phase };
    Ok((status, axum::Json(body)).into_response())
}

/// The answer to a session just started for `caller`: 201 with a terminal token of `scope`.
pub(crate) fn created_answer(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    caller: &Caller,
    record: &SessionRecord,
    scope: TokenScope,
) -> Result<Response> {
    let base = base_url(state, headers, peer)?;
    let token = sign_token(state, caller, &record.id, scope)?;
    let (ws_url, terminal_url) =
        terminal_links(&base, &record.id, &token, record.spec.scrollback_lines);
    let body = SessionCreated {
        session_id: record.id.clone(),
        ws_url,
        token,
        terminal_url,
        phase: record.phase,
    };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

#[utoipa::path(get, path = "/api/sessions/{id}", tag = "sessions", summary = "Get a session",
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, description = "The session", body = SessionView),
        (status = 404, description = "No such session (or not yours)", body = crate::error::ErrorBody)))]
pub(crate) async fn get_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<SessionView>> {
    let session = visible_session(&state, &caller, &id).await?;
    let output_tail = state.output.tail(&id, cliscale_core::output::TAIL_BYTES).await?;
    Ok(axum::Json(SessionView { output_tail, ..SessionView::from(&session) }))
}

pub(crate) fn parse_time(field: &str, value: &str) -> Result<i64> {
    if let Ok(secs) = value.parse::<i64>() {
        return Ok(secs);
    }
    humantime::parse_rfc3339_weak(value)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("{field} must be RFC 3339 or Unix seconds"),
            )
        })
}

fn encode_cursor(record: &SessionRecord) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", record.created_at, record.id))
}

fn decode_cursor(cursor: &str) -> Result<(i64, String)> {
    let bad = || ApiError::bad_request("invalid_cursor", "cursor is not one this API handed out");
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (t, id) = text.split_once(':').ok_or_else(bad)?;
    Ok((t.parse().map_err(|_| bad())?, id.to_owned()))
}

/// The longest search text a list or feed takes.
const MAX_SEARCH: usize = 200;

/// The store query for a list's filters, as `caller` may see them: operators only ever see
/// their own sessions, whatever owner filter they ask for.
pub(crate) fn session_query(caller: &Caller, params: ListQuery) -> Result<SessionQuery> {
    let phase = params
        .phase
        .as_deref()
        .map(|p| {
            crate::model::phase_from_str(p).ok_or_else(|| {
                ApiError::bad_request("invalid_query", format!("unknown phase {p:?}"))
            })
        })
        .transpose()?;
    let owner =
        if caller.role == Role::Operator { Some(caller.key_id.clone()) } else { params.owner };
    let text = match params.q.as_deref().map(str::trim) {
        Some(q) if q.chars().count() > MAX_SEARCH => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("q must be at most {MAX_SEARCH} characters"),
            ));
        }
        Some(q) if !q.is_empty() => Some(crate::store::search_pattern(q)),
        _ => None,
    };
    Ok(SessionQuery {
        phase,
        owner,
        created_after: params
            .created_after
            .as_deref()
            .map(|v| parse_time("created_after", v))
            .transpose()?,
        created_before: params
            .created_before
            .as_deref()
            .map(|v| parse_time("created_before", v))
            .transpose()?,
        text,
        after: params.cursor.as_deref().map(decode_cursor).transpose()?,
        limit: 0,
    })
}

#[utoipa::path(get, path = "/api/sessions", tag = "sessions",
    summary = "List sessions, newest first", params(ListQuery),
    responses((status = 200, description = "A page", body = SessionPage)))]
pub(crate) async fn list_sessions(
    State(state): State<AppState>,
    caller: Caller,
    params: std::result::Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<SessionPage>> {
    let Query(params) =
        params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = params.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be 1..={MAX_PAGE}"),
        ));
    }
    let mut query = session_query(&caller, params)?;
    query.limit = limit + 1;
    let mut records = state.store.list_sessions(&query).await?;
    let more = records.len() as i64 > limit;
    records.truncate(limit as usize);
    let next = more.then(|| records.last().map(encode_cursor)).flatten();
    let items: Vec<SessionView> = records.iter().map(SessionView::from).collect();
    Ok(axum::Json(SessionPage { items, next_cursor: next }))
}

#[utoipa::path(delete, path = "/api/sessions/{id}", tag = "sessions", summary = "Cancel a session",
    params(("id" = String, Path, description = "Session id")),
    responses((status = 202, description = "Cancelling", body = SessionView),
        (status = 200, description = "Already finished", body = SessionView),
        (status = 404, description = "No such session", body = crate::error::ErrorBody)))]
pub(crate) async fn cancel_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    require(&caller, &[Role::Admin, Role::Operator])?;
    let session = visible_session(&state, &caller, &id).await?;
    if session.phase.is_finished() {
        // Decided by the process, not the record: a runner still up is stopped all the same.
        if state.executor.runner_alive(&id) {
            state.executor.cancel(&id).await?;
        }
        // A finished attempt waiting for its retry: cancelling ends the chain.
        if state.store.settle_retry(&id).await? {
            let message = format!("the retries were cancelled by key {}", caller.key_id);
            let entry = NewEvent::about(&session, "retries_stopped", message);
            state.store.log(&entry.by(&caller.key_id)).await?;
        }
        return Ok((StatusCode::OK, axum::Json(SessionView::from(&session))).into_response());
    }
    let message = format!("requested by key {}", caller.key_id);
    state.store.log(&NewEvent::about(&session, "cancel", message).by(&caller.key_id)).await?;
    state.executor.cancel(&id).await?;
    let session = visible_session(&state, &caller, &id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(SessionView::from(&session))).into_response())
}

#[utoipa::path(post, path = "/api/sessions/{id}/tokens", tag = "sessions",
    summary = "Mint a one-time terminal token",
    params(("id" = String, Path, description = "Session id")), request_body = MintRequest,
    responses((status = 201, description = "Minted", body = TokenMinted),
        (status = 403, description = "Viewers may only mint view tokens", body = crate::error::ErrorBody),
        (status = 404, description = "No such session", body = crate::error::ErrorBody)))]
pub(crate) async fn mint_token(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<MintRequest>,
) -> Result<Response> {
    let session = visible_session(&state, &caller, &id).await?;
    let scope = request.scope.unwrap_or(TokenScope::Interact);
    if scope == TokenScope::Interact {
        require(&caller, &[Role::Admin, Role::Operator])?;
    }
    let base = base_url(&state, &headers, peer)?;
    let token = sign_token(&state, &caller, &session.id, scope)?;
    let (ws_url, terminal_url) =
        terminal_links(&base, &session.id, &token, session.spec.scrollback_lines);
    let body = TokenMinted {
        session_id: session.id,
        ws_url,
        token,
        terminal_url,
        scope,
        expires_in_seconds: state.config.token_ttl.as_secs(),
    };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

#[utoipa::path(get, path = "/api/sessions/{id}/events", tag = "sessions",
    summary = "The session's event log", params(("id" = String, Path, description = "Session id")),
    responses((status = 200, description = "Events, oldest first", body = EventPage),
        (status = 404, description = "No such session", body = crate::error::ErrorBody)))]
pub(crate) async fn session_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<EventPage>> {
    visible_session(&state, &caller, &id).await?;
    let events = state.store.events(&id).await?;
    let items = events
        .into_iter()
        .map(|(at, kind, message)| EventView { at: crate::model::rfc3339(at), kind, message })
        .collect();
    Ok(axum::Json(EventPage { items }))
}

// --- API keys -----------------------------------------------------------------------------

fn key_view(k: &ApiKeyRecord) -> KeyView {
    KeyView {
        id: k.id.clone(),
        name: k.name.clone(),
        role: k.role,
        created_at: crate::model::rfc3339(k.created_at),
        revoked_at: k.revoked_at.map(crate::model::rfc3339),
        key: None,
    }
}

#[utoipa::path(post, path = "/api/keys", tag = "keys", summary = "Create an API key (admin)",
    request_body = CreateKeyRequest,
    responses((status = 201, description = "Created; the key is shown only here", body = KeyView),
        (status = 403, description = "Admins only", body = crate::error::ErrorBody)))]
pub(crate) async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateKeyRequest>,
) -> Result<Response> {
    require(&caller, &[Role::Admin])?;
    role_allowed(&state.config, request.role)?;
    if request.name.trim().is_empty() || request.name.len() > 128 {
        return Err(ApiError::bad_request("invalid_field", "name must be 1-128 characters"));
    }
    let new = keys::generate();
    let record = ApiKeyRecord {
        id: new.id.clone(),
        name: request.name,
        role: request.role,
        secret_hash: new.secret_hash,
        created_at: now(),
        revoked_at: None,
    };
    state.store.insert_api_key(&record).await?;
    let body = KeyView { key: Some(new.full), ..key_view(&record) };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

#[utoipa::path(get, path = "/api/keys", tag = "keys", summary = "List API keys (admin)",
    responses((status = 200, description = "Keys, without secrets", body = KeyPage),
        (status = 403, description = "Admins only", body = crate::error::ErrorBody)))]
pub(crate) async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<KeyPage>> {
    require(&caller, &[Role::Admin])?;
    let keys = state.store.list_api_keys().await?;
    Ok(axum::Json(KeyPage { items: keys.iter().map(key_view).collect() }))
}

/// The refusal of a change that would leave no admin key standing.
fn last_admin() -> ApiError {
    ApiError::refused(
        StatusCode::CONFLICT,
        "last_admin",
        "this is the last admin key: make another admin key first",
    )
}

fn key_changed(change: KeyChange, id: &str) -> Result<()> {
    match change {
        KeyChange::Done => Ok(()),
        KeyChange::NotFound => Err(ApiError::NotFound(format!("API key {id:?}"))),
        KeyChange::LastAdmin => Err(last_admin()),
    }
}

#[utoipa::path(delete, path = "/api/keys/{id}", tag = "keys", summary = "Revoke an API key (admin)",
    description = "Its terminals end within seconds, and its tokens, reconnect tokens included, open nothing.",
    params(("id" = String, Path, description = "Key id")),
    responses((status = 204, description = "Revoked"),
        (status = 404, description = "No such key", body = crate::error::ErrorBody),
        (status = 409, description = "The last admin key (last_admin)", body = crate::error::ErrorBody)))]
pub(crate) async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    require(&caller, &[Role::Admin])?;
    key_changed(state.store.revoke_api_key(&id).await?, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(patch, path = "/api/keys/{id}", tag = "keys", summary = "Change an API key's role (admin)",
    description = "A key demoted to viewer keeps its watching terminals; those that type end within seconds.",
    params(("id" = String, Path, description = "Key id")), request_body = UpdateKeyRequest,
    responses((status = 200, description = "Changed", body = KeyView),
        (status = 404, description = "No such key", body = crate::error::ErrorBody),
        (status = 409, description = "The last admin key (last_admin)", body = crate::error::ErrorBody)))]
pub(crate) async fn update_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<UpdateKeyRequest>,
) -> Result<axum::Json<KeyView>> {
    require(&caller, &[Role::Admin])?;
    role_allowed(&state.config, request.role)?;
    key_changed(state.store.set_api_key_role(&id, request.role).await?, &id)?;
    let key = state.store.get_api_key(&id).await?.ok_or_else(|| ApiError::NotFound(id.clone()))?;
    Ok(axum::Json(key_view(&key)))
}

// --- public endpoints ---------------------------------------------------------------------

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "public", security(()),
    summary = "Public keys of terminal tokens (JWKS)",
    responses((status = 200, description = "JWKS", content_type = "application/json")))]
pub(crate) async fn jwks(State(state): State<AppState>) -> Response {
    state.metrics.jwks_served.inc();
    (
        [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "max-age=300")],
        state.keys.jwks(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/readyz", tag = "public", security(()),
    summary = "Readiness (database reachable)",
    responses((status = 200, description = "ready", content_type = "text/plain"),
        (status = 500, description = "Not ready", body = crate::error::ErrorBody)))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<&'static str> {
    state.store.ping().await?;
    Ok("ready")
}

#[utoipa::path(get, path = "/metrics", tag = "public", security(()), summary = "Prometheus metrics",
    responses((status = 200, description = "OpenMetrics text",
        content_type = "application/openmetrics-text")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}
