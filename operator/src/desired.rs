//! The Job a CommandSession should have: a pure function of the session and the operator's
//! configuration. Applying it is the reconciler's business; deciding it is this file's.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, LocalObjectReference, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use cliscale_core::launch::{self, RunnerLaunch};
use cliscale_core::spec::RESERVED_ENV_PREFIX;
use cliscale_crd::CommandSession;

pub const RUNNER_PORT: i32 = 7681;
pub const RUNNER_UID: i64 = 10001;
/// Label that NetworkPolicies select runner pods by.
pub const COMPONENT_LABEL: &str = "cliscale.dev/component";
pub const SESSION_LABEL: &str = "cliscale.dev/session";
/// Annotation holding a hash of the spec the Job was made from.
pub const SPEC_HASH_ANNOTATION: &str = "cliscale.dev/spec-hash";
/// Set (to any value) on a CommandSession to cancel it: the Job is deleted, the session ends
/// `Cancelled`. The REST API's DELETE sets it; `kubectl annotate` works too.
pub const CANCEL_ANNOTATION: &str = "cliscale.dev/cancel-requested";
const JWKS_DIR: &str = "/etc/cliscale/jwks";
/// Slack on top of the session's own timeout before Kubernetes' backstop deadline, so image
/// pulls and scheduling never kill a session early (the runner enforces the real timeout).
const DEADLINE_SLACK_SECS: i64 = 1800;

/// What the operator was configured with.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    pub runner_image: String,
    /// ConfigMap holding `jwks.json`, the public keys terminal tokens are checked against.
    pub jwks_config_map: String,
    pub default_resources: ResourceRequirements,
    /// Timeout of sessions that set none (`None`: they run until they exit).
    pub default_timeout_seconds: Option<u32>,
    /// The API runners append their sessions' output to (`None`: output is not stored).
    pub output_url: Option<String>,
    /// The one namespace whose CommandSessions are served (docs/operator.md, "Namespaces").
    pub namespace: String,
    /// How long a session may wait for its runner pod to run (scheduling, pulls, mounts)
    /// before it fails with what it waited for.
    pub start_deadline: Duration,
    /// Secrets (in the sessions namespace) the kubelet pulls runner images with.
    pub image_pull_secrets: Vec<String>,
    /// Most bytes the work dir (`/workspace`) may hold; the kubelet evicts a pod past it.
    pub workspace_size_limit: Quantity,
    /// Most bytes `/tmp` and `$HOME` may each hold.
    pub scratch_size_limit: Quantity,
}

const EPHEMERAL_STORAGE: &str = "ephemeral-storage";

/// The runner's resources: the session's own, or the operator's defaults, with the default
/// ephemeral storage where the session names none, so the scratch volumes are always bounded
/// and always scheduled for. Pure.
fn runner_resources(session: &CommandSession, config: &OperatorConfig) -> ResourceRequirements {
    let defaults = &config.default_resources;
    let Some(mut own) = session.spec.resources.clone() else { return defaults.clone() };
    for (mine, theirs) in
        [(&mut own.requests, &defaults.requests), (&mut own.limits, &defaults.limits)]
    {
        if let Some(disk) = theirs.as_ref().and_then(|d| d.get(EPHEMERAL_STORAGE)) {
            mine.get_or_insert_with(BTreeMap::new)
                .entry(EPHEMERAL_STORAGE.into())
                .or_insert_with(|| disk.clone());
        }
    }
    own
}

/// Default of [`OperatorConfig::start_deadline`]: long enough for a cold node to pull a large
/// image, short enough that nobody waits on a session that will never start.
pub const DEFAULT_START_DEADLINE: Duration = Duration::from_secs(600);

