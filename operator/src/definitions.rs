//! Templates and schedules on a cluster: the API applies a CommandTemplate or CommandSchedule
//! for each one it makes, and this mirror brings the ones applied with kubectl (or changed or
//! deleted there) into the API's store, where the scheduler and the routes read them. The
//! translations are pure; the mirror does the I/O.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cliscale_api::executor::DefinitionKind;
use cliscale_api::routes::ApiState;
use cliscale_api::store::{CLUSTER_OWNER, Store, now};
use cliscale_api::templates::template_problem;
use cliscale_api::{ApiError, Result as ApiResult};
use cliscale_core::rest::{ScheduleSpec, ScheduleStatus, TemplateSpec};
use cliscale_core::schedule::Cadence;
use cliscale_crd::{CommandSchedule, CommandScheduleSpec, CommandTemplate, CommandTemplateSpec};
use futures_util::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};

use crate::cluster_api::{OWNER_ANNOTATION, Relist, VANISHED_GRACE_SECS};

fn owned(owner: &str) -> Option<BTreeMap<String, String>> {
    Some(BTreeMap::from([(OWNER_ANNOTATION.to_string(), owner.to_string())]))
}

/// The CommandTemplate of a template the API made. Pure.
pub fn template_resource(spec: &TemplateSpec, owner: &str) -> CommandTemplate {
    let mut resource =
        CommandTemplate::new(&spec.name, CommandTemplateSpec { template: spec.clone() });
    resource.metadata.annotations = owned(owner);
    resource
}

/// The CommandSchedule of a schedule the API made. Pure.
pub fn schedule_resource(spec: &ScheduleSpec, owner: &str) -> CommandSchedule {
    let mut resource =
        CommandSchedule::new(&spec.name, CommandScheduleSpec { schedule: spec.clone() });
    resource.metadata.annotations = owned(owner);
    resource
}

fn owner_of(annotations: &BTreeMap<String, String>) -> String {
    annotations.get(OWNER_ANNOTATION).cloned().unwrap_or_else(|| CLUSTER_OWNER.into())
}

/// A CommandTemplate as the store keeps it (its name the resource's), or why it cannot be.
/// Pure.
pub fn template_of(resource: &CommandTemplate) -> Result<String, String> {
    let mut spec = resource.spec.template.clone();
    spec.name = resource.name_any();
    if let Some(problem) = template_problem(&spec) {
        return Err(problem);
    }
    serde_json::to_string(&spec).map_err(|e| e.to_string())
}

/// A CommandSchedule as the store keeps it, or why it cannot be. Pure.
pub fn schedule_of(resource: &CommandSchedule) -> Result<String, String> {
    let mut spec = resource.spec.schedule.clone();
    spec.name = resource.name_any();
    Cadence::parse(&spec.cron, spec.time_zone.as_deref()).map_err(|e| e.to_string())?;
    serde_json::to_string(&spec).map_err(|e| e.to_string())
}

async fn sync_template(store: &Store, resource: &CommandTemplate) -> ApiResult<()> {
    let spec = template_of(resource).map_err(ApiError::Internal)?;
    store.sync_template(&resource.name_any(), &spec, &owner_of(resource.annotations())).await?;
    Ok(())
}

async fn sync_schedule(store: &Store, resource: &CommandSchedule) -> ApiResult<()> {
    let spec = schedule_of(resource).map_err(ApiError::Internal)?;
    store.sync_schedule(&resource.name_any(), &spec, &owner_of(resource.annotations())).await?;
    Ok(())
}

/// Mirrors the namespace's CommandTemplates and CommandSchedules into `store` until
/// `shutdown`. Every replica runs it; each write is a no-op when the row already matches.
/// After every (re)list, rows whose resource is gone are deleted, as a deletion seen live is.
pub async fn run_definition_mirror(
    client: Client,
    namespace: String,
    store: Store,
    shutdown: impl Future<Output = ()>,
) {
    run_definition_mirror_with_grace(client, namespace, store, VANISHED_GRACE_SECS, shutdown).await
}

