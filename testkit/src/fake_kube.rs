//! An in-memory Kubernetes API server, enough for kube-runtime's Controller: list, streamed
//! watch (with history, so nothing falls between a list and its watch), create, server-side
//! apply (with field-ownership conflicts), merge patches, delete with owner-reference garbage collection, and a
//! resourceVersion that only moves when an object really changes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

/// (collection, namespace, name)
type Key = (String, String, String);

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<(u64, String, Value)>,
    applies: BTreeMap<String, u32>,
    /// Writes (POST/PATCH) to refuse with 500 per collection: fault injection.
    failing_writes: BTreeMap<String, u32>,
    /// Server-side apply field ownership: (object, leaf path) -> field manager.
    owners: BTreeMap<(Key, String), String>,
}

/// The leaf paths of an applied configuration (identity fields excluded), with their values.
fn leaves(value: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let path = format!("{prefix}/{k}");
                if matches!(
                    path.as_str(),
                    "/apiVersion" | "/kind" | "/metadata/name" | "/metadata/namespace"
                ) {
                    continue;
                }
                leaves(v, &path, out);
            }
        }
        other => out.push((prefix.to_owned(), other.clone())),
    }
}

pub struct FakeApi {
    store: Mutex<Store>,
    events: broadcast::Sender<(u64, String, Value)>,
    changed: watch::Sender<u64>,
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn status_error(code: StatusCode, reason: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code.as_u16(), "message": reason});
    (code, axum::Json(body)).into_response()
}

/// Splits `/apis/g/v/[namespaces/ns/]plural[/name[/status]]` (or `/api/v1/...`).
fn parse(path: &str) -> Option<(String, Option<String>, Option<String>, bool)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segs.as_slice() {
        ["api", _v, rest @ ..] => rest,
        ["apis", _g, _v, rest @ ..] => rest,
        _ => return None,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    match rest {
        [plural] => Some((plural.to_string(), ns, None, false)),
        [plural, name] => Some((plural.to_string(), ns, Some(name.to_string()), false)),
        [plural, name, "status"] => Some((plural.to_string(), ns, Some(name.to_string()), true)),
        _ => None,
    }
}

fn query(req: &Request) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect()
}

fn matches_labels(obj: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else { return true };
    selector.split(',').all(|term| {
        let labels = &obj["metadata"]["labels"];
        match term.split_once('=') {
            Some((k, v)) => labels[k] == v,
            None => !labels[term].is_null(),
        }
    })
}

