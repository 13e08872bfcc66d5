//! cliscale-gateway on a cluster needs the operator's session resolver, which is still to be
//! built. In local mode the gateway runs inside `cliscale up`. This binary refuses to run
//! rather than pretend.

fn main() {
    eprintln!(
        "cliscale-gateway {}: the cluster gateway needs the operator (not built yet); \
         use `cliscale up` for local mode",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
