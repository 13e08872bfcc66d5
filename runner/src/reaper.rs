//! The runner's duties as the parent of last resort.
//!
//! In its pod the runner is PID 1, so every process the session orphans (a daemon, a job
//! whose shell has exited) becomes its child; on a user's machine it asks for the same with
//! `PR_SET_CHILD_SUBREAPER`. It reaps those orphans as they exit, so zombies never pile up
//! over a long session, and when the session ends it stops whatever is still running: a
//! service the install started, a process that ignored the terminal's hang-up or left the
//! command's process group. On a cluster the pod's end would do that; locally nothing else
//! would.
//!
//! The processes the runner waits for itself (the command, the install, git) are
//! [`Managed`]: the reaper never collects their exit status, which tokio must see.

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// Pids whose exit status belongs to a tokio `Child`.
static MANAGED: LazyLock<Mutex<HashSet<i32>>> = LazyLock::new(Default::default);

/// Marks a child the runner waits for itself, for as long as this guard lives. Create it right
/// after the spawn, with no await in between, so the reaper cannot see the pid unmarked.
pub struct Managed(i32);

impl Managed {
    pub fn new(pid: u32) -> Self {
        let pid = pid as i32;
        MANAGED.lock().expect("managed pids").insert(pid);
        Self(pid)
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        MANAGED.lock().expect("managed pids").remove(&self.0);
    }
}

/// Asks the kernel to make the runner the parent of every process its descendants orphan.
pub fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a subreaper; orphans go to init");
    }
}

/// One entry of the process table: (pid, parent pid, is a zombie).
type ProcEntry = (i32, i32, bool);

/// Parses `/proc/PID/stat`: `pid (comm) state ppid …`; comm may hold spaces and parentheses.
fn parse_stat(stat: &str) -> Option<ProcEntry> {
    let pid = stat.split_once(' ')?.0.parse().ok()?;
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((pid, ppid, state == "Z"))
}

fn process_table() -> Vec<ProcEntry> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|entry| {
        let name = entry.ok()?.file_name();
        name.to_str()?.parse::<u32>().ok()?;
        parse_stat(&std::fs::read_to_string(format!("/proc/{}/stat", name.to_str()?)).ok()?)
    })
    .collect()
}

/// Every process below `root`, children before grandchildren. Pure.
fn descendants(table: &[ProcEntry], root: i32) -> Vec<ProcEntry> {
    let mut children: HashMap<i32, Vec<ProcEntry>> = HashMap::new();
    for &entry in table {
        children.entry(entry.1).or_default().push(entry);
    }
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &entry in children.get(&parent).into_iter().flatten() {
            // A pid can only appear once; the guard keeps a torn read from looping.
            if entry.0 != root && found.len() < table.len() {
                found.push(entry);
                frontier.push(entry.0);
            }
        }
    }
    found
}

/// Collects the exit status of every zombie child in `table` the runner does not wait for
/// itself. Returns how many it reaped.
fn reap_zombies(table: &[ProcEntry]) -> usize {
    let me = std::process::id() as i32;
    let managed = MANAGED.lock().expect("managed pids");
    table
        .iter()
        .filter(|&&(pid, ppid, zombie)| zombie && ppid == me && !managed.contains(&pid))
        .filter(|&&(pid, _, _)| waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)).is_ok())
        .count()
}

/// Reaps orphans as they exit, for the life of the runner.
pub async fn reap_orphans_forever() {
    let Ok(mut child_exits) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
    else {
        tracing::warn!("cannot watch SIGCHLD; orphans are reaped only at the end");
        return;
    };
    while child_exits.recv().await.is_some() {
        let reaped = reap_zombies(&process_table());
        if reaped > 0 {
            tracing::debug!(reaped, "reaped orphaned processes");
        }
        // A burst of exits costs one scan of the process table per interval, not one each.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long killed processes may take to disappear before the runner stops waiting for them.
const GIVE_UP_AFTER_KILL: Duration = Duration::from_secs(5);

/// Stops every process still running below the runner: SIGTERM, then SIGKILL for those
/// alive after `grace`, reaping them all. Call it once the runner's own children are done.
/// Returns how many processes were stopped.
pub async fn stop_leftovers(grace: Duration) -> usize {
    let me = std::process::id() as i32;
    let alive = |table: &[ProcEntry]| -> Vec<i32> {
        descendants(table, me).into_iter().filter(|e| !e.2).map(|e| e.0).collect()
    };
    let table = process_table();
    let leftovers = alive(&table);
    if leftovers.is_empty() {
        reap_zombies(&table);
        return 0;
    }
    tracing::info!(count = leftovers.len(), "stopping processes the session left running");
    for &pid in &leftovers {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        // One scan serves both: the zombies to reap and the processes still alive.
        let table = process_table();
        reap_zombies(&table);
        let remaining = alive(&table);
        if remaining.is_empty() {
            break;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline + GIVE_UP_AFTER_KILL {
            // Only a process stuck in the kernel (state D) outlives SIGKILL this long.
            tracing::warn!(?remaining, "processes survived SIGKILL; leaving them");
            break;
        }
        if now >= deadline {
            // Kill, then reap; a killed process's children come to us and are killed next.
            for pid in remaining {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    leftovers.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_whatever_the_command_name() {
        assert_eq!(parse_stat("42 (sleep) S 7 42 42 0 -1"), Some((42, 7, false)));
        assert_eq!(parse_stat("43 (my (odd) name) Z 1 43 43 0"), Some((43, 1, true)));
        assert_eq!(parse_stat("44 (a b) R 9"), Some((44, 9, false)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn descendants_are_the_whole_subtree_and_nothing_else() {
        let table = [
            (10, 1, false),  // the runner
            (11, 10, false), // its child
            (12, 11, false), // a grandchild
            (13, 12, true),  // a zombie great-grandchild
            (20, 1, false),  // someone else's
            (21, 20, false),
        ];
        let mut found: Vec<i32> = descendants(&table, 10).into_iter().map(|e| e.0).collect();
        found.sort();
        assert_eq!(found, [11, 12, 13]);
        assert!(descendants(&table, 13).is_empty());
    }
}
