//! The REST API on a cluster: sessions become CommandSessions (server-side apply, returning at
//! once), and the API's store is kept as a projection of the CommandSessions in the sessions
//! namespace, so sessions made with `kubectl apply` are listed and get tokens too.
//! The translations are pure functions; the executor and the mirror only do the I/O.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;

use cliscale_api::executor::{BoxFuture, Definition, DefinitionKind, Executor};
use cliscale_api::model::{SessionRecord, SessionSpec};
use cliscale_api::store::{StatusUpdate, Store, now};
use cliscale_api::{ApiError, Result as ApiResult};
use cliscale_core::{SessionPhase, TerminalReason};
use futures_util::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};

use crate::desired::CANCEL_ANNOTATION;
use cliscale_crd::{
    CommandSchedule, CommandSession, CommandSessionSpec, CommandSessionStatus, CommandTemplate,
};

/// Which API key created a session; absent on sessions made with kubectl.
pub const OWNER_ANNOTATION: &str = "cliscale.dev/owner";
/// Owner recorded for sessions made outside the API (visible to admins).
pub const KUBECTL_OWNER: &str = cliscale_api::store::CLUSTER_OWNER;
/// The API's field manager (the reconciler has its own).
pub const API_FIELD_MANAGER: &str = "cliscale-api";

/// The CommandSession for a session created through the API. Pure.
pub fn resource_for(record: &SessionRecord, namespace: &str) -> CommandSession {
    let mut cs = CommandSession::new(&record.id, CommandSessionSpec::of(record.spec.clone()));
    cs.metadata.namespace = Some(namespace.to_owned());
    cs.metadata.annotations =
        Some(BTreeMap::from([(OWNER_ANNOTATION.into(), record.owner.clone())]));
    cs
}

/// The API's view of a CommandSession's spec: all of it but the pod placement knobs. Pure.
pub fn spec_from_resource(spec: &CommandSessionSpec) -> SessionSpec {
    spec.session.clone()
}

/// The store update that mirrors a CommandSession's status. Pure.
pub fn status_update(status: Option<&CommandSessionStatus>) -> StatusUpdate {
    let Some(status) = status else {
        return StatusUpdate { phase: Some(SessionPhase::Pending), ..Default::default() };
    };
    StatusUpdate {
        phase: Some(status.phase.unwrap_or(SessionPhase::Pending)),
        exit_code: status.exit_code.map(i64::from),
        reason: status.reason,
        message: status.message.clone(),
        runner_addr: status.runner_address.clone(),
    }
}

fn kube_failed(what: &str, e: kube::Error) -> ApiError {
    ApiError::Internal(format!("{what}: the Kubernetes API failed: {e}"))
}

/// Runs API sessions as CommandSessions in one namespace.
pub struct ClusterExecutor {
    pub sessions: Api<CommandSession>,
    pub namespace: String,
    templates: Api<CommandTemplate>,
    schedules: Api<CommandSchedule>,
}

impl ClusterExecutor {
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            sessions: Api::namespaced(client.clone(), namespace),
            namespace: namespace.to_owned(),
            templates: Api::namespaced(client.clone(), namespace),
            schedules: Api::namespaced(client, namespace),
        }
    }
}

