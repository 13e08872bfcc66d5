//! A CommandSession's status, derived from what is observed of its Job and Pod: a pure
//! function. Waiting states (scheduling, image pulls) are reported, never acted on.

use std::time::Duration;

use cliscale_core::phase::finished_phase;
use cliscale_core::{SessionPhase, TerminalReason};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Event as CoreEvent, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::desired::{CANCEL_ANNOTATION, RUNNER_PORT, SPEC_HASH_ANNOTATION, spec_hash};
use cliscale_core::event::{RunnerEvent, StatusKey};
use cliscale_core::exit;
use cliscale_crd::condition::{READY, SPEC_CHANGE_REJECTED, reason};
use cliscale_crd::{CommandSession, CommandSessionStatus};

/// What is known of the session's Job.
#[derive(Debug, Clone, Copy)]
pub enum JobSeen<'a> {
    /// No Job, and the session never had one: it is about to be made.
    NotYet,
    /// The Job, as the cache or the API server gave it.
    Made(&'a Job),
    /// The API server refused to make the Job (a 4xx): its message.
    Refused(&'a str),
    /// The session had a Job (`status.jobName`) and the API server no longer has it.
    Vanished,
}

/// A warning the cluster recorded about the runner's Job or pod (a core Event): why a pod
/// never came (`FailedCreate`: quota, admission) or never started (`FailedMount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterWarning {
    pub reason: String,
    pub message: String,
}

/// The Warning Events among `events` about any of `objects` (names of Jobs or pods in namespace
/// `ns`; the operator's own Events about a CommandSession of such a name are not among them),
/// oldest first. An Event recorded through `events.k8s.io` has only its `eventTime`; one repeated
/// in a series keeps its latest time in `lastTimestamp`. Pure.
pub fn warnings_about<'e>(
    events: impl IntoIterator<Item = &'e CoreEvent>,
    ns: &str,
    objects: &[String],
) -> Vec<ClusterWarning> {
    let mut found: Vec<(i64, ClusterWarning)> = events
        .into_iter()
        .filter(|e| {
            let about = &e.involved_object;
            e.type_.as_deref() == Some("Warning")
                && about.namespace.as_deref().or(e.metadata.namespace.as_deref()) == Some(ns)
                && matches!(about.kind.as_deref(), Some("Job" | "Pod"))
                && about.name.as_ref().is_some_and(|n| objects.contains(n))
        })
        .map(|e| {
            let when = e
                .last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or(e.event_time.as_ref().map(|t| t.0))
                .or(e.first_timestamp.as_ref().map(|t| t.0))
                .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
                .map_or(0, |t| t.as_second());
            let warning = ClusterWarning {
                reason: e.reason.clone().unwrap_or_default(),
                message: e.message.clone().unwrap_or_default(),
            };
            (when, warning)
        })
        .collect();
    found.sort_by_key(|(when, _)| *when);
    found.into_iter().map(|(_, w)| w).collect()
}

/// Everything the status is derived from.
pub struct Observed<'a> {
    pub session: &'a CommandSession,
    pub job: JobSeen<'a>,
    pub pod: Option<&'a Pod>,
    pub now: Time,
    /// The keys one of which sealed the runner's final event (its termination message).
    pub status_keys: &'a [StatusKey],
    /// How long a session may wait for its runner to run before it fails.
    pub start_deadline: Duration,
    /// The cluster's warnings about the Job and pod, read while the session has waited to start
    /// for a while ([`Observed::stall_check_due`]) and at the start deadline.
    pub warnings: &'a [ClusterWarning],
}

/// How often a session that waits to start has the cluster's warnings read, so a stall only the
/// warnings tell (a volume that will not mount, a pod the Job may not make) is named while it
/// waits, not only at its deadline: every 15 s, or four times before a shorter deadline. Pure.
pub fn stall_check_every(start_deadline: Duration) -> Duration {
    Duration::from_secs(15).min(start_deadline / 4).max(Duration::from_millis(100))
}

