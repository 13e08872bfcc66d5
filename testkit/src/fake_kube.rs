//! An in-memory Kubernetes API server that behaves as kube-apiserver does where the operator
//! could tell the difference:
//! - list, and streamed watch with history (so nothing falls between a list and its watch),
//!   bookmarks when asked for, and 410 Gone for a resourceVersion older than the history kept
//!   ([`FakeApi::compact`]);
//! - create, server-side apply with field ownership (409 conflicts, and fields a manager stops
//!   applying are removed, on the main resource and on `/status`), merge patches, and a
//!   patch's `metadata.resourceVersion` as a precondition (409 when the object moved on);
//! - the status subresource apart from the main resource, both ways: writes to the object
//!   keep its status, writes to `/status` change nothing else;
//! - the CRD's structural schema (crds/commandsession.yaml): unknown fields pruned, wrong
//!   types, enums and bounds refused with 422, as are invalid names and label values;
//! - random uids, `deletionTimestamp` and finalizers, graceful pod deletion (with the cluster
//!   simulator's kubelet), and owner-reference garbage collection
//!   that happens after the owner is gone, as the garbage collector does it.
//!
//! `crate::cluster_sim` adds a Job controller and a kubelet on top.

use std::collections::{BTreeMap, HashMap};
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
    /// The oldest resourceVersion a watch may still start from (older: 410 Gone).
    compacted: u64,
    applies: BTreeMap<String, u32>,
    creates: BTreeMap<String, u32>,
    made: BTreeMap<String, u32>,
    /// LIST requests (not watches) per collection.
    lists: BTreeMap<String, u32>,
    /// Watches are refused (503) while set: an API server or load balancer outage.
    watches_held: bool,
    /// Writes (POST/PATCH) to refuse with 500 per collection: fault injection.
    failing_writes: BTreeMap<String, u32>,
    /// Server-side apply field ownership: (object, leaf path) -> field manager.
    owners: BTreeMap<(Key, String), String>,
    /// A kubelet runs (the cluster simulator's): a deleted pod is only marked, and goes once
    /// the kubelet has stopped its containers.
    graceful_pods: bool,
}

/// The leaf paths of an applied configuration (identity fields excluded), with their values.
fn leaves(value: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                // JSON Pointer escaping: label and annotation keys hold `/`.
                let path = format!("{prefix}/{}", k.replace('~', "~0").replace('/', "~1"));
                if matches!(
                    path.as_str(),
                    "/apiVersion"
                        | "/kind"
                        | "/metadata/name"
                        | "/metadata/namespace"
                        | "/metadata/resourceVersion"
                ) {
                    continue;
                }
                leaves(v, &path, out);
            }
        }
        other => out.push((prefix.to_owned(), other.clone())),
    }
}

/// Server-side apply: the fields `manager` applied to `key` before and leaves out of this
/// apply (`now`) are no longer its own; they are removed from the object by the caller. Only
/// the status's fields on `/status`, only the rest on the main resource. Returns their paths.
fn forget_dropped(
    s: &mut Store,
    key: &Key,
    manager: &str,
    now: &std::collections::BTreeSet<&str>,
    on_status: bool,
) -> Vec<String> {
    let dropped: Vec<String> = s
        .owners
        .iter()
        .filter(|((k, path), m)| {
            k == key
                && *m == manager
                && path.starts_with("/status/") == on_status
                && !now.contains(path.as_str())
        })
        .map(|((_, path), _)| path.clone())
        .collect();
    for path in &dropped {
        s.owners.remove(&(key.clone(), path.clone()));
    }
    dropped
}

pub struct FakeApi {
    store: Mutex<Store>,
    events: broadcast::Sender<(u64, String, Value)>,
    changed: watch::Sender<u64>,
    /// Ends every open watch when bumped, as an API server restart or a load balancer would.
    cut_watches: watch::Sender<u64>,
    /// Itself, for the garbage collector's work after a request has been answered.
    this: std::sync::Weak<FakeApi>,
    /// The CRDs' schemas (and CEL rules), by collection, as the API server enforces them.
    schemas: HashMap<&'static str, Value>,
}