impl FakeApi {
    pub fn new() -> Arc<Self> {
        let (events, _) = broadcast::channel(4096);
        let (changed, _) = watch::channel(0);
        Arc::new(Self { store: Mutex::new(Store::default()), events, changed })
    }

    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new().fallback(handle).with_state(self.clone())
    }

    /// Stores `obj` (creating or replacing), bumping the resourceVersion only on a real change.
    pub fn put(&self, collection: &str, mut obj: Value) -> Value {
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("").to_owned();
        let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
        let key = (collection.to_owned(), ns, name.clone());
        let mut s = self.store.lock().unwrap();
        let existing = s.objects.get(&key).cloned();
        if let Some(old) = &existing {
            let mut old_cmp = old.clone();
            old_cmp["metadata"]["resourceVersion"] = Value::Null;
            let mut new_cmp = obj.clone();
            for f in ["resourceVersion", "uid", "creationTimestamp", "generation"] {
                new_cmp["metadata"][f] = old_cmp["metadata"][f].clone();
            }
            if old_cmp == new_cmp {
                return old.clone();
            }
            for f in ["uid", "creationTimestamp"] {
                obj["metadata"][f] = old["metadata"][f].clone();
            }
            let spec_changed = old.get("spec") != obj.get("spec");
            let generation =
                old["metadata"]["generation"].as_i64().unwrap_or(1) + i64::from(spec_changed);
            obj["metadata"]["generation"] = json!(generation);
        } else {
            obj["metadata"]["uid"] = json!(format!("uid-{collection}-{name}"));
            obj["metadata"]["creationTimestamp"] = json!("2026-11-23T00:00:00Z");
            obj["metadata"]["generation"] = json!(1);
        }
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.objects.insert(key, obj.clone());
        let event =
            json!({"type": if existing.is_some() { "MODIFIED" } else { "ADDED" }, "object": obj});
        s.history.push((rv, collection.to_owned(), event.clone()));
        drop(s);
        let _ = self.events.send((rv, collection.to_owned(), event));
        self.changed.send_replace(rv);
        obj
    }

    pub fn remove(&self, collection: &str, ns: &str, name: &str) -> Option<Value> {
        let mut s = self.store.lock().unwrap();
        let mut obj = s.objects.remove(&(collection.into(), ns.into(), name.into()))?;
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let event = json!({"type": "DELETED", "object": obj});
        s.history.push((rv, collection.to_owned(), event.clone()));
        // Garbage collection: whatever this object owned goes too.
        let uid = obj["metadata"]["uid"].clone();
        let owned: Vec<Key> = s
            .objects
            .iter()
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
            })
            .map(|(k, _)| k.clone())
            .collect();
        drop(s);
        let _ = self.events.send((rv, collection.to_owned(), event));
        self.changed.send_replace(rv);
        for (c, n, name) in owned {
            self.remove(&c, &n, &name);
        }
        Some(obj)
    }

    pub fn get(&self, collection: &str, ns: &str, name: &str) -> Option<Value> {
        self.store
            .lock()
            .unwrap()
            .objects
            .get(&(collection.into(), ns.into(), name.into()))
            .cloned()
    }

    /// The next `n` writes to `collection` fail with 500 Internal Server Error.
    pub fn fail_writes(&self, collection: &str, n: u32) {
        self.store.lock().unwrap().failing_writes.insert(collection.to_owned(), n);
    }

    pub fn list(&self, collection: &str) -> Vec<Value> {
        let s = self.store.lock().unwrap();
        s.objects.iter().filter(|(k, _)| k.0 == collection).map(|(_, o)| o.clone()).collect()
    }

    pub fn count(&self, collection: &str) -> usize {
        self.store.lock().unwrap().objects.keys().filter(|k| k.0 == collection).count()
    }

    pub fn applies(&self, collection: &str) -> u32 {
        self.store.lock().unwrap().applies.get(collection).copied().unwrap_or(0)
    }

    /// Waits until `condition` holds, re-checking on every change (a hang guard, no polling).
    pub async fn wait_until(&self, what: &str, condition: impl Fn(&Self) -> bool) {
        let mut rx = self.changed.subscribe();
        let wait = async {
            while !condition(self) {
                rx.changed().await.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("never: {what}"));
    }
}

