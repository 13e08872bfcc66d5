//! Secrets: named sets of values that reach a session's command as environment variables and
//! nowhere else. `/api/secrets` writes them and lists their names; no route returns a value.
//! Where they are kept is a [`SecretVault`]: sealed in the store in local mode
//! ([`SealedVault`]), Kubernetes Secrets on a cluster (the operator's vault).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{FromRequest, Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use cliscale_core::rest::{
    CreateSecretRequest, SecretPage, SecretRef, SecretView, UpdateSecretRequest,
};
use cliscale_core::spec::SecretEnvVar;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, Result};
use crate::executor::BoxFuture;
use crate::keys::Role;
use crate::model::rfc3339;
use crate::routes::{AppState, Caller, MAX_BODY_BYTES, require};
use crate::store::{NewEvent, SecretRow, Store, now};

/// A secret's name and key names, never its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    pub name: String,
    pub keys: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Whether a write made, replaced or found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    /// Create: one of that name exists.
    Exists,
    /// Update: none of that name exists.
    Missing,
}

/// Where secrets are kept. Values go in and, for the local executor only, come out; the API
/// routes never read one back.
pub trait SecretVault: Send + Sync + 'static {
    /// Creates (`create`) or replaces every value of secret `name`.
    fn write<'a>(
        &'a self,
        name: &'a str,
        data: &'a BTreeMap<String, String>,
        create: bool,
    ) -> BoxFuture<'a, Result<Written>>;
    fn list(&self) -> BoxFuture<'_, Result<Vec<SecretMeta>>>;
    fn meta<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<SecretMeta>>>;
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool>>;
    /// One value, for the process that starts the session's command.
    fn reveal<'a>(&'a self, name: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<String>>>;
    /// What a session's spec names secret `name` by (its `secretName`): the Kubernetes
    /// Secret's name on a cluster.
    fn reference(&self, name: &str) -> String;
}

/// A server that keeps no secrets refuses every use of them.
pub struct NoVault;

fn no_vault() -> ApiError {
    ApiError::refused(
        StatusCode::SERVICE_UNAVAILABLE,
        "secrets_unavailable",
        "this server keeps no secrets",
    )
}

impl SecretVault for NoVault {
    fn write<'a>(
        &'a self,
        _: &'a str,
        _: &'a BTreeMap<String, String>,
        _: bool,
    ) -> BoxFuture<'a, Result<Written>> {
        Box::pin(async { Err(no_vault()) })
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<SecretMeta>>> {
        Box::pin(async { Ok(vec![]) })
    }
    fn meta<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<SecretMeta>>> {
        Box::pin(async { Ok(None) })
    }
    fn delete<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async { Err(no_vault()) })
    }
    fn reveal<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async { Err(no_vault()) })
    }
    fn reference(&self, name: &str) -> String {
        name.into()
    }
}

// --- validation (pure) ----------------------------------------------------------------------

/// The most keys a secret holds, and the most bytes its values hold together.
pub const MAX_SECRET_KEYS: usize = 64;
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// A name for a secret, template or schedule: a DNS label (it names Kubernetes objects).
pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// What is wrong with a secret's data, if anything. Never quotes a value.
pub fn data_problem(data: &BTreeMap<String, String>) -> Option<String> {
    if data.is_empty() || data.len() > MAX_SECRET_KEYS {
        return Some(format!("data must hold 1 to {MAX_SECRET_KEYS} keys"));
    }
    let key_ok = |k: &str| {
        (1..=253).contains(&k.len())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if let Some(bad) = data.keys().find(|k| !key_ok(k)) {
        return Some(format!("key {bad:?} must be 1-253 letters, digits, '.', '_' or '-'"));
    }
    if data.values().map(String::len).sum::<usize>() > MAX_SECRET_BYTES {
        return Some(format!("the values must hold at most {MAX_SECRET_BYTES} bytes together"));
    }
    if data.values().any(|v| v.contains('\0')) {
        return Some("a value holds a NUL byte, which no environment variable can".into());
    }
    None
}

// --- the sealed vault (local mode) ----------------------------------------------------------

/// The keys secrets are sealed with: the current one seals, earlier ones only open (until
/// [`SealedVault::open`] has resealed everything under the current one).
#[derive(Clone)]
pub struct SealingKeys {
    current: (String, [u8; 32]),
    previous: Vec<(String, [u8; 32])>,
}

/// The environment variables that give the sealing keys (base64 of 32 bytes).
pub const KEY_ENV: &str = "CLISCALE_SECRETS_KEY";
pub const PREVIOUS_KEY_ENV: &str = "CLISCALE_SECRETS_KEY_PREVIOUS";

fn key_id(key: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(key)[..8])
}