impl Executor for ClusterExecutor {
    fn start(&self, session: SessionRecord) -> BoxFuture<'_, ApiResult<()>> {
        Box::pin(async move {
            let cs = resource_for(&session, &self.namespace);
            let params = PatchParams::apply(API_FIELD_MANAGER);
            self.sessions
                .patch(&session.id, &params, &Patch::Apply(&cs))
                .await
                .map_err(|e| kube_failed("creating the CommandSession", e))?;
            Ok(())
        })
    }

    fn cancel(&self, session_id: &str) -> BoxFuture<'_, ApiResult<()>> {
        let id = session_id.to_owned();
        Box::pin(async move {
            let patch = serde_json::json!({
                "metadata": { "annotations": { CANCEL_ANNOTATION: now().to_string() } }
            });
            match self.sessions.patch(&id, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => Ok(()),
                // Already gone: the mirror records how it ended.
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(kube_failed("cancelling the CommandSession", e)),
            }
        })
    }

    /// Applies the CommandTemplate or CommandSchedule of a definition the API made or changed.
    fn publish<'a>(&'a self, definition: Definition<'a>) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let params = PatchParams::apply(API_FIELD_MANAGER).force();
            let done = match definition {
                Definition::Template(spec, owner) => {
                    let resource = crate::definitions::template_resource(spec, owner);
                    self.templates
                        .patch(&spec.name, &params, &Patch::Apply(&resource))
                        .await
                        .map(drop)
                }
                Definition::Schedule(spec, owner) => {
                    let resource = crate::definitions::schedule_resource(spec, owner);
                    self.schedules
                        .patch(&spec.name, &params, &Patch::Apply(&resource))
                        .await
                        .map(drop)
                }
            };
            done.map_err(|e| kube_failed("applying a definition", e))
        })
    }

    fn withdraw<'a>(&'a self, kind: DefinitionKind, name: &'a str) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let done = match kind {
                DefinitionKind::Template => {
                    self.templates.delete(name, &Default::default()).await.map(drop)
                }
                DefinitionKind::Schedule => {
                    self.schedules.delete(name, &Default::default()).await.map(drop)
                }
            };
            match done {
                Ok(()) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(kube_failed("deleting a definition", e)),
            }
        })
    }

    /// Deletes the CommandSession; the mirror then deletes the row, as for any deletion.
    fn discard<'a>(&'a self, _: &'a Store, session_id: &'a str) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            match self.sessions.delete(session_id, &Default::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(kube_failed("deleting the CommandSession", e)),
            }
        })
    }
}

/// What one replica's mirror last wrote per CommandSession, so that a watch event which changes
/// nothing the store keeps (a label or annotation edit, a resync) costs no SQL.
pub type Mirrored = HashMap<String, StatusUpdate>;

/// Brings the store's row for `cs` up to date: made if absent, status written if it changed
/// since this mirror last wrote it.
pub async fn mirror_one(
    store: &Store,
    cs: &CommandSession,
    mirrored: &mut Mirrored,
) -> ApiResult<()> {
    let id = cs.name_any();
    let update = status_update(cs.status.as_ref());
    match mirrored.get(&id) {
        Some(last) if *last == update => return Ok(()),
        Some(_) => {}
        None => {
            let owner = cs
                .annotations()
                .get(OWNER_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| KUBECTL_OWNER.into());
            // Every API replica mirrors; the insert is idempotent so they never collide.
            if store.insert_session_if_absent(&id, &owner, &spec_from_resource(&cs.spec)).await? {
                store
                    .append_event(&id, "created", &format!("as CommandSession by {owner}"))
                    .await?;
            }
        }
    }
    store.update_status(&id, &update).await?;
    mirrored.insert(id, update);
    Ok(())
}

/// Records that a CommandSession was deleted: an unfinished session was cancelled; a finished
/// one reached its TTL, so its row goes too.
pub async fn mirror_deleted(store: &Store, name: &str) -> ApiResult<()> {
    let Some(row) = store.get_session(name).await? else { return Ok(()) };
    if row.phase.is_finished() {
        store.delete_session(name).await
    } else {
        let update = StatusUpdate {
            phase: Some(SessionPhase::Cancelled),
            reason: Some(TerminalReason::DeletedByUser),
            message: Some("the CommandSession was deleted".into()),
            ..Default::default()
        };
        store.update_status(name, &update).await.map(|_| ())
    }
}

/// How old a store row must be before a relist that misses its CommandSession marks it `Lost`:
/// a row the API made moments ago may not have its CommandSession listed yet.
pub const VANISHED_GRACE_SECS: i64 = 30;

