//! cliscale-operator: not built yet. The runner is the first part of cliscale to land; this binary
//! exists so the workspace has its final shape. It refuses to run rather than pretend.

fn main() {
    eprintln!(
        "cliscale-operator {}: not implemented yet; see the project's open issues",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
