//! The scheduling core: given a schedule, what it last did and the time now, what to start,
//! skip or record as missed. Pure: the local scheduler and the operator call it with their own
//! clock and history, and tests call it with any clock they like. docs/schedules.md explains
//! the rules, which follow Kubernetes' CronJob.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};

/// What to do when a run is due and the previous one still runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ConcurrencyPolicy {
    /// Start it anyway.
    #[default]
    Allow,
    /// Skip this run, and record why.
    Forbid,
    /// Cancel the running one, then start this one.
    Replace,
}

/// When a schedule fires: a cron expression in an IANA time zone.
#[derive(Debug, Clone)]
pub struct Cadence {
    cron: Cron,
    zone: Tz,
}

/// Why a cron expression or time zone was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("cron {0:?} is not five fields or an @ form: {1}")]
    Cron(String, String),
    #[error("timeZone {0:?} is not an IANA time zone name")]
    TimeZone(String),
    #[error("cron {0:?} never fires")]
    Never(String),
}

impl Cadence {
    /// Parses five-field cron (minute hour day-of-month month day-of-week) or an `@` form
    /// (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`), in `zone` (default UTC).
    pub fn parse(cron: &str, zone: Option<&str>) -> Result<Self, ScheduleError> {
        let fields = cron.split_whitespace().count();
        if !cron.trim_start().starts_with('@') && fields != 5 {
            return Err(ScheduleError::Cron(cron.into(), format!("{fields} fields")));
        }
        let parsed =
            Cron::from_str(cron).map_err(|e| ScheduleError::Cron(cron.into(), e.to_string()))?;
        let zone = match zone {
            None | Some("") => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| ScheduleError::TimeZone(name.into()))?,
        };
        let cadence = Self { cron: parsed, zone };
        cadence.next_after(0).ok_or_else(|| ScheduleError::Never(cron.into()))?;
        Ok(cadence)
    }

    /// The first time it fires strictly after `t` (Unix seconds).
    pub fn next_after(&self, t: i64) -> Option<i64> {
        let local = self.zone.timestamp_opt(t, 0).single()?;
        self.cron.find_next_occurrence(&local, false).ok().map(|d| d.timestamp())
    }

    /// The next `n` times it fires after `t`.
    pub fn upcoming(&self, t: i64, n: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        while out.len() < n {
            let Some(next) = self.next_after(at) else { break };
            out.push(next);
            at = next;
        }
        out
    }
}

/// What the schedule holds that decides a tick.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub concurrency: ConcurrencyPolicy,
    /// A run that cannot start within this many seconds of its time is missed, not started.
    pub starting_deadline_seconds: Option<u64>,
    pub suspend: bool,
}

/// What the schedule has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// The last scheduled time considered (started, skipped or missed); the schedule's
    /// creation time before the first.
    pub last_considered: i64,
    /// Its runs that have not finished.
    pub active: Vec<String>,
}

/// Why a due run did not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SkipReason {
    /// `concurrencyPolicy: Forbid` and a run was still active.
    ConcurrencyForbid,
    /// The schedule was suspended.
    Suspended,
    /// Its time was more than `startingDeadlineSeconds` ago when it was seen.
    DeadlineExceeded,
}

/// What one tick decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start the run for scheduled time `at`; first cancel `replace` (Replace policy).
    Start { at: i64, replace: Vec<String> },
    /// The run for `at` is not started.
    Skip { at: i64, reason: SkipReason },
    /// Earlier due times, from `first` to `last`, were passed over (after downtime) and never
    /// started, so a long outage is no flood. `count` stops past [`MISSED_COUNT_LIMIT`].
    Missed { first: i64, last: i64, count: u64 },
}

/// A tick's answer: what to do, the new `last_considered`, and when to look again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub decisions: Vec<Decision>,
    pub last_considered: i64,
    pub next: Option<i64>,
}

