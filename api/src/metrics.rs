//! Prometheus metrics of the API.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

pub struct ApiMetrics {
    registry: Registry,
    pub sessions_created: Counter,
    pub tokens_minted: Counter,
    pub rate_limited: Counter,
    pub jwks_served: Counter,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cliscale_api");
        let sessions_created = Counter::default();
        let tokens_minted = Counter::default();
        let rate_limited = Counter::default();
        let jwks_served = Counter::default();
        registry.register("sessions_created", "Sessions created", sessions_created.clone());
        registry.register("tokens_minted", "Terminal tokens minted", tokens_minted.clone());
        registry.register(
            "rate_limited",
            "Requests refused by the rate limit",
            rate_limited.clone(),
        );
        registry.register("jwks_served", "JWKS documents served", jwks_served.clone());
        Self { registry, sessions_created, tokens_minted, rate_limited, jwks_served }
    }
}

impl ApiMetrics {
    pub fn render(&self) -> String {
        cliscale_core::metrics::render(&self.registry)
    }
}
