//! Test support shared by the workspace's tests and benchmarks; no binary links it.
//!
//! - [`fake_kube`]: an in-memory Kubernetes API server for kube-runtime clients.
//! - [`browser`]: headless Chromium over the DevTools protocol, for the pages' tests.
//! - [`cluster_sim`]: a Job controller and kubelet over it, walking pods through scripted
//!   lifecycles.
//! - [`fixtures`]: builders for the sessions and pods tests observe.
//! - [`harness`]: what the benchmark harnesses share (the release stack, throughput, the
//!   raw PTY).
//! - [`netcut`]: a TCP proxy that cuts connections when the test says.
//! - [`postgres`]: a throwaway database per test, and the rule for skipping loudly.
//! - [`procinfo`]: CPU time and memory of a process, from /proc.
//! - [`pty`]: a program in a real pseudo-terminal that the test types into.
//! - [`stack`]: the real `cliscale up` with real runners, and a terminal client for it.
//! - [`stats`]: the order statistics the benchmark harnesses report.

pub mod browser;
pub mod cluster_sim;
pub mod fake_kube;
pub mod fixtures;
pub mod harness;
pub mod netcut;
pub mod postgres;
pub mod procinfo;
pub mod pty;
pub mod stack;
pub mod stats;
