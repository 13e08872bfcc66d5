//! One TLS crypto provider for the whole process.
//!
//! kube defaults to `ring` while reqwest defaults to `aws-lc-rs`; with both present rustls
//! cannot pick and panics. Every cliscale binary therefore installs `ring` explicitly.

use std::sync::Once;

/// Installs rustls' `ring` provider as the process default. Safe to call any number of times.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // An Err means another provider was installed first, which is equally fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
