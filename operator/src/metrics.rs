//! Prometheus metrics of the operator.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

pub struct OperatorMetrics {
    registry: Registry,
    pub reconciles: Counter,
    pub failures: Family<KindLabel, Counter>,
    pub duration: Histogram,
    /// Sessions by phase, as this replica's cache sees them (set while it leads).
    pub sessions: Family<PhaseLabel, Gauge>,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
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
        let sessions = Family::<PhaseLabel, Gauge>::default();
        registry.register("sessions", "CommandSessions by phase", sessions.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica leads", leader.clone());
        Self { registry, reconciles, failures, duration, sessions, leader }
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

    /// Sets the by-phase gauges from a count of every phase (unset phases count as Pending).
    pub fn set_phases(&self, phases: impl Iterator<Item = Option<cliscale_core::SessionPhase>>) {
        let mut counts = std::collections::BTreeMap::<&'static str, i64>::new();
        for phase in cliscale_core::SessionPhase::ALL {
            counts.insert(phase.as_str(), 0);
        }
        for phase in phases {
            *counts
                .entry(phase.unwrap_or(cliscale_core::SessionPhase::Pending).as_str())
                .or_default() += 1;
        }
        for (phase, n) in counts {
            self.sessions.get_or_create(&PhaseLabel { phase }).set(n);
        }
    }

    pub fn render(&self) -> String {
        cliscale_core::metrics::render(&self.registry)
    }
}
