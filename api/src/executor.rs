//! Where sessions run. Local mode runs each session's runner as a child process
//! ([`crate::local::LocalExecutor`]); on a cluster the operator creates CommandSessions.

use std::future::Future;
use std::pin::Pin;

use crate::error::Result;
use crate::model::SessionRecord;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A template or schedule as the API keeps it, with the key that owns it.
#[derive(Debug, Clone, Copy)]
pub enum Definition<'a> {
    Template(&'a cliscale_core::rest::TemplateSpec, &'a str),
    Schedule(&'a cliscale_core::rest::ScheduleSpec, &'a str),
}

/// Which kind of definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefinitionKind {
    Template,
    Schedule,
}

pub trait Executor: Send + Sync + 'static {
    /// Starts the session's runner. Returns as soon as that is under way, never waiting for it.
    fn start(&self, session: SessionRecord) -> BoxFuture<'_, Result<()>>;
    /// Asks the session's runner to stop; the session ends `Cancelled`.
    fn cancel(&self, session_id: &str) -> BoxFuture<'_, Result<()>>;
    /// Whether this executor knows the session's runner process to be still running, whatever
    /// its recorded phase says (a runner lingers after its command ends).
    fn runner_alive(&self, _session_id: &str) -> bool {
        false
    }
    /// Keeps the cluster's copy of a template or schedule (a CommandTemplate or
    /// CommandSchedule) in step with the API's. Locally there is none.
    fn publish<'a>(&'a self, _definition: Definition<'a>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// Deletes the cluster's copy of a template or schedule.
    fn withdraw<'a>(&'a self, _kind: DefinitionKind, _name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// Deletes a finished session before its TTL, with everything kept for it (a schedule's
    /// history limit). By default: its rows.
    fn discard<'a>(
        &'a self,
        store: &'a crate::store::Store,
        session_id: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(store.delete_session(session_id))
    }
}