impl Default for OperatorConfig {
    fn default() -> Self {
        let quantities = |cpu: &str, memory: &str, disk: &str| {
            BTreeMap::from([
                ("cpu".to_string(), Quantity(cpu.into())),
                ("memory".to_string(), Quantity(memory.into())),
                (EPHEMERAL_STORAGE.to_string(), Quantity(disk.into())),
            ])
        };
        Self {
            runner_image: "ghcr.io/cliscale/runner:latest".into(),
            jwks_config_map: "cliscale-terminal-jwks".into(),
            default_resources: ResourceRequirements {
                requests: Some(quantities("100m", "256Mi", "1Gi")),
                limits: Some(quantities("2", "2Gi", "10Gi")),
                ..Default::default()
            },
            default_timeout_seconds: None,
            output_url: None,
            namespace: "default".into(),
            start_deadline: DEFAULT_START_DEADLINE,
            image_pull_secrets: Vec::new(),
            workspace_size_limit: Quantity("8Gi".into()),
            scratch_size_limit: Quantity("1Gi".into()),
        }
    }
}

/// A Job name for a session: DNS-safe and at most 63 characters, stable for the session.
pub fn job_name(session: &str) -> String {
    let name = format!("cs-{session}");
    if name.len() <= 63 {
        return name;
    }
    let digest = hex::encode(&Sha256::digest(session.as_bytes())[..4]);
    format!("{}-{digest}", &name[..54].trim_end_matches('-'))
}

/// A short hash of the spec, to notice changes made after the Job exists. Taken over the spec
/// as a JSON value, whose keys are sorted, so moving a field in the Rust type changes nothing.
pub fn spec_hash(session: &CommandSession) -> String {
    let value = serde_json::to_value(&session.spec).expect("a spec serializes");
    let json = serde_json::to_vec(&value).expect("a value serializes");
    hex::encode(&Sha256::digest(json)[..8])
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

pub fn labels(session: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "cliscale-runner".into()),
        ("app.kubernetes.io/managed-by".into(), "cliscale-operator".into()),
        (COMPONENT_LABEL.into(), "runner".into()),
        (SESSION_LABEL.into(), session.into()),
    ])
}

/// How the session's runner is launched in its pod. Pure.
pub fn runner_launch(session: &CommandSession, config: &OperatorConfig) -> RunnerLaunch {
    RunnerLaunch {
        listen: Some(format!("0.0.0.0:{RUNNER_PORT}")),
        jwks_file: Some(format!("{JWKS_DIR}/jwks.json")),
        work_dir: Some("/workspace/session".into()),
        timeout: timeout_of(session, config).map(|t| Duration::from_secs(t.into())),
        termination_log: Some(launch::KUBERNETES_TERMINATION_LOG.into()),
        output_url: config.output_url.clone(),
        ..RunnerLaunch::for_session(&session.name_any(), &session.spec.session)
    }
}

/// The session's timeout, or the operator's default.
fn timeout_of(session: &CommandSession, config: &OperatorConfig) -> Option<u32> {
    session.spec.session.timeout_seconds.or(config.default_timeout_seconds)
}

/// The runner container's environment: the launch settings, then the user's variables under
/// the command prefix, so they reach the command and never the runner's own process (a request
/// naming `LD_PRELOAD` changes nothing of the runner's). Secrets arrive only as Secret key
/// references.
fn container_env(session: &CommandSession, config: &OperatorConfig) -> Vec<EnvVar> {
    let spec = &session.spec.session;
    let mut env_vars: Vec<EnvVar> =
        runner_launch(session, config).env().into_iter().map(|(k, v)| env(k, v)).collect();
    env_vars.push(env("HOME", "/home/runner"));
    let ours = |name: &str| name.starts_with(RESERVED_ENV_PREFIX);
    env_vars.extend(
        spec.env
            .iter()
            .filter(|e| !ours(&e.name))
            .map(|e| env(&launch::command_env_name(&e.name), e.value.clone())),
    );
    env_vars.extend(spec.env_from_secrets.iter().filter(|e| !ours(&e.name)).map(|e| EnvVar {
        name: launch::command_env_name(&e.name),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: e.secret_name.clone(),
                key: e.key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }));
    env_vars
}

