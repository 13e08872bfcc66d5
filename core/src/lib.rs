//! The contracts between cliscale's parts: what a session is ([`spec`]), its phases, the
//! terminal wire protocol spoken between browser, gateway and runner, the log cursor every
//! reader follows, the session tokens that guard it, how a runner is launched and what it
//! reports, its exit codes, the REST API's requests and answers, how code URLs parse, when schedules fire and retries follow, how metrics are rendered and how shared
//! settings parse. docs/architecture.md maps them.
//!
//! Everything here is pure: no sockets, no processes, no files.

pub mod args;
pub mod cursor;
pub mod event;
pub mod exit;
pub mod launch;
pub mod metrics;
pub mod output;
pub mod phase;
pub mod protocol;
pub mod rest;
pub mod retry;
pub mod schedule;
pub mod source;
pub mod spec;
pub mod tls;
pub mod token;

pub use phase::{SessionPhase, TerminalReason};
