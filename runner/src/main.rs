use clap::Parser;
use cliscale_runner::config::{RunnerArgs, RunnerConfig};
use cliscale_runner::error::RunnerError;
use cliscale_runner::events::{EventSink, take_inherited_fd};
use cliscale_runner::exit_code;

fn main() {
    let args = match RunnerArgs::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let code = if e.use_stderr() { exit_code::CONFIG_INVALID } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    // Before anything else: a non-dumpable process' memory, environment and descriptors under
    // /proc, and ptrace, are closed to every process without CAP_SYS_PTRACE, the command
    // included even when it runs as the runner's own user (a pod). Its children are dumpable
    // again once they exec.
    let _ = nix::sys::prctl::set_dumpable(false);
    init_tracing(&args.log_format);
    cliscale_core::tls::install_crypto_provider();
    // First, before anything can be spawned: the event channel is never inherited.
    let mut events = match EventSink::open(
        args.events_fd,
        args.termination_log.clone(),
        args.status_key.as_deref(),
    ) {
        Ok(events) => events,
        Err(e) => fail(&mut EventSink::default(), e),
    };
    let lifeline = match args.lifeline_fd.map(|fd| take_inherited_fd(fd, "lifeline")).transpose() {
        Ok(lifeline) => lifeline,
        Err(e) => fail(&mut events, e),
    };
    let config = match RunnerConfig::from_args(args) {
        Ok(config) => config,
        Err(e) => fail(&mut events, e),
    };
    // One thread: every hop from socket to PTY and back stays on it, with no cross-thread
    // wake-ups, which keeps keystroke echo close to the PTY's own latency. The work is
    // I/O-bound; extraction runs on the blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => fail(&mut events, RunnerError::io("cannot start the async runtime", e)),
    };
    // A panic ends the runner (dropping the runtime on the way out could wait forever on the
    // uploader's thread); whoever launched it then sees an exit without a final event.
    let session = cliscale_runner::session::run(config, events, lifeline);
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(session)))
        .unwrap_or(cliscale_runner::exit_code::RUNNER_FAILED);
    // The session has waited, with limits, for all it needs (the output store, the tee). The
    // runtime is not dropped: what is left, such as an uploader retrying an API that is gone,
    // would hold up the exit.
    std::process::exit(code);
}

/// Ends a runner that could not start a session, reporting why.
fn fail(events: &mut EventSink, error: RunnerError) -> ! {
    std::process::exit(cliscale_runner::session::could_not_start(events, error));
}

/// The runner's own logs go to stderr; stdout carries the session's output.
fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLISCALE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A launcher that is gone leaves stderr a broken pipe: its logs are then lost, and writing
    // them must not panic (the default reports a failed write with `eprintln!`, which does).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    if format == "text" {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}