fn decode_key(text: &str, from: &str) -> Result<[u8; 32]> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| ApiError::Internal(format!("{from} is not base64")))?;
    bytes.try_into().map_err(|_| ApiError::Internal(format!("{from} must hold 32 bytes (base64)")))
}

impl SealingKeys {
    /// The key from [`KEY_ENV`], else from `file` (made, mode 0600, when missing); an earlier
    /// key from [`PREVIOUS_KEY_ENV`] or `<file>.previous`, when there is one.
    pub fn load_or_generate(file: &Path) -> Result<Self> {
        let current = match std::env::var(KEY_ENV).ok().filter(|v| !v.is_empty()) {
            Some(text) => decode_key(&text, KEY_ENV)?,
            None => {
                if !file.exists() {
                    let fresh: [u8; 32] = rand::random();
                    let mut out = crate::local::private_file(file)?;
                    std::io::Write::write_all(&mut out, STANDARD.encode(fresh).as_bytes())
                        .map_err(|e| {
                            ApiError::Internal(format!("writing {}: {e}", file.display()))
                        })?;
                    tracing::info!(path = %file.display(), "generated the secrets' sealing key");
                }
                let text = std::fs::read_to_string(file)
                    .map_err(|e| ApiError::Internal(format!("reading {}: {e}", file.display())))?;
                decode_key(&text, &file.display().to_string())?
            }
        };
        let previous_file = file.with_extension("key.previous");
        let previous = match std::env::var(PREVIOUS_KEY_ENV).ok().filter(|v| !v.is_empty()) {
            Some(text) => Some(decode_key(&text, PREVIOUS_KEY_ENV)?),
            None if previous_file.exists() => {
                let text = std::fs::read_to_string(&previous_file).map_err(|e| {
                    ApiError::Internal(format!("reading {}: {e}", previous_file.display()))
                })?;
                Some(decode_key(&text, &previous_file.display().to_string())?)
            }
            None => None,
        };
        Ok(Self::new(current, previous.into_iter().collect()))
    }

    pub fn new(current: [u8; 32], previous: Vec<[u8; 32]>) -> Self {
        Self {
            current: (key_id(&current), current),
            previous: previous.into_iter().map(|k| (key_id(&k), k)).collect(),
        }
    }

    /// Seals `data` for secret `name`: (key id, nonce, sealed), base64. The name is bound in,
    /// so a sealed value moved to another secret's row does not open.
    fn seal(
        &self,
        name: &str,
        data: &BTreeMap<String, String>,
    ) -> Result<(String, String, String)> {
        let plain = serde_json::to_vec(data).map_err(|e| ApiError::Internal(e.to_string()))?;
        let nonce: [u8; 24] = rand::random();
        let cipher = XChaCha20Poly1305::new((&self.current.1).into());
        let sealed = cipher
            .encrypt(&XNonce::from(nonce), Payload { msg: &plain, aad: name.as_bytes() })
            .map_err(|_| ApiError::Internal("sealing a secret failed".into()))?;
        Ok((self.current.0.clone(), STANDARD.encode(nonce), STANDARD.encode(sealed)))
    }

