//! cliscale-operator: the controller is not built yet (docs/operator.md says what exists).
//! This binary refuses to run rather than pretend.

fn main() {
    eprintln!(
        "cliscale-operator {}: the controller is not implemented yet; the CRD is in crds/",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
