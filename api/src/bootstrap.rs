//! The first admin API key: chosen by the deployer (`CLISCALE_API_KEY`, from a Secret on a
//! cluster) or generated once and shown once.

use crate::error::{ApiError, Result};
use crate::keys::{self, Role};
use crate::store::{ApiKeyRecord, Store, now};

/// Makes sure an admin key exists: `chosen` if given, else a fresh one when there are no keys.
/// Returns the generated key, to print once.
pub async fn ensure_admin_key(store: &Store, chosen: Option<&str>) -> Result<Option<String>> {
    if let Some(chosen) = chosen {
        let key = keys::from_full(chosen).ok_or_else(|| {
            ApiError::Internal(
                "CLISCALE_API_KEY must look like csk_<16 hex>_<secret of 32+ characters>".into(),
            )
        })?;
        match store.get_api_key(&key.id).await? {
            Some(existing) if existing.secret_hash == key.secret_hash => {}
            Some(_) => {
                return Err(ApiError::Internal(
                    "CLISCALE_API_KEY's id is already taken by another key".into(),
                ));
            }
            None => {
                store.insert_api_key(&admin_record(&key, "bootstrap (CLISCALE_API_KEY)")).await?;
            }
        }
        return Ok(None);
    }
    if store.count_api_keys().await? > 0 {
        return Ok(None);
    }
    let key = keys::generate();
    store.insert_api_key(&admin_record(&key, "bootstrap admin")).await?;
    Ok(Some(key.full))
}

fn admin_record(key: &keys::NewKey, name: &str) -> ApiKeyRecord {
    ApiKeyRecord {
        id: key.id.clone(),
        name: name.into(),
        role: Role::Admin,
        secret_hash: key.secret_hash.clone(),
        created_at: now(),
        revoked_at: None,
    }
}
