//! Prometheus metrics of the API.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub struct ApiMetrics {
    registry: Registry,
    pub sessions_created: Counter,
    pub tokens_minted: Counter,
    pub rate_limited: Counter,
    pub jwks_served: Counter,
    /// Bytes runners appended to the output store.
    pub output_appended_bytes: Counter,
    /// Open output event streams.
    pub output_streams: Gauge,
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
        let output_appended_bytes = Counter::default();
        registry.register(
            "output_appended_bytes",
            "Output bytes runners appended to the store",
            output_appended_bytes.clone(),
        );
        let output_streams = Gauge::default();
        registry.register("output_streams", "Open output event streams", output_streams.clone());
        Self {
            registry,
            sessions_created,
            tokens_minted,
            rate_limited,
            jwks_served,
            output_appended_bytes,
            output_streams,
        }
    }
}

impl ApiMetrics {
    pub fn render(&self) -> String {
        cliscale_core::metrics::render(&self.registry)
    }
}
