//! Load harness for the gateway hop: prints figures, asserts nothing about time.
//!
//! `cargo bench -p cliscale --bench gateway_harness` starts the release `cliscale up` with its
//! runners and measures, in the same run, the runner reached directly and through the gateway:
//! added echo latency, added time to first output byte, throughput ratio, gateway memory per
//! idle connection at 1,000 connections, and connects per second (token verification + JTI).

use std::time::{Duration, Instant};

use cliscale_testkit::stats::{median, median_interval};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

// The integration tests' launcher of `cliscale up`.
use cliscale_testkit::harness::{
    Ws, bytes_through_pty, connect, direct_url, gateway_url, next_output, runner_addr, session,
    start_release, throughput, throughput_command, token, write_payload,
};
use cliscale_testkit::stack::Stack;

const ROUNDS: usize = 5;
/// Single runs move by up to ±30 % with where the scheduler puts the five processes; 25 pairs
/// pin the median ratio down to a confidence interval of about ±0.05.
const THROUGHPUT_PAIRS: usize = 25;
const ECHOES: usize = 400;
const FIRST_BYTE_SAMPLES: usize = 100;
const IDLE: usize = 1000;
const CONNECTS: usize = 500;
const PAYLOAD_MB: usize = 48;

async fn echo_rounds(ws: &mut Ws, n: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        ws.send(Message::Binary(b"x".to_vec().into())).await.unwrap();
        assert_eq!(next_output(ws).await.unwrap(), b"x");
        samples.push(t.elapsed());
    }
    samples
}

async fn first_byte(url: &str) -> Duration {
    let t = Instant::now();
    let mut ws = connect(url).await;
    next_output(&mut ws).await.unwrap();
    t.elapsed()
}

/// Anonymous resident memory (heap and stacks), as the runner harness measures it: `VmRSS`
/// would also count code pages faulting in the first time a path runs.
fn rss_kib(pid: u32) -> u64 {
    procinfo::rss_anon_kib(pid as i32)
}

/// User + system CPU time of a process.
fn cpu_time(pid: u32) -> Duration {
    procinfo::cpu_time(pid as i32)
}

use cliscale_testkit::procinfo::{self, busy_share, machine_ticks};

fn pct(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("gateway_harness: bench");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(run());
}

/// Throughput figures of paired runs (see `throughput_pairs`).
struct Throughput {
    tp_direct: Vec<f64>,
    tp_gateway: Vec<f64>,
    tp_ratio: Vec<f64>,
    up_cpu_direct: Duration,
    up_cpu_gateway: Duration,
    busy_direct: Vec<f64>,
    busy_gateway: Vec<f64>,
}

async fn throughput_pairs(
    up: &Stack,
    payload: &std::path::Path,
    pairs: usize,
    verbose: bool,
) -> Throughput {
    // Throughput: a fresh session per run, each printing the same payload once. Runs come in
    // pairs (direct and through the gateway, the order alternating), and the ratio is the
    // median of the pairs' ratios: drift on a shared machine then hits both sides of a ratio.
    let (mut tp_direct, mut tp_gateway, mut tp_ratio) = (Vec::new(), Vec::new(), Vec::new());
    // CPU of the `cliscale up` process during each kind of run: the relay's cost per MB.
    let (mut up_cpu_direct, mut up_cpu_gateway) = (Duration::ZERO, Duration::ZERO);
    // How busy the whole machine was: on a saturated machine every extra hop costs throughput.
    let (mut busy_direct, mut busy_gateway) = (Vec::new(), Vec::new());
    let command = throughput_command(payload);
    let expected_bytes = bytes_through_pty(payload);
    for pair in 0..pairs {
        let (mut direct, mut via) = (0.0, 0.0);
        for through_gateway in [pair % 2 == 1, pair % 2 == 0] {
            let (sid, token) = session(up, &command).await;
            let addr = runner_addr(up, &sid).await;
            let url = if through_gateway {
                gateway_url(up, &sid, &token)
            } else {
                direct_url(&addr, &token)
            };
            let (cpu_before, machine_before) = (cpu_time(up.child.id()), machine_ticks());
            let mbs = throughput(&url, expected_bytes).await;
            let cpu = cpu_time(up.child.id()) - cpu_before;
            let busy = busy_share(machine_before, machine_ticks());
            if through_gateway {
                (via, up_cpu_gateway) = (mbs, up_cpu_gateway + cpu);
                busy_gateway.push(busy);
            } else {
                (direct, up_cpu_direct) = (mbs, up_cpu_direct + cpu);
                busy_direct.push(busy);
            }
        }
        if verbose {
            println!(
                "pair {pair}: direct {direct:.1} MB/s, gateway {via:.1} MB/s, {:.2}x",
                via / direct
            );
        }
        tp_direct.push(direct);
        tp_gateway.push(via);
        tp_ratio.push(via / direct);
    }
    Throughput {
        tp_direct,
        tp_gateway,
        tp_ratio,
        up_cpu_direct,
        up_cpu_gateway,
        busy_direct,
        busy_gateway,
    }
}

