//! The gateway's backends over the API's store and signing keys, shared by `cliscale up` and
//! `cliscale-gateway`: the JTI ledger is the store's atomic consume; reconnect tokens are
//! signed with the API's active key; tokens' keys are looked up in the store. Here, in the binaries' crate, so that the gateway library
//! links neither the store nor the keys.

use std::sync::Arc;
use std::time::Duration;

use cliscale_api::signing::KeyRing;
use cliscale_api::store::Store;
use cliscale_core::token::{SessionClaims, TERMINAL_AUDIENCE, new_claims};

use cliscale_gateway::{BoxFuture, JtiLedger, KeyDirectory, KeyStanding, ReconnectIssuer};

/// Consumed JTIs in the API's database (SQLite locally, PostgreSQL on a cluster).
pub struct StoreLedger(pub Store);

impl JtiLedger for StoreLedger {
    fn consume(&self, jti: &str, expires_at: i64) -> BoxFuture<'_, Result<bool, String>> {
        let jti = jti.to_owned();
        Box::pin(
            async move { self.0.consume_jti(&jti, expires_at).await.map_err(|e| e.to_string()) },
        )
    }

    fn is_used(&self, jti: &str) -> BoxFuture<'_, Result<bool, String>> {
        let jti = jti.to_owned();
        Box::pin(async move { self.0.jti_used(&jti).await.map_err(|e| e.to_string()) })
    }
}

/// Terminal tokens' keys, as the API's store has them now.
pub struct StoreKeys(pub Store);

impl KeyDirectory for StoreKeys {
    fn standing(&self, key_id: &str) -> BoxFuture<'_, Result<KeyStanding, String>> {
        let id = key_id.to_owned();
        Box::pin(async move {
            let key = self.0.get_api_key(&id).await.map_err(|e| e.to_string())?;
            Ok(match key {
                Some(k) if k.revoked_at.is_none() => match k.role {
                    cliscale_api::keys::Role::Admin | cliscale_api::keys::Role::Operator => {
                        KeyStanding::Interact
                    }
                    cliscale_api::keys::Role::Viewer => KeyStanding::View,
                },
                _ => KeyStanding::Gone,
            })
        })
    }
}

/// How long a reconnect token is good for. Long enough for a page to ride out any outage of a
/// session that is still running (a laptop closed over lunch); no replay window for that,
/// because each token opens one connection (its JTI is consumed), names one session, scope and
/// subject, and dies with the key that signed it (docs/protocol.md, "Reconnecting").
pub const RECONNECT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Signs the one-time reconnect token handed over a live connection.
pub struct KeyRingIssuer {
    pub keys: Arc<KeyRing>,
    pub ttl: Duration,
}

impl ReconnectIssuer for KeyRingIssuer {
    fn issue(&self, previous: &SessionClaims) -> Option<String> {
        let claims = new_claims(
            &previous.iss,
            TERMINAL_AUDIENCE,
            &previous.sub,
            &previous.sid,
            previous.scope,
            self.ttl.as_secs(),
        );
        self.keys.active().sign(&claims).ok()
    }
}

/// Finished sessions' stored output, from the API's output store, for the gateway to replay.
pub struct StoreArchive(pub cliscale_api::output::Output);

impl StoreArchive {
    pub fn new(store: Store) -> Self {
        Self(cliscale_api::output::Output::new(
            Arc::new(store),
            cliscale_api::output::DEFAULT_CAP_BYTES,
        ))
    }
}

impl cliscale_gateway::OutputArchive for StoreArchive {
    fn read(
        &self,
        session_id: &str,
        offset: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<cliscale_core::cursor::LogRead<bytes::Bytes>, String>> {
        let id = session_id.to_owned();
        Box::pin(
            async move { self.0.read(&id, offset, max, None).await.map_err(|e| e.to_string()) },
        )
    }
}
