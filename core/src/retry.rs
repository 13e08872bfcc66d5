//! Retries: whether a finished attempt is tried again, and after how long. Pure; the API's
//! retry loop applies it to every finished session that came from a template with a policy.

use serde::{Deserialize, Serialize};

use crate::phase::SessionPhase;

/// How a template's runs are retried. Every attempt is a new session, linked to the first by
/// `retryOf` and numbered by `attempt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RetryPolicy {
    /// Attempts after the first, at most (0 to 20).
    pub limit: u32,
    /// Wait before the second attempt; doubled for each later one (default 10).
    #[serde(default = "default_initial")]
    pub initial_backoff_seconds: u32,
    /// The longest wait (default 600).
    #[serde(default = "default_max")]
    pub max_backoff_seconds: u32,
    /// A Failed attempt is retried if it exited with one of these codes; empty: any failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_exit_codes: Vec<i64>,
    /// Retry a Lost attempt (its runner vanished; default true).
    #[serde(default = "yes")]
    pub on_lost: bool,
    /// Retry a TimedOut attempt (default false).
    #[serde(default)]
    pub on_timed_out: bool,
}

fn default_initial() -> u32 {
    10
}
fn default_max() -> u32 {
    600
}
fn yes() -> bool {
    true
}

/// The most attempts after the first a policy may ask for.
pub const MAX_RETRY_LIMIT: u32 = 20;
/// The longest backoff a policy may ask for: a day.
pub const MAX_BACKOFF_SECONDS: u32 = 86_400;

impl RetryPolicy {
    /// What is wrong with it, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.limit > MAX_RETRY_LIMIT {
            return Some(format!("retry limit must be at most {MAX_RETRY_LIMIT}"));
        }
        if self.max_backoff_seconds > MAX_BACKOFF_SECONDS {
            return Some(format!("maxBackoffSeconds must be at most {MAX_BACKOFF_SECONDS}"));
        }
        if self.initial_backoff_seconds > self.max_backoff_seconds {
            return Some("initialBackoffSeconds must not exceed maxBackoffSeconds".into());
        }
        if self.on_exit_codes.len() > 64 {
            return Some("onExitCodes takes at most 64 codes".into());
        }
        None
    }

    /// Whether attempt number `attempt` (1 for the first), which ended as `phase` with
    /// `exit_code`, is followed by another; if so, after how many seconds.
    pub fn after(&self, attempt: u32, phase: SessionPhase, exit_code: Option<i64>) -> Option<u64> {
        if attempt > self.limit {
            return None;
        }
        let retry = match phase {
            SessionPhase::Failed => {
                self.on_exit_codes.is_empty()
                    || exit_code.is_some_and(|c| self.on_exit_codes.contains(&c))
            }
            SessionPhase::Lost => self.on_lost,
            SessionPhase::TimedOut => self.on_timed_out,
            // Succeeded is done; Cancelled was asked for, and stops the chain.
            _ => false,
        };
        retry.then(|| {
            let doubled = u64::from(self.initial_backoff_seconds)
                .saturating_mul(1u64 << (attempt - 1).min(32));
            doubled.min(u64::from(self.max_backoff_seconds))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(limit: u32) -> RetryPolicy {
        serde_json::from_value(serde_json::json!({ "limit": limit, "initialBackoffSeconds": 5,
            "maxBackoffSeconds": 30 }))
        .unwrap()
    }

    #[test]
    fn failures_retry_up_to_the_limit_with_doubling_capped_backoff() {
        let p = policy(4);
        let waits: Vec<Option<u64>> =
            (1..=5).map(|a| p.after(a, SessionPhase::Failed, Some(1))).collect();
        assert_eq!(waits, [Some(5), Some(10), Some(20), Some(30), None]);
    }

    #[test]
    fn only_the_named_endings_retry() {
        let mut p = policy(3);
        assert_eq!(p.after(1, SessionPhase::Succeeded, Some(0)), None);
        assert_eq!(p.after(1, SessionPhase::Cancelled, None), None);
        assert_eq!(p.after(1, SessionPhase::Lost, None), Some(5));
        assert_eq!(p.after(1, SessionPhase::TimedOut, None), None);
        p.on_timed_out = true;
        p.on_lost = false;
        p.on_exit_codes = vec![75];
        assert_eq!(p.after(1, SessionPhase::TimedOut, None), Some(5));
        assert_eq!(p.after(1, SessionPhase::Lost, None), None);
        assert_eq!(p.after(1, SessionPhase::Failed, Some(1)), None);
        assert_eq!(p.after(1, SessionPhase::Failed, Some(75)), Some(5));
    }

    #[test]
    fn bad_policies_are_named() {
        assert!(policy(21).problem().is_some());
        let mut p = policy(1);
        p.initial_backoff_seconds = 100;
        assert!(p.problem().unwrap().contains("initialBackoffSeconds"));
        assert!(policy(20).problem().is_none());
        assert!(serde_json::from_str::<RetryPolicy>(r#"{"limit":1,"bogus":1}"#).is_err());
    }
}
