//! The custom resources (`cliscale.dev/v1alpha1`): `CommandSession`, the session specification
//! of `cliscale_core::spec` with Kubernetes' placement knobs and the status the operator writes;
//! `CommandTemplate` and `CommandSchedule`, the REST API's templates and schedules.
//! The CRD manifests in crds/ are generated from these types
//! (`cargo run -p cliscale-operator --bin cliscale-crdgen`); a test fails when it is out of date
//! or not structural. Its own crate, so that whoever reads CommandSessions (the gateway's
//! reflector, the API's mirror) links the type and not the operator.

use std::collections::BTreeMap;

use cliscale_core::rest::{ScheduleSpec, ScheduleStatus, TemplateSpec};
use cliscale_core::spec::SessionSpec;
use cliscale_core::{SessionPhase, TerminalReason};
use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A command-line session run in an isolated runner pod and reachable from a browser
/// terminal. Changing the spec after the session has started is refused (see status).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cliscale.dev",
    version = "v1alpha1",
    kind = "CommandSession",
    plural = "commandsessions",
    shortname = "cmds",
    category = "cliscale",
    // The name becomes the Job's (`cs-<name>`, at most 63 characters) and a label value: the
    // API server refuses a longer one here, before a Job could be refused for it.
    validation = Rule::new("self.metadata.name.size() <= 60").message("a CommandSession's name may be at most 60 characters: it names the session's Job and labels its pod"),
    namespaced,
    status = "CommandSessionStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Exit","type":"integer","jsonPath":".status.exitCode"}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".status.podName"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CommandSessionSpec {
    /// What the session runs: the same specification the REST API takes and stores.
    #[serde(flatten)]
    pub session: SessionSpec,
    /// Runner image to use instead of the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096), regex(pattern = r"^\S+$"))]
    pub image: Option<String>,
    /// CPU, memory and ephemeral storage for the runner container, as a container's requests
    /// and limits. Unset, the operator's defaults apply; ephemeral storage the session does not
    /// name takes the operator's default, so the runner's scratch space is always bounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "resources_schema")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the runner pod must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "node_selector_schema")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the runner pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "tolerations_schema")]
    pub tolerations: Vec<Toleration>,
    /// Priority class of the runner pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub priority_class_name: Option<String>,
}

/// A Kubernetes quantity as the CRD takes it: the API server's own grammar (as controller-gen
/// writes it for `resource.Quantity`) without a sign, since a container's resources may not be
/// negative. A value the Job could not hold is refused when the session is applied.
const QUANTITY_PATTERN: &str = r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// The runner's `resources` in the CRD: requests and limits whose values must be quantities.
/// A pattern and not a CEL rule: it costs the API server nothing to estimate. `claims` is left
/// out: it needs the pod's `resourceClaims`, which a session cannot set.
fn resources_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let quantities = |description: &str| {
        serde_json::json!({
            "description": description,
            "type": "object",
            "maxProperties": 16,
            "additionalProperties": {
                "x-kubernetes-int-or-string": true,
                "pattern": QUANTITY_PATTERN,
            }
        })
    };
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "properties": {
            "limits": quantities("The most the runner may use, by resource name (cpu, memory, ephemeral-storage): quantities such as 500m or 1Gi."),
            "requests": quantities("What the runner is guaranteed, by resource name: quantities such as 250m or 512Mi."),
        }
    })
}

/// A label value as the API server takes one: at most 63 characters, alphanumeric at both
/// ends, `-`, `_` and `.` between.
const LABEL_VALUE_PATTERN: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";

/// `nodeSelector`: values must be label values (a pod with another is refused).
fn node_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": {
            "type": "string",
            "maxLength": 63,
            "pattern": LABEL_VALUE_PATTERN,
        }
    })
}

/// `tolerations`, with the operators and effects a pod may have and label values for values.
fn tolerations_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let described = |description: &str, mut schema: serde_json::Value| {
        schema["description"] = description.into();
        schema
    };
    schemars::json_schema!({
        "type": "array",
        "maxItems": 32,
        "items": {
            "type": "object",
            "properties": {
                "key": described(
                    "The taint key to tolerate; empty with Exists tolerates every taint.",
                    serde_json::json!({ "type": "string", "maxLength": 317 })
                ),
                "operator": described(
                    "Equal (the default) or Exists.",
                    serde_json::json!({ "type": "string", "enum": ["", "Equal", "Exists"] })
                ),
                "value": described(
                    "The taint value to match, with Equal.",
                    serde_json::json!({
                        "type": "string",
                        "maxLength": 63,
                        "pattern": LABEL_VALUE_PATTERN,
                    })
                ),
                "effect": described(
                    "The taint effect to match: NoSchedule, PreferNoSchedule or NoExecute; empty matches all.",
                    serde_json::json!({
                        "type": "string",
                        "enum": ["", "NoSchedule", "PreferNoSchedule", "NoExecute"],
                    })
                ),
                "tolerationSeconds": described(
                    "With NoExecute: how long the pod stays bound after the taint appears.",
                    serde_json::json!({ "type": "integer", "format": "int64" })
                ),
            }
        }
    })
}