impl Observed<'_> {
    /// Time left before the start deadline, `None` once the runner runs or the session ended,
    /// `Some(ZERO)` once it has passed. Pure.
    pub fn start_deadline_left(&self) -> Option<Duration> {
        let status = self.session.status.as_ref();
        if status.and_then(|s| s.phase).is_some_and(SessionPhase::is_finished) {
            return None;
        }
        if self.pod.is_some_and(|p| !matches!(pod_view(p, &[]), PodView::Waiting { .. })) {
            return None;
        }
        let created = self.session.metadata.creation_timestamp.as_ref()?.0.as_second();
        let age = (self.now.0.as_second() - created).max(0) as u64;
        Some(self.start_deadline.saturating_sub(Duration::from_secs(age)))
    }

    /// Whether the session has waited to start long enough to read the cluster's warnings
    /// (reading them costs a LIST; most sessions start well before). Pure.
    pub fn stall_check_due(&self) -> bool {
        self.start_deadline_left().is_some_and(|left| {
            self.start_deadline.saturating_sub(left) >= stall_check_every(self.start_deadline)
        })
    }
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: i64,
    now: &Time,
    previous: &[Condition],
) -> Condition {
    let status = if ok { "True" } else { "False" };
    // The transition time only moves when the status does.
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: Some(generation),
        last_transition_time: since,
    }
}

/// How a terminated runner container ended: its reason, exit code and message. The kubelet's
/// word wins on what it knows (an OOM kill, the exit code); the runner's final event, which it
/// wrote as its termination message, tells the rest (a signal death, a deadline, its own
/// message). Only an event sealed with the session's status key is the runner's: the command
/// shares the runner's user in a pod and can write the message file, or kill the runner and
/// leave a message of its own. An event whose exit code disagrees with the kubelet's is not
/// believed either. Pure.
fn terminated(
    t: &ContainerStateTerminated,
    keys: &[StatusKey],
) -> (TerminalReason, i32, String, Option<String>) {
    let code = t.exit_code;
    let event = t.message.as_deref().and_then(|m| RunnerEvent::open_sealed(m, keys));
    // The output's last lines are the runner's to tell, whoever says how it ended.
    let tail = match &event {
        Some(RunnerEvent::Finished { output_tail, .. }) => output_tail.clone(),
        _ => None,
    };
    if t.reason.as_deref() == Some("OOMKilled") {
        let message = "the runner was killed for exceeding its memory limit".to_string();
        return (TerminalReason::OomKilled, code, message, tail);
    }
    let reported = event.and_then(|e| match e {
        RunnerEvent::Finished { status, .. } if status.exit_code == Some(code) => Some(status),
        _ => None,
    });
    match reported {
        Some(status) => (
            status.reason.unwrap_or_else(|| exit::reason_of(code)),
            code,
            status.message.unwrap_or_else(|| format!("exited with code {code}")),
            tail,
        ),
        None => (exit::reason_of(code), code, format!("exited with code {code}"), tail),
    }
}

/// A waiting runner's typed reason and message, if it waits for something worth showing.
fn waiting(pod: &Pod) -> Option<(TerminalReason, String)> {
    let status = pod.status.as_ref()?;
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    {
        return Some((
            TerminalReason::Unschedulable,
            c.message.clone().unwrap_or_else(|| "no node fits".into()),
        ));
    }
    let w = status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref())?;
    let reason = match w.reason.as_deref()? {
        "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
            TerminalReason::ImagePullFailed
        }
        "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" => {
            TerminalReason::ContainerConfigError
        }
        _ => return None,
    };
    let kubelet = w.reason.clone().unwrap_or_default();
    Some((reason, format!("{kubelet}: {}", w.message.clone().unwrap_or_default())))
}

/// Why the cluster took a pod away, from its `DisruptionTarget` condition or its own reason:
/// it outranks the runner's word, which only saw a SIGTERM. Pure.
fn disruption(pod: &Pod) -> Option<(TerminalReason, String)> {
    let status = pod.status.as_ref()?;
    let condition = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True");
    let pod_reason = status.reason.as_deref().unwrap_or("");
    let reason = match (condition.and_then(|c| c.reason.as_deref()), pod_reason) {
        (Some("PreemptionByScheduler"), _) | (_, "Preempting") => TerminalReason::Preempted,
        (Some("DeletionByTaintManager" | "DeletionByPodGC"), _) => TerminalReason::NodeLost,
        (_, "NodeLost" | "NodeShutdown" | "Terminated" | "Shutdown") => TerminalReason::NodeLost,
        // EvictionByEvictionAPI, TerminationByKubelet (node pressure), and any reason newer
        // than these.
        (Some(_), _) | (_, "Evicted") => TerminalReason::Evicted,
        (None, _) => return None,
    };
    let message = status
        .message
        .clone()
        .or_else(|| condition.and_then(|c| c.message.clone()))
        .unwrap_or_else(|| format!("the pod was disrupted: {}", reason.as_str()));
    Some((reason, message))
}

