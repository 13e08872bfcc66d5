//! A Job controller and a kubelet for [`FakeApi`]: Jobs become pods, and each pod walks
//! through a scripted lifecycle as a real cluster would report it (pod phases, container
//! states, conditions, Warning Events, Job conditions). The runner's own part is played too:
//! on a SIGTERM it seals a `Cancelled` final event with its status key, as the real runner
//! does, so the operator must know a disruption from a cancel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cliscale_core::event::{RunnerEvent, decode_status_key};
use cliscale_core::protocol::SessionStatus;
use cliscale_core::{SessionPhase, TerminalReason};
use serde_json::{Value, json};

use crate::fake_kube::FakeApi;

/// How a runner pod goes, from the cluster's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Scheduled, pulled, running and ready; it stays until something ends it.
    Runs,
    /// Runs, then the command exits with this code.
    Exits(i32),
    /// No node fits: `PodScheduled=False`, `Unschedulable`.
    Unschedulable,
    /// The image cannot be pulled: `ErrImagePull`, then `ImagePullBackOff`.
    PullFails,
    /// The pull fails for a while, then succeeds: the runner runs.
    PullRecovers,
    /// A Secret the container needs is missing: `CreateContainerConfigError`.
    ConfigError,
    /// A volume cannot be mounted: `ContainerCreating`, and `FailedMount` Events.
    MountFails,
    /// A quota refuses the pod: the Job controller records `FailedCreate`, and no pod exists.
    QuotaRefused,
    /// Runs, then the container is killed for its memory: `OOMKilled`, 137.
    OomKilled,
    /// Runs, then the kubelet evicts it under node pressure (`DisruptionTarget`).
    Evicted,
    /// Runs, then the scheduler preempts it for a higher-priority pod.
    Preempted,
    /// Runs, then its node is lost: the taint manager deletes the pod.
    NodeLost,
    /// Runs until the Job's `activeDeadlineSeconds`: the Job fails `DeadlineExceeded` and its
    /// pod is deleted.
    JobDeadline,
    /// Runs, ends 0, and its pod is garbage-collected before anyone reads it.
    CompletesAndPodVanishes,
}

/// The simulated control plane and nodes. Dropping it does not stop it; it lives as long as
/// its API.
pub struct ClusterSim {
    api: Arc<FakeApi>,
    scripts: Mutex<HashMap<String, Lifecycle>>,
    /// Pods (by uid) the kubelet is stopping.
    stopping: Mutex<std::collections::HashSet<String>>,
}

/// The pace of the simulated kubelet: one status change per step.
const STEP: Duration = Duration::from_millis(30);

impl ClusterSim {
    /// Starts the Job controller: every Job made from now on gets its pod and lifecycle
    /// ([`Lifecycle::Runs`] unless [`ClusterSim::script`] named another for its session).
    pub fn start(api: &Arc<FakeApi>) -> Arc<Self> {
        let sim = Arc::new(Self {
            api: api.clone(),
            scripts: Mutex::default(),
            stopping: Mutex::default(),
        });
        api.delete_pods_gracefully();
        let mut rx = api.subscribe();
        let this = sim.clone();
        tokio::spawn(async move {
            while let Ok((_, collection, event)) = rx.recv().await {
                let object = &event["object"];
                if collection == "jobs" && event["type"] == "ADDED" {
                    let sim = this.clone();
                    tokio::spawn(async move { sim.run_job(event["object"].clone()).await });
                } else if collection == "pods"
                    && event["type"] == "MODIFIED"
                    && !object["metadata"]["deletionTimestamp"].is_null()
                {
                    let uid = object["metadata"]["uid"].as_str().unwrap_or("").to_owned();
                    if this.stopping.lock().unwrap().insert(uid) {
                        let sim = this.clone();
                        tokio::spawn(async move { sim.stop_pod(event["object"].clone()).await });
                    }
                }
            }
        });
        sim
    }

    /// The kubelet stops a deleted pod: a running runner gets SIGTERM and seals a `Cancelled`
    /// end (exit 143), the pod's status says so, and then the pod goes.
    async fn stop_pod(self: Arc<Self>, mut pod: Value) {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("").to_owned();
        let name = pod["metadata"]["name"].as_str().unwrap_or("").to_owned();
        if pod["status"]["phase"] == "Running" {
            let key = status_key_of(&pod["spec"]);
            pod["status"] = ended_status("Failed", 143, "Error", &sigterm_message(key));
            self.api.put("pods", pod);
        }
        tokio::time::sleep(STEP).await;
        self.api.remove("pods", &ns, &name);
    }

    /// The lifecycle of `session`'s runner pod.
    pub fn script(&self, session: &str, lifecycle: Lifecycle) {
        self.scripts.lock().unwrap().insert(session.to_owned(), lifecycle);
    }

    /// The runner pod of `session`, if it exists.
    pub fn pod_of(&self, session: &str) -> Option<Value> {
        self.api
            .list("pods")
            .into_iter()
            .find(|p| p["metadata"]["labels"]["cliscale.dev/session"] == session)
    }

