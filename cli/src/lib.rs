//! What cliscale's binaries (`cliscale`, `cliscale-gateway`) share.

pub mod backends;

use std::time::Duration;

use cliscale_gateway::GatewayConfig;

/// The gateway's settings, the same in `cliscale up` and `cliscale-gateway`.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// How long a terminal connection waits for a starting runner.
    #[arg(long, env = "CLISCALE_READY_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ready_wait: Duration,
    /// How often the gateway pings each browser; one silent for three intervals is closed.
    #[arg(long, env = "CLISCALE_PING_INTERVAL", default_value = "20s", value_parser = cliscale_core::args::positive_duration)]
    pub ping_interval: Duration,
    /// A browser that takes no output for this long is closed (4008 "client too slow").
    #[arg(long, env = "CLISCALE_CLIENT_STALL_TIMEOUT", default_value = "30s", value_parser = cliscale_core::args::positive_duration)]
    pub client_stall_timeout: Duration,
}

impl GatewayArgs {
    pub fn config(&self) -> GatewayConfig {
        GatewayConfig {
            ready_wait: self.ready_wait,
            ping_interval: self.ping_interval,
            stall_timeout: self.client_stall_timeout,
            ..Default::default()
        }
    }
}
