//! cliscale's Kubernetes operator: the CommandSession CRD, the reconciler that turns sessions
//! into runner Jobs (with leader election), and the REST API's cluster executor.

pub mod crd;

use kube::CustomResourceExt;

/// The CRD manifest, as committed in crds/commandsession.yaml.
pub fn crd_yaml() -> String {
    let header = "# Generated from operator/src/crd.rs by `cargo run -p cliscale-operator --bin \
                  cliscale-crdgen`. Do not edit.\n";
    format!(
        "{header}{}",
        serde_norway::to_string(&crd::CommandSession::crd()).expect("a CRD serializes")
    )
}
pub mod cluster_api;
pub mod controller;
pub mod desired;
pub mod leader;
pub mod metrics;
pub mod status;
