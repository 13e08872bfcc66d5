//! Types shared by every cliscale component: the session phase model, the terminal wire
//! protocol spoken between browser, gateway and runner, the session tokens that guard it, how
//! metrics are rendered, how shared settings parse, and the order statistics the benchmark
//! harnesses report.
//!
//! Everything here is pure: no sockets, no processes, no files.

pub mod args;
pub mod metrics;
pub mod phase;
pub mod protocol;
pub mod stats;
pub mod tls;
pub mod token;

pub use phase::{SessionPhase, TerminalReason};