/// The resources a watch's (re)list returned, kept up to date by the events after it. A relist
/// after an expired watch replays no deletions, so the rows whose resource is not here are the
/// ones deleted while no watch was open.
#[derive(Debug, Default)]
pub struct Relist {
    listed: HashSet<String>,
    started: i64,
    complete: bool,
}

impl Relist {
    /// A list begins (at `now`, in Unix seconds).
    pub fn begin(&mut self, now: i64) {
        self.listed.clear();
        self.started = now;
        self.complete = false;
    }

    pub fn saw(&mut self, name: String) {
        self.listed.insert(name);
    }

    pub fn gone(&mut self, name: &str) {
        self.listed.remove(name);
    }

    /// The list has been read whole: until then, every row would look missing.
    pub fn done(&mut self) {
        self.complete = true;
    }

    pub fn complete(&self) -> bool {
        self.complete
    }

    /// Of `rows` (name, made at), the ones the list did not return, made more than
    /// `grace_secs` before it began: a row made moments ago may not have its resource yet.
    /// Pure.
    pub fn missing<'a>(
        &self,
        rows: impl IntoIterator<Item = (&'a str, i64)>,
        grace_secs: i64,
    ) -> Vec<&'a str> {
        rows.into_iter()
            .filter(|(name, made)| {
                !self.listed.contains(*name) && *made <= self.started - grace_secs
            })
            .map(|(name, _)| name)
            .collect()
    }
}

/// How often the mirror deletes the rows past their TTL whose CommandSession is gone.
const EXPIRED_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// Keeps the store a projection of the CommandSessions in `namespace` until `shutdown`.
/// After every (re)list, unfinished rows whose CommandSession is gone become `Lost`. After it
/// and every few minutes, rows past their TTL whose CommandSession is gone (deleted while no
/// watch saw it, or never made) are deleted with their stored output, as the operator's
/// deletion at the TTL would have had them.
pub async fn run_mirror(
    client: Client,
    namespace: String,
    store: Store,
    shutdown: impl Future<Output = ()>,
) {
    run_mirror_with_grace(client, namespace, store, VANISHED_GRACE_SECS, shutdown).await
}

/// [`run_mirror`] with the grace of [`VANISHED_GRACE_SECS`] chosen (tests pass -1, so rows
/// made in the same second as the list count too).
pub async fn run_mirror_with_grace(
    client: Client,
    namespace: String,
    store: Store,
    grace_secs: i64,
    shutdown: impl Future<Output = ()>,
) {
    let api: Api<CommandSession> = Api::namespaced(client, &namespace);
    // Backoff on watch errors (API server restarts, expired resource versions) is the watcher's.
    let mut events =
        std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
    let mut shutdown = std::pin::pin!(shutdown);
    let mut relist = Relist::default();
    let mut mirrored = Mirrored::new();
    let mut sweep = tokio::time::interval(EXPIRED_SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            _ = &mut shutdown => return,
            _ = sweep.tick(), if relist.complete() => {
                if let Err(error) = sweep_expired(&store, &relist, grace_secs).await {
                    tracing::warn!(%error, "could not delete expired sessions; retrying later");
                }
                continue;
            }
            event = events.next() => event,
        };
        let result = match event {
            None => return,
            Some(Err(error)) => {
                tracing::warn!(%error, "watching CommandSessions failed; retrying");
                Ok(())
            }
            Some(Ok(Event::Init)) => {
                // A relist checks every row again, made and written afresh.
                relist.begin(now());
                mirrored.clear();
                Ok(())
            }
            Some(Ok(Event::InitApply(cs))) => {
                relist.saw(cs.name_any());
                mirror_one(&store, &cs, &mut mirrored).await
            }
            Some(Ok(Event::InitDone)) => {
                relist.done();
                mark_vanished(&store, &relist, grace_secs).await
            }
            Some(Ok(Event::Apply(cs))) => {
                relist.saw(cs.name_any());
                mirror_one(&store, &cs, &mut mirrored).await
            }
            Some(Ok(Event::Delete(cs))) => {
                mirrored.remove(&cs.name_any());
                relist.gone(&cs.name_any());
                mirror_deleted(&store, &cs.name_any()).await
            }
        };
        if let Err(error) = result {
            tracing::warn!(%error, "could not mirror a CommandSession into the store");
        }
    }
}