    fn open(&self, row: &SecretRow) -> Result<BTreeMap<String, String>> {
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|(id, _)| *id == row.key_id)
            .ok_or_else(|| {
                ApiError::Internal(format!(
                    "secret {:?} is sealed with key {}, which this server does not have",
                    row.name, row.key_id
                ))
            })?;
        let bad = || ApiError::Internal(format!("secret {:?} does not open", row.name));
        let nonce = STANDARD.decode(&row.nonce).map_err(|_| bad())?;
        let sealed = STANDARD.decode(&row.sealed).map_err(|_| bad())?;
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| bad())?;
        let plain = XChaCha20Poly1305::new((&key.1).into())
            .decrypt(&XNonce::from(nonce), Payload { msg: &sealed, aad: row.name.as_bytes() })
            .map_err(|_| bad())?;
        serde_json::from_slice(&plain).map_err(|_| bad())
    }
}

/// Secrets sealed in the store with XChaCha20-Poly1305 (local mode).
pub struct SealedVault {
    store: Store,
    keys: SealingKeys,
}

impl SealedVault {
    /// Opens the vault, first resealing under the current key every secret an earlier key
    /// sealed (a key rotation completes here; docs/templates.md, "Secrets").
    pub async fn open(store: Store, keys: SealingKeys) -> Result<Arc<Self>> {
        let vault = Self { store, keys };
        for row in vault.store.secret_rows().await? {
            if row.key_id != vault.keys.current.0 {
                let data = vault.keys.open(&row)?;
                vault.store_row(&row.name, &data, Some(row.created_at)).await?;
                tracing::info!(secret = %row.name, "resealed under the current key");
            }
        }
        Ok(Arc::new(vault))
    }

    async fn store_row(
        &self,
        name: &str,
        data: &BTreeMap<String, String>,
        created_at: Option<i64>,
    ) -> Result<()> {
        let (key_id, nonce, sealed) = self.keys.seal(name, data)?;
        let t = now();
        let row = SecretRow {
            name: name.into(),
            key_names: data.keys().cloned().collect(),
            key_id,
            nonce,
            sealed,
            created_at: created_at.unwrap_or(t),
            updated_at: t,
        };
        self.store.put_secret_row(&row).await
    }
}

fn meta_of(row: &SecretRow) -> SecretMeta {
    SecretMeta {
        name: row.name.clone(),
        keys: row.key_names.clone(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

impl SecretVault for SealedVault {
    fn write<'a>(
        &'a self,
        name: &'a str,
        data: &'a BTreeMap<String, String>,
        create: bool,
    ) -> BoxFuture<'a, Result<Written>> {
        Box::pin(async move {
            let existing = self.store.secret_row(name).await?;
            match (&existing, create) {
                (Some(_), true) => return Ok(Written::Exists),
                (None, false) => return Ok(Written::Missing),
                _ => {}
            }
            self.store_row(name, data, existing.map(|r| r.created_at)).await?;
            Ok(Written::Done)
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<SecretMeta>>> {
        Box::pin(async move { Ok(self.store.secret_rows().await?.iter().map(meta_of).collect()) })
    }

    fn meta<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<SecretMeta>>> {
        Box::pin(async move { Ok(self.store.secret_row(name).await?.as_ref().map(meta_of)) })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { self.store.delete_secret_row(name).await })
    }

    fn reveal<'a>(&'a self, name: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let Some(row) = self.store.secret_row(name).await? else { return Ok(None) };
            Ok(self.keys.open(&row)?.remove(key))
        })
    }

    fn reference(&self, name: &str) -> String {
        name.into()
    }
}

// --- sessions' secret variables ---------------------------------------------------------------

/// The spec's `envFromSecrets` for a request's `secret_env`: every secret and key must exist
/// (400 `unknown_secret` otherwise, naming the variable, never a value).
pub async fn resolve_secret_env(
    vault: &dyn SecretVault,
    secret_env: &BTreeMap<String, SecretRef>,
) -> Result<Vec<SecretEnvVar>> {
    let mut resolved = Vec::with_capacity(secret_env.len());
    for (env, source) in secret_env {
        let meta = vault.meta(&source.secret).await?;
        if !meta.is_some_and(|m| m.keys.contains(&source.key)) {
            return Err(ApiError::bad_request(
                "unknown_secret",
                format!(
                    "secret_env {env:?} names secret {:?} key {:?}, which does not exist",
                    source.secret, source.key
                ),
            ));
        }
        resolved.push(SecretEnvVar {
            name: env.clone(),
            secret_name: vault.reference(&source.secret),
            key: source.key.clone(),
        });
    }
    Ok(resolved)
}