async fn run() {
    let up = start_release(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("payload.b64");
    write_payload(&payload, PAYLOAD_MB);
    if let Ok(samples) = std::env::var("CLISCALE_BENCH_FIRST_BYTE_ONLY") {
        // Only the time from connecting to the first output frame, runner direct and through
        // the gateway, alternating; medians with their 95 % intervals.
        let samples = samples.parse().unwrap_or(FIRST_BYTE_SAMPLES);
        let (sid, _) = session(&up, "stty raw -echo; printf R; exec cat").await;
        let addr = runner_addr(&up, &sid).await;
        let (mut direct, mut via) = (Vec::new(), Vec::new());
        for _ in 0..samples {
            // A token opens one connection, at the runner as at the gateway.
            let (token, direct_token) = (token(&up, &sid).await, token(&up, &sid).await);
            direct.push(first_byte(&direct_url(&addr, &direct_token)).await.as_secs_f64() * 1e3);
            via.push(first_byte(&gateway_url(&up, &sid, &token)).await.as_secs_f64() * 1e3);
        }
        for (name, values) in [("runner direct", &mut direct), ("through the gateway", &mut via)] {
            let m = median(values);
            let (low, high) = median_interval(values);
            println!("first byte, {name}: median {m:.3} ms, 95 % interval {low:.3}-{high:.3} ms");
        }
        return;
    }
    if let Ok(pairs) = std::env::var("CLISCALE_BENCH_THROUGHPUT_ONLY") {
        // Investigation aid: only throughput pairs, each printed.
        let mut tp = throughput_pairs(&up, &payload, pairs.parse().unwrap_or(20), true).await;
        let ratio = median(&mut tp.tp_ratio);
        let (low, high) = median_interval(&mut tp.tp_ratio);
        println!("median pair ratio {ratio:.2}x, 95 % interval {low:.2}-{high:.2}x");
        return;
    }

    // Memory per idle connection through the gateway, first: after the other figures' runs the
    // process' allocator reuses the memory they freed, and the growth would read low.
    let (idle_sid, _) = session(&up, "read -r x").await;
    runner_addr(&up, &idle_sid).await;
    let mut idle_tokens = Vec::new();
    for _ in 0..IDLE {
        idle_tokens.push(token(&up, &idle_sid).await);
    }
    let before = rss_kib(up.child.id());
    let mut idle = Vec::with_capacity(IDLE);
    for token in &idle_tokens {
        let mut ws = connect(&gateway_url(&up, &idle_sid, token)).await;
        ws.next().await.unwrap().unwrap(); // the reconnect token: the connection is set up
        idle.push(ws);
    }
    let per_connection = rss_kib(up.child.id()).saturating_sub(before) as f64 / IDLE as f64;
    drop(idle);
    // The gateway closes them after the clients go: the figures below start once it has.
    while up.gateway_metric("cliscale_gateway_connections").await > 0.0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Echo and first byte: two identical cat sessions (every client of a session sees all of
    // its output), one reached directly and one through the gateway, in alternating rounds.
    let (sid, _) = session(&up, "stty raw -echo; printf R; exec cat").await;
    let addr = runner_addr(&up, &sid).await;
    let direct_token = token(&up, &sid).await;
    let mut direct = connect(&direct_url(&addr, &direct_token)).await;
    assert_eq!(next_output(&mut direct).await.unwrap(), b"R");
    let (via_sid, via_token) = session(&up, "stty raw -echo; printf R; exec cat").await;
    runner_addr(&up, &via_sid).await;
    let mut via = connect(&gateway_url(&up, &via_sid, &via_token)).await;
    assert_eq!(next_output(&mut via).await.unwrap(), b"R");
    let (mut echo_direct, mut echo_gateway) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        echo_direct.extend(echo_rounds(&mut direct, ECHOES).await);
        echo_gateway.extend(echo_rounds(&mut via, ECHOES).await);
    }
    drop((direct, via));
    let mut gateway_tokens = Vec::new();
    for _ in 0..FIRST_BYTE_SAMPLES {
        gateway_tokens.push((token(&up, &sid).await, token(&up, &sid).await));
    }
    let (mut fb_direct, mut fb_gateway) = (Vec::new(), Vec::new());
    for (token, direct_token) in &gateway_tokens {
        fb_direct.push(first_byte(&direct_url(&addr, direct_token)).await);
        fb_gateway.push(first_byte(&gateway_url(&up, &sid, token)).await);
    }

    let mut tp = throughput_pairs(&up, &payload, THROUGHPUT_PAIRS, false).await;

    // Connects per second: token verification, JTI consumption, runner connection, upgrade.
    let mut connect_tokens = Vec::new();
    for _ in 0..CONNECTS {
        connect_tokens.push(token(&up, &sid).await);
    }
    let t = Instant::now();
    for token in &connect_tokens {
        let mut ws = connect(&gateway_url(&up, &sid, token)).await;
        let _ = ws.close(None).await;
    }
    let connects_per_sec = CONNECTS as f64 / t.elapsed().as_secs_f64();

    let (d50, d99, g50, g99) = (
        pct(&mut echo_direct, 0.5),
        pct(&mut echo_direct, 0.99),
        pct(&mut echo_gateway, 0.5),
        pct(&mut echo_gateway, 0.99),
    );
    let (f50d, f50g) = (pct(&mut fb_direct, 0.5), pct(&mut fb_gateway, 0.5));
    let (td, tg) = (median(&mut tp.tp_direct), median(&mut tp.tp_gateway));
    let ratio = median(&mut tp.tp_ratio);
    let (lowest, highest) = (tp.tp_ratio[0], tp.tp_ratio[THROUGHPUT_PAIRS - 1]);
    let (ci_low, ci_high) = median_interval(&mut tp.tp_ratio);
    println!("| figure | direct to runner | through gateway | added / ratio | target |");
    println!("|---|---|---|---|---|");
    println!("| echo p50 | {d50:.0} us | {g50:.0} us | {:+.0} us | <= +100 us |", g50 - d50);
    println!("| echo p99 | {d99:.0} us | {g99:.0} us | {:+.0} us | - |", g99 - d99);
    println!(
        "| connect to first output byte, p50 | {:.2} ms | {:.2} ms | {:+.2} ms | <= +1 ms |",
        f50d / 1e3,
        f50g / 1e3,
        (f50g - f50d) / 1e3
    );
    println!(
        "| throughput ({PAYLOAD_MB} MB; medians of {THROUGHPUT_PAIRS} paired runs; pair ratios {lowest:.2}-{highest:.2}x, 95 % interval of their median {ci_low:.2}-{ci_high:.2}x) | {td:.1} MB/s | {tg:.1} MB/s | {ratio:.2}x | >= 0.95x |"
    );
    let mb = (THROUGHPUT_PAIRS * PAYLOAD_MB) as f64 * 1.048_576;
    println!(
        "| `cliscale up` CPU per MB relayed (gateway runs; direct runs: {:.2} ms/MB) | - | {:.2} ms/MB | - | - |",
        tp.up_cpu_direct.as_secs_f64() * 1e3 / mb,
        tp.up_cpu_gateway.as_secs_f64() * 1e3 / mb
    );
    println!(
        "| machine CPU busy during the throughput runs (median, {} CPUs) | {:.0} % | {:.0} % | - | - |",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        median(&mut tp.busy_direct) * 100.0,
        median(&mut tp.busy_gateway) * 100.0
    );
    println!(
        "| gateway memory per idle connection ({IDLE}) | - | {per_connection:.1} KiB | - | <= 40 KiB |"
    );
    println!(
        "| connects per second (verify + JTI + upgrade) | - | {connects_per_sec:.0} /s | - | - |"
    );
}
