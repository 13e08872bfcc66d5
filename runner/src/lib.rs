//! The cliscale runner: the process inside each session's pod (or, in local mode, on the
//! user's machine) that fetches the code, runs the command in a real PTY, keeps the session's
//! output log and serves it. docs/runner.md describes its configuration and exit codes.

pub mod config;
pub mod error;
pub mod events;
pub mod log;
pub mod logged_process;
pub mod mask;
pub mod metrics;
pub mod net_guard;
pub mod pty;
pub mod reaper;
pub mod server;
pub mod session;
pub mod source;
pub mod upload;
pub mod user;

pub use error::{RunnerError, exit_code};