// --- routes ---------------------------------------------------------------------------------

/// A JSON body whose refusal never quotes what was sent (it may hold a secret value).
pub struct SecretBody<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for SecretBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::PayloadTooLarge(MAX_BODY_BYTES))?;
        serde_json::from_slice(&bytes).map(SecretBody).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!(
                    "the body is not a secret ({{\"name\", \"data\": {{KEY: string}}}}): \
                     {:?} error at line {} column {}",
                    e.classify(),
                    e.line(),
                    e.column()
                ),
            )
        })
    }
}

async fn view(state: &AppState, meta: SecretMeta) -> Result<SecretView> {
    let used_by = state.store.templates_using_secret(&meta.name).await?;
    Ok(SecretView {
        name: meta.name,
        keys: meta.keys,
        created_at: rfc3339(meta.created_at),
        updated_at: rfc3339(meta.updated_at),
        used_by,
    })
}

fn check(name: &str, data: &BTreeMap<String, String>) -> Result<()> {
    if !valid_name(name) {
        return Err(ApiError::bad_request(
            "invalid_name",
            "a secret's name is 1-63 lower-case letters, digits and '-', starting with a letter",
        ));
    }
    if let Some(problem) = data_problem(data) {
        return Err(ApiError::bad_request("invalid_secret", problem));
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/secrets", tag = "secrets", summary = "Create a secret (admin)",
    request_body = CreateSecretRequest,
    responses((status = 201, description = "Created; values are never returned", body = SecretView),
        (status = 400, description = "invalid_name, invalid_secret or invalid_json", body = crate::error::ErrorBody),
        (status = 409, description = "secret_exists", body = crate::error::ErrorBody)))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    SecretBody(req): SecretBody<CreateSecretRequest>,
) -> Result<Response> {
    require(&caller, &[Role::Admin])?;
    check(&req.name, &req.data)?;
    match state.vault.write(&req.name, &req.data, true).await? {
        Written::Exists => {
            return Err(ApiError::refused(
                StatusCode::CONFLICT,
                "secret_exists",
                format!("secret {:?} exists; PUT /api/secrets/{} replaces it", req.name, req.name),
            ));
        }
        Written::Missing | Written::Done => {}
    }
    let entry = NewEvent {
        kind: "secret_created".into(),
        message: format!("secret {} with keys {:?}", req.name, req.data.keys().collect::<Vec<_>>()),
        ..Default::default()
    };
    state.store.log(&entry.by(&caller.key_id)).await?;
    let meta =
        state.vault.meta(&req.name).await?.ok_or_else(|| ApiError::NotFound("secret".into()))?;
    Ok((StatusCode::CREATED, axum::Json(view(&state, meta).await?)).into_response())
}

#[utoipa::path(put, path = "/api/secrets/{name}", tag = "secrets",
    summary = "Replace a secret's values (admin)", request_body = UpdateSecretRequest,
    params(("name" = String, Path, description = "Secret name")),
    responses((status = 200, description = "Replaced", body = SecretView),
        (status = 404, description = "No such secret", body = crate::error::ErrorBody)))]
pub(crate) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(name): UrlPath<String>,
    SecretBody(req): SecretBody<UpdateSecretRequest>,
) -> Result<axum::Json<SecretView>> {
    require(&caller, &[Role::Admin])?;
    check(&name, &req.data)?;
    if state.vault.write(&name, &req.data, false).await? == Written::Missing {
        return Err(ApiError::NotFound("secret".into()));
    }
    let entry = NewEvent {
        kind: "secret_updated".into(),
        message: format!("secret {name} with keys {:?}", req.data.keys().collect::<Vec<_>>()),
        ..Default::default()
    };
    state.store.log(&entry.by(&caller.key_id)).await?;
    let meta = state.vault.meta(&name).await?.ok_or_else(|| ApiError::NotFound("secret".into()))?;
    Ok(axum::Json(view(&state, meta).await?))
}

