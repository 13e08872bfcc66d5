//! Prometheus metrics of the operator.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

pub struct OperatorMetrics {
    registry: Registry,
    pub reconciles: Counter,
    pub failures: Family<KindLabel, Counter>,
    pub duration: Histogram,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cliscale_operator");
        let reconciles = Counter::default();
        let failures = Family::<KindLabel, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Failed reconciles, by error kind",
            failures.clone(),
        );
        registry.register("reconcile_duration_seconds", "Time per reconcile", duration.clone());
        Self { registry, reconciles, failures, duration }
    }
}

impl OperatorMetrics {
    pub fn record(&self, took: Duration, failure: Option<&'static str>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(kind) = failure {
            self.failures.get_or_create(&KindLabel { kind }).inc();
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("String write");
        out
    }
}
