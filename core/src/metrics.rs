//! The one way every cliscale component renders its Prometheus metrics.

use prometheus_client::registry::Registry;

/// The registry in the OpenMetrics text format that every `/metrics` endpoint serves.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn counters_render_with_their_help_and_terminator() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("frames", "Frames sent", counter.clone());
        counter.inc_by(3);
        let text = render(&registry);
        assert!(text.contains("# HELP frames Frames sent."), "{text}");
        assert!(text.contains("frames_total 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