/// After a list: the unfinished rows whose CommandSession it did not return are marked `Lost`
/// (as [`mirror_deleted`] marks one `Cancelled`), and the rows past their TTL whose
/// CommandSession is gone are deleted.
async fn mark_vanished(store: &Store, relist: &Relist, grace_secs: i64) -> ApiResult<()> {
    let rows = store.unfinished_sessions().await?;
    for id in relist.missing(rows.iter().map(|r| (r.id.as_str(), r.created_at)), grace_secs) {
        let update = StatusUpdate {
            phase: Some(SessionPhase::Lost),
            reason: Some(TerminalReason::RunnerLost),
            message: Some("its CommandSession is gone".into()),
            ..Default::default()
        };
        store.update_status(id, &update).await?;
    }
    sweep_expired(store, relist, grace_secs).await
}

/// Deletes the rows past their TTL whose CommandSession is gone (one deleted while its session
/// had not finished leaves its row, `Cancelled` or `Lost`, to be shown until then).
async fn sweep_expired(store: &Store, relist: &Relist, grace_secs: i64) -> ApiResult<()> {
    let expired = store.expired_sessions(now()).await?;
    for id in relist.missing(expired.iter().map(|r| (r.id.as_str(), r.created_at)), grace_secs) {
        tracing::info!(session = id, "past its TTL without a CommandSession; deleting it");
        store.delete_session(id).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relist_misses_only_rows_made_before_it_began() {
        let mut relist = Relist::default();
        relist.begin(1_000);
        relist.saw("listed".into());
        let rows =
            [("listed", 10), ("deleted", 10), ("made-at-the-grace", 970), ("just-made", 990)];
        assert_eq!(relist.missing(rows, 30), ["deleted", "made-at-the-grace"]);
        // A new list forgets the old one's names.
        relist.begin(2_000);
        assert_eq!(relist.missing([("listed", 10)], 30), ["listed"]);
    }
    use cliscale_api::model::{CreateSessionRequest, SpecDefaults, validate_create};

    fn record() -> SessionRecord {
        let spec = validate_create(
            CreateSessionRequest {
                command: "claude".into(),
                code_url: Some("https://github.com/o/r/tree/main/app".into()),
                env: Some(BTreeMap::from([("MODE".into(), "ci".into())])),
                timeout_seconds: Some(600),
                ..Default::default()
            },
            SpecDefaults { ttl_secs: 3600, linger_secs: 45 },
        )
        .unwrap();
        SessionRecord {
            id: "0b6f0f5e-3c1a-4f7e-9a51-2f3b1d2c4e5f".into(),
            owner: "key1".into(),
            spec,
            phase: SessionPhase::Pending,
            exit_code: None,
            reason: None,
            message: None,
            runner_addr: None,
            created_at: 1,
            started_at: None,
            finished_at: None,
            updated_at: 1,
            origin: Default::default(),
        }
    }

    #[test]
    fn an_api_session_round_trips_through_its_command_session() {
        let r = record();
        let cs = resource_for(&r, "sessions");
        assert_eq!(cs.spec.session.linger_seconds, 45);
        assert_eq!(cs.name_any(), r.id);
        assert_eq!(cs.namespace().as_deref(), Some("sessions"));
        assert_eq!(cs.annotations().get(OWNER_ANNOTATION).map(String::as_str), Some("key1"));
        assert_eq!(cs.spec.session.timeout_seconds, Some(600));
        assert_eq!(spec_from_resource(&cs.spec), r.spec);
    }

    #[test]
    fn a_status_mirrors_phase_reason_exit_code_and_address() {
        assert_eq!(status_update(None).phase, Some(SessionPhase::Pending));
        let status = CommandSessionStatus {
            phase: Some(SessionPhase::Failed),
            reason: Some(TerminalReason::Exited),
            exit_code: Some(3),
            runner_address: Some("10.0.0.7:7681".into()),
            ..Default::default()
        };
        let u = status_update(Some(&status));
        assert_eq!(
            (u.phase, u.reason, u.exit_code, u.runner_addr.as_deref()),
            (
                Some(SessionPhase::Failed),
                Some(TerminalReason::Exited),
                Some(3),
                Some("10.0.0.7:7681")
            )
        );
    }

    /// A session made with kubectl keeps its Secret references in the store's row: nothing of
    /// the spec the API does not set itself is dropped on the way.
    #[tokio::test]
    async fn secret_references_survive_the_mirror() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("mirror.db").display());
        let store = Store::connect(&url).await.unwrap();
        let cs: CommandSession = serde_json::from_value(serde_json::json!({
            "apiVersion": "cliscale.dev/v1alpha1", "kind": "CommandSession",
            "metadata": { "name": "by-kubectl", "namespace": "sessions" },
            "spec": { "command": "deploy", "scrollbackLines": 5000, "lingerSeconds": 7,
                      "envFromSecrets": [{ "name": "TOKEN", "secretName": "deploy-keys", "key": "token" }] }
        }))
        .unwrap();
        mirror_one(&store, &cs, &mut Mirrored::new()).await.unwrap();
        let row = store.get_session("by-kubectl").await.unwrap().unwrap();
        assert_eq!(row.spec, cs.spec.session);
        let secret = &row.spec.env_from_secrets[0];
        assert_eq!(
            (secret.name.as_str(), secret.secret_name.as_str(), secret.key.as_str()),
            ("TOKEN", "deploy-keys", "token")
        );
        assert_eq!((row.spec.scrollback_lines, row.spec.linger_seconds), (5000, 7));
    }

    #[tokio::test]
    async fn the_mirror_makes_a_row_once_and_writes_a_status_only_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("mirror.db").display());
        let store = Store::connect(&url).await.unwrap();
        let mut cs = resource_for(&record(), "sessions");
        let id = cs.name_any();
        let mut mirrored = Mirrored::new();
        mirror_one(&store, &cs, &mut mirrored).await.unwrap();
        let row = store.get_session(&id).await.unwrap().unwrap();
        assert_eq!((row.phase, row.owner.as_str()), (SessionPhase::Pending, "key1"));

        // The row changes behind the mirror's back; an event that changes no status (here a
        // label edit) must not touch the store, so the change stays.
        let running = StatusUpdate { phase: Some(SessionPhase::Running), ..Default::default() };
        store.update_status(&id, &running).await.unwrap();
        cs.metadata.labels = Some(BTreeMap::from([("team".into(), "a".into())]));
        mirror_one(&store, &cs, &mut mirrored).await.unwrap();
        assert_eq!(store.get_session(&id).await.unwrap().unwrap().phase, SessionPhase::Running);

        // A status change is written.
        cs.status = Some(CommandSessionStatus {
            phase: Some(SessionPhase::Failed),
            reason: Some(TerminalReason::Exited),
            exit_code: Some(3),
            ..Default::default()
        });
        mirror_one(&store, &cs, &mut mirrored).await.unwrap();
        let row = store.get_session(&id).await.unwrap().unwrap();
        assert_eq!((row.phase, row.exit_code), (SessionPhase::Failed, Some(3)));

        // A relist starts from an empty cache: everything is checked again, but the row is not
        // made twice.
        mirror_one(&store, &cs, &mut Mirrored::new()).await.unwrap();
        let events = store.events(&id).await.unwrap();
        assert_eq!(events.iter().filter(|(_, kind, _)| kind == "created").count(), 1);
    }
}