/// The Job for `session`.
/// The runner container: locked down, its launch in the environment, its final event where
/// the kubelet reads termination messages. Pure.
fn runner_container(session: &CommandSession, config: &OperatorConfig) -> Container {
    let spec = &session.spec;
    let env_vars = container_env(session, config);
    let mount = |volume: &str, path: &str, read_only: bool| VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    };
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("terminal".into()),
            ..Default::default()
        }),
        period_seconds: Some(2),
        ..Default::default()
    };
    Container {
        name: "runner".into(),
        image: Some(spec.image.clone().unwrap_or_else(|| config.runner_image.clone())),
        env: Some(env_vars),
        ports: Some(vec![ContainerPort {
            name: Some("terminal".into()),
            container_port: RUNNER_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(probe("/readyz")),
        // The runner writes its final event here; the kubelet copies it into the pod's status.
        termination_message_path: Some(launch::KUBERNETES_TERMINATION_LOG.into()),
        termination_message_policy: Some("File".into()),
        liveness_probe: Some(Probe {
            period_seconds: Some(10),
            failure_threshold: Some(6),
            ..probe("/healthz")
        }),
        resources: Some(runner_resources(session, config)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(RUNNER_UID),
            run_as_group: Some(RUNNER_UID),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount("workspace", "/workspace", false),
            mount("tmp", "/tmp", false),
            mount("home", "/home/runner", false),
            mount("jwks", JWKS_DIR, true),
        ]),
        ..Default::default()
    }
}

/// The runner pod: one container, no service account token, writable scratch volumes only,
/// the JWKS mounted read-only, and the session's placement knobs. Pure.
fn runner_pod(session: &CommandSession, config: &OperatorConfig) -> PodSpec {
    let spec = &session.spec;
    let empty = |name: &str, limit: &Quantity| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(limit.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    PodSpec {
        containers: vec![runner_container(session, config)],
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUNNER_UID),
            run_as_group: Some(RUNNER_UID),
            fs_group: Some(RUNNER_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volumes: Some(vec![
            empty("workspace", &config.workspace_size_limit),
            empty("tmp", &config.scratch_size_limit),
            empty("home", &config.scratch_size_limit),
            Volume {
                name: "jwks".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config.jwks_config_map.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        priority_class_name: spec.priority_class_name.clone(),
        termination_grace_period_seconds: Some(15),
        image_pull_secrets: (!config.image_pull_secrets.is_empty()).then(|| {
            config
                .image_pull_secrets
                .iter()
                .map(|name| LocalObjectReference { name: name.clone() })
                .collect()
        }),
        ..Default::default()
    }
}

/// Adds one variable to the runner container's environment: the credentials the reconciler
/// signs per session, which are not part of the pure desired Job. Pure.
fn with_runner_env(mut job: Job, name: &str, value: String) -> Job {
    let containers =
        job.spec.as_mut().and_then(|s| s.template.spec.as_mut()).map(|p| p.containers.iter_mut());
    for container in containers.into_iter().flatten().filter(|c| c.name == "runner") {
        container.env.get_or_insert_with(Vec::new).push(env(name, value.clone()));
    }
    job
}

/// Gives the Job's runner the credential that appends to its session's stored output. Pure.
pub fn with_output_token(job: Job, token: String) -> Job {
    with_runner_env(job, launch::OUTPUT_TOKEN, token)
}

/// Gives the Job's runner the key that seals its final event. Pure.
pub fn with_status_key(job: Job, key: &cliscale_core::event::StatusKey) -> Job {
    with_runner_env(job, launch::STATUS_KEY, cliscale_core::event::encode_status_key(key))
}

/// The Job for `session`. Pure.
pub fn desired_job(session: &CommandSession, config: &OperatorConfig) -> Job {
    let name = session.name_any();
    let spec = &session.spec;
    let pod = runner_pod(session, config);
    let linger = i64::from(spec.session.linger_seconds);
    let deadline = timeout_of(session, config).map(|t| i64::from(t) + linger + DEADLINE_SLACK_SECS);
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&name)),
            namespace: session.namespace(),
            labels: Some(labels(&name)),
            annotations: Some(BTreeMap::from([(
                SPEC_HASH_ANNOTATION.to_string(),
                spec_hash(session),
            )])),
            owner_references: session.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: deadline,
            ttl_seconds_after_finished: Some(spec.session.ttl_seconds_after_finished as i32),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(&name)), ..Default::default() }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cliscale_core::spec::CodeSpec;
    use cliscale_testkit::fixtures;

    fn session(name: &str, spec: serde_json::Value) -> CommandSession {
        fixtures::session(name).namespace("team-a").spec(spec).build()
    }

    #[test]
    fn secret_variables_are_masked_and_the_output_credential_reaches_the_runner_only() {
        let cs = session(
            "s1",
            serde_json::json!({
                "command": "make",
                "env": [{"name": "MODE", "value": "ci"}, {"name": "PW", "value": "x", "secret": true}],
                "envFromSecrets": [{"name": "TOKEN", "secretName": "api", "key": "token"}]
            }),
        );
        let config =
            OperatorConfig { output_url: Some("http://api:8080".into()), ..Default::default() };
        let job = with_output_token(desired_job(&cs, &config), "the-credential".into());
        let pod = job.spec.unwrap().template.spec.unwrap();
        let env = pod.containers[0].env.clone().unwrap();
        let value = |name: &str| env.iter().find(|e| e.name == name).and_then(|e| e.value.clone());
        assert_eq!(value(launch::MASK_ENV).as_deref(), Some("PW,TOKEN"));
        assert_eq!(value(launch::OUTPUT_URL).as_deref(), Some("http://api:8080"));
        assert_eq!(value(launch::OUTPUT_TOKEN).as_deref(), Some("the-credential"));
        // Without a URL nothing is stored, and no credential is given.
        let plain = desired_job(&cs, &OperatorConfig::default());
        let env = plain.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap();
        assert!(!env.iter().any(|e| e.name == launch::OUTPUT_URL));
    }

    #[test]
    fn the_runner_pod_is_locked_down() {
        let job = desired_job(
            &session("s1", serde_json::json!({"command": "npm test"})),
            &OperatorConfig::default(),
        );
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.ttl_seconds_after_finished, Some(3600));
        assert_eq!(spec.active_deadline_seconds, None, "no timeout, no backstop deadline");
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let mounts: Vec<_> =
            c.volume_mounts.as_ref().unwrap().iter().map(|m| m.mount_path.as_str()).collect();
        assert!(
            mounts.contains(&"/workspace")
                && mounts.contains(&"/tmp")
                && mounts.contains(&"/etc/cliscale/jwks")
        );
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("CommandSession", Some(true)));
        assert_eq!(job.metadata.labels.as_ref().unwrap()[COMPONENT_LABEL], "runner");
        assert_eq!(pod_labels(&job)[SESSION_LABEL], "s1");
    }

    #[test]
    fn scratch_space_is_bounded_and_images_pull_with_the_configured_secrets() {
        let config = OperatorConfig {
            image_pull_secrets: vec!["registry".into()],
            ..OperatorConfig::default()
        };
        let cs = session(
            "s1",
            serde_json::json!({"command": "make",
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}),
        );
        let job = desired_job(&cs, &config);
        let pod = job.spec.unwrap().template.spec.unwrap();
        let secrets: Vec<_> = pod.image_pull_secrets.unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(secrets, ["registry"]);
        let limit = |name: &str| {
            let volume = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == name).unwrap();
            volume.empty_dir.as_ref().unwrap().size_limit.clone().unwrap().0
        };
        assert_eq!(
            (limit("workspace"), limit("tmp"), limit("home")),
            ("8Gi".into(), "1Gi".into(), "1Gi".into())
        );
        // The session's own limits keep the default ephemeral storage they do not name.
        let resources = pod.containers[0].resources.clone().unwrap();
        let limits = resources.limits.unwrap();
        assert_eq!(limits["cpu"].0, "1");
        assert_eq!(limits[EPHEMERAL_STORAGE].0, "10Gi");
        assert_eq!(resources.requests.unwrap()[EPHEMERAL_STORAGE].0, "1Gi");
    }

    fn pod_labels(job: &Job) -> BTreeMap<String, String> {
        job.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap()
    }

    fn env_of(job: &Job) -> Vec<EnvVar> {
        job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
            .env
            .clone()
            .unwrap()
    }

    #[test]
    fn secrets_arrive_only_as_secret_key_refs() {
        let mut cs = session(
            "s1",
            serde_json::json!({"command": "agent", "prompt": "fix it", "timeoutSeconds": 600,
            "env": [{"name": "MODE", "value": "ci"}, {"name": "CLISCALE_RUNNER_COMMAND", "value": "evil"}],
            "envFromSecrets": [{"name": "API_TOKEN", "secretName": "agent-keys", "key": "token"}]}),
        );
        cs.spec.session.code = Some(CodeSpec {
            url: "https://github.com/o/r/tree/main/app".into(),
            checksum_sha256: None,
        });
        let job = desired_job(&cs, &OperatorConfig::default());
        let env = env_of(&job);
        let secret = env.iter().find(|e| e.name == "CLISCALE_ENV_API_TOKEN").unwrap();
        assert!(
            !env.iter().any(|e| e.name == "API_TOKEN" || e.name == "MODE"),
            "only under the prefix"
        );
        let mode = env.iter().find(|e| e.name == "CLISCALE_ENV_MODE").unwrap();
        assert_eq!(mode.value.as_deref(), Some("ci"));
        assert!(secret.value.is_none());
        let key = secret.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!((key.name.as_str(), key.key.as_str()), ("agent-keys", "token"));
        let commands: Vec<_> = env.iter().filter(|e| e.name == "CLISCALE_RUNNER_COMMAND").collect();
        assert_eq!(commands.len(), 1, "a user variable cannot override the runner's own");
        assert_eq!(commands[0].value.as_deref(), Some("agent"));
        assert!(env.iter().any(|e| e.name == "CLISCALE_RUNNER_PROMPT" && e.value.as_deref() == Some("fix it")));
        let timeout = env.iter().find(|e| e.name == launch::TIMEOUT).unwrap();
        let timeout = humantime::parse_duration(timeout.value.as_deref().unwrap()).unwrap();
        assert_eq!(timeout, Duration::from_secs(600));
        let message_path = env.iter().find(|e| e.name == launch::TERMINATION_LOG).unwrap();
        assert_eq!(message_path.value.as_deref(), Some(launch::KUBERNETES_TERMINATION_LOG));
        assert_eq!(job.spec.unwrap().active_deadline_seconds, Some(600 + 30 + DEADLINE_SLACK_SECS));
    }

    #[test]
    fn job_names_fit_and_are_stable() {
        assert_eq!(job_name("short"), "cs-short");
        let long = "x".repeat(80);
        let name = job_name(&long);
        assert!(name.len() <= 63, "{name}");
        assert_eq!(name, job_name(&long));
        assert_ne!(name, job_name(&"y".repeat(80)));
    }

    #[test]
    fn the_spec_hash_follows_the_spec() {
        let a = session("s1", serde_json::json!({"command": "a"}));
        let b = session("s1", serde_json::json!({"command": "b"}));
        assert_eq!(spec_hash(&a), spec_hash(&a.clone()));
        assert_ne!(spec_hash(&a), spec_hash(&b));
    }
}
