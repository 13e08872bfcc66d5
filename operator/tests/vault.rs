//! The API's secrets as Kubernetes Secrets, against the in-memory API server: written,
//! replaced, listed and deleted by name; a session's CommandSession names the Secret and key
//! and holds no value; Secrets the API did not make cannot be named.

use std::collections::BTreeMap;

use cliscale_api::model::{Origin, SessionRecord, SessionSpec};
use cliscale_api::secrets::{SecretVault, Written, resolve_secret_env};
use cliscale_core::rest::SecretRef;
use cliscale_operator::cluster_api::resource_for;
use cliscale_operator::vault::KubeVault;
use cliscale_testkit::fake_kube::FakeApi;
use serde_json::json;

const VALUE: &str = "tok-4f3e2d1c0b";

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn secrets_are_labelled_secrets_that_sessions_name_but_never_hold() {
    let api = FakeApi::new();
    let vault = KubeVault::new(kube::Client::new(api.router(), "team"), "team");

    assert_eq!(
        vault.write("deploy", &data(&[("TOKEN", VALUE), ("OLD", "x")]), true).await.unwrap(),
        Written::Done
    );
    assert_eq!(
        vault.write("deploy", &data(&[("TOKEN", "y")]), true).await.unwrap(),
        Written::Exists
    );
    assert_eq!(vault.write("absent", &data(&[("K", "v")]), false).await.unwrap(), Written::Missing);
    let stored = api.get("secrets", "team", "cliscale-secret-deploy").unwrap();
    assert_eq!(stored["metadata"]["labels"]["cliscale.dev/secret"], "deploy");
    assert_eq!(stored["type"], "Opaque");

    // Replaced: the old key is gone, the new value is in.
    assert_eq!(
        vault.write("deploy", &data(&[("TOKEN", VALUE)]), false).await.unwrap(),
        Written::Done
    );
    let meta = vault.meta("deploy").await.unwrap().unwrap();
    assert_eq!(meta.keys, ["TOKEN"]);
    assert_eq!(vault.reveal("deploy", "TOKEN").await.unwrap().as_deref(), Some(VALUE));
    let listed = vault.list().await.unwrap();
    assert_eq!(listed.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["deploy"]);

    // A session names the Secret and key; its CommandSession holds no value.
    let refs = BTreeMap::from([(
        "TOKEN".to_string(),
        SecretRef { secret: "deploy".into(), key: "TOKEN".into() },
    )]);
    let resolved = resolve_secret_env(&vault, &refs).await.unwrap();
    assert_eq!(resolved[0].secret_name, "cliscale-secret-deploy");
    let record = SessionRecord {
        id: "s1".into(),
        owner: "k".into(),
        spec: SessionSpec { env_from_secrets: resolved, ..SessionSpec::new("deploy") },
        phase: cliscale_core::SessionPhase::Pending,
        exit_code: None,
        reason: None,
        message: None,
        runner_addr: None,
        created_at: 0,
        started_at: None,
        finished_at: None,
        updated_at: 0,
        origin: Origin { secret_env: refs, ..Origin::default() },
    };
    let cr = serde_json::to_string(&resource_for(&record, "team")).unwrap();
    assert!(cr.contains("cliscale-secret-deploy") && !cr.contains(VALUE), "{cr}");

    // A Secret the API did not make (a service account's token, another app's) cannot be named.
    api.put(
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "cliscale-secret-theirs", "namespace": "team"},
        "data": {"token": "c2VjcmV0"}}),
    );
    assert!(vault.meta("theirs").await.unwrap().is_none());
    let theirs = BTreeMap::from([(
        "T".to_string(),
        SecretRef { secret: "theirs".into(), key: "token".into() },
    )]);
    assert_eq!(resolve_secret_env(&vault, &theirs).await.unwrap_err().code(), "unknown_secret");
    assert!(!vault.delete("theirs").await.unwrap());
    assert!(api.get("secrets", "team", "cliscale-secret-theirs").is_some());

    assert!(vault.delete("deploy").await.unwrap());
    assert!(vault.meta("deploy").await.unwrap().is_none());
}
