//! The `CommandSession` custom resource (`cliscale.dev/v1alpha1`): the session specification of
//! `cliscale_core::spec` with Kubernetes' placement knobs, and the status the operator writes.
//! The CRD manifest in crds/ is generated from these types
//! (`cargo run -p cliscale-operator --bin cliscale-crdgen`); a test fails when it is out of date
//! or not structural. Its own crate, so that whoever reads CommandSessions (the gateway's
//! reflector, the API's mirror) links the type and not the operator.

use std::collections::BTreeMap;

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
    pub image: Option<String>,
    /// CPU and memory for the runner container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the runner pod must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the runner pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Priority class of the runner pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
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
