//! Load harness for the runner: prints figures, asserts nothing about time.
//!
//! `cargo bench -p cliscale-runner --bench runner_harness` (docs/benchmarks.md has the
//! figures and how to read them). Each figure is set against the raw limit measured in the
//! same run: a plain reader on a PTY master, and echo through a PTY with no WebSocket.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use cliscale_core::protocol::decode_output;
use cliscale_core::token::{
    SessionSigningKey, TERMINAL_AUDIENCE, TokenScope, jwks_json, new_claims,
};
use cliscale_testkit::harness::{open_pty, pty_child, raw_pty_throughput};
use cliscale_testkit::stats::{median, median_interval};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::{self, Message};

const PAYLOAD_MB: usize = 64;
const ECHO_ROUNDS: usize = 3000;
/// Unmeasured echoes first, for the raw limit and the runner alike: back-to-back echoes take
/// about 2,000 round trips to reach a steady state on this VM. Its guest CPUs never poll when
/// idle (`guest_halt_poll_ns` is 0), so the adaptation is presumably the host's halt polling.
const ECHO_WARMUP: usize = 3000;
const ECHO_BLOCK: usize = 500;
const TYPED_KEYS: usize = 300;
const TYPING_PAUSE: Duration = Duration::from_millis(10);
/// Throughput rounds per path: single rounds scatter by ±15 % on this VM, and five-round medians
/// ranged from 0.81x to 1.08x on one day, so the full run takes the median of 15 paired rounds.
const ROUNDS: usize = 15;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type BlockingWs = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

struct Runner {
    child: Child,
    addr: String,
    key: SessionSigningKey,
    _dir: tempfile::TempDir,
}

impl Runner {
    /// Starts a runner hosting `command`, on CPU `cpu` when given, with its stdout tee off.
    fn start(command: &str, cpu: Option<usize>) -> Runner {
        Runner::start_teeing(command, cpu, false)
    }

    /// Like `start`; with `tee`, the runner copies the output to its stdout, a file here (as in
    /// local mode; on Kubernetes it is the container runtime's pipe).
    fn start_teeing(command: &str, cpu: Option<usize>, tee: bool) -> Runner {
        let dir = tempfile::tempdir().unwrap();
        let key = SessionSigningKey::generate("bench");
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, jwks_json([&key])).unwrap();
        let mut runner = Command::new(env!("CARGO_BIN_EXE_cliscale-runner"));
        if let Some(cpu) = cpu {
            pin_command(&mut runner, cpu);
        }
        let stdout = if tee {
            Stdio::from(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
        } else {
            Stdio::null()
        };
        let mut child = runner
            .args(["--session-id", "bench", "--listen", "127.0.0.1:0"])
            .args(["--tee-stdout", if tee { "true" } else { "false" }])
            .args(["--linger", "30s", "--command", command])
            .arg("--jwks-file")
            .arg(&jwks)
            .arg("--work-dir")
            .arg(dir.path().join("w"))
            .env("CLISCALE_LOG", "warn,cliscale_runner::session=info")
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let addr = loop {
            line.clear();
            assert!(std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0);
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["message"] == "listening" {
                break v["addr"].as_str().unwrap().to_owned();
            }
        };
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Runner { child, addr, key, _dir: dir }
    }

    async fn attach(&self) -> Ws {
        let token = self
            .key
            .sign(&new_claims("b", TERMINAL_AUDIENCE, "b", "bench", TokenScope::Interact, 600))
            .unwrap();
        let url = format!("ws://{}/ws?token={token}", self.addr);
        tokio_tungstenite::connect_async_with_config(url, None, true).await.unwrap().0
    }

