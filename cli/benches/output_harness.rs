//! Load harness for the output store: prints figures, asserts nothing about time.
//!
//! `cargo bench -p cliscale --bench output_harness` starts the release `cliscale up`, whose
//! runners append every session's output to its store, and measures in the same run:
//! throughput of the raw PTY, of the runner with storage on (read directly) and of the whole
//! path a browser meets (runner, store, gateway), in rounds that rotate their order; whether the
//! store kept every byte of each run; the API's memory per open output stream; and the time to
//! serve a 100 MB finished log. docs/benchmarks.md records the figures.

use std::time::{Duration, Instant};

use cliscale_client::OutputRange;
use cliscale_testkit::harness::{
    bytes_through_pty, direct_url, gateway_url, raw_pty_throughput, runner_addr, session,
    start_release, throughput, throughput_command, write_payload,
};
use cliscale_testkit::procinfo::{
    busy_share, cpu_time, machine_ticks, rss_anon_kib, session_processes,
};
use cliscale_testkit::stack::{ADMIN_KEY, Stack};
use cliscale_testkit::stats::{median, median_interval};
use futures_util::StreamExt;

const ROUNDS: usize = 9;
const PAYLOAD_MB: usize = 48;
const READERS: usize = 200;
const BIG_LOG_MB: usize = 100;
const SERVES: usize = 5;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("output_harness: bench");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(run());
}

/// In the order of each round's figures: `path as usize` is its slot.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    Raw,
    Runner,
    Gateway,
}

