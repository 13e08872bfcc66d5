use clap::Parser;
use cliscale_runner::config::{RunnerArgs, RunnerConfig};
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
    let config = match RunnerConfig::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            std::process::exit(e.exit_code());
        }
    };
    // One thread: every hop from socket to PTY and back stays on it, with no cross-thread
    // wake-ups, which keeps keystroke echo close to the PTY's own latency. The work is
    // I/O-bound; extraction runs on the blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            std::process::exit(exit_code::RUNNER_FAILED);
        }
    };
    let code = runtime.block_on(cliscale_runner::session::run(config));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
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