/// At most this many due times are counted after downtime; beyond it the count stops (the
/// latest still starts), as CronJob stops counting at 100.
pub const MISSED_COUNT_LIMIT: u64 = 100;

/// Decides one tick at `now`. Of the times due since `history.last_considered`, only the latest
/// may start; earlier ones are reported as one `Missed`. Pure.
pub fn plan(cadence: &Cadence, rules: &Rules, history: &History, now: i64) -> Plan {
    let mut due = Vec::new();
    let mut at = history.last_considered;
    while let Some(next) = cadence.next_after(at) {
        if next > now {
            break;
        }
        due.push(next);
        at = next;
        if due.len() as u64 > MISSED_COUNT_LIMIT {
            // Counting stops here; the latest due time is found directly, not by walking every
            // minute of a long outage.
            if let Some(floor) = cadence_floor(cadence, now).filter(|f| *f > at) {
                due.push(floor);
            }
            break;
        }
    }
    let latest = due.last().copied();
    let next = cadence.next_after(now.max(history.last_considered));
    let Some(latest) = latest else {
        return Plan { decisions: vec![], last_considered: history.last_considered, next };
    };
    let mut decisions = Vec::new();
    let earlier = &due[..due.len() - 1];
    if let (Some(first), Some(last)) = (earlier.first(), earlier.last()) {
        let count = earlier.len() as u64;
        decisions.push(Decision::Missed { first: *first, last: *last, count });
    }
    let late = rules
        .starting_deadline_seconds
        .is_some_and(|deadline| now.saturating_sub(latest) > deadline as i64);
    decisions.push(if rules.suspend {
        Decision::Skip { at: latest, reason: SkipReason::Suspended }
    } else if late {
        Decision::Skip { at: latest, reason: SkipReason::DeadlineExceeded }
    } else {
        match rules.concurrency {
            ConcurrencyPolicy::Forbid if !history.active.is_empty() => {
                Decision::Skip { at: latest, reason: SkipReason::ConcurrencyForbid }
            }
            ConcurrencyPolicy::Replace => {
                Decision::Start { at: latest, replace: history.active.clone() }
            }
            _ => Decision::Start { at: latest, replace: vec![] },
        }
    });
    Plan { decisions, last_considered: latest, next }
}

/// The last time it fires at or before `t`, found by stepping back a day at a time.
fn cadence_floor(cadence: &Cadence, t: i64) -> Option<i64> {
    let mut from = t - 86_400;
    for _ in 0..400 {
        if let Some(next) = cadence.next_after(from)
            && next <= t
        {
            let mut at = next;
            while let Some(n) = cadence.next_after(at) {
                if n > t {
                    break;
                }
                at = n;
            }
            return Some(at);
        }
        from -= 86_400;
    }
    None
}

/// The deterministic name of the run for scheduled time `at`: the same schedule and time
/// always give the same session id, so a second replica, a restart or a replayed watch that
/// decides the same start makes nothing new. Pure.
pub fn run_id(schedule: &str, at: i64) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{schedule}\n{at}").as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("sched-{hex}-{at}")
}