    /// The runner's heap in use, from its metrics.
    async fn heap_bytes(&self) -> u64 {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("cliscale_runner_heap_in_use_bytes "))
            .expect("the heap metric");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// A blocking client, attached once the command runs: the same kind of reader as the raw
    /// limit's, so the echo ratio compares the runner's path with the PTY's and not an async
    /// client's extra `epoll_wait` per keystroke.
    fn attach_blocking(&self) -> BlockingWs {
        let token = self
            .key
            .sign(&new_claims("b", TERMINAL_AUDIENCE, "b", "bench", TokenScope::Interact, 600))
            .unwrap();
        let url = format!("ws://{}/ws?token={token}", self.addr);
        let (mut ws, _) = tungstenite::connect(url).unwrap();
        if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = ws.get_mut() {
            tcp.set_nodelay(true).unwrap();
        }
        loop {
            if let Message::Text(t) = ws.read().unwrap()
                && t.contains("\"phase\":\"Running\"")
            {
                return ws;
            }
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use cliscale_testkit::procinfo::{cpu_time, rss_anon_kib as rss_kib};

fn make_payload(dir: &std::path::Path) -> (std::path::PathBuf, usize) {
    let raw: Vec<u8> =
        (0..PAYLOAD_MB * 1024 * 1024 / 4 * 3).map(|i| (i * 7919 % 251) as u8).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    let text: String = b64
        .as_bytes()
        .chunks(76)
        .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
        .collect();
    let path = dir.join("payload.b64");
    std::fs::write(&path, &text).unwrap();
    (path, text.len())
}

/// Where the echo's processes run in the pinned placement: the harness (the client) on one CPU;
/// the runner with its command, or the raw limit's `cat`, on another. Like a client on another
/// machine and a session on its own core, and the same for the runner and its raw limit, so the
/// scheduler's choice of CPUs (which moves echo figures by 3x from run to run on this VM) stays
/// out of the ratio. `CLISCALE_BENCH_PIN=C,S` chooses the CPUs, `none` skips the placement;
/// the default is CPUs 0 and 1 when there are two.
#[derive(Clone, Copy)]
struct Pinned {
    client: usize,
    server: usize,
}

fn pinned_placement() -> Option<Pinned> {
    match std::env::var("CLISCALE_BENCH_PIN").as_deref() {
        Ok("none") => None,
        Ok(spec) => {
            let (c, s) = spec.split_once(',').expect("CLISCALE_BENCH_PIN=CLIENT_CPU,SERVER_CPU");
            Some(Pinned { client: c.trim().parse().unwrap(), server: s.trim().parse().unwrap() })
        }
        Err(_) => (std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2)
            .then_some(Pinned { client: 0, server: 1 }),
    }
}

fn cpu_set(cpu: usize) -> nix::sched::CpuSet {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    set
}

/// Runs `f` with the calling thread on CPU `cpu`, then gives it back every CPU it had.
fn on_cpu<T>(cpu: usize, f: impl FnOnce() -> T) -> T {
    let me = nix::unistd::Pid::from_raw(0);
    let before = nix::sched::sched_getaffinity(me).unwrap();
    nix::sched::sched_setaffinity(me, &cpu_set(cpu)).unwrap();
    let out = f();
    nix::sched::sched_setaffinity(me, &before).unwrap();
    out
}

fn pin_command(cmd: &mut Command, cpu: usize) {
    use std::os::unix::process::CommandExt;
    let set = cpu_set(cpu);
    // SAFETY: sched_setaffinity is a plain system call, safe between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                .map_err(std::io::Error::from)
        });
    }
}

/// Round trips of one byte written to `echo` and read back.
fn echo_rounds(echo: &mut (impl Read + Write), rounds: usize) -> Vec<Duration> {
    let mut b = [0u8; 1];
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            echo.write_all(b"x").unwrap();
            echo.read_exact(&mut b).unwrap();
            t.elapsed()
        })
        .collect()
}

/// The raw echo limit: one byte written to a PTY master and read back from `cat` in raw mode.
struct RawEcho {
    master: std::fs::File,
    child: Child,
}

impl RawEcho {
    fn start(cpu: Option<usize>) -> RawEcho {
        let (mut master, pts) = open_pty();
        let child = pty_child(&pts, "stty raw -echo; printf R; exec cat", |cmd| {
            if let Some(cpu) = cpu {
                pin_command(cmd, cpu);
            }
        });
        drop(pts);
        let mut b = [0u8; 1];
        master.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"R");
        RawEcho { master, child }
    }

    fn rounds(&mut self, rounds: usize) -> Vec<Duration> {
        echo_rounds(&mut self.master, rounds)
    }
}