/// The kind and apiVersion of the collections the operator uses, for bookmarks and errors.
fn type_of(collection: &str) -> (&'static str, &'static str) {
    match collection {
        "commandsessions" => ("cliscale.dev/v1alpha1", "CommandSession"),
        "commandtemplates" => ("cliscale.dev/v1alpha1", "CommandTemplate"),
        "commandschedules" => ("cliscale.dev/v1alpha1", "CommandSchedule"),
        "secrets" => ("v1", "Secret"),
        "jobs" => ("batch/v1", "Job"),
        "pods" => ("v1", "Pod"),
        "configmaps" => ("v1", "ConfigMap"),
        "leases" => ("coordination.k8s.io/v1", "Lease"),
        "events" => ("v1", "Event"),
        _ => ("v1", "Unknown"),
    }
}

/// Lower-case letters, digits and inner dashes: one part of a DNS-1123 name, of any length.
fn dns_part(p: &str) -> bool {
    !p.is_empty()
        && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !p.starts_with('-')
        && !p.ends_with('-')
}

/// Whether `s` is a DNS-1123 label (names of Jobs, at most 63 characters).
fn dns_label(s: &str) -> bool {
    s.len() <= 63 && dns_part(s)
}

/// Whether `s` is a DNS-1123 subdomain (names of CommandSessions, at most 253 characters;
/// kube-apiserver does not hold its parts to 63).
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_part)
}

/// Whether `s` is a valid label value: at most 63 characters of `[A-Za-z0-9_.-]`, beginning
/// and ending alphanumeric, or empty.
fn label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

/// Whether `s` is a resource quantity as the API server parses one (`100m`, `2Gi`, `1e3`).
pub fn quantity(s: &str) -> bool {
    quantity_value(s).is_some()
}

/// The value of a quantity, near enough to compare two (a request with its limit).
fn quantity_value(s: &str) -> Option<f64> {
    let digits = s.trim_start_matches(['+', '-']);
    let sign = if s.starts_with('-') { -1.0 } else { 1.0 };
    let number_end =
        digits.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(digits.len());
    let (number, suffix) = digits.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.len() > 1 && matches!(&e[..1], "e" | "E") => {
            let exponent = &e[1..];
            let bare = exponent.trim_start_matches(['+', '-']);
            if bare.is_empty() || !bare.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(exponent.parse().ok()?)
        }
        _ => return None,
    };
    Some(sign * number * scale)
}

/// Whether `name` may name a container's resource: a standard one or a fully qualified
/// extended one (`example.com/gpu`).
fn resource_name(name: &str) -> bool {
    matches!(name, "cpu" | "memory" | "ephemeral-storage")
        || name.starts_with("hugepages-")
        || name
            .split_once('/')
            .is_some_and(|(domain, rest)| domain.contains('.') && !rest.is_empty())
}