/// `at` as RFC 3339 in UTC.
pub fn rfc3339(at: i64) -> String {
    DateTime::<Utc>::from_timestamp(at, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    fn every_minute() -> Cadence {
        Cadence::parse("* * * * *", None).unwrap()
    }

    #[test]
    fn five_fields_and_the_at_forms_parse_and_others_are_refused() {
        for good in ["*/5 * * * *", "0 9 * * MON-FRI", "@hourly", "@daily", "@weekly", "@yearly"] {
            assert!(Cadence::parse(good, Some("Europe/Berlin")).is_ok(), "{good}");
        }
        assert!(matches!(Cadence::parse("* * * *", None), Err(ScheduleError::Cron(..))));
        assert!(matches!(Cadence::parse("0 * * * * *", None), Err(ScheduleError::Cron(..))));
        assert!(matches!(Cadence::parse("61 * * * *", None), Err(ScheduleError::Cron(..))));
        assert!(matches!(
            Cadence::parse("* * * * *", Some("Mars/Olympus")),
            Err(ScheduleError::TimeZone(_))
        ));
        assert!(matches!(Cadence::parse("0 0 31 2 *", None), Err(ScheduleError::Never(_))));
    }

    #[test]
    fn nothing_is_due_before_the_first_time() {
        let t = utc("2026-03-01T10:00:30Z");
        let history = History { last_considered: t, active: vec![] };
        let plan = plan(&every_minute(), &Rules::default(), &history, t + 20);
        assert!(plan.decisions.is_empty());
        assert_eq!(plan.next, Some(utc("2026-03-01T10:01:00Z")));
        assert_eq!(plan.last_considered, t);
    }

    #[test]
    fn a_due_time_starts_once_and_is_then_considered() {
        let t = utc("2026-03-01T10:00:30Z");
        let history = History { last_considered: t, active: vec![] };
        let now = utc("2026-03-01T10:01:02Z");
        let first = plan(&every_minute(), &Rules::default(), &history, now);
        assert_eq!(
            first.decisions,
            [Decision::Start { at: utc("2026-03-01T10:01:00Z"), replace: vec![] }]
        );
        // The same tick again (a restart, a second replica) decides nothing new.
        let again = History { last_considered: first.last_considered, active: vec![] };
        assert!(plan(&every_minute(), &Rules::default(), &again, now).decisions.is_empty());
    }

    #[test]
    fn forbid_skips_while_a_run_is_active_and_replace_cancels_it() {
        let t = utc("2026-03-01T10:00:30Z");
        let history = History { last_considered: t, active: vec!["run-1".into()] };
        let now = utc("2026-03-01T10:01:00Z");
        let forbid = Rules { concurrency: ConcurrencyPolicy::Forbid, ..Default::default() };
        assert_eq!(
            plan(&every_minute(), &forbid, &history, now).decisions,
            [Decision::Skip { at: now, reason: SkipReason::ConcurrencyForbid }]
        );
        let replace = Rules { concurrency: ConcurrencyPolicy::Replace, ..Default::default() };
        assert_eq!(
            plan(&every_minute(), &replace, &history, now).decisions,
            [Decision::Start { at: now, replace: vec!["run-1".into()] }]
        );
        let allow = Rules::default();
        assert_eq!(
            plan(&every_minute(), &allow, &history, now).decisions,
            [Decision::Start { at: now, replace: vec![] }]
        );
        // Forbid with nothing active starts.
        let idle = History { last_considered: t, active: vec![] };
        assert!(matches!(
            plan(&every_minute(), &forbid, &idle, now).decisions[..],
            [Decision::Start { .. }]
        ));
    }

    #[test]
    fn after_downtime_only_the_latest_time_starts_and_the_rest_are_one_missed_record() {
        let down = utc("2026-03-01T10:00:00Z");
        let history = History { last_considered: down, active: vec![] };
        let now = utc("2026-03-01T13:00:10Z");
        let hourly = Cadence::parse("@hourly", None).unwrap();
        let plan = plan(&hourly, &Rules::default(), &history, now);
        assert_eq!(
            plan.decisions,
            [
                Decision::Missed {
                    first: utc("2026-03-01T11:00:00Z"),
                    last: utc("2026-03-01T12:00:00Z"),
                    count: 2
                },
                Decision::Start { at: utc("2026-03-01T13:00:00Z"), replace: vec![] },
            ]
        );
        assert_eq!(plan.last_considered, utc("2026-03-01T13:00:00Z"));
    }

    #[test]
    fn a_year_of_downtime_is_counted_to_the_limit_and_decided_quickly() {
        let down = utc("2025-03-01T10:00:00Z");
        let history = History { last_considered: down, active: vec![] };
        let now = utc("2026-03-01T10:00:30Z");
        let plan = plan(&every_minute(), &Rules::default(), &history, now);
        let [Decision::Missed { count, .. }, Decision::Start { at, .. }] = &plan.decisions[..]
        else {
            panic!("{:?}", plan.decisions)
        };
        assert!(*count >= MISSED_COUNT_LIMIT, "{count}");
        assert_eq!(*at, utc("2026-03-01T10:00:00Z"));
    }

    #[test]
    fn the_starting_deadline_turns_a_late_start_into_a_skip() {
        let history = History { last_considered: utc("2026-03-01T09:59:30Z"), active: vec![] };
        let rules = Rules { starting_deadline_seconds: Some(30), ..Default::default() };
        let at = utc("2026-03-01T10:00:00Z");
        let plan_at = |now| plan(&every_minute(), &rules, &history, now).decisions;
        assert_eq!(plan_at(at + 30), [Decision::Start { at, replace: vec![] }]);
        assert_eq!(plan_at(at + 31), [Decision::Skip { at, reason: SkipReason::DeadlineExceeded }]);
    }

    #[test]
    fn a_suspended_schedule_starts_nothing_and_does_not_flood_when_resumed() {
        let history = History { last_considered: utc("2026-03-01T09:59:30Z"), active: vec![] };
        let suspended = Rules { suspend: true, ..Default::default() };
        let now = utc("2026-03-01T10:30:05Z");
        let plan_now = plan(&every_minute(), &suspended, &history, now);
        assert!(plan_now.decisions.iter().all(|d| !matches!(d, Decision::Start { .. })));
        assert!(matches!(
            plan_now.decisions.last(),
            Some(Decision::Skip { reason: SkipReason::Suspended, .. })
        ));
        // Resumed: the times passed while suspended are considered already.
        let resumed = History { last_considered: plan_now.last_considered, active: vec![] };
        let later = plan(&every_minute(), &Rules::default(), &resumed, now + 10);
        assert!(later.decisions.is_empty());
    }

    #[test]
    fn spring_forward_runs_a_fixed_time_in_the_gap_once_after_it() {
        // Berlin, 2026-03-29: 02:00 local does not exist (clocks go 02:00 -> 03:00).
        let daily = Cadence::parse("30 2 * * *", Some("Europe/Berlin")).unwrap();
        let before = utc("2026-03-28T12:00:00Z");
        let times = daily.upcoming(before, 3);
        // 28th 02:30 CET is past; 29th runs right after the gap (03:00 CEST = 01:00Z); 30th
        // at 02:30 CEST (00:30Z).
        assert_eq!(
            times,
            [utc("2026-03-29T01:00:00Z"), utc("2026-03-30T00:30:00Z"), utc("2026-03-31T00:30:00Z")]
        );
    }

    #[test]
    fn fall_back_runs_a_fixed_time_in_the_repeated_hour_once() {
        // Berlin, 2026-10-25: 02:00-03:00 local happens twice.
        let daily = Cadence::parse("30 2 * * *", Some("Europe/Berlin")).unwrap();
        let times = daily.upcoming(utc("2026-10-24T12:00:00Z"), 2);
        assert_eq!(times, [utc("2026-10-25T00:30:00Z"), utc("2026-10-26T01:30:00Z")]);
        // Planned across the whole repeated hour: one start.
        let history = History { last_considered: utc("2026-10-24T23:00:00Z"), active: vec![] };
        let plan = plan(&daily, &Rules::default(), &history, utc("2026-10-25T02:10:00Z"));
        assert_eq!(plan.decisions, [Decision::Start { at: times[0], replace: vec![] }]);
    }

    #[test]
    fn run_ids_are_the_same_for_the_same_time_only() {
        assert_eq!(run_id("nightly", 100), run_id("nightly", 100));
        assert_ne!(run_id("nightly", 100), run_id("nightly", 160));
        assert_ne!(run_id("nightly", 100), run_id("hourly", 100));
        assert!(run_id("a", 1).len() <= 63);
    }
}
