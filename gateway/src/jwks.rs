//! The JWKS, fetched from the API and cached: refreshed only when it expires or a token names
//! a key id it does not hold, and then at most once per `min_refresh` (unknown-kid floods
//! cannot turn into a fetch per connection).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cliscale_core::token::{JwksVerifier, SessionClaims, TokenError, TokenVerifier, token_kid};
use tokio::sync::{Mutex, RwLock};

pub enum JwksSource {
    /// Fetched over HTTP from the API's `/.well-known/jwks.json`.
    Url { client: reqwest::Client, url: String },
    /// A fixed document (tests, or a mounted file).
    Static(String),
}

struct Cached {
    verifier: Arc<JwksVerifier>,
    fetched_at: Instant,
}

pub struct JwksCache {
    source: JwksSource,
    audiences: Vec<String>,
    issuer: Option<String>,
    ttl: Duration,
    min_refresh: Duration,
    cached: RwLock<Option<Cached>>,
    refreshing: Mutex<()>,
    fetches: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the key set is unavailable: {0}")]
    Unavailable(String),
}

impl JwksCache {
    pub fn new(
        source: JwksSource,
        audiences: Vec<String>,
        issuer: Option<String>,
        ttl: Duration,
    ) -> Self {
        Self {
            source,
            audiences,
            issuer,
            ttl,
            min_refresh: Duration::from_secs(10),
            cached: RwLock::new(None),
            refreshing: Mutex::new(()),
            fetches: AtomicU64::new(0),
        }
    }

    /// The gateway's cache: terminal-audience tokens from `issuer`, checked against the key
    /// set the API publishes at `url`.
    pub fn terminal_tokens_from(url: String, issuer: &str, ttl: Duration) -> Self {
        Self::new(
            JwksSource::Url { client: reqwest::Client::new(), url },
            vec![cliscale_core::token::TERMINAL_AUDIENCE.to_string()],
            Some(issuer.to_owned()),
            ttl,
        )
    }

    /// How many times the key set has been fetched.
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    async fn fetch(&self) -> Result<JwksVerifier, VerifyError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let document = match &self.source {
            JwksSource::Static(doc) => doc.clone(),
            JwksSource::Url { client, url } => {
                let response = client
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| VerifyError::Unavailable(e.to_string()))?;
                if !response.status().is_success() {
                    return Err(VerifyError::Unavailable(format!(
                        "{url} answered {}",
                        response.status()
                    )));
                }
                response.text().await.map_err(|e| VerifyError::Unavailable(e.to_string()))?
            }
        };
        let audiences: Vec<&str> = self.audiences.iter().map(String::as_str).collect();
        Ok(JwksVerifier::from_jwks_json(&document, &audiences, self.issuer.as_deref())?)
    }

    /// The current verifier; refetched when absent, expired, or (rate-limited) missing `kid`.
    async fn verifier_for(&self, kid: Option<&str>) -> Result<Arc<JwksVerifier>, VerifyError> {
        let usable = |c: &Cached, allow_stale_kid: bool| {
            let fresh = c.fetched_at.elapsed() < self.ttl;
            let knows = kid.is_none_or(|k| c.verifier.key_ids().any(|id| id == k));
            fresh && (knows || allow_stale_kid)
        };
        if let Some(c) = self.cached.read().await.as_ref()
            && usable(c, false)
        {
            return Ok(c.verifier.clone());
        }
        let _single_flight = self.refreshing.lock().await;
        // Someone else may have refreshed while we waited, or refreshed too recently to retry.
        if let Some(c) = self.cached.read().await.as_ref() {
            let recent = c.fetched_at.elapsed() < self.min_refresh;
            if usable(c, recent) {
                return Ok(c.verifier.clone());
            }
        }
        let verifier = Arc::new(self.fetch().await?);
        *self.cached.write().await =
            Some(Cached { verifier: verifier.clone(), fetched_at: Instant::now() });
        Ok(verifier)
    }

    pub async fn verify(
        &self,
        token: &str,
        session_id: &str,
    ) -> Result<SessionClaims, VerifyError> {
        if token.is_empty() {
            return Err(TokenError::Missing.into());
        }
        let kid = token_kid(token);
        let verifier = self.verifier_for(kid.as_deref()).await?;
        Ok(verifier.verify(token, session_id)?)
    }
}
