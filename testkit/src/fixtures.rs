//! Builders for the objects tests observe, in the manner of kube-rs's controller examples:
//! `session("s1").command("make").build()`, `pod("p").running().ready().build()`,
//! `pod("p").terminated(137, "OOMKilled").build()`. Each says only what a test is about; the
//! rest is what a real API server and kubelet would fill in.

use cliscale_crd::{CommandSession, CommandSessionSpec, CommandSessionStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

/// A CommandSession as the API server would hold it.
pub struct SessionBuilder {
    session: CommandSession,
}

/// A session named `name` in namespace `team`, running `make`, at generation 1.
pub fn session(name: &str) -> SessionBuilder {
    let mut session = CommandSession::new(
        name,
        CommandSessionSpec::of(cliscale_core::spec::SessionSpec::new("make")),
    );
    session.metadata.namespace = Some("team".into());
    session.metadata.uid = Some(format!("uid-{name}"));
    session.metadata.generation = Some(1);
    SessionBuilder { session }
}

impl SessionBuilder {
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.session.metadata.namespace = Some(namespace.into());
        self
    }

    pub fn command(mut self, command: &str) -> Self {
        self.session.spec.session.command = command.into();
        self
    }

    /// The whole spec, as it would be written in YAML.
    pub fn spec(mut self, spec: Value) -> Self {
        self.session.spec = serde_json::from_value(spec).expect("a valid CommandSession spec");
        self
    }

    pub fn generation(mut self, generation: i64) -> Self {
        self.session.metadata.generation = Some(generation);
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.session.metadata.annotations.get_or_insert_default().insert(key.into(), value.into());
        self
    }

    pub fn deleting(mut self, since: Time) -> Self {
        self.session.metadata.deletion_timestamp = Some(since);
        self
    }

    pub fn status(mut self, status: CommandSessionStatus) -> Self {
        self.session.status = Some(status);
        self
    }

    pub fn build(self) -> CommandSession {
        self.session
    }
}

/// A runner pod as the kubelet reports it.
pub struct PodBuilder {
    metadata: Value,
    status: Value,
    ready: bool,
    state: Value,
}

/// A runner pod named `name`, Pending, its container not yet created.
pub fn pod(name: &str) -> PodBuilder {
    PodBuilder {
        metadata: json!({ "name": name }),
        status: json!({ "phase": "Pending" }),
        ready: false,
        state: Value::Null,
    }
}

impl PodBuilder {
    /// The runner pod of `session` in `namespace`: the labels the operator selects it by.
    pub fn of_session(mut self, namespace: &str, session: &str) -> Self {
        self.metadata["namespace"] = namespace.into();
        self.metadata["labels"] =
            json!({ "cliscale.dev/session": session, "cliscale.dev/component": "runner" });
        self
    }

    /// Owned by the Job `job` (uid `uid`), as the Job controller makes it.
    pub fn owned_by_job(mut self, job: &str, uid: &Value) -> Self {
        self.metadata["ownerReferences"] = json!([{ "apiVersion": "batch/v1", "kind": "Job",
            "name": job, "uid": uid, "controller": true }]);
        self
    }

    pub fn ip(mut self, ip: &str) -> Self {
        self.status["podIP"] = ip.into();
        self
    }

    /// Running, its container started (not ready until [`Self::ready`]).
    pub fn running(mut self) -> Self {
        self.status["phase"] = "Running".into();
        self.state = json!({ "running": {} });
        self
    }

    /// The readiness probe passes.
    pub fn ready(mut self) -> Self {
        self.ready = true;
        self
    }

    /// The container exited with `code`; the pod phase follows it (Succeeded for 0).
    pub fn terminated(mut self, code: i32, reason: &str) -> Self {
        self.status["phase"] = if code == 0 { "Succeeded" } else { "Failed" }.into();
        self.state = json!({ "terminated": { "exitCode": code, "reason": reason } });
        self.ready = false;
        self
    }

    /// The terminated container's termination message.
    pub fn termination_message(mut self, message: &str) -> Self {
        self.state["terminated"]["message"] = message.into();
        self
    }

    /// The container waits, e.g. `ImagePullBackOff`.
    pub fn waiting(mut self, reason: &str, message: &str) -> Self {
        self.state = json!({ "waiting": { "reason": reason, "message": message } });
        self
    }

    /// No node fits the pod.
    pub fn unschedulable(mut self, message: &str) -> Self {
        self.status["conditions"] = json!([{ "type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": message }]);
        self
    }

    /// The kubelet evicted the pod.
    pub fn evicted(mut self, message: &str) -> Self {
        self.status = json!({ "phase": "Failed", "reason": "Evicted", "message": message });
        self.state = Value::Null;
        self
    }

    /// The pod as the API server would serve it.
    pub fn json(self) -> Value {
        let mut status = self.status;
        if !self.state.is_null() {
            status["containerStatuses"] = json!([{ "name": "runner", "ready": self.ready,
                "image": "runner", "imageID": "", "restartCount": 0, "state": self.state }]);
        }
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": self.metadata,
            "spec": { "containers": [{ "name": "runner", "image": "runner" }] },
            "status": status
        })
    }

    pub fn build(self) -> Pod {
        serde_json::from_value(self.json()).expect("a valid Pod")
    }
}
