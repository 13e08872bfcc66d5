//! `cliscale`: the user-facing command line.

mod up;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cliscale",
    version,
    about = "Run command-line sessions and drive them from a browser terminal"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the local stack: REST API, gateway and local executor on one address.
    Up(Box<up::UpArgs>),
    /// Print the version.
    Version,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("cliscale {}", env!("CARGO_PKG_VERSION")),
        Command::Up(args) => {
            let filter = tracing_subscriber::EnvFilter::try_from_env("CLISCALE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            if let Err(e) = runtime.block_on(up::run(*args)) {
                eprintln!("cliscale up: {e:#}");
                std::process::exit(1);
            }
        }
    }
}