    fn warn(&self, ns: &str, kind: &str, name: &str, reason: &str, message: &str) {
        let id: u32 = rand::random();
        let mut event = json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{name}.{id:x}"), "namespace": ns},
            "involvedObject": {"kind": kind, "name": name, "namespace": ns},
            "type": "Warning", "reason": reason, "message": message,
            "lastTimestamp": now()});
        self.api.admit("events", &mut event).expect("the simulator's Events are valid");
        self.api.put("events", event);
    }

    async fn run_job(self: Arc<Self>, job: Value) {
        let ns = job["metadata"]["namespace"].as_str().unwrap_or("").to_owned();
        let job_name = job["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let labels = job["spec"]["template"]["metadata"]["labels"].clone();
        let session = labels["cliscale.dev/session"].as_str().unwrap_or("").to_owned();
        let lifecycle =
            self.scripts.lock().unwrap().get(&session).copied().unwrap_or(Lifecycle::Runs);
        let key = status_key_of(&job["spec"]["template"]["spec"]);
        let set_job = |status: Value| {
            if let Some(mut j) = self.api.get("jobs", &ns, &job_name) {
                crate::fake_kube::merge_into(&mut j["status"], &status);
                self.api.put("jobs", j);
            }
        };
        set_job(json!({"startTime": now(), "active": 1}));
        if lifecycle == Lifecycle::QuotaRefused {
            let pod = format!("{job_name}-{}", suffix());
            let message = format!(
                "pods \"{pod}\" is forbidden: exceeded quota: runner-quota, requested: pods=1, used: pods=10, limited: pods=10"
            );
            self.warn(&ns, "Job", &job_name, "FailedCreate", &message);
            return;
        }
        let pod_name = format!("{job_name}-{}", suffix());
        let mut pod_labels = labels.clone();
        pod_labels["batch.kubernetes.io/job-name"] = json!(job_name);
        pod_labels["job-name"] = json!(job_name);
        let base = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": ns, "labels": pod_labels,
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                    "uid": job["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]},
            "spec": job["spec"]["template"]["spec"],
            "status": {"phase": "Pending"}
        });
        let mut base = base;
        if let Err(message) = self.api.admit("pods", &mut base) {
            // The API server refuses an invalid pod of the Job controller's as it would any
            // other: the Job controller records why and makes no pod.
            let said = format!("Error creating: pods \"{pod_name}\" is invalid: {message}");
            self.warn(&ns, "Job", &job_name, "FailedCreate", &said);
            return;
        }
        let pod = PodSteps { api: &self.api, ns: &ns, name: &pod_name };
        self.api.put("pods", base);
        tokio::time::sleep(STEP).await;
        let scheduled = json!([{"type": "PodScheduled", "status": "True"}]);
        let waiting = |reason: &str, message: &str| {
            json!({"phase": "Pending", "conditions": scheduled,
                "containerStatuses": [{"name": "runner", "ready": false, "restartCount": 0,
                    "image": "runner", "imageID": "",
                    "state": {"waiting": {"reason": reason, "message": message}}}]})
        };
        let running = |ready: bool| {
            json!({"phase": "Running", "podIP": "10.244.1.7", "startTime": now(),
                "conditions": [{"type": "PodScheduled", "status": "True"},
                               {"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": [{"name": "runner", "ready": ready, "restartCount": 0,
                    "image": "runner", "imageID": "",
                    "state": {"running": {"startedAt": now()}}}]})
        };
        let sigterm = || sigterm_message(key);
        let ended = ended_status;
        let job_failed = |reason: &str, message: &str| {
            json!({"active": 0, "failed": 1, "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": reason, "message": message},
                {"type": "Failed", "status": "True", "reason": reason, "message": message}]})
        };
        match lifecycle {
            Lifecycle::Unschedulable => {
                pod.status(json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
                    "status": "False", "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient memory."}]}));
            }
            Lifecycle::PullFails | Lifecycle::PullRecovers => {
                let image = job["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                pod.status(waiting(
                    "ErrImagePull",
                    &format!("failed to pull image \"{image}\": not found"),
                ));
                tokio::time::sleep(STEP).await;
                pod.status(waiting(
                    "ImagePullBackOff",
                    &format!("Back-off pulling image \"{image}\""),
                ));
                if lifecycle == Lifecycle::PullRecovers {
                    tokio::time::sleep(STEP * 10).await;
                    pod.status(running(false));
                    tokio::time::sleep(STEP).await;
                    pod.status(running(true));
                }
            }
            Lifecycle::ConfigError => {
                pod.status(waiting(
                    "CreateContainerConfigError",
                    "secret \"agent-keys\" not found",
                ));
            }
            Lifecycle::MountFails => {
                pod.status(waiting("ContainerCreating", ""));
                self.warn(&ns, "Pod", &pod_name, "FailedMount",
                    "MountVolume.SetUp failed for volume \"jwks\" : configmap \"cliscale-terminal-jwks\" not found");
            }
            _ => {
                pod.status(running(false));
                tokio::time::sleep(STEP).await;
                pod.status(running(true));
                tokio::time::sleep(STEP * 3).await;
            }
        }
        match lifecycle {
            Lifecycle::Exits(_) | Lifecycle::CompletesAndPodVanishes => {
                let code = if let Lifecycle::Exits(c) = lifecycle { c } else { 0 };
                let status = SessionStatus {
                    phase: if code == 0 { SessionPhase::Succeeded } else { SessionPhase::Failed },
                    exit_code: Some(code),
                    reason: Some(TerminalReason::Exited),
                    message: Some(format!("the command exited with code {code}")),
                };
                let event = RunnerEvent::finished(status, Some(format!("bye from {session}")));
                let message =
                    key.map(|k| event.to_sealed_termination_message(&k)).unwrap_or_default();
                let (phase, reason) =
                    if code == 0 { ("Succeeded", "Completed") } else { ("Failed", "Error") };
                let job_complete = || {
                    set_job(json!({"active": 0, "succeeded": 1, "conditions": [
                        {"type": "SuccessCriteriaMet", "status": "True"},
                        {"type": "Complete", "status": "True"}]}))
                };
                if lifecycle == Lifecycle::CompletesAndPodVanishes {
                    job_complete();
                    self.api.remove("pods", &ns, &pod_name);
                    return;
                }
                pod.status(ended(phase, code, reason, &message));
                if code == 0 {
                    job_complete();
                } else {
                    set_job(job_failed(
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    ));
                }
            }
            Lifecycle::OomKilled => {
                pod.status(ended("Failed", 137, "OOMKilled", ""));
                set_job(job_failed(
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                ));
            }
            Lifecycle::Evicted | Lifecycle::Preempted | Lifecycle::NodeLost => {
                let (reason, pod_reason, message) = match lifecycle {
                    Lifecycle::Evicted => (
                        "TerminationByKubelet",
                        "Evicted",
                        "The node was low on resource: memory. Threshold quantity: 100Mi.",
                    ),
                    Lifecycle::Preempted => {
                        ("PreemptionByScheduler", "", "Preempted in order to admit critical pod")
                    }
                    _ => (
                        "DeletionByTaintManager",
                        "",
                        "Taint manager: deleting due to NoExecute taint key node.kubernetes.io/unreachable",
                    ),
                };
                let mut status = ended("Failed", 143, "Error", &sigterm());
                status["conditions"] = json!([{"type": "DisruptionTarget", "status": "True",
                    "reason": reason, "message": message}]);
                if !pod_reason.is_empty() {
                    status["reason"] = json!(pod_reason);
                    status["message"] = json!(message);
                }
                pod.status(status);
                set_job(job_failed(
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                ));
            }
            Lifecycle::JobDeadline => {
                set_job(job_failed(
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                ));
                pod.status(ended("Failed", 143, "Error", &sigterm()));
                tokio::time::sleep(STEP).await;
                self.api.remove("pods", &ns, &pod_name);
            }
            _ => {}
        }
    }
}