/// The checks the API server makes of every object's metadata, and of the parts of Jobs and
/// pods the operator writes: names, label values, quantities. The reason for a refusal.
fn validate_core(collection: &str, obj: &Value) -> Result<(), String> {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    // A Job's name also labels its pods, so it is held to a label's 63 characters.
    let name_ok = if collection == "jobs" { dns_label(name) } else { dns_subdomain(name) };
    if !name_ok {
        return Err(format!("metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 name"));
    }
    let mut labels = vec![("metadata.labels", &obj["metadata"]["labels"])];
    labels.push(("spec.template.metadata.labels", &obj["spec"]["template"]["metadata"]["labels"]));
    for (at, map) in labels {
        for (k, v) in map.as_object().into_iter().flatten() {
            let v = v.as_str().unwrap_or("");
            if !label_value(v) {
                return Err(format!(
                    "{at}: Invalid value: \"{v}\": must be no more than 63 characters of [A-Za-z0-9_.-] (label {k})"
                ));
            }
        }
    }
    let pod_spec = if obj["spec"]["template"]["spec"].is_object() {
        &obj["spec"]["template"]["spec"]
    } else {
        &obj["spec"]
    };
    for v in pod_spec["volumes"].as_array().into_iter().flatten() {
        if let Some(limit) = v["emptyDir"].get("sizeLimit") {
            let text = limit.as_str().map(str::to_owned).unwrap_or_else(|| limit.to_string());
            if !quantity(&text) {
                return Err(format!(
                    "spec.volumes.emptyDir.sizeLimit: Invalid value: \"{text}\": quantities must match the regular expression"
                ));
            }
        }
    }
    let containers = pod_spec["containers"].as_array();
    for c in containers.into_iter().flatten() {
        let text = |q: &Value| q.as_str().map(str::to_owned).unwrap_or_else(|| q.to_string());
        for kind in ["requests", "limits"] {
            for (r, q) in c["resources"][kind].as_object().into_iter().flatten() {
                let at = format!("spec.containers.resources.{kind}[{r}]");
                let q = text(q);
                if !resource_name(r) {
                    return Err(format!(
                        "{at}: Invalid value: \"{r}\": must be a standard resource type or fully qualified"
                    ));
                }
                match quantity_value(&q) {
                    None => {
                        return Err(format!(
                            "{at}: Invalid value: \"{q}\": quantities must match the regular expression"
                        ));
                    }
                    Some(v) if v < 0.0 => {
                        return Err(format!(
                            "{at}: Invalid value: \"{q}\": must be greater than or equal to 0"
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        for (r, request) in c["resources"]["requests"].as_object().into_iter().flatten() {
            let Some(limit) = c["resources"]["limits"].get(r) else { continue };
            if quantity_value(&text(request)) > quantity_value(&text(limit)) {
                return Err(format!(
                    "spec.containers.resources.requests: Invalid value: \"{}\": must be less than or equal to {r} limit of {}",
                    text(request),
                    text(limit)
                ));
            }
        }
    }
    Ok(())
}

/// Checks `value` against a structural OpenAPI schema and prunes the fields it does not
/// declare, as the API server does for a CRD. The first problem, with its path.
fn conform(value: &mut Value, schema: &Value, path: &str) -> Result<(), String> {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        && schema.get("properties").is_none()
    {
        return Ok(());
    }
    if value.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
        return Ok(());
    }
    let bad = |what: &str| Err(format!("{path}: Invalid value: {what}"));
    // As kube-openapi's validator: `pattern` holds for string values only (so an int-or-string
    // integer passes it), RE2 syntax, which the `regex` crate shares.
    if let (Some(pattern), Some(text)) = (schema["pattern"].as_str(), value.as_str()) {
        let re = regex::Regex::new(pattern).map_err(|e| format!("{path}: bad pattern: {e}"))?;
        if !re.is_match(text) {
            return bad(&format!("\"{text}\": {path} in body should match '{pattern}'"));
        }
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return if value.is_string() || value.is_i64() || value.is_u64() {
            Ok(())
        } else {
            bad("must be an integer or a string")
        };
    }
    match schema["type"].as_str() {
        Some("object") => {
            let Some(map) = value.as_object_mut() else { return bad("must be an object") };
            if let Some(max) = schema["maxProperties"].as_u64().filter(|m| map.len() as u64 > *m) {
                return Err(format!(
                    "{path}: Too many: {}: must have at most {max} items",
                    map.len()
                ));
            }
            for required in schema["required"].as_array().into_iter().flatten() {
                let r = required.as_str().unwrap_or("");
                if !map.contains_key(r) {
                    return Err(format!("{path}.{r}: Required value"));
                }
            }
            if let Some(props) = schema["properties"].as_object() {
                map.retain(|k, _| props.contains_key(k));
                for (k, v) in map.iter_mut() {
                    conform(v, &props[k], &format!("{path}.{k}"))?;
                }
            } else if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object())
            {
                for (k, v) in map.iter_mut() {
                    conform(v, extra, &format!("{path}.{k}"))?;
                }
            }
        }
        Some("array") => {
            let Some(items) = value.as_array_mut() else { return bad("must be an array") };
            if let Some(max) = schema["maxItems"].as_u64().filter(|m| items.len() as u64 > *m) {
                return bad(&format!("must have at most {max} items"));
            }
            for (i, item) in items.iter_mut().enumerate() {
                conform(item, &schema["items"], &format!("{path}[{i}]"))?;
            }
        }
        Some("string") => {
            let Some(text) = value.as_str() else { return bad("must be a string") };
            if let Some(max) =
                schema["maxLength"].as_u64().filter(|m| text.chars().count() as u64 > *m)
            {
                return bad(&format!("may not be longer than {max}"));
            }
            if let Some(min) =
                schema["minLength"].as_u64().filter(|m| (text.chars().count() as u64) < *m)
            {
                return bad(&format!("must be at least {min} characters"));
            }
        }
        Some("integer") => {
            let Some(n) = value.as_i64() else { return bad("must be an integer") };
            if schema["minimum"].as_f64().is_some_and(|m| (n as f64) < m) {
                return bad(&format!("must be at least {}", schema["minimum"]));
            }
            if schema["maximum"].as_f64().is_some_and(|m| (n as f64) > m) {
                return bad(&format!("must be at most {}", schema["maximum"]));
            }
        }
        Some("number") if !value.is_number() => return bad("must be a number"),
        Some("boolean") if !value.is_boolean() => return bad("must be a boolean"),
        _ => {}
    }
    if let Some(allowed) = schema["enum"].as_array().filter(|a| !a.contains(value)) {
        return bad(&format!("supported values: {}", Value::Array(allowed.clone())));
    }
    Ok(())
}

/// Now, as the API server writes times: RFC 3339 to the second.
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .expect("now rounds to a second")
        .to_string()
}

/// A JSON merge patch (RFC 7386) of `patch` into `target`.
pub fn merge_into(target: &mut Value, patch: &Value) {
    merge(target, patch)
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

/// Removes the leaf at a `/a/b/c` path, and objects left empty on the way.
fn remove_path(obj: &mut Value, path: &str) {
    let parts: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect();
    // An object left empty by the removal goes too, as the field that held it was the manager's.
    fn go(v: &mut Value, parts: &[String]) {
        let Some(map) = v.as_object_mut() else { return };
        match parts {
            [last] => {
                map.remove(last);
            }
            [first, rest @ ..] => {
                if let Some(child) = map.get_mut(first) {
                    go(child, rest);
                    if child.as_object().is_some_and(|m| m.is_empty()) {
                        map.remove(first);
                    }
                }
            }
            [] => {}
        }
    }
    go(obj, &parts);
}

/// 422 Unprocessable Entity, as the API server refuses an invalid object.
fn invalid(collection: &str, message: &str) -> Response {
    let (_, kind) = type_of(collection);
    failure(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &format!("{kind} is invalid: {message}"))
}

/// A refusal as the API server writes one: a `Status` of `Failure`.
fn failure(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": reason, "code": code.as_u16(), "message": message});
    (code, axum::Json(body)).into_response()
}

fn status_error(code: StatusCode, reason: &str) -> Response {
    failure(code, reason, reason)
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

/// The CRDs' OpenAPI schemas, by collection, from the generated manifests.
fn crd_schemas() -> HashMap<&'static str, Value> {
    use kube::CustomResourceExt;
    let schema = |crd| {
        let crd: Value = serde_json::to_value(crd).expect("the CRD serializes");
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    };
    HashMap::from([
        ("commandsessions", schema(cliscale_crd::CommandSession::crd())),
        ("commandtemplates", schema(cliscale_crd::CommandTemplate::crd())),
        ("commandschedules", schema(cliscale_crd::CommandSchedule::crd())),
    ])
}

/// The field selectors a real API server takes for `collection`: `metadata.name` and
/// `metadata.namespace` everywhere, and each resource's own few; any other is a 400.
fn field_labels(collection: &str) -> &'static [&'static str] {
    match collection {
        "events" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "pods" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "jobs" => &["status.successful"],
        "secrets" => &["type"],
        _ => &[],
    }
}

/// A parsed field selector: (field, wanted value, `!=`), or the API server's refusal.
type FieldSelector = Vec<(String, String, bool)>;

fn parse_fields(collection: &str, selector: Option<&String>) -> Result<FieldSelector, String> {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else { return Ok(Vec::new()) };
    selector
        .split(',')
        .map(|term| {
            let (field, want, negated) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, false)
            } else {
                return Err(format!("invalid selector: '{selector}'; can't understand '{term}'"));
            };
            if !matches!(field, "metadata.name" | "metadata.namespace")
                && !field_labels(collection).contains(&field)
            {
                let (_, kind) = type_of(collection);
                return Err(format!(
                    "field label not supported: {field}; \"{field}\" is not a known field selector for {kind}"
                ));
            }
            Ok((field.to_owned(), want.to_owned(), negated))
        })
        .collect()
}

fn matches_fields(obj: &Value, selector: &FieldSelector) -> bool {
    selector.iter().all(|(field, want, negated)| {
        let pointer = format!("/{}", field.replace('.', "/"));
        // An unset field selects as the empty string, as the API server's field sets do.
        let have = obj.pointer(&pointer).and_then(Value::as_str).unwrap_or("");
        (have == want) != *negated
    })
}

impl FakeApi {
    pub fn new() -> Arc<Self> {
        let (events, _) = broadcast::channel(65536);
        let (changed, _) = watch::channel(0);
        let (cut_watches, _) = watch::channel(0);
        Arc::new_cyclic(|this| Self {
            store: Mutex::new(Store::default()),
            events,
            changed,
            cut_watches,
            this: this.clone(),
            schemas: crd_schemas(),
        })
    }

    /// Every change as it is stored: (resourceVersion, collection, watch event).
    pub fn subscribe(&self) -> broadcast::Receiver<(u64, String, Value)> {
        self.events.subscribe()
    }

    /// Forgets the watch history before now, as etcd's compaction does: a watch from an older
    /// resourceVersion gets 410 Gone and its client must list again. Open watches are cut.
    pub fn compact(&self) {
        let mut s = self.store.lock().unwrap();
        s.compacted = s.rv;
        s.history.clear();
        drop(s);
        self.cut_watches.send_modify(|n| *n += 1);
    }

    /// Ends every open watch (clients reconnect from their last resourceVersion).
    pub fn cut_watches(&self) {
        self.cut_watches.send_modify(|n| *n += 1);
    }

    /// Ends every open watch and refuses new ones (503) until [`FakeApi::release_watches`]:
    /// what happens meanwhile reaches watchers only through their resume (or, once
    /// compacted, their relist).
    pub fn hold_watches(&self) {
        self.store.lock().unwrap().watches_held = true;
        self.cut_watches();
    }

    pub fn release_watches(&self) {
        self.store.lock().unwrap().watches_held = false;
    }

    /// Validates and prunes `obj` as the API server would before storing it. The refusal,
    /// as a reason.
    /// What the API server checks before it keeps an object: the core checks, and a CRD's
    /// schema and rules. The simulated controllers' own objects go through it too.
    pub(crate) fn admit(&self, collection: &str, obj: &mut Value) -> Result<(), String> {
        validate_core(collection, obj)?;
        if let Some(schema) = self.schemas.get(collection) {
            // apiVersion, kind and metadata are the server's own, never pruned; status is
            // checked apart, against its own schema.
            let Some(map) = obj.as_object_mut() else { return Err("not an object".into()) };
            let own: Vec<(String, Value)> = ["apiVersion", "kind", "metadata", "status"]
                .iter()
                .filter_map(|k| Some((k.to_string(), map.remove(*k)?)))
                .collect();
            conform(obj, schema, "")?;
            let rules_see = own.iter().fold(obj.clone(), |mut whole, (k, v)| {
                whole[k] = v.clone();
                whole
            });
            // The CRD's CEL rules (x-kubernetes-validations), as the API server runs them.
            if let Err(errors) =
                kube::core::cel::Validator::new().validate(schema, &rules_see, None)
            {
                return Err(format!("{errors}"));
            }
            for (k, mut v) in own {
                if k == "status" {
                    conform(&mut v, &schema["properties"]["status"], ".status")?;
                }
                obj[k] = v;
            }
        }
        Ok(())
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
            obj["metadata"]["uid"] = json!(format!(
                "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                rand::random::<u32>(),
                rand::random::<u16>(),
                rand::random::<u16>() & 0xfff,
                rand::random::<u16>() & 0xfff,
                rand::random::<u64>() & 0xffff_ffff_ffff
            ));
            if obj["metadata"]["creationTimestamp"].is_null() {
                obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
            }
            obj["metadata"]["generation"] = json!(1);
            *s.made.entry(collection.to_owned()).or_default() += 1;
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
        // The garbage collector notices the owner is gone and deletes its dependents later,
        // each through the same deletion (finalizers respected).
        if !owned.is_empty() {
            let api = self.this.upgrade().expect("the API outlives its requests");
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                for (c, n, name) in owned {
                    api.delete(&c, &n, &name);
                }
            });
        }
        Some(obj)
    }

    /// Deletes as a DELETE request does: an object with finalizers only gets its
    /// `deletionTimestamp` and goes once they are all removed; any other goes at once.
    ///
    /// With a kubelet running ([`FakeApi::delete_pods_gracefully`]), a pod is deleted as the
    /// API server does it: marked with `deletionTimestamp` and `deletionGracePeriodSeconds`,
    /// and removed by the kubelet once its containers have stopped.
    pub fn delete(&self, collection: &str, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self.get(collection, ns, name)?;
        let finalizers = obj["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        let graceful = self.graceful(collection);
        if !finalizers && !graceful {
            return self.remove(collection, ns, name);
        }
        if obj["metadata"]["deletionTimestamp"].is_null() {
            obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            if graceful {
                let grace = obj["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            }
            return Some(self.put(collection, obj));
        }
        Some(obj)
    }

    /// From now on a deleted pod waits for the kubelet to stop it (the cluster simulator's).
    pub fn delete_pods_gracefully(&self) {
        self.store.lock().unwrap().graceful_pods = true;
    }

    fn graceful(&self, collection: &str) -> bool {
        collection == "pods" && self.store.lock().unwrap().graceful_pods
    }

    /// Stores `obj` as an update: an object being deleted whose last finalizer this removes
    /// goes.
    pub fn update(&self, collection: &str, obj: Value) -> Value {
        let collection_graceful = self.graceful(collection);
        let done = !obj["metadata"]["deletionTimestamp"].is_null()
            && obj["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty())
            && !collection_graceful;
        let stored = self.put(collection, obj);
        if done {
            let ns = stored["metadata"]["namespace"].as_str().unwrap_or("").to_owned();
            let name = stored["metadata"]["name"].as_str().unwrap_or("").to_owned();
            return self.remove(collection, &ns, &name).unwrap_or(stored);
        }
        stored
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

    /// How many LIST requests (watches not counted) `collection` has had.
    pub fn lists(&self, collection: &str) -> u32 {
        self.store.lock().unwrap().lists.get(collection).copied().unwrap_or(0)
    }

    /// How many objects of `collection` were made by POST.
    pub fn creates(&self, collection: &str) -> u32 {
        self.store.lock().unwrap().creates.get(collection).copied().unwrap_or(0)
    }

    /// How many objects of `collection` were ever made, deleted or not.
    pub fn ever_made(&self, collection: &str) -> u32 {
        self.store.lock().unwrap().made.get(collection).copied().unwrap_or(0)
    }

    /// Waits until `condition` holds, re-checking on every change (a hang guard, no polling).
    pub async fn wait_until(&self, what: &str, condition: impl Fn(&Self) -> bool) {
        self.wait_until_within(what, std::time::Duration::from_secs(60), condition).await
    }

    /// [`FakeApi::wait_until`] with a hang guard of `limit`, for harnesses whose work is long.
    pub async fn wait_until_within(
        &self,
        what: &str,
        limit: std::time::Duration,
        condition: impl Fn(&Self) -> bool,
    ) {
        let mut rx = self.changed.subscribe();
        let wait = async {
            while !condition(self) {
                rx.changed().await.unwrap();
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or_else(|_| panic!("never: {what}"));
    }
}

/// core/v1 Event fields and their events.k8s.io/v1 names.
const EVENT_FIELDS: [(&str, &str); 7] = [
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

/// Renames an Event's (or an Event patch's) fields into the other API's shape.
fn convert_event(obj: &mut Value, to_events_api: bool) {
    let Some(fields) = obj.as_object_mut() else { return };
    for (core, events) in EVENT_FIELDS {
        let (from, to) = if to_events_api { (core, events) } else { (events, core) };
        if let Some(value) = fields.remove(from) {
            fields.insert(to.to_owned(), value);
        }
    }
    if fields.contains_key("apiVersion") {
        let version = if to_events_api { "events.k8s.io/v1" } else { "v1" };
        fields.insert("apiVersion".into(), json!(version));
    }
}

/// An answer of the API server as the events.k8s.io API gives it: an Event, a list of them, or
/// a watch event carrying one (anything else, such as a Status, unchanged).
fn to_events_api(mut doc: Value) -> Value {
    if doc.get("type").is_some() && doc.get("object").is_some() {
        if doc["object"]["kind"] == "Event" {
            convert_event(&mut doc["object"], true);
        }
    } else if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
        items.iter_mut().for_each(|item| convert_event(item, true));
    } else if doc["kind"] == "Event" {
        convert_event(&mut doc, true);
    }
    doc
}

/// events.k8s.io/v1 Events are core/v1 Events in another shape, as on a real API server: one
/// object, both APIs read, write and watch it, each in its own field names.
async fn handle(state: State<Arc<FakeApi>>, req: Request) -> Response {
    use futures_util::StreamExt;
    if !req.uri().path().starts_with("/apis/events.k8s.io/") {
        return handle_core(state, req).await;
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let body = match serde_json::from_slice::<Value>(&body) {
        Ok(mut doc) => {
            convert_event(&mut doc, false);
            Bytes::from(doc.to_string())
        }
        Err(_) => body,
    };
    let response = handle_core(state, Request::from_parts(parts, Body::from(body))).await;
    // Every chunk is one whole JSON document: an answer, or one line of a watch.
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let converted = body.into_data_stream().map(|chunk| {
        chunk.map(|bytes| {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<String> = text
                .lines()
                .map(|line| match serde_json::from_str::<Value>(line) {
                    Ok(doc) => to_events_api(doc).to_string(),
                    Err(_) => line.to_owned(),
                })
                .collect();
            let ending = if text.ends_with('\n') { "\n" } else { "" };
            Bytes::from(lines.join("\n") + ending)
        })
    });
    Response::from_parts(parts, Body::from_stream(converted))
}

async fn handle_core(State(api): State<Arc<FakeApi>>, req: Request) -> Response {
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
    // Lists and watches select alike; other requests take no selector.
    let selector = q.get("fieldSelector").filter(|_| method == Method::GET && name.is_none());
    let fields = match parse_fields(&collection, selector) {
        Ok(fields) => fields,
        Err(message) => return failure(StatusCode::BAD_REQUEST, "BadRequest", &message),
    };
    match (method, name) {
        (Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            if api.store.lock().unwrap().watches_held {
                return status_error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable");
            }
            let from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
            let rx = api.events.subscribe();
            let (api_version, kind) = type_of(&collection);
            let (backlog, expired, now_rv) = {
                let s = api.store.lock().unwrap();
                let backlog: Vec<(u64, String, Value)> = s
                    .history
                    .iter()
                    .filter(|(rv, c, _)| *rv > from && *c == collection)
                    .cloned()
                    .collect();
                (backlog, from < s.compacted, s.rv)
            };
            if expired {
                // What kube-apiserver sends for a compacted resourceVersion: an ERROR event
                // carrying 410 Gone, then the end of the stream.
                let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                    "status": "Failure", "reason": "Expired", "code": 410,
                    "message": format!("too old resource version: {from} ({now_rv})")}});
                return Response::builder()
                    .header("content-type", "application/json")
                    .body(Body::from(format!("{gone}\n")))
                    .unwrap();
            }
            let last = backlog.last().map(|e| e.0).unwrap_or(from);
            let sel = q.get("labelSelector").cloned();
            let keep = move |c: &str, ev: &Value| {
                c == collection.as_str()
                    && ns
                        .as_ref()
                        .is_none_or(|n| ev["object"]["metadata"]["namespace"] == n.as_str())
                    && matches_labels(&ev["object"], sel.as_ref())
                    && matches_fields(&ev["object"], &fields)
            };
            let keep2 = keep.clone();
            let old = futures_util::stream::iter(
                backlog.into_iter().filter(move |(_, c, ev)| keep(c, ev)).map(|(_, _, ev)| ev),
            );
            let live = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |item| {
                let out = match item {
                    Ok((rv, c, ev)) if rv > last && keep2(&c, &ev) => Some(ev),
                    _ => None,
                };
                std::future::ready(out)
            });
            use futures_util::StreamExt;
            // Bookmarks, when asked for: the latest resourceVersion, so a client that
            // reconnects resumes from there rather than from an event long compacted.
            let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
            let marks_api = api.clone();
            let marks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(
                std::time::Duration::from_millis(500),
            ))
            .skip(1)
            .filter(move |_| std::future::ready(bookmarks))
            .map(move |_| {
                let rv = marks_api.store.lock().unwrap().rv;
                json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version,
                    "metadata": {"resourceVersion": rv.to_string(),
                                 "annotations": {"k8s.io/initial-events-end": "true"}}}})
            });
            let mut cut = api.cut_watches.subscribe();
            cut.borrow_and_update();
            let until_cut = async move {
                let _ = cut.changed().await;
            };
            let stream = futures_util::stream::select(old.chain(live), marks)
                .take_until(until_cut)
                .map(|ev| Ok::<_, Infallible>(Bytes::from(format!("{ev}\n"))));
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from_stream(stream))
                .unwrap()
        }
        (Method::GET, None) => {
            let mut s = api.store.lock().unwrap();
            *s.lists.entry(collection.clone()).or_default() += 1;
            let items: Vec<Value> = s
                .objects
                .iter()
                .filter(|((c, n, _), o)| {
                    *c == collection
                        && ns.as_ref().is_none_or(|ns| ns == n)
                        && matches_labels(o, q.get("labelSelector"))
                        && matches_fields(o, &fields)
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
            let Ok(mut obj) = serde_json::from_slice::<Value>(&body) else {
                return status_error(StatusCode::BAD_REQUEST, "BadRequest");
            };
            obj["metadata"]["namespace"] = json!(ns.clone().unwrap_or_default());
            // Status is the status subresource's: a create never sets it.
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
            if let Err(message) = api.admit(&collection, &mut obj) {
                return invalid(&collection, &message);
            }
            let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
            if api.get(&collection, ns.as_deref().unwrap_or(""), &name).is_some() {
                return status_error(StatusCode::CONFLICT, "AlreadyExists");
            }
            *api.store.lock().unwrap().creates.entry(collection.clone()).or_default() += 1;
            (StatusCode::CREATED, axum::Json(api.put(&collection, obj))).into_response()
        }
        (Method::PATCH, Some(name)) => {
            let patch: Value = serde_json::from_slice(&body).unwrap();
            let ns = ns.unwrap_or_default();
            let existing = api.get(&collection, &ns, &name);
            let is_apply = content_type.starts_with("application/apply-patch");
            // A resourceVersion in the patch is a precondition, as on the real server: a
            // writer whose copy is older than the stored object gets 409 Conflict.
            if let Some(version) = patch["metadata"]["resourceVersion"].as_str()
                && existing
                    .as_ref()
                    .is_some_and(|o| o["metadata"]["resourceVersion"].as_str() != Some(version))
            {
                return status_error(StatusCode::CONFLICT, "Conflict");
            }
            if status {
                // The status subresource changes status and nothing else.
                let Some(mut obj) = existing else {
                    return status_error(StatusCode::NOT_FOUND, "NotFound");
                };
                let key: Key = (collection.clone(), ns.clone(), name.clone());
                if is_apply && let Some(manager) = q.get("fieldManager") {
                    // Server-side apply: fields this manager applied before and leaves out now
                    // are removed; the rest are merged in and become its own.
                    let mut touched = Vec::new();
                    leaves(&json!({"status": patch["status"].clone()}), "", &mut touched);
                    let now = touched.iter().map(|(p, _)| p.as_str()).collect();
                    let mut s = api.store.lock().unwrap();
                    for path in forget_dropped(&mut s, &key, manager, &now, true) {
                        remove_path(&mut obj, &path);
                    }
                    for path in now {
                        s.owners.insert((key.clone(), path.to_owned()), manager.clone());
                    }
                }
                let mut new_status = obj["status"].take();
                if new_status.is_null() {
                    new_status = json!({});
                }
                merge(&mut new_status, &patch["status"]);
                obj["status"] = new_status;
                if let Err(message) = api.admit(&collection, &mut obj) {
                    return invalid(&collection, &message);
                }
                return axum::Json(api.put(&collection, obj)).into_response();
            }
            // Field ownership, as the real server keeps it: an unforced apply may not change a
            // field another manager owns (409 Conflict); every patch with a field manager
            // takes over the fields it sets.
            let key: Key = (collection.clone(), ns.clone(), name.clone());
            let mut dropped = Vec::new();
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
                if is_apply {
                    // Fields this manager applied before and leaves out now are removed
                    // (another manager's fields stay); only once the apply is accepted.
                    let now = touched.iter().map(|(p, _)| p.as_str()).collect();
                    dropped = forget_dropped(&mut s, &key, manager, &now, false);
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
            let kept_status = existing.as_ref().map(|o| o["status"].clone());
            let mut obj =
                existing.unwrap_or_else(|| json!({"metadata": {"name": name, "namespace": ns}}));
            for path in &dropped {
                remove_path(&mut obj, path);
            }
            let mut applied = patch;
            applied["metadata"]["namespace"] = json!(ns);
            merge(&mut obj, &applied);
            // The main resource never changes status: that is the subresource's.
            match kept_status {
                Some(status) if !status.is_null() => obj["status"] = status,
                _ => {
                    if let Some(o) = obj.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            if let Err(message) = api.admit(&collection, &mut obj) {
                return invalid(&collection, &message);
            }
            axum::Json(api.update(&collection, obj)).into_response()
        }
        (Method::DELETE, Some(name)) => {
            match api.delete(&collection, ns.as_deref().unwrap_or(""), &name) {
                Some(o) => axum::Json(o).into_response(),
                None => status_error(StatusCode::NOT_FOUND, "NotFound"),
            }
        }
        _ => status_error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
    }
}
