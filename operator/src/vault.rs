//! The API's secrets on a cluster: Kubernetes Secrets in the sessions namespace, named
//! `cliscale-secret-<name>` and labelled as the API's, so a session can refer only to secrets
//! made through `/api/secrets`, never to another Secret of the namespace. A CommandSession
//! names the Secret and key; the kubelet puts the value into the runner's environment.

use std::collections::BTreeMap;

use cliscale_api::executor::BoxFuture;
use cliscale_api::secrets::{SecretMeta, SecretVault, Written};
use cliscale_api::{ApiError, Result as ApiResult};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

/// The prefix of the Secrets the API manages.
pub const PREFIX: &str = "cliscale-secret-";
/// The label naming the API's own name for a Secret.
pub const NAME_LABEL: &str = "cliscale.dev/secret";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "cliscale");
const UPDATED_AT: &str = "cliscale.dev/updated-at";

/// Secrets as Kubernetes Secrets in one namespace.
pub struct KubeVault {
    secrets: Api<Secret>,
}

impl KubeVault {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self { secrets: Api::namespaced(client, namespace) }
    }

    /// The Secret of API secret `name`, if it is one the API made.
    async fn ours(&self, name: &str) -> ApiResult<Option<Secret>> {
        match self.secrets.get_opt(&format!("{PREFIX}{name}")).await {
            Ok(found) => Ok(found.filter(|s| is_ours(s, name))),
            Err(e) => Err(failed("reading a Secret", e)),
        }
    }
}

fn failed(what: &str, e: kube::Error) -> ApiError {
    ApiError::Internal(format!("{what}: the Kubernetes API failed: {e}"))
}

fn is_ours(secret: &Secret, name: &str) -> bool {
    let labels = secret.metadata.labels.as_ref();
    labels.and_then(|l| l.get(NAME_LABEL)).is_some_and(|n| n == name)
        && labels.and_then(|l| l.get(MANAGED_BY.0)).is_some_and(|m| m == MANAGED_BY.1)
}

fn now() -> i64 {
    cliscale_api::store::now()
}

/// The Secret for API secret `name` holding `data`. Pure.
pub fn secret_object(name: &str, data: &BTreeMap<String, String>, t: i64) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some(format!("{PREFIX}{name}"));
    secret.metadata.labels = Some(BTreeMap::from([
        (NAME_LABEL.to_string(), name.to_string()),
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
    ]));
    secret.metadata.annotations = Some(BTreeMap::from([(UPDATED_AT.to_string(), t.to_string())]));
    secret.type_ = Some("Opaque".into());
    secret.data =
        Some(data.iter().map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec()))).collect());
    secret
}

fn meta_of(secret: &Secret, name: &str) -> SecretMeta {
    let created_at = secret.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second());
    let updated_at = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(UPDATED_AT))
        .and_then(|t| t.parse().ok())
        .unwrap_or(created_at);
    SecretMeta {
        name: name.into(),
        keys: secret.data.iter().flat_map(|d| d.keys().cloned()).collect(),
        created_at,
        updated_at,
    }
}

impl SecretVault for KubeVault {
    fn write<'a>(
        &'a self,
        name: &'a str,
        data: &'a BTreeMap<String, String>,
        create: bool,
    ) -> BoxFuture<'a, ApiResult<Written>> {
        Box::pin(async move {
            let object = secret_object(name, data, now());
            if create {
                return match self.secrets.create(&PostParams::default(), &object).await {
                    Ok(_) => Ok(Written::Done),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(Written::Exists),
                    Err(e) => Err(failed("creating a Secret", e)),
                };
            }
            let Some(current) = self.ours(name).await? else { return Ok(Written::Missing) };
            // A merge patch that sets the new keys and removes the others, guarded by the
            // resourceVersion read (a concurrent write fails with 409 instead of mixing).
            let mut patch_data = serde_json::Map::new();
            for old in current.data.iter().flat_map(|d| d.keys()) {
                patch_data.insert(old.clone(), serde_json::Value::Null);
            }
            for (k, v) in object.data.iter().flatten() {
                patch_data.insert(k.clone(), serde_json::to_value(v).unwrap_or_default());
            }
            let patch = serde_json::json!({
                "metadata": {
                    "resourceVersion": current.metadata.resource_version,
                    "annotations": object.metadata.annotations,
                },
                "data": patch_data,
            });
            self.secrets
                .patch(&format!("{PREFIX}{name}"), &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| failed("updating a Secret", e))?;
            Ok(Written::Done)
        })
    }

    fn list(&self) -> BoxFuture<'_, ApiResult<Vec<SecretMeta>>> {
        Box::pin(async move {
            let selector = format!("{}={},{NAME_LABEL}", MANAGED_BY.0, MANAGED_BY.1);
            let found = self
                .secrets
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| failed("listing Secrets", e))?;
            Ok(found
                .items
                .iter()
                .filter_map(|s| {
                    let name = s.metadata.labels.as_ref()?.get(NAME_LABEL)?.clone();
                    is_ours(s, &name).then(|| meta_of(s, &name))
                })
                .collect())
        })
    }

    fn meta<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ApiResult<Option<SecretMeta>>> {
        Box::pin(async move { Ok(self.ours(name).await?.map(|s| meta_of(&s, name))) })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ApiResult<bool>> {
        Box::pin(async move {
            if self.ours(name).await?.is_none() {
                return Ok(false);
            }
            match self.secrets.delete(&format!("{PREFIX}{name}"), &Default::default()).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
                Err(e) => Err(failed("deleting a Secret", e)),
            }
        })
    }

    fn reveal<'a>(
        &'a self,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, ApiResult<Option<String>>> {
        Box::pin(async move {
            let secret = self.ours(name).await?;
            Ok(secret
                .and_then(|s| s.data)
                .and_then(|mut d| d.remove(key))
                .and_then(|v| String::from_utf8(v.0).ok()))
        })
    }

    fn reference(&self, name: &str) -> String {
        format!("{PREFIX}{name}")
    }
}
