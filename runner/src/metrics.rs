//! Prometheus metrics of the runner, served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub output_bytes: Counter,
    pub input_bytes: Counter,
    pub clients: Family<KindLabel, Gauge>,
    pub gaps: Counter,
    pub clients_dropped: Family<ReasonLabel, Counter>,
    pub auth_failures: Family<ReasonLabel, Counter>,
    /// Bytes the allocator has handed out and not got back, set when scraped.
    pub heap_in_use: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cliscale_runner");
        let output_bytes = Counter::default();
        let input_bytes = Counter::default();
        let clients = Family::<KindLabel, Gauge>::default();
        let gaps = Counter::default();
        let clients_dropped = Family::<ReasonLabel, Counter>::default();
        let auth_failures = Family::<ReasonLabel, Counter>::default();
        registry.register("output_bytes", "Bytes written to the output log", output_bytes.clone());
        registry.register(
            "input_bytes",
            "Bytes of client input written to the PTY",
            input_bytes.clone(),
        );
        registry.register("clients", "Attached clients by kind (ws, sse)", clients.clone());
        registry.register(
            "gaps",
            "Gaps reported to clients that fell behind the log window",
            gaps.clone(),
        );
        registry.register(
            "clients_dropped",
            "Clients disconnected by the runner, by reason",
            clients_dropped.clone(),
        );
        registry.register(
            "auth_failures",
            "Refused connection attempts, by token error",
            auth_failures.clone(),
        );
        let heap_in_use = Gauge::default();
        registry.register(
            "heap_in_use_bytes",
            "Heap bytes in use (glibc mallinfo2; 0 where unavailable)",
            heap_in_use.clone(),
        );
        Self {
            registry,
            output_bytes,
            input_bytes,
            clients,
            gaps,
            clients_dropped,
            auth_failures,
            heap_in_use,
        }
    }
}

impl Metrics {
    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        self.heap_in_use.set(heap_in_use_bytes() as i64);
        cliscale_core::metrics::render(&self.registry)
    }
}

/// Heap bytes in use: exact, unlike RSS, which moves in pages and counts code as it faults in.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap_in_use_bytes() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's counters and returns them by value.
    let info = unsafe { libc::mallinfo2() };
    (info.uordblks + info.hblkhd) as u64
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap_in_use_bytes() -> u64 {
    0
}

#[cfg(test)]
mod tests {
    #[test]
    fn heap_in_use_grows_with_a_live_allocation() {
        let before = super::heap_in_use_bytes();
        let block = vec![1u8; 4 << 20];
        let during = super::heap_in_use_bytes();
        assert!(during >= before + (3 << 20), "{before} -> {during}");
        drop(block);
        let rendered = super::Metrics::default().render();
        assert!(rendered.contains("cliscale_runner_heap_in_use_bytes "), "{rendered}");
    }
}