/// What a runner pod says about its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodView {
    /// The runner is gone: how the session ended.
    Ended {
        reason: TerminalReason,
        exit_code: Option<i32>,
        message: String,
        /// The last lines of output, as the runner reported them.
        output_tail: Option<String>,
    },
    /// The runner runs; `ready` once its PTY is up (the readiness probe passes).
    Running { ready: bool },
    /// Scheduling, pulling, mounting: visible, and fatal only at the start deadline.
    Waiting { reason: Option<TerminalReason>, message: String },
}

/// Reads a runner pod as the kubelet reports it, believing only final events sealed with one
/// of `keys`. Pure.
pub fn pod_view(pod: &Pod, keys: &[StatusKey]) -> PodView {
    let status = pod.status.clone().unwrap_or_default();
    let container = status.container_statuses.iter().flatten().find(|c| c.name == "runner");
    let ended = container.and_then(|c| c.state.as_ref()?.terminated.as_ref());
    let phase = status.phase.as_deref();
    if matches!(phase, Some("Succeeded" | "Failed" | "Unknown")) {
        // An OOM kill is the kubelet's to tell; a disruption outranks the runner's SIGTERM.
        let oom = ended.is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"));
        let lost = (phase == Some("Unknown"))
            .then(|| (TerminalReason::NodeLost, "the runner's node stopped reporting".into()));
        if let Some((reason, message)) = lost.or_else(|| disruption(pod)).filter(|_| !oom) {
            let exit_code = ended.map(|t| t.exit_code);
            let output_tail = ended.and_then(|t| terminated(t, keys).3);
            return PodView::Ended { reason, exit_code, message, output_tail };
        }
        if let Some(t) = ended {
            let (reason, code, message, output_tail) = terminated(t, keys);
            return PodView::Ended { reason, exit_code: Some(code), message, output_tail };
        }
        return PodView::Ended {
            reason: TerminalReason::RunnerLost,
            exit_code: None,
            message: status.message.clone().unwrap_or_else(|| "the pod failed".into()),
            output_tail: None,
        };
    }
    if phase == Some("Running") {
        return PodView::Running { ready: container.is_some_and(|c| c.ready) };
    }
    match waiting(pod) {
        Some((reason, message)) => PodView::Waiting { reason: Some(reason), message },
        None => {
            PodView::Waiting { reason: None, message: "waiting for the runner pod to start".into() }
        }
    }
}

/// How a Job ended when its pod cannot tell (gone, or cut short by the Job's own deadline):
/// `None` while it has not ended. Pure.
pub fn job_outcome(job: &Job) -> Option<(TerminalReason, Option<i32>, String)> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let holds = |type_: &str| conditions.iter().find(|c| c.type_ == type_ && c.status == "True");
    let name = job.name_any();
    if let Some(failed) = holds("Failed") {
        let said = failed.message.clone().unwrap_or_default();
        return Some(match failed.reason.as_deref() {
            Some("DeadlineExceeded") => (
                TerminalReason::DeadlineExceeded,
                None,
                format!("the Job's deadline passed: {said}"),
            ),
            other => (
                TerminalReason::RunnerLost,
                None,
                format!(
                    "the Job {name} failed ({}) and its pod is gone: {said}",
                    other.unwrap_or("no reason given")
                ),
            ),
        });
    }
    holds("Complete").map(|_| {
        let message =
            format!("the Job {name} completed; its pod was removed before its end was read");
        (TerminalReason::Exited, Some(0), message)
    })
}

/// What the cluster's warnings say a waiting session waits for, the newest first: a volume that
/// will not mount, or a pod the Job may not make (quota, admission). Pure.
pub fn stall(warnings: &[ClusterWarning]) -> Option<(TerminalReason, String)> {
    let found =
        |reasons: &[&str]| warnings.iter().rev().find(|w| reasons.contains(&w.reason.as_str()));
    if let Some(w) = found(&["FailedMount", "FailedAttachVolume"]) {
        return Some((TerminalReason::MountFailed, w.message.clone()));
    }
    found(&["FailedCreate"]).map(|w| (TerminalReason::JobRejected, w.message.clone()))
}

