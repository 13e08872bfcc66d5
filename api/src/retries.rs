//! Retries: a finished attempt whose policy says so is followed, after its backoff, by a new
//! session with the same spec, numbered by `attempt` and linked to the first by `retryOf`.
//! Cancelling any attempt stops the chain. The decision is `RetryPolicy::after` (pure).

use cliscale_core::schedule::rfc3339;

use crate::error::Result;
use crate::model::{Origin, SessionRecord};
use crate::routes::AppState;
use crate::runs::{NewRun, launch};
use crate::store::NewEvent;

/// The id of attempt `attempt` of the chain that began with `root`: deterministic, so two
/// replicas deciding the same retry make one session. Pure.
pub fn attempt_id(root: &str, attempt: u32) -> String {
    format!("{root}-r{attempt}")
}

/// Weighs every finished attempt not yet weighed: starts the next one once its backoff has
/// passed at `now`, or ends the chain.
pub async fn tick(state: &AppState, now: i64) -> Result<()> {
    for attempt in state.store.retry_candidates().await? {
        if let Err(e) = weigh(state, &attempt, now).await {
            tracing::warn!(session_id = %attempt.id, error = %e, "weighing a retry failed");
        }
    }
    Ok(())
}

async fn weigh(state: &AppState, attempt: &SessionRecord, now: i64) -> Result<()> {
    let Some(policy) = &attempt.origin.retry else {
        state.store.settle_retry(&attempt.id).await?;
        return Ok(());
    };
    let number = attempt.origin.attempt;
    let Some(wait) = policy.after(number, attempt.phase, attempt.exit_code) else {
        // An ending the policy retries, past the limit: the chain ran out.
        let retryable = policy.after(1, attempt.phase, attempt.exit_code).is_some();
        if state.store.settle_retry(&attempt.id).await? && retryable {
            let message = format!("attempt {number} {}; no retries are left", attempt.phase);
            state.store.log(&NewEvent::about(attempt, "retries_exhausted", message)).await?;
        }
        return Ok(());
    };
    let due = attempt.finished_at.unwrap_or(now) + wait as i64;
    if due > now {
        return Ok(());
    }
    if !state.store.settle_retry(&attempt.id).await? {
        return Ok(());
    }
    let root = attempt.origin.retry_of.clone().unwrap_or_else(|| attempt.id.clone());
    let next = number + 1;
    let origin = Origin { attempt: next, retry_of: Some(root.clone()), ..attempt.origin.clone() };
    let how = format!(
        "attempt {next} of {root}: attempt {number} ended {} (exit {}), retried after {wait} s",
        attempt.phase,
        attempt.exit_code.map_or("-".into(), |c| c.to_string())
    );
    let run = NewRun {
        id: attempt_id(&root, next),
        owner: attempt.owner.clone(),
        spec: attempt.spec.clone(),
        origin,
        actor: "retry".into(),
        how: how.clone(),
    };
    if let Some(started) = launch(state, run).await? {
        let message = format!("{how}; at {}", rfc3339(now));
        state.store.log(&NewEvent::about(attempt, "retried", message).by("retry")).await?;
        tracing::info!(session_id = %started.id, retry_of = %root, attempt = next, "retried");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn attempt_ids_follow_the_chain() {
        assert_eq!(super::attempt_id("abc", 2), "abc-r2");
        assert_ne!(super::attempt_id("abc", 2), super::attempt_id("abc", 3));
    }
}