/// Waits until the store holds the session's whole log; returns (end, bytes missing in gaps).
/// Reads the headers of the whole log's read (its gaps are listed there) and drops the body.
async fn stored(up: &Stack, sid: &str) -> (u64, u64) {
    let client = up.client(ADMIN_KEY);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (info, _) = client.output(sid, OutputRange::default()).await.unwrap();
        if info.complete {
            return (info.end, info.gaps.iter().map(|(from, to)| to - from).sum());
        }
        assert!(Instant::now() < deadline, "the store never completed {sid}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn report(name: &str, values: &mut [f64], unit: &str) {
    let m = median(values);
    let (low, high) = median_interval(values);
    println!("{name}: median {m:.2}{unit}, 95 % interval {low:.2}-{high:.2}{unit}");
}

async fn run() {
    let up = start_release(&[]).await;
    let rounds =
        std::env::var("CLISCALE_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(ROUNDS);
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("payload.b64");
    write_payload(&payload, PAYLOAD_MB);
    let expected = bytes_through_pty(&payload);

    // 1. Throughput: each round measures the raw PTY, the runner (storage on, read directly)
    // and the gateway path (storage on), the order rotating; ratios are per round, against
    // that round's raw PTY, so drift on a shared machine hits both sides of a ratio.
    let (mut raw, mut runner, mut via) = (Vec::new(), Vec::new(), Vec::new());
    let (mut runner_ratio, mut via_ratio) = (Vec::new(), Vec::new());
    let (mut whole, mut api_cpu, mut stored_mb) = (0, Duration::ZERO, 0.0);
    let mut runner_cpu_per_mb = Vec::new();
    // How busy both CPUs were during each path's runs: near 100 % the path is bound by CPU
    // (any process' cost per MB decides), well below it by waits.
    let mut busy: [Vec<f64>; 3] = Default::default();
    let paths = [Path::Raw, Path::Runner, Path::Gateway];
    for round in 0..rounds {
        let mut figures = [0.0; 3];
        let mut busy_now = [0.0; 3];
        for k in 0..3 {
            let path = paths[(round + k) % 3];
            let mbs = match path {
                Path::Raw => {
                    let machine_before = machine_ticks();
                    let file = payload.clone();
                    let (mbs, bytes) =
                        tokio::task::spawn_blocking(move || raw_pty_throughput(&file))
                            .await
                            .unwrap();
                    assert_eq!(bytes as usize, expected);
                    busy_now[path as usize] = busy_share(machine_before, machine_ticks());
                    mbs
                }
                Path::Runner | Path::Gateway => {
                    let (sid, token) = session(&up, &throughput_command(&payload)).await;
                    let addr = runner_addr(&up, &sid).await;
                    let url = match path {
                        Path::Runner => direct_url(&addr, &token),
                        _ => gateway_url(&up, &sid, &token),
                    };
                    let runner = session_processes(&sid)
                        .into_iter()
                        .find(|(_, comm)| comm == "cliscale-runner")
                        .map(|(pid, _)| pid)
                        .expect("the session's runner");
                    let cpu_before = cpu_time(up.child.id() as i32);
                    let runner_before = cpu_time(runner);
                    let machine_before = machine_ticks();
                    let mbs = throughput(&url, expected).await;
                    busy_now[path as usize] = busy_share(machine_before, machine_ticks());
                    let runner_used = cpu_time(runner) - runner_before;
                    runner_cpu_per_mb
                        .push(runner_used.as_secs_f64() * 1e3 / (expected as f64 / 1e6));
                    let (end, gaps) = stored(&up, &sid).await;
                    api_cpu += cpu_time(up.child.id() as i32) - cpu_before;
                    stored_mb += end as f64 / 1e6;
                    // The log is the PTY's bytes plus the `R` the session printed first.
                    if gaps == 0 && end as usize == expected + 1 {
                        whole += 1;
                    }
                    mbs
                }
            };
            figures[path as usize] = mbs;
        }
        println!(
            "round {round}: raw {:.1} MB/s, runner {:.1} MB/s, gateway {:.1} MB/s \
             (machine busy {:.0} / {:.0} / {:.0} %)",
            figures[0],
            figures[1],
            figures[2],
            busy_now[0] * 100.0,
            busy_now[1] * 100.0,
            busy_now[2] * 100.0
        );
        for (shares, now) in busy.iter_mut().zip(busy_now) {
            shares.push(now);
        }
        raw.push(figures[0]);
        runner.push(figures[1]);
        via.push(figures[2]);
        runner_ratio.push(figures[1] / figures[0]);
        via_ratio.push(figures[2] / figures[0]);
    }
    report("raw PTY", &mut raw, " MB/s");
    report("runner, storage on", &mut runner, " MB/s");
    report("runner + store + gateway", &mut via, " MB/s");
    report("runner with storage on / raw PTY", &mut runner_ratio, "x");
    report("whole path / raw PTY", &mut via_ratio, "x");
    report("runner CPU per MB (uploads included)", &mut runner_cpu_per_mb, " ms");
    for (path, shares) in paths.iter().zip(&mut busy) {
        let mut percent: Vec<f64> = shares.iter().map(|s| s * 100.0).collect();
        report(&format!("machine busy during {path:?} runs"), &mut percent, " %");
    }
    println!(
        "stored whole, without a gap: {whole} of {} runs; API process CPU per stored MB \
         (appends, and the gateway's relay on gateway runs): {:.2} ms",
        rounds * 2,
        api_cpu.as_secs_f64() * 1e3 / stored_mb
    );

    // 2. Memory per open output stream: READERS Server-Sent Events readers of one running
    // session, each past its `hello`.
    let (sid, _) = session(&up, "printf R; read -r x").await;
    runner_addr(&up, &sid).await;
    let client = up.client(ADMIN_KEY);
    let before = rss_anon_kib(up.child.id() as i32);
    let mut streams = Vec::new();
    for _ in 0..READERS {
        let resp = client.open_output_stream(&sid, 0).await.unwrap();
        let mut body = resp.bytes_stream();
        let first = body.next().await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&first).contains("event: hello"));
        streams.push(body);
    }
    let after = rss_anon_kib(up.child.id() as i32);
    println!(
        "API memory per open output stream: {:.1} KiB ({READERS} streams, {before} -> {after} KiB)",
        after.saturating_sub(before) as f64 / READERS as f64
    );
    drop(streams);

    // 3. Serving a finished 100 MB log.
    let big = dir.path().join("big.b64");
    write_payload(&big, BIG_LOG_MB);
    let created = up
        .create(ADMIN_KEY, serde_json::json!({ "command": format!("cat '{}'", big.display()) }))
        .await;
    let sid = created["sessionId"].as_str().unwrap();
    up.wait_for_phase(sid, "Succeeded").await;
    let (end, missing) = stored(&up, sid).await;
    println!("finished log: {:.1} MB written, {missing} bytes in gaps", end as f64 / 1e6);
    let mut secs = Vec::new();
    for _ in 0..SERVES {
        let t = Instant::now();
        let (_, mut body) = client.output(sid, OutputRange::default()).await.unwrap();
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            n += chunk.unwrap().len() as u64;
        }
        assert_eq!(n, end - missing);
        secs.push(t.elapsed().as_secs_f64());
    }
    report("time to serve the finished log", &mut secs, " s");
    let t = Instant::now();
    let as_text = OutputRange { text: true, ..Default::default() };
    let (_, body) = client.output(sid, as_text).await.unwrap();
    let text: Vec<u8> = body.map(|chunk| chunk.unwrap().to_vec()).concat().await;
    println!(
        "as text: {:.2} s for {:.1} MB of text",
        t.elapsed().as_secs_f64(),
        text.len() as f64 / 1e6
    );
}