async fn handle(State(api): State<Arc<FakeApi>>, req: Request) -> Response {
    let Some((collection, ns, name, status)) = parse(req.uri().path()) else {
        return status_error(StatusCode::NOT_FOUND, "NotFound");
    };
    let q = query(&req);
    let method = req.method().clone();
    let content_type =
        req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body: Bytes = axum::body::to_bytes(req.into_body(), usize::MAX).await.unwrap_or_default();
    if matches!(method, Method::POST | Method::PATCH) && !status {
        let mut s = api.store.lock().unwrap();
        if let Some(left) = s.failing_writes.get_mut(&collection).filter(|n| **n > 0) {
            *left -= 1;
            return status_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
        }
    }
    match (method, name) {
        (Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            let from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
            let rx = api.events.subscribe();
            let backlog: Vec<(u64, String, Value)> = {
                let s = api.store.lock().unwrap();
                s.history
                    .iter()
                    .filter(|(rv, c, _)| *rv > from && *c == collection)
                    .cloned()
                    .collect()
            };
            let last = backlog.last().map(|e| e.0).unwrap_or(from);
            let (c1, c2, ns1, ns2, sel1, sel2) = (
                collection.clone(),
                collection,
                ns.clone(),
                ns,
                q.get("labelSelector").cloned(),
                q.get("labelSelector").cloned(),
            );
            let keep = move |c: &str, ev: &Value, ns: &Option<String>, sel: &Option<String>| {
                c == c1.as_str()
                    && ns
                        .as_ref()
                        .is_none_or(|n| ev["object"]["metadata"]["namespace"] == n.as_str())
                    && matches_labels(&ev["object"], sel.as_ref())
            };
            let keep2 = keep.clone();
            let old = futures_util::stream::iter(
                backlog
                    .into_iter()
                    .filter(move |(_, c, ev)| keep(c, ev, &ns1, &sel1))
                    .map(|(_, _, ev)| ev),
            );
            let live = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |item| {
                let out = match item {
                    Ok((rv, c, ev)) if rv > last && keep2(&c, &ev, &ns2, &sel2) => Some(ev),
                    _ => None,
                };
                std::future::ready(out)
            });
            let _ = c2;
            use futures_util::StreamExt;
            let stream =
                old.chain(live).map(|ev| Ok::<_, Infallible>(Bytes::from(format!("{ev}\n"))));
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from_stream(stream))
                .unwrap()
        }
        (Method::GET, None) => {
            let s = api.store.lock().unwrap();
            let items: Vec<Value> = s
                .objects
                .iter()
                .filter(|((c, n, _), o)| {
                    *c == collection
                        && ns.as_ref().is_none_or(|ns| ns == n)
                        && matches_labels(o, q.get("labelSelector"))
                })
                .map(|(_, o)| o.clone())
                .collect();
            axum::Json(json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": s.rv.to_string()}, "items": items})).into_response()
        }
        (Method::GET, Some(name)) => match api.get(&collection, ns.as_deref().unwrap_or(""), &name)
        {
            Some(o) => axum::Json(o).into_response(),
            None => status_error(StatusCode::NOT_FOUND, "NotFound"),
        },
        (Method::POST, None) => {
            let mut obj: Value = serde_json::from_slice(&body).unwrap();
            obj["metadata"]["namespace"] = json!(ns.clone().unwrap_or_default());
            let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
            if api.get(&collection, ns.as_deref().unwrap_or(""), &name).is_some() {
                return status_error(StatusCode::CONFLICT, "AlreadyExists");
            }
            (StatusCode::CREATED, axum::Json(api.put(&collection, obj))).into_response()
        }
        (Method::PATCH, Some(name)) => {
            let patch: Value = serde_json::from_slice(&body).unwrap();
            let ns = ns.unwrap_or_default();
            let existing = api.get(&collection, &ns, &name);
            if status {
                let Some(mut obj) = existing else {
                    return status_error(StatusCode::NOT_FOUND, "NotFound");
                };
                merge(&mut obj["status"], &patch["status"]);
                return axum::Json(api.put(&collection, obj)).into_response();
            }
            // Field ownership, as the real server keeps it: an unforced apply may not change a
            // field another manager owns (409 Conflict); every patch with a field manager
            // takes over the fields it sets.
            let is_apply = content_type.starts_with("application/apply-patch");
            let key: Key = (collection.clone(), ns.clone(), name.clone());
            if let Some(manager) = q.get("fieldManager") {
                let mut touched = Vec::new();
                leaves(&patch, "", &mut touched);
                let mut s = api.store.lock().unwrap();
                let forced = q.get("force").is_some_and(|f| f == "true");
                if is_apply && !forced {
                    let current = existing.clone().unwrap_or(Value::Null);
                    let conflict = touched.iter().any(|(path, value)| {
                        s.owners.get(&(key.clone(), path.clone())).is_some_and(|m| m != manager)
                            && current.pointer(path).unwrap_or(&Value::Null) != value
                    });
                    if conflict {
                        return status_error(StatusCode::CONFLICT, "Conflict");
                    }
                }
                for (path, value) in touched {
                    if value.is_null() {
                        s.owners.remove(&(key.clone(), path));
                    } else {
                        s.owners.insert((key.clone(), path), manager.clone());
                    }
                }
            }
            if is_apply {
                *api.store.lock().unwrap().applies.entry(collection.clone()).or_default() += 1;
            }
            let mut obj =
                existing.unwrap_or_else(|| json!({"metadata": {"name": name, "namespace": ns}}));
            let mut applied = patch;
            applied["metadata"]["namespace"] = json!(ns);
            merge(&mut obj, &applied);
            axum::Json(api.put(&collection, obj)).into_response()
        }
        (Method::DELETE, Some(name)) => {
            match api.remove(&collection, ns.as_deref().unwrap_or(""), &name) {
                Some(o) => axum::Json(o).into_response(),
                None => status_error(StatusCode::NOT_FOUND, "NotFound"),
            }
        }
        _ => status_error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
    }
}