struct PodSteps<'a> {
    api: &'a FakeApi,
    ns: &'a str,
    name: &'a str,
}

/// The runner's status key in a pod spec's environment, as the operator put it there.
fn status_key_of(pod_spec: &Value) -> Option<cliscale_core::event::StatusKey> {
    pod_spec["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == cliscale_core::launch::STATUS_KEY)
        .and_then(|e| decode_status_key(e["value"].as_str()?))
}

/// The termination message a runner writes when SIGTERM stops it: a sealed `Cancelled` end.
fn sigterm_message(key: Option<cliscale_core::event::StatusKey>) -> String {
    let status = SessionStatus {
        phase: SessionPhase::Cancelled,
        exit_code: Some(143),
        reason: Some(TerminalReason::Cancelled),
        message: Some("the runner got SIGTERM".into()),
    };
    let event = RunnerEvent::finished(status, Some("until the end".into()));
    key.map(|k| event.to_sealed_termination_message(&k)).unwrap_or_default()
}

/// A pod status whose runner container has terminated.
fn ended_status(phase: &str, code: i32, reason: &str, message: &str) -> Value {
    json!({"phase": phase, "podIP": "10.244.1.7",
        "containerStatuses": [{"name": "runner", "ready": false, "restartCount": 0,
            "image": "runner", "imageID": "",
            "state": {"terminated": {"exitCode": code, "reason": reason, "message": message,
                "startedAt": now(), "finishedAt": now()}}}]})
}

impl PodSteps<'_> {
    /// The kubelet's status update; nothing if the pod is gone or being stopped (the kubelet
    /// no longer drives a deleted pod's lifecycle, only its end).
    fn status(&self, status: Value) {
        if let Some(mut pod) = self.api.get("pods", self.ns, self.name)
            && pod["metadata"]["deletionTimestamp"].is_null()
        {
            pod["status"] = status;
            self.api.put("pods", pod);
        }
    }
}

fn now() -> String {
    crate::fake_kube::now_rfc3339()
}

fn suffix() -> String {
    (0..5).map(|_| (b'a' + rand::random::<u8>() % 26) as char).collect()
}
