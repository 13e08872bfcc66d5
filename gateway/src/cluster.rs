//! Finding runners on a cluster: a watch-backed cache (a kube-runtime reflector) of the
//! CommandSessions in the sessions namespace. A connection looks its session up in memory and,
//! while the runner starts, waits for the cache to change; no API call per connection.

use std::time::Duration;

use cliscale_crd::CommandSession;
use cliscale_crd::condition::READY;
use futures_util::StreamExt;
// kube calls its watch-fed cache a Store; here that name belongs to the SQL store.
use cliscale_core::protocol::SessionStatus;
use kube::runtime::reflector::{self, ObjectRef, Store as Cache};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::{BoxFuture, ResolveError, RunnerResolver};

/// What a CommandSession says about its runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerLookup {
    /// Running, Ready, at this `host:port`.
    Ready(String),
    /// Not (yet) reachable: pending, starting, or not ready.
    Starting,
    /// Finished: its runner is gone or going.
    Gone,
}

/// Pure: the runner of a session as its status describes it.
pub fn runner_of(session: &CommandSession) -> RunnerLookup {
    let Some(status) = session.status.as_ref() else { return RunnerLookup::Starting };
    if status.phase.is_some_and(|p| p.is_finished()) {
        return RunnerLookup::Gone;
    }
    let ready = status.conditions.iter().any(|c| c.type_ == READY && c.status == "True");
    match (&status.runner_address, ready) {
        (Some(addr), true) => RunnerLookup::Ready(addr.clone()),
        _ => RunnerLookup::Starting,
    }
}

/// How long a connection waits for a session the cache has not seen yet (the API creates the
/// CommandSession before handing out its token, so it appears within a watch round-trip).
const UNSEEN_WAIT: Duration = Duration::from_secs(5);

pub struct ReflectorResolver {
    cache: Cache<CommandSession>,
    changed: watch::Receiver<u64>,
    namespace: String,
}

impl ReflectorResolver {
    /// Starts the watch of `namespace`'s CommandSessions in the background.
    pub fn spawn(client: Client, namespace: &str) -> Self {
        let api: Api<CommandSession> = Api::namespaced(client, namespace);
        let (cache, writer) = reflector::store();
        let (tx, changed) = watch::channel(0u64);
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .touched_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(_) => {
                        tx.send_modify(|n| *n += 1);
                    }
                    Err(error) => tracing::warn!(%error, "watching CommandSessions failed"),
                }
            }
        });
        Self { cache, changed, namespace: namespace.to_owned() }
    }

    /// Waits until the first list has filled the cache.
    pub async fn ready(&self) -> bool {
        self.cache.wait_until_ready().await.is_ok()
    }
}

impl RunnerResolver for ReflectorResolver {
    fn ended(&self, session_id: &str) -> BoxFuture<'_, Option<SessionStatus>> {
        let key = ObjectRef::<CommandSession>::new(session_id).within(&self.namespace);
        let found = self.cache.get(&key).and_then(|s| ended_status(&s));
        Box::pin(async move { found })
    }

    fn resolve(
        &self,
        session_id: &str,
        wait: Duration,
    ) -> BoxFuture<'_, Result<String, ResolveError>> {
        let key = ObjectRef::<CommandSession>::new(session_id).within(&self.namespace);
        let mut changed = self.changed.clone();
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let mut seen = false;
            loop {
                match self.cache.get(&key).as_deref().map(runner_of) {
                    Some(RunnerLookup::Ready(addr)) => return Ok(addr),
                    Some(RunnerLookup::Gone) => return Err(ResolveError::Gone),
                    Some(RunnerLookup::Starting) => seen = true,
                    None if seen => return Err(ResolveError::Gone),
                    None => {}
                }
                let limit = if seen { wait } else { wait.min(UNSEEN_WAIT) };
                let deadline = started + limit;
                if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
                    return Err(if seen {
                        ResolveError::NotReady
                    } else {
                        ResolveError::UnknownSession
                    });
                }
            }
        })
    }
}

/// How a finished session ended, as its CommandSession's status says. Pure.
pub fn ended_status(session: &CommandSession) -> Option<SessionStatus> {
    let status = session.status.as_ref()?;
    let phase = status.phase.filter(|p| p.is_finished())?;
    Some(SessionStatus {
        phase,
        exit_code: status.exit_code,
        reason: status.reason,
        message: status.message.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cliscale_core::SessionPhase;
    use cliscale_crd::CommandSessionStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn session(status: Option<CommandSessionStatus>) -> CommandSession {
        let mut cs = CommandSession::new(
            "s",
            serde_json::from_value(serde_json::json!({"command": "bash"})).unwrap(),
        );
        cs.status = status;
        cs
    }

    fn ready(ok: bool) -> Condition {
        Condition {
            type_: READY.into(),
            status: if ok { "True" } else { "False" }.into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn only_a_ready_running_session_with_an_address_resolves() {
        assert_eq!(runner_of(&session(None)), RunnerLookup::Starting);
        let running = CommandSessionStatus {
            phase: Some(SessionPhase::Running),
            runner_address: Some("10.0.0.7:7681".into()),
            conditions: vec![ready(true)],
            ..Default::default()
        };
        assert_eq!(
            runner_of(&session(Some(running.clone()))),
            RunnerLookup::Ready("10.0.0.7:7681".into())
        );
        let not_ready = CommandSessionStatus { conditions: vec![ready(false)], ..running.clone() };
        assert_eq!(runner_of(&session(Some(not_ready))), RunnerLookup::Starting);
        let no_addr = CommandSessionStatus { runner_address: None, ..running.clone() };
        assert_eq!(runner_of(&session(Some(no_addr))), RunnerLookup::Starting);
        let done = CommandSessionStatus { phase: Some(SessionPhase::Succeeded), ..running };
        assert_eq!(runner_of(&session(Some(done))), RunnerLookup::Gone);
    }
}
