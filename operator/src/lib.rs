//! cliscale's Kubernetes operator: the reconciler that turns CommandSessions (`cliscale_crd`)
//! into runner Jobs (with leader election), and the REST API's cluster executor.

pub mod cluster_api;
pub mod controller;
pub mod definitions;
pub mod desired;
pub mod leader;
pub mod metrics;
pub mod status;
pub mod vault;
