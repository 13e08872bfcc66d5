//! `cliscale`: the user-facing command line. Local mode (`cliscale up`) is still to come; for
//! now it reports the version and says plainly what is missing.

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
    /// Start the local stack (REST API, gateway, local executor). Not implemented yet.
    Up,
    /// Print the version.
    Version,
}

fn main() {
    match Cli::parse().command {
        Command::Version => println!("cliscale {}", env!("CARGO_PKG_VERSION")),
        Command::Up => {
            eprintln!(
                "cliscale up: local mode is not implemented yet; run cliscale-runner directly"
            );
            std::process::exit(2);
        }
    }
}
