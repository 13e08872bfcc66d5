//! What cliscale's binaries (`cliscale`, `cliscale-gateway`) share.

pub mod backends;
