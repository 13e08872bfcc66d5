use clap::Parser;
use cliscale_runner::config::{RunnerArgs, RunnerConfig};
use cliscale_runner::error::RunnerError;
use cliscale_runner::events::EventSink;
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
    init_tracing(&args.log_format);
    cliscale_core::tls::install_crypto_provider();
    // First, before anything can be spawned: the event channel is never inherited.
    let mut events = match EventSink::open(args.events_fd, args.termination_log.clone()) {
        Ok(events) => events,
        Err(e) => fail(&mut EventSink::default(), e),
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
    let code = runtime.block_on(cliscale_runner::session::run(config, events));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "text" {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}