impl Drop for RawEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The network's own limit: one byte sent over loopback TCP to a thread that sends it back,
/// with `TCP_NODELAY` on both ends like the runner's sockets. Every web terminal pays this round
/// trip on top of the PTY's echo, so PTY echo plus this is the floor for any of them.
struct TcpEcho {
    stream: std::net::TcpStream,
}

impl TcpEcho {
    fn start(cpu: Option<usize>) -> TcpEcho {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Some(cpu) = cpu {
                let me = nix::unistd::Pid::from_raw(0);
                nix::sched::sched_setaffinity(me, &cpu_set(cpu)).unwrap();
            }
            let (mut peer, _) = listener.accept().unwrap();
            peer.set_nodelay(true).unwrap();
            let mut b = [0u8; 64];
            // Ends when the harness drops its end.
            while let Ok(n @ 1..) = peer.read(&mut b) {
                if peer.write_all(&b[..n]).is_err() {
                    break;
                }
            }
        });
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        TcpEcho { stream }
    }

    fn rounds(&mut self, rounds: usize) -> Vec<Duration> {
        echo_rounds(&mut self.stream, rounds)
    }
}

/// Echo round trips of the three paths, measured in the same phase.
#[derive(Default)]
struct EchoSamples {
    /// The raw limit: PTY echo with no runner and no network.
    pty: Vec<Duration>,
    /// A loopback TCP round trip with no PTY.
    tcp: Vec<Duration>,
    /// Through the runner's WebSocket.
    runner: Vec<Duration>,
}

