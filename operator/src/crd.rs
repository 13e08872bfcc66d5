//! The `CommandSession` custom resource (`cliscale.dev/v1alpha1`). The CRD manifest in crds/ is
//! generated from these types (`cargo run -p cliscale-operator --bin cliscale-crdgen`); a test
//! fails when it is out of date or not structural.

use std::collections::BTreeMap;

use cliscale_core::{SessionPhase, TerminalReason};
use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

fn default_cols() -> u16 {
    80
}
fn default_rows() -> u16 {
    24
}
fn default_scrollback() -> u32 {
    100_000
}
fn default_ttl() -> u32 {
    3600
}
fn default_linger() -> u32 {
    30
}

/// A command-line session run in an isolated runner pod and reachable from a browser
/// terminal. Changing the spec after the session has started is refused (see status).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cliscale.dev",
    version = "v1alpha1",
    kind = "CommandSession",
    plural = "commandsessions",
    shortname = "cs",
    namespaced,
    status = "CommandSessionStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Exit","type":"integer","jsonPath":".status.exitCode"}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".status.podName"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CommandSessionSpec {
    /// The command line, run by bash (or sh) -c in the runner's PTY.
    #[schemars(length(min = 1, max = 8192))]
    pub command: String,
    /// Where the code comes from: a GitHub tree URL, a .zip, .tar.gz or .tgz URL, or a git URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<CodeSource>,
    /// Run in the code directory before the command, with its output in the session log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub install_command: Option<String>,
    /// Given to the command as the CLISCALE_PROMPT environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub prompt: Option<String>,
    /// Runner image to use instead of the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Plain (non-secret) environment variables for the command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env: Vec<EnvVar>,
    /// Environment variables taken from Secret keys. Secret values are never written into the
    /// CommandSession itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env_from_secrets: Vec<SecretEnvVar>,
    /// Initial terminal width, in columns.
    #[serde(default = "default_cols")]
    #[schemars(range(min = 1, max = 1000))]
    pub cols: u16,
    /// Initial terminal height, in rows.
    #[serde(default = "default_rows")]
    #[schemars(range(min = 1, max = 1000))]
    pub rows: u16,
    /// Lines of scrollback the terminal page keeps.
    #[serde(default = "default_scrollback")]
    #[schemars(range(min = 1000, max = 1000000))]
    pub scrollback_lines: u32,
    /// Stop the session after this many seconds (TimedOut). Unset means no deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub timeout_seconds: Option<u32>,
    /// Keep the finished session (status and output tail) this many seconds, then delete it.
    #[serde(default = "default_ttl")]
    #[schemars(range(min = 0, max = 2592000))]
    pub ttl_seconds_after_finished: u32,
    /// Keep the terminal open this many seconds after the command exits.
    #[serde(default = "default_linger")]
    #[schemars(range(min = 0, max = 3600))]
    pub linger_seconds: u32,
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

/// Where a session's code comes from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CodeSource {
    /// GitHub tree URL, .zip, .tar.gz/.tgz or git URL (https).
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// Expected SHA-256 (hex) of the downloaded archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(sha256:)?[0-9a-fA-F]{64}$"))]
    pub checksum_sha256: Option<String>,
}

/// A plain environment variable.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct EnvVar {
    /// Variable name; CLISCALE_* is reserved.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"), length(max = 256))]
    pub name: String,
    /// Its value (not for secrets: use envFromSecrets).
    #[schemars(length(max = 32768))]
    pub value: String,
}

/// An environment variable read from a key of a Secret in the session's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretEnvVar {
    /// Variable name.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"), length(max = 256))]
    pub name: String,
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
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
    /// Ready (the runner's PTY is up) and SpecChangeRejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
