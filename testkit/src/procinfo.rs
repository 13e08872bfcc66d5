//! What the benchmark harnesses read of a process from /proc.

use std::time::Duration;

/// User + system CPU time of a process.
pub fn cpu_time(pid: i32) -> Duration {
    let stat = procfs::process::Process::new(pid).unwrap().stat().unwrap();
    Duration::from_micros((stat.utime + stat.stime) * 1_000_000 / procfs::ticks_per_second())
}

/// Anonymous resident memory (heap, stacks, buffers) in KiB. Not VmRSS: that also counts the
/// binary's and libc's code pages, which fault in (shared, file-backed) the first time a code
/// path runs and made one client look like 100+ KiB in some runs.
pub fn rss_anon_kib(pid: i32) -> u64 {
    procfs::process::Process::new(pid).unwrap().status().unwrap().rssanon.unwrap()
}

/// Resident memory of this process (VmRSS) in KiB.
pub fn own_rss_kib() -> u64 {
    procfs::process::Process::myself().unwrap().status().unwrap().vmrss.unwrap()
}

/// Ticks the machine's CPUs spent busy and idle so far (all CPUs together).
pub fn machine_ticks() -> (u64, u64) {
    use procfs::CurrentSI;
    let t = procfs::KernelStats::current().unwrap().total;
    let idle = t.idle + t.iowait.unwrap_or(0);
    let busy = t.user + t.nice + t.system + t.irq.unwrap_or(0) + t.softirq.unwrap_or(0);
    (busy, idle)
}

/// Share of the machine's CPU time that was busy between two [`machine_ticks`] readings.
pub fn busy_share((busy0, idle0): (u64, u64), (busy1, idle1): (u64, u64)) -> f64 {
    let busy = (busy1 - busy0) as f64;
    busy / (busy + (idle1 - idle0) as f64)
}

/// Whether any process runs with `name=value` in its environment (a session's runner carries
/// its session id there): how a test knows a runner has gone.
pub fn any_process_with_env(name: &str, value: &str) -> bool {
    let wanted = format!("{name}={value}");
    let Ok(procs) = std::fs::read_dir("/proc") else { return false };
    procs.filter_map(Result::ok).any(|p| {
        std::fs::read(p.path().join("environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == wanted.as_bytes()))
    })
}

/// The parent of process `pid`, from /proc/<pid>/stat (the field after the parenthesised name).
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Pids of the processes carrying `CLISCALE_SESSION_ID=sid`, with their command names.
pub fn session_processes(sid: &str) -> Vec<(i32, String)> {
    let wanted = format!("CLISCALE_SESSION_ID={sid}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else { continue };
        if env.split(|b| *b == 0).any(|kv| kv == wanted.as_bytes()) {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.push((pid, comm.trim().to_owned()));
        }
    }
    found
}