/// Output throughput to one WebSocket client: a blocking client that counts each frame's
/// payload without copying it, the same kind of lean reader as the raw limit's.
fn runner_throughput(file: &std::path::Path, tee: bool) -> (f64, u64, Duration, u64) {
    let command = format!("stty -echo; printf R; read -r go; cat '{}'", file.display());
    let runner = Runner::start_teeing(&command, None, tee);
    let mut ws = runner.attach_blocking();
    // Echo is off once "R" arrives, so the Enter below adds no bytes to the output.
    assert_eq!(next_output_blocking(&mut ws), b"R");
    let cpu_before = cpu_time(runner.pid());
    let start = Instant::now();
    ws.send(Message::Binary(b"\r".to_vec().into())).unwrap();
    let (mut total, mut frames) = (0u64, 0u64);
    loop {
        match ws.read().unwrap() {
            Message::Binary(frame) => {
                total += decode_output(&frame).unwrap().1.len() as u64;
                frames += 1;
            }
            Message::Text(t) if t.contains("\"exitCode\":0") => break,
            _ => {}
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_time(runner.pid()) - cpu_before;
    (total as f64 / secs / 1e6, total, cpu, frames)
}

/// Throughput figures of alternating raw and runner rounds (see `throughput_rounds`).
struct ThroughputRounds {
    /// MB/s of the raw limit and of the runner, per round.
    raw: Vec<f64>,
    runner: Vec<f64>,
    /// Runner over raw, per round.
    ratio: Vec<f64>,
    /// The runner's CPU per MB delivered, per round.
    cpu_per_mb: Vec<f64>,
}

/// Raw limit and runner alternate round by round, so drift in a shared machine hits both.
fn throughput_rounds(
    payload: &std::path::Path,
    rounds: usize,
    tee: bool,
    verbose: bool,
) -> ThroughputRounds {
    let mut tp = ThroughputRounds {
        raw: Vec::new(),
        runner: Vec::new(),
        ratio: Vec::new(),
        cpu_per_mb: Vec::new(),
    };
    for round in 0..rounds {
        let (raw, raw_bytes) = raw_pty_throughput(payload);
        let (ws, ws_bytes, cpu, frames) = runner_throughput(payload, tee);
        assert_eq!(raw_bytes, ws_bytes, "both paths must move the same bytes");
        let cpu_per_mb = cpu.as_secs_f64() * 1000.0 / (ws_bytes as f64 / 1e6);
        if verbose {
            println!(
                "round {round}: raw {raw:.1} MB/s, runner {ws:.1} MB/s, {:.2}x \
                 ({frames} frames of {:.1} KiB on average, runner CPU {cpu_per_mb:.2} ms/MB)",
                ws / raw,
                ws_bytes as f64 / frames as f64 / 1024.0
            );
        }
        tp.raw.push(raw);
        tp.runner.push(ws);
        tp.ratio.push(ws / raw);
        tp.cpu_per_mb.push(cpu_per_mb);
    }
    tp
}

/// A runner hosting `cat` in raw mode, attached and ready for echo rounds.
fn echo_runner(cpu: Option<usize>) -> (Runner, BlockingWs) {
    let runner = Runner::start("stty raw -echo; printf R; exec cat", cpu);
    let mut ws = runner.attach_blocking();
    assert_eq!(next_output_blocking(&mut ws), b"R");
    (runner, ws)
}

fn next_output_blocking(ws: &mut BlockingWs) -> Vec<u8> {
    loop {
        if let Message::Binary(frame) = ws.read().unwrap() {
            return decode_output(&frame).unwrap().1.to_vec();
        }
    }
}

fn runner_echo(ws: &mut BlockingWs, rounds: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        ws.send(Message::Binary(b"x".to_vec().into())).unwrap();
        let got = next_output_blocking(ws);
        assert_eq!(got, b"x");
        samples.push(t.elapsed());
    }
    samples
}

/// Warms the paths up, then measures them in alternating blocks so drift hits all of them.
fn echo_phase(raw: &mut RawEcho, tcp: &mut TcpEcho, ws: &mut BlockingWs) -> EchoSamples {
    raw.rounds(ECHO_WARMUP);
    tcp.rounds(ECHO_WARMUP);
    runner_echo(ws, ECHO_WARMUP);
    let mut samples = EchoSamples::default();
    for _ in 0..ECHO_ROUNDS / ECHO_BLOCK {
        samples.pty.extend(raw.rounds(ECHO_BLOCK));
        samples.tcp.extend(tcp.rounds(ECHO_BLOCK));
        samples.runner.extend(runner_echo(ws, ECHO_BLOCK));
    }
    samples
}

/// Keys typed one at a time with a pause before each, alternating between the three paths, as a
/// typist sends them: every echo then starts from idle CPUs, which back-to-back rounds never do.
fn typing_phase(raw: &mut RawEcho, tcp: &mut TcpEcho, ws: &mut BlockingWs) -> EchoSamples {
    let mut samples = EchoSamples::default();
    for _ in 0..TYPED_KEYS {
        std::thread::sleep(TYPING_PAUSE);
        samples.pty.extend(raw.rounds(1));
        std::thread::sleep(TYPING_PAUSE);
        samples.tcp.extend(tcp.rounds(1));
        std::thread::sleep(TYPING_PAUSE);
        samples.runner.extend(runner_echo(ws, 1));
    }
    samples
}

/// Memory per idle client at 1, 50 and 200 clients, two ways: growth of the runner's heap in
/// use (exact, from its `cliscale_runner_heap_in_use_bytes` metric) and of its anonymous
/// resident memory (page-granular: at 1 client it moves in whole pages or not at all). The
/// single-client figures are medians over 5 fresh runners.
async fn idle_client_memory() -> Vec<(usize, f64, f64)> {
    let (mut heap1, mut rss1) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let runner = Runner::start("read -r x", None);
        let (_warm, heap, rss) = warm_baseline(&runner).await;
        let mut ws = runner.attach().await;
        ws.next().await.unwrap().unwrap();
        // Resident memory first: the metrics request behind `heap_bytes` touches pages of its own.
        rss1.push(rss_kib(runner.pid()).saturating_sub(rss) as f64);
        heap1.push(runner.heap_bytes().await.saturating_sub(heap) as f64 / 1024.0);
    }
    let mut figures = vec![(1, median(&mut heap1), median(&mut rss1))];
    let runner = Runner::start("read -r x", None);
    let (warm, heap, rss) = warm_baseline(&runner).await;
    let mut clients = Vec::new();
    for target in [50usize, 200] {
        while clients.len() < target {
            let mut ws = runner.attach().await;
            ws.next().await.unwrap().unwrap(); // the hello: the connection is fully set up
            clients.push(ws);
        }
        let n = target as f64;
        let rss_grown = rss_kib(runner.pid()).saturating_sub(rss) as f64;
        let heap_grown = runner.heap_bytes().await.saturating_sub(heap) as f64 / 1024.0;
        figures.push((target, heap_grown / n, rss_grown / n));
    }
    drop(warm);
    figures
}