#[utoipa::path(get, path = "/api/secrets", tag = "secrets",
    summary = "List secrets: names and key names, never values",
    responses((status = 200, description = "Every secret", body = SecretPage)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<axum::Json<SecretPage>> {
    let mut items = Vec::new();
    for meta in state.vault.list().await? {
        items.push(view(&state, meta).await?);
    }
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(axum::Json(SecretPage { items }))
}

#[utoipa::path(delete, path = "/api/secrets/{name}", tag = "secrets",
    summary = "Delete a secret (admin)",
    params(("name" = String, Path, description = "Secret name")),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "No such secret", body = crate::error::ErrorBody)))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(name): UrlPath<String>,
) -> Result<StatusCode> {
    require(&caller, &[Role::Admin])?;
    if !state.vault.delete(&name).await? {
        return Err(ApiError::NotFound("secret".into()));
    }
    let entry = NewEvent {
        kind: "secret_deleted".into(),
        message: format!("secret {name}"),
        ..Default::default()
    };
    state.store.log(&entry.by(&caller.key_id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[tokio::test]
    async fn a_server_without_a_vault_refuses_secrets_and_knows_none() {
        let data = data(&[("K", "v")]);
        let refused = NoVault.write("x", &data, true).await.unwrap_err();
        assert_eq!((refused.status().as_u16(), refused.code()), (503, "secrets_unavailable"));
        assert!(NoVault.meta("x").await.unwrap().is_none());
        let refs =
            BTreeMap::from([("K".to_string(), SecretRef { secret: "x".into(), key: "K".into() })]);
        assert_eq!(resolve_secret_env(&NoVault, &refs).await.unwrap_err().code(), "unknown_secret");
    }

    #[test]
    fn names_are_dns_labels() {
        for good in ["a", "deploy-keys", "x1"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "A", "1a", "a-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn bad_data_is_named_without_its_values() {
        assert!(data_problem(&data(&[("TOKEN", "v")])).is_none());
        assert!(data_problem(&BTreeMap::new()).is_some());
        let bad_key = data_problem(&data(&[("a b", "hunter2")])).unwrap();
        assert!(bad_key.contains("a b") && !bad_key.contains("hunter2"));
        let big = "x".repeat(MAX_SECRET_BYTES + 1);
        assert!(data_problem(&data(&[("K", &big)])).is_some());
        assert!(!data_problem(&data(&[("K", "a\0b")])).unwrap().contains("a\0b"));
    }

    fn row(keys: &SealingKeys, name: &str, d: &BTreeMap<String, String>) -> SecretRow {
        let (key_id, nonce, sealed) = keys.seal(name, d).unwrap();
        SecretRow {
            name: name.into(),
            key_names: d.keys().cloned().collect(),
            key_id,
            nonce,
            sealed,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn sealed_values_open_with_their_key_and_name_only() {
        let keys = SealingKeys::new([7; 32], vec![]);
        let d = data(&[("TOKEN", "hunter2-secret-value")]);
        let sealed = row(&keys, "deploy", &d);
        assert!(!sealed.sealed.contains("hunter2"));
        assert_eq!(keys.open(&sealed).unwrap(), d);
        // Moved under another name: refused.
        let moved = SecretRow { name: "other".into(), ..sealed.clone() };
        assert!(keys.open(&moved).is_err());
        // Another key: refused.
        assert!(SealingKeys::new([8; 32], vec![]).open(&sealed).is_err());
        // Rotated: the new key with the old as previous opens it.
        assert_eq!(SealingKeys::new([8; 32], vec![[7; 32]]).open(&sealed).unwrap(), d);
        // Two seals of one value differ (fresh nonces).
        assert_ne!(row(&keys, "deploy", &d).sealed, sealed.sealed);
    }
}
