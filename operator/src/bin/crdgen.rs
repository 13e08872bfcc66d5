//! Prints the CommandSession CRD as YAML: `cargo run -p cliscale-operator --bin cliscale-crdgen > crds/commandsession.yaml`.

fn main() {
    print!("{}", cliscale_operator::crd_yaml());
}