/// One client first, so the server's lazily built state is in the baseline, and one metrics
/// request, so the pages that request touches are resident before the baseline is read.
async fn warm_baseline(runner: &Runner) -> (Ws, u64, u64) {
    let mut warm = runner.attach().await;
    warm.next().await.unwrap().unwrap();
    runner.heap_bytes().await;
    let rss = rss_kib(runner.pid());
    (warm, runner.heap_bytes().await, rss)
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("runner_harness: bench");
        return;
    }
    if let Ok(rounds) = std::env::var("CLISCALE_BENCH_THROUGHPUT_ONLY") {
        // A/B aid: only throughput rounds, each printed, with the median round ratio and its
        // interval (single rounds scatter by ±10 % on this VM).
        let dir = tempfile::tempdir().unwrap();
        let (payload, _) = make_payload(dir.path());
        // `CLISCALE_BENCH_TEE=1`: with the runner's stdout tee on.
        let tee = std::env::var("CLISCALE_BENCH_TEE").is_ok();
        let mut tp = throughput_rounds(&payload, rounds.parse().unwrap_or(15), tee, true);
        let ratio = median(&mut tp.ratio);
        let (low, high) = median_interval(&mut tp.ratio);
        println!("median round ratio {ratio:.2}x, 95 % interval {low:.2}-{high:.2}x");
        return;
    }
    if let Ok(rounds) = std::env::var("CLISCALE_BENCH_ECHO_ONLY") {
        // Profiling aid: only echo rounds against one runner (for strace, perf or taskset),
        // reported per block of 1000 so that a change made mid-run shows.
        let pinned = pinned_placement();
        if let Some(p) = pinned {
            println!(
                "pinned: client on CPU {}, runner and raw `cat` on CPU {}",
                p.client, p.server
            );
        }
        let (runner, mut ws) = echo_runner(pinned.map(|p| p.server));
        let mut raw = RawEcho::start(pinned.map(|p| p.server));
        let mut tcp = TcpEcho::start(pinned.map(|p| p.server));
        println!("echo runner pid {}, raw cat pid {}", runner.pid(), raw.child.id());
        let blocks = rounds.parse::<usize>().unwrap_or(20_000).div_ceil(1000);
        // `CLISCALE_BENCH_TYPING=1`: blocks of typing-pace keys instead of back-to-back echoes.
        let typing = std::env::var("CLISCALE_BENCH_TYPING").is_ok();
        for _ in 0..blocks {
            let mut measure = || {
                if typing {
                    typing_phase(&mut raw, &mut tcp, &mut ws)
                } else {
                    EchoSamples {
                        pty: raw.rounds(1000),
                        tcp: tcp.rounds(1000),
                        runner: runner_echo(&mut ws, 1000),
                    }
                }
            };
            let mut samples = match pinned {
                Some(p) => on_cpu(p.client, measure),
                None => measure(),
            };
            println!(
                "echo p50 {:?}, raw echo p50 {:?}, loopback TCP round trip p50 {:?}",
                percentile(&mut samples.runner, 0.5),
                percentile(&mut samples.pty, 0.5),
                percentile(&mut samples.tcp, 0.5)
            );
        }
        return;
    }
    cliscale_core::tls::install_crypto_provider();
    if std::env::var("CLISCALE_BENCH_MEMORY_ONLY").is_ok() {
        // Only the idle-client memory figures (quick A/B comparisons of memory changes).
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for (n, heap, rss) in rt.block_on(idle_client_memory()) {
            println!("memory per idle client at {n} clients: heap {heap:.1} KiB, RSS {rss:.1} KiB");
        }
        return;
    }
    // A single-threaded client adds the least of its own latency to the figures.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (payload, payload_len) = make_payload(dir.path());
    println!(
        "payload: {} MB of base64 text, `cat` into the PTY (cooked mode); {ROUNDS} interleaved rounds",
        payload_len / 1_000_000
    );

    let mut plain = throughput_rounds(&payload, ROUNDS, false, false);
    // The same with the runner's stdout tee on, as a session runs by default.
    let mut teeing = throughput_rounds(&payload, ROUNDS, true, false);
    // Echo in its own phase, once where the scheduler places the processes and once pinned.
    let (runner_for_echo, mut echo_ws) = echo_runner(None);
    let echo_cpu_before = cpu_time(runner_for_echo.pid());
    let mut raw = RawEcho::start(None);
    let mut tcp = TcpEcho::start(None);
    let mut echo = echo_phase(&mut raw, &mut tcp, &mut echo_ws);
    let echo_cpu = cpu_time(runner_for_echo.pid()) - echo_cpu_before;
    let mut typed = typing_phase(&mut raw, &mut tcp, &mut echo_ws);
    let echo_cpu_us = echo_cpu.as_secs_f64() * 1e6 / (ECHO_WARMUP + ECHO_ROUNDS) as f64;
    let pinned = pinned_placement();
    let mut pinned_echo = pinned.map(|p| {
        let (_runner, mut ws) = echo_runner(Some(p.server));
        let mut raw = RawEcho::start(Some(p.server));
        let mut tcp = TcpEcho::start(Some(p.server));
        on_cpu(p.client, || {
            (echo_phase(&mut raw, &mut tcp, &mut ws), typing_phase(&mut raw, &mut tcp, &mut ws))
        })
    });
    let memory = rt.block_on(idle_client_memory());

    let ratio_row = |label: &str, tp: &mut ThroughputRounds| {
        let (low, high) = median_interval(&mut tp.ratio);
        println!(
            "| {label} (median round, 95 % interval {low:.2}-{high:.2}x) | {:.1} MB/s | {:.1} MB/s | {:.2}x | >= 0.9x |",
            median(&mut tp.raw),
            median(&mut tp.runner),
            median(&mut tp.ratio)
        );
    };
    let cpu_ms_per_mb = median(&mut plain.cpu_per_mb);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!();
    println!("| figure | raw limit | runner | ratio | target |");
    println!("|---|---|---|---|---|");
    ratio_row("throughput, PTY -> 1 WebSocket client", &mut plain);
    ratio_row("throughput, stdout tee on (to a file) as well", &mut teeing);
    let echo_rows = |placement: &str, samples: &mut EchoSamples| {
        for (label, p, target) in [("p50", 0.5, "<= 1.5x"), ("p99", 0.99, "-")] {
            let (raw, ws) =
                (us(percentile(&mut samples.pty, p)), us(percentile(&mut samples.runner, p)));
            println!(
                "| keystroke echo {label}, {placement} | {raw:.1} us | {ws:.1} us | {:.2}x | {target} |",
                ws / raw
            );
        }
        // What no web terminal can beat: the PTY's echo plus the network's own round trip.
        let (raw, tcp) =
            (us(percentile(&mut samples.pty, 0.5)), us(percentile(&mut samples.tcp, 0.5)));
        println!(
            "| floor: echo p50 + loopback TCP round trip p50 ({tcp:.1} us), {placement} | {raw:.1} us | {:.1} us | {:.2}x | - |",
            raw + tcp,
            (raw + tcp) / raw
        );
    };
    echo_rows("back to back, scheduler's placement", &mut echo);
    echo_rows("typing pace, scheduler's placement", &mut typed);
    if let (Some(p), Some((echo, typed))) = (pinned, &mut pinned_echo) {
        let placement = format!("client CPU {}, session CPU {}", p.client, p.server);
        echo_rows(&format!("back to back, {placement}"), echo);
        echo_rows(&format!("typing pace, {placement}"), typed);
    }
    println!("| runner CPU per keystroke echo | - | {echo_cpu_us:.1} us | - | - |");
    println!(
        "| runner CPU per MB of output (median) | - | {cpu_ms_per_mb:.2} ms/MB | - | <= 10 ms/MB |"
    );
    println!(
        "| runner CPU per MB of output, stdout tee on (median) | - | {:.2} ms/MB | - | <= 10 ms/MB |",
        median(&mut teeing.cpu_per_mb)
    );
    for (n, heap, rss) in memory {
        println!(
            "| memory per idle client at {n} clients (heap / anon RSS) | - | {heap:.1} / {rss:.1} KiB | - | <= 16 KiB |"
        );
    }
}