/// [`run_definition_mirror`] with the grace of [`VANISHED_GRACE_SECS`] chosen (tests pass -1,
/// so rows made in the same second as the list count too).
pub async fn run_definition_mirror_with_grace(
    client: Client,
    namespace: String,
    store: Store,
    grace_secs: i64,
    shutdown: impl Future<Output = ()>,
) {
    enum Seen {
        Template(Box<Event<CommandTemplate>>),
        Schedule(Box<Event<CommandSchedule>>),
    }
    let templates: Api<CommandTemplate> = Api::namespaced(client.clone(), &namespace);
    let schedules: Api<CommandSchedule> = Api::namespaced(client, &namespace);
    let templates = watcher::watcher(templates, watcher::Config::default())
        .default_backoff()
        .map(|e| e.map(|e| Seen::Template(Box::new(e))));
    let schedules = watcher::watcher(schedules, watcher::Config::default())
        .default_backoff()
        .map(|e| e.map(|e| Seen::Schedule(Box::new(e))));
    let mut events = std::pin::pin!(futures_util::stream::select(templates, schedules));
    let mut shutdown = std::pin::pin!(shutdown);
    let (mut template_list, mut schedule_list) = (Relist::default(), Relist::default());
    loop {
        let event = tokio::select! {
            _ = &mut shutdown => return,
            event = events.next() => event,
        };
        let result = match event {
            None => return,
            Some(Err(error)) => {
                tracing::warn!(%error, "watching CommandTemplates or CommandSchedules failed; retrying");
                Ok(())
            }
            Some(Ok(Seen::Template(event))) => match step(*event, &mut template_list, now()) {
                Step::Sync(t) => sync_template(&store, &t).await,
                Step::Delete(name) => store.delete_template(&name).await.map(drop),
                Step::DeleteUnlisted => {
                    delete_unlisted(&store, DefinitionKind::Template, &template_list, grace_secs)
                        .await
                }
                Step::Nothing => Ok(()),
            },
            Some(Ok(Seen::Schedule(event))) => match step(*event, &mut schedule_list, now()) {
                Step::Sync(s) => sync_schedule(&store, &s).await,
                Step::Delete(name) => store.delete_schedule(&name).await.map(drop),
                Step::DeleteUnlisted => {
                    delete_unlisted(&store, DefinitionKind::Schedule, &schedule_list, grace_secs)
                        .await
                }
                Step::Nothing => Ok(()),
            },
        };
        if let Err(error) = result {
            tracing::warn!(%error, "could not mirror a CommandTemplate or CommandSchedule into the store");
        }
    }
}

/// What one watch event asks of the mirror, the list it belongs to recorded. Pure but for
/// that record.
enum Step<K> {
    Sync(K),
    Delete(String),
    /// A list is complete: the rows it did not return go.
    DeleteUnlisted,
    Nothing,
}

fn step<K: kube::Resource>(event: Event<K>, list: &mut Relist, now: i64) -> Step<K> {
    match event {
        Event::Init => {
            list.begin(now);
            Step::Nothing
        }
        Event::InitApply(resource) => {
            list.saw(resource.name_any());
            Step::Sync(resource)
        }
        Event::Apply(resource) => Step::Sync(resource),
        Event::Delete(resource) => Step::Delete(resource.name_any()),
        Event::InitDone => Step::DeleteUnlisted,
    }
}

/// Deletes the rows of `kind` whose resource `list` did not return.
async fn delete_unlisted(
    store: &Store,
    kind: DefinitionKind,
    list: &Relist,
    grace_secs: i64,
) -> ApiResult<()> {
    let made: Vec<(String, i64)> = match kind {
        DefinitionKind::Template => {
            store.templates().await?.into_iter().map(|r| (r.name, r.created_at)).collect()
        }
        DefinitionKind::Schedule => {
            store.schedules().await?.into_iter().map(|r| (r.name, r.created_at)).collect()
        }
    };
    for name in list.missing(made.iter().map(|(name, at)| (name.as_str(), *at)), grace_secs) {
        tracing::info!(name, ?kind, "its resource was deleted while no watch was open");
        match kind {
            DefinitionKind::Template => store.delete_template(name).await?,
            DefinitionKind::Schedule => store.delete_schedule(name).await?,
        };
    }
    Ok(())
}

/// Writes each schedule's status (`GET /api/schedules/{name}`'s) to its CommandSchedule when it
/// changed since this replica last wrote it: server-side apply on the status subresource, so
/// `kubectl get cmdsch` shows the last and next runs. `written` is what was written last.
pub async fn publish_statuses(
    state: &Arc<ApiState>,
    resources: &Api<CommandSchedule>,
    written: &mut HashMap<String, ScheduleStatus>,
) -> ApiResult<()> {
    let params = PatchParams::apply(crate::cluster_api::API_FIELD_MANAGER).force();
    for row in state.store.schedules().await? {
        let status = cliscale_api::schedules::status(state, &row, |_| true).await?;
        if written.get(&row.name) == Some(&status) {
            continue;
        }
        let patch = serde_json::json!({
            "apiVersion": "cliscale.dev/v1alpha1", "kind": "CommandSchedule", "status": status,
        });
        match resources.patch_status(&row.name, &params, &Patch::Apply(&patch)).await {
            Ok(_) => {
                written.insert(row.name.clone(), status);
            }
            // Not on the cluster (yet): the next pass tries again.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(ApiError::Internal(format!("writing a schedule's status: {e}")));
            }
        }
    }
    Ok(())
}

/// Runs [`publish_statuses`] every `every` until `shutdown`.
pub async fn run_schedule_status(
    state: Arc<ApiState>,
    client: Client,
    namespace: String,
    every: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let resources: Api<CommandSchedule> = Api::namespaced(client, &namespace);
    let mut written = HashMap::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        if let Err(error) = publish_statuses(&state, &resources, &mut written).await {
            tracing::warn!(%error, "could not write a CommandSchedule's status; retrying");
            written.clear();
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