/// Why a session that never started failed at its start deadline: what it waited for, from
/// its pod or from the cluster's warnings, and the cluster's own words. Pure.
pub fn start_failure(
    pod: Option<&Pod>,
    warnings: &[ClusterWarning],
    deadline: Duration,
) -> (TerminalReason, String) {
    let waited = humantime::format_duration(deadline);
    if let Some(PodView::Waiting { reason: Some(reason), message }) = pod.map(|p| pod_view(p, &[]))
    {
        return (reason, format!("not started within {waited}: {message}"));
    }
    if let Some((reason, message)) = stall(warnings) {
        return (reason, format!("not started within {waited}: {message}"));
    }
    let last =
        warnings.last().map(|w| format!(": {}: {}", w.reason, w.message)).unwrap_or_default();
    (
        TerminalReason::StartDeadlineExceeded,
        format!("the runner did not start within {waited}{last}"),
    )
}

/// A Kubernetes Event worth recording for a status change: (warning?, reason, note).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// The Event for going from `old` to `new`, if the phase or waiting reason changed. Pure.
pub fn transition(
    old: Option<&CommandSessionStatus>,
    new: &CommandSessionStatus,
) -> Option<Transition> {
    let before = old.map(|s| (s.phase, s.reason));
    let after = (new.phase, new.reason);
    let phase = new.phase?;
    if before == Some(after) {
        return None;
    }
    let warning = match phase {
        SessionPhase::Failed | SessionPhase::TimedOut | SessionPhase::Lost => true,
        SessionPhase::Pending => new.reason.is_some(),
        _ => false,
    };
    let mut note = format!("phase {}", phase.as_str());
    if let Some(reason) = new.reason {
        note.push_str(&format!(", reason {}", reason.as_str()));
    }
    if let Some(code) = new.exit_code {
        note.push_str(&format!(", exit code {code}"));
    }
    if let Some(message) = new.message.as_deref().filter(|m| !m.is_empty()) {
        note.push_str(": ");
        note.push_str(message);
    }
    // Events carry at most 1 kB of note.
    if note.len() > 1000 {
        let mut cut = 1000;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    Some(Transition { warning, reason: phase.as_str().to_owned(), note })
}

/// The status the session should have now.
pub fn derive_status(o: &Observed) -> CommandSessionStatus {
    let session = o.session;
    let previous = session.status.clone().unwrap_or_default();
    let generation = session.metadata.generation.unwrap_or(0);
    let mut status =
        CommandSessionStatus { observed_generation: Some(generation), ..previous.clone() };

    // A finished session stays as it ended.
    if previous.phase.is_some_and(SessionPhase::is_finished) {
        return status;
    }
    let mut conditions = Vec::new();
    if let JobSeen::Made(job) = o.job {
        status.job_name = job.metadata.name.clone();
        let made_from = job.annotations().get(SPEC_HASH_ANNOTATION).cloned().unwrap_or_default();
        let changed = made_from != spec_hash(session);
        conditions.push(condition(
            SPEC_CHANGE_REJECTED,
            changed,
            if changed { reason::SPEC_CHANGED_AFTER_START } else { reason::SPEC_MATCHES_JOB },
            if changed {
                "the spec changed after the session started; the change is not applied"
            } else {
                ""
            },
            generation,
            &o.now,
            &previous.conditions,
        ));
    }
    let finish = |status: &mut CommandSessionStatus,
                  reason: TerminalReason,
                  code: Option<i32>,
                  message: String| {
        status.phase = Some(finished_phase(reason, code));
        status.reason = Some(reason);
        status.exit_code = code;
        status.message = Some(message);
        status.completion_time = Some(o.now.clone());
        status.runner_address = None;
    };
    let job_ended = match o.job {
        JobSeen::Made(job) => job_outcome(job),
        _ => None,
    };
    let deadline_passed = o.start_deadline_left() == Some(Duration::ZERO);
    let mut ready = false;

    if session.metadata.deletion_timestamp.is_some() {
        let code = status.exit_code;
        finish(&mut status, TerminalReason::DeletedByUser, code, "the session was deleted".into());
    } else if session.annotations().contains_key(CANCEL_ANNOTATION) {
        let code = status.exit_code;
        finish(&mut status, TerminalReason::Cancelled, code, "cancelled by a user".into());
    } else if let JobSeen::Refused(message) = o.job {
        let message = format!("the cluster refused the Job: {message}");
        finish(&mut status, TerminalReason::JobRejected, None, message);
    } else if let JobSeen::Vanished = o.job {
        let name = status.job_name.clone().unwrap_or_default();
        let message =
            format!("the Job {name} was deleted by someone; the command is not run again");
        let code = status.exit_code;
        finish(&mut status, TerminalReason::JobDeleted, code, message);
    } else if let Some((reason @ TerminalReason::DeadlineExceeded, code, message)) =
        job_ended.clone()
    {
        // The Job's own deadline killed the pod: the runner only saw a SIGTERM.
        finish(&mut status, reason, code, message);
    } else if let Some(pod) = o.pod {
        status.pod_name = pod.metadata.name.clone();
        let pod_status = pod.status.clone().unwrap_or_default();
        status.pod_ip = pod_status.pod_ip.clone();
        status.runner_address = pod_status.pod_ip.as_ref().map(|ip| format!("{ip}:{RUNNER_PORT}"));
        if status.start_time.is_none() {
            status.start_time = pod_status.start_time.clone();
        }
        match pod_view(pod, o.status_keys) {
            PodView::Ended { reason, exit_code, message, output_tail } => {
                finish(&mut status, reason, exit_code, message);
                if output_tail.is_some() {
                    status.output_tail = output_tail;
                }
            }
            PodView::Running { ready: up } => {
                ready = up;
                status.phase =
                    Some(if up { SessionPhase::Running } else { SessionPhase::Starting });
                status.reason = None;
                status.message = None;
            }
            PodView::Waiting { .. } if deadline_passed => {
                let (reason, message) = start_failure(Some(pod), o.warnings, o.start_deadline);
                finish(&mut status, reason, None, message);
            }
            PodView::Waiting { reason, message } => {
                // What the pod does not say (a mount that keeps failing), the warnings may.
                let (reason, message) = match (reason, stall(o.warnings)) {
                    (None, Some((stalled, said))) => (Some(stalled), said),
                    (reason, _) => (reason, message),
                };
                status.phase = Some(SessionPhase::Pending);
                status.reason = reason;
                status.message = Some(message);
                status.runner_address = None;
            }
        }
    } else if let Some((reason, code, message)) = job_ended {
        finish(&mut status, reason, code, message);
    } else if deadline_passed {
        let (reason, message) = start_failure(None, o.warnings, o.start_deadline);
        finish(&mut status, reason, None, message);
    } else if let Some((reason, message)) = stall(o.warnings) {
        // No pod yet, and the Job controller says why (a quota, an admission webhook).
        status.phase = Some(SessionPhase::Pending);
        status.reason = Some(reason);
        status.message = Some(message);
    } else {
        status.phase = Some(SessionPhase::Pending);
        status.reason = None;
        status.message = Some(match o.job {
            JobSeen::Made(_) => "the Job exists; no pod yet".into(),
            _ => "accepted; creating the Job".into(),
        });
    }
    if o.pod.is_some() {
        conditions.push(condition(
            READY,
            ready && status.phase == Some(SessionPhase::Running),
            if ready { reason::RUNNER_READY } else { reason::RUNNER_NOT_READY },
            "",
            generation,
            &o.now,
            &previous.conditions,
        ));
    }
    status.conditions = conditions;
    status
}

/// Whether the session's Job should be stopped: the session ended before its runner did (a
/// cancel, a start deadline), so a pod still waiting or running must not go on. Pure.
pub fn job_must_stop(status: &CommandSessionStatus, job: &Job, pod: Option<&Pod>) -> bool {
    let finished = status.phase.is_some_and(SessionPhase::is_finished);
    let pod_ended = pod.is_some_and(|p| matches!(pod_view(p, &[]), PodView::Ended { .. }));
    finished
        && job.metadata.deletion_timestamp.is_none()
        && job_outcome(job).is_none()
        && !pod_ended
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{OperatorConfig, desired_job};
    use cliscale_testkit::fixtures::{self, pod};
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn session() -> CommandSession {
        fixtures::session("s1").generation(2).build()
    }

    fn now() -> Time {
        Time(Timestamp::from_second(1_800_000_000).unwrap())
    }

    const KEY: StatusKey = [7; 32];

    fn derive(cs: &CommandSession, job: Option<&Job>, pod: Option<&Pod>) -> CommandSessionStatus {
        let job = job.map_or(JobSeen::NotYet, JobSeen::Made);
        derive_status(&Observed {
            session: cs,
            job,
            pod,
            now: now(),
            status_keys: &[KEY],
            start_deadline: Duration::from_secs(600),
            warnings: &[],
        })
    }

    fn terminated_pod(code: i32, reason: &str) -> Pod {
        pod("cs-s1-abc").ip("10.0.0.7").terminated(code, reason).build()
    }

    #[test]
    fn the_life_of_a_session() {
        let cs = session();
        let job = desired_job(&cs, &OperatorConfig::default());
        assert_eq!(derive(&cs, None, None).phase, Some(SessionPhase::Pending));
        assert_eq!(derive(&cs, Some(&job), None).phase, Some(SessionPhase::Pending));
        let starting = pod("cs-s1-abc").ip("10.0.0.7").running().build();
        let s = derive(&cs, Some(&job), Some(&starting));
        assert_eq!(s.phase, Some(SessionPhase::Starting));
        assert_eq!(s.runner_address.as_deref(), Some("10.0.0.7:7681"));
        let running = pod("cs-s1-abc").ip("10.0.0.7").running().ready().build();
        let s = derive(&cs, Some(&job), Some(&running));
        assert_eq!(s.phase, Some(SessionPhase::Running));
        let ready = s.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(s.observed_generation, Some(2));
        let s = derive(&cs, Some(&job), Some(&terminated_pod(3, "Error")));
        assert_eq!(
            (s.phase, s.reason, s.exit_code),
            (Some(SessionPhase::Failed), Some(TerminalReason::Exited), Some(3))
        );
        assert_eq!(s.completion_time, Some(now()));
    }

    #[test]
    fn every_ending_has_its_typed_reason() {
        let cs = session();
        let job = desired_job(&cs, &OperatorConfig::default());
        let cases = [
            (terminated_pod(0, "Completed"), SessionPhase::Succeeded, TerminalReason::Exited),
            (terminated_pod(137, "OOMKilled"), SessionPhase::Lost, TerminalReason::OomKilled),
            (
                terminated_pod(124, "Error"),
                SessionPhase::TimedOut,
                TerminalReason::DeadlineExceeded,
            ),
            (terminated_pod(121, "Error"), SessionPhase::Failed, TerminalReason::FetchFailed),
            (terminated_pod(122, "Error"), SessionPhase::Failed, TerminalReason::ChecksumMismatch),
            (terminated_pod(123, "Error"), SessionPhase::Failed, TerminalReason::InstallFailed),
            (
                pod("cs-s1-abc").evicted("node pressure").build(),
                SessionPhase::Lost,
                TerminalReason::Evicted,
            ),
        ];
        for (p, phase, reason) in cases {
            let s = derive(&cs, Some(&job), Some(&p));
            assert_eq!((s.phase, s.reason), (Some(phase), Some(reason)), "{p:?}");
        }
        let mut deadline_job = job.clone();
        deadline_job.status = serde_json::from_value(json!({ "conditions": [{ "type": "Failed", "status": "True", "reason": "DeadlineExceeded" }] })).unwrap();
        let s = derive(&cs, Some(&deadline_job), None);
        assert_eq!(
            (s.phase, s.reason),
            (Some(SessionPhase::TimedOut), Some(TerminalReason::DeadlineExceeded))
        );
        let mut deleted = cs.clone();
        deleted.metadata.deletion_timestamp = Some(now());
        let s = derive(&deleted, Some(&job), None);
        assert_eq!(
            (s.phase, s.reason),
            (Some(SessionPhase::Cancelled), Some(TerminalReason::DeletedByUser))
        );
    }

    #[test]
    fn the_runners_final_event_tells_what_the_exit_code_cannot() {
        let cs = session();
        let job = desired_job(&cs, &OperatorConfig::default());
        let event = |code: i32, reason: TerminalReason, message: &str| {
            let status = cliscale_core::protocol::SessionStatus {
                phase: SessionPhase::Failed,
                exit_code: Some(code),
                reason: Some(reason),
                message: Some(message.into()),
            };
            RunnerEvent::finished(status, Some(format!("last line of {code}")))
                .to_sealed_termination_message(&KEY)
        };
        let ended = |code: i32, kubelet_reason: &str, message: &str| {
            let p = pod("cs-s1-abc").terminated(code, kubelet_reason).termination_message(message);
            derive(&cs, Some(&job), Some(&p.build()))
        };
        let killed =
            ended(137, "Error", &event(137, TerminalReason::Signaled, "killed by signal 9"));
        assert_eq!(
            (killed.phase, killed.reason, killed.exit_code, killed.message.as_deref()),
            (
                Some(SessionPhase::Failed),
                Some(TerminalReason::Signaled),
                Some(137),
                Some("killed by signal 9")
            )
        );
        // The output's last lines reach the status, for `kubectl describe`.
        assert_eq!(killed.output_tail.as_deref(), Some("last line of 137"));
        // An event whose exit code is not the one the kubelet saw is not believed.
        let forged = ended(3, "Error", &event(0, TerminalReason::Exited, "all good"));
        assert_eq!((forged.reason, forged.exit_code), (Some(TerminalReason::Exited), Some(3)));
        assert_eq!(forged.phase, Some(SessionPhase::Failed));
        // The kubelet's OOM kill wins over whatever the runner wrote.
        let oom = ended(137, "OOMKilled", &event(137, TerminalReason::Signaled, "x"));
        assert_eq!(
            (oom.phase, oom.reason),
            (Some(SessionPhase::Lost), Some(TerminalReason::OomKilled))
        );
        // Free text is no event: judged by the exit code.
        let text = ended(121, "Error", "could not fetch");
        assert_eq!(text.reason, Some(TerminalReason::FetchFailed));
        // The command killed its runner and wrote the message file itself: an event it wrote
        // has no seal, or a seal made with another key, and is not believed.
        let status = cliscale_core::protocol::SessionStatus {
            phase: SessionPhase::TimedOut,
            exit_code: Some(137),
            reason: Some(TerminalReason::DeadlineExceeded),
            message: Some("all good".into()),
        };
        let forged = RunnerEvent::finished(status, Some("forged tail".into()));
        for message in
            [forged.to_termination_message(), forged.to_sealed_termination_message(&[8; 32])]
        {
            let s = ended(137, "Error", &message);
            assert_eq!(
                (s.phase, s.reason, s.exit_code, s.output_tail.as_deref()),
                (Some(SessionPhase::Failed), Some(TerminalReason::Exited), Some(137), None),
                "{message}"
            );
            assert_ne!(s.message.as_deref(), Some("all good"));
        }
    }

    #[test]
    fn pods_read_as_the_kubelet_reports_them() {
        use TerminalReason as R;
        let ended = |reason, code: Option<i32>| (Some(reason), code);
        let cases = [
            (pod("p").build(), None, None),
            (pod("p").running().build(), None, None),
            (pod("p").terminated(0, "Completed").build(), Some(R::Exited), Some(0)),
            (pod("p").terminated(123, "Error").build(), Some(R::InstallFailed), Some(123)),
            (pod("p").evicted("disk pressure").build(), Some(R::Evicted), None),
        ];
        for (p, reason, code) in cases {
            let got = match pod_view(&p, &[KEY]) {
                PodView::Ended { reason, exit_code, .. } => ended(reason, exit_code),
                _ => (None, None),
            };
            assert_eq!(got, (reason, code), "{p:?}");
        }
        assert_eq!(
            pod_view(&pod("p").running().ready().build(), &[KEY]),
            PodView::Running { ready: true }
        );
        assert_eq!(
            pod_view(&pod("p").running().build(), &[KEY]),
            PodView::Running { ready: false }
        );
        let pulling = pod_view(&pod("p").waiting("ErrImagePull", "no such image").build(), &[KEY]);
        assert!(
            matches!(&pulling, PodView::Waiting { reason: Some(R::ImagePullFailed), message } if message.contains("no such image")),
            "{pulling:?}"
        );
        let failed: Pod =
            serde_json::from_value(json!({ "status": { "phase": "Failed" } })).unwrap();
        assert!(matches!(pod_view(&failed, &[KEY]), PodView::Ended { reason: R::RunnerLost, .. }));
    }

    #[test]
    fn waiting_states_are_visible_and_not_fatal() {
        let cs = session();
        let job = desired_job(&cs, &OperatorConfig::default());
        let pulling = pod("cs-s1-abc").waiting("ImagePullBackOff", "not found").build();
        let s = derive(&cs, Some(&job), Some(&pulling));
        assert_eq!(
            (s.phase, s.reason),
            (Some(SessionPhase::Pending), Some(TerminalReason::ImagePullFailed))
        );
        assert!(s.message.unwrap().contains("ImagePullBackOff"));
        let unschedulable = pod("cs-s1-abc").unschedulable("0/3 nodes are available").build();
        let s = derive(&cs, Some(&job), Some(&unschedulable));
        assert_eq!(
            (s.phase, s.reason),
            (Some(SessionPhase::Pending), Some(TerminalReason::Unschedulable))
        );
    }

    #[test]
    fn a_finished_session_never_changes_and_spec_changes_are_surfaced() {
        let mut cs = session();
        let job = desired_job(&cs, &OperatorConfig::default());
        cs.status = Some(derive(&cs, Some(&job), Some(&terminated_pod(3, "Error"))));
        let later = derive(&cs, Some(&job), Some(&terminated_pod(0, "Completed")));
        assert_eq!(later.exit_code, Some(3));
        let mut changed = session();
        changed.spec.session.command = "something else".into();
        let s = derive(&changed, Some(&job), None);
        let c = s.conditions.iter().find(|c| c.type_ == SPEC_CHANGE_REJECTED).unwrap();
        assert_eq!(c.status, "True");
    }

    #[test]
    fn a_cancel_annotation_ends_the_session_cancelled() {
        let mut cs = session();
        let job = desired_job(&cs, &OperatorConfig::default());
        cs.metadata.annotations =
            Some([(CANCEL_ANNOTATION.to_string(), "true".to_string())].into());
        let s = derive(&cs, Some(&job), None);
        assert_eq!(
            (s.phase, s.reason),
            (Some(SessionPhase::Cancelled), Some(TerminalReason::Cancelled))
        );
        assert_eq!(s.completion_time, Some(now()));
    }

    #[test]
    fn warnings_are_the_named_objects_warnings_oldest_first() {
        let event = |name: &str, about: &str, ns: &str, type_: &str, time: serde_json::Value| {
            let mut e = json!({
                "metadata": {"name": name, "namespace": ns},
                "involvedObject": {"kind": "Pod", "name": about, "namespace": ns},
                "type": type_, "reason": name, "message": format!("{name} says")
            });
            if let serde_json::Value::Object(fields) = time {
                e.as_object_mut().unwrap().extend(fields);
            }
            serde_json::from_value::<CoreEvent>(e).unwrap()
        };
        let events = [
            event(
                "late",
                "pod-a",
                "team",
                "Warning",
                json!({"lastTimestamp": "2026-01-01T00:00:30Z"}),
            ),
            // Recorded through events.k8s.io: only its eventTime says when.
            event(
                "early",
                "job-a",
                "team",
                "Warning",
                json!({"eventTime": "2026-01-01T00:00:10.000000Z"}),
            ),
            event(
                "normal",
                "pod-a",
                "team",
                "Normal",
                json!({"lastTimestamp": "2026-01-01T00:00:20Z"}),
            ),
            event(
                "elsewhere",
                "pod-a",
                "other",
                "Warning",
                json!({"lastTimestamp": "2026-01-01T00:00:20Z"}),
            ),
            event(
                "unrelated",
                "pod-b",
                "team",
                "Warning",
                json!({"lastTimestamp": "2026-01-01T00:00:20Z"}),
            ),
        ];
        let names = ["job-a".to_string(), "pod-a".to_string()];
        let found = warnings_about(&events, "team", &names);
        let reasons: Vec<&str> = found.iter().map(|w| w.reason.as_str()).collect();
        assert_eq!(reasons, ["early", "late"]);
        assert_eq!(found[1].message, "late says");
        assert!(warnings_about(&events, "team", &["pod-c".to_string()]).is_empty());
    }

    #[test]
    fn transitions_make_one_event_each_and_warnings_for_bad_ends() {
        let cs = session();
        let job = desired_job(&cs, &OperatorConfig::default());
        let pending = derive(&cs, Some(&job), None);
        let first = transition(None, &pending).unwrap();
        assert_eq!((first.reason.as_str(), first.warning), ("Pending", false));
        assert_eq!(transition(Some(&pending), &pending), None, "no change, no event");
        let pulling = pod("cs-s1-abc").waiting("ImagePullBackOff", "nope").build();
        let waiting = derive(&cs, Some(&job), Some(&pulling));
        let t = transition(Some(&pending), &waiting).unwrap();
        assert!(t.warning && t.note.contains("ImagePullFailed"), "{t:?}");
        let failed = derive(&cs, Some(&job), Some(&terminated_pod(3, "Error")));
        let t = transition(Some(&waiting), &failed).unwrap();
        assert_eq!((t.reason.as_str(), t.warning), ("Failed", true));
        assert!(t.note.contains("exit code 3"), "{t:?}");
        let mut long = failed.clone();
        long.message = Some("é".repeat(2000));
        assert!(transition(Some(&waiting), &long).unwrap().note.len() <= 1000);
    }
}