impl CommandSessionSpec {
    /// The spec of a session with no placement knobs of its own.
    pub fn of(session: SessionSpec) -> Self {
        Self {
            session,
            image: None,
            resources: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            priority_class_name: None,
        }
    }
}

/// What the operator observes of the session.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandSessionStatus {
    /// Pending, Starting, Running, Succeeded, Failed, TimedOut, Cancelled or Lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SessionPhase>,
    /// Why the session finished (typed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<TerminalReason>,
    /// Human-readable detail for the current phase or reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The command's exit code, once it has exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The Job running the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// The runner pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The runner pod's IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// host:port the gateway connects to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_address: Option<String>,
    /// When the runner started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the session finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The last lines of the session's output as text (at most 1 KiB), once it finished. The
    /// whole output is at the API: `GET /api/sessions/{id}/output`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tail: Option<String>,
    /// Ready (the runner's PTY is up) and SpecChangeRejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Condition types of a CommandSession's status.
pub mod condition {
    /// True while the runner's PTY is up and its readiness probe passes.
    pub const READY: &str = "Ready";
    /// True when the spec changed after the Job was made (the change is not applied).
    pub const SPEC_CHANGE_REJECTED: &str = "SpecChangeRejected";

    /// Reasons of those conditions.
    pub mod reason {
        pub const RUNNER_READY: &str = "RunnerReady";
        pub const RUNNER_NOT_READY: &str = "RunnerNotReady";
        pub const SPEC_CHANGED_AFTER_START: &str = "SpecChangedAfterStart";
        pub const SPEC_MATCHES_JOB: &str = "SpecMatchesJob";
    }
}

/// The CRD manifest, as committed in crds/commandsession.yaml.
pub fn crd_yaml() -> String {
    let header = "# Generated from crd/src/lib.rs by `cargo run -p cliscale-operator --bin \
                  cliscale-crdgen`. Do not edit.\n";
    format!(
        "{header}{}",
        serde_norway::to_string(&CommandSession::crd()).expect("a CRD serializes")
    )
}

/// A session definition that people, CI systems (trigger tokens) and schedules run with
/// parameters: the `TemplateSpec` of the REST API (docs/templates.md). Kept in step with the
/// API's templates both ways: the API applies one for each template it makes, and one applied
/// with kubectl becomes a template of the API.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cliscale.dev",
    version = "v1alpha1",
    kind = "CommandTemplate",
    plural = "commandtemplates",
    shortname = "cmdt",
    category = "cliscale",
    validation = Rule::new("self.metadata.name.size() <= 63").message("a template's name is at most 63 characters"),
    validation = Rule::new("!has(self.spec.name) || self.spec.name == '' || self.spec.name == self.metadata.name").message("spec.name, when given, must be the resource's name"),
    namespaced,
    printcolumn = r#"{"name":"Command","type":"string","jsonPath":".spec.session.command"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct CommandTemplateSpec {
    /// The template, as `POST /api/templates` takes it.
    #[serde(flatten)]
    pub template: TemplateSpec,
}

/// A template run on cron, in a time zone: the `ScheduleSpec` of the REST API
/// (docs/schedules.md). Kept in step with the API's schedules both ways, as CommandTemplates
/// are; its status (runs, skips, next times) is the one `GET /api/schedules/{name}` shows,
/// written by the API.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cliscale.dev",
    version = "v1alpha1",
    kind = "CommandSchedule",
    plural = "commandschedules",
    shortname = "cmdsch",
    category = "cliscale",
    status = "ScheduleStatus",
    validation = Rule::new("self.metadata.name.size() <= 63").message("a schedule's name is at most 63 characters"),
    validation = Rule::new("!has(self.spec.name) || self.spec.name == '' || self.spec.name == self.metadata.name").message("spec.name, when given, must be the resource's name"),
    namespaced,
    printcolumn = r#"{"name":"Cron","type":"string","jsonPath":".spec.cron"}"#,
    printcolumn = r#"{"name":"Zone","type":"string","jsonPath":".spec.timeZone"}"#,
    printcolumn = r#"{"name":"Template","type":"string","jsonPath":".spec.template"}"#,
    printcolumn = r#"{"name":"Suspended","type":"boolean","jsonPath":".spec.suspend"}"#,
    printcolumn = r#"{"name":"Last","type":"string","jsonPath":".status.lastScheduleTime"}"#
)]
pub struct CommandScheduleSpec {
    /// The schedule, as `POST /api/schedules` takes it.
    #[serde(flatten)]
    pub schedule: ScheduleSpec,
}

/// The manifests of the three CRDs, each as committed in crds/.
pub fn crd_yamls() -> [(&'static str, String); 3] {
    let header = "# Generated from crd/src/lib.rs by `cargo run -p cliscale-operator --bin \
                  cliscale-crdgen`. Do not edit.\n";
    let yaml = |crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition| {
        format!("{header}{}", serde_norway::to_string(&crd).expect("a CRD serializes"))
    };
    [
        ("commandsession.yaml", yaml(CommandSession::crd())),
        ("commandtemplate.yaml", yaml(CommandTemplate::crd())),
        ("commandschedule.yaml", yaml(CommandSchedule::crd())),
    ]
}
