//! The terminal-token signing keys: loaded from files, or generated once and persisted (local
//! mode). The first key signs; all are published in the JWKS, so keys can rotate.

use std::path::Path;

use base64::Engine;
use cliscale_core::output::OUTPUT_AUDIENCE;
use cliscale_core::token::{JwksVerifier, SessionSigningKey, TokenScope, jwks_json, new_claims};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, Result};

pub struct KeyRing {
    keys: Vec<SessionSigningKey>,
}

/// A key id derived from the public key, so the same key always has the same `kid`.
fn kid_for(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..12])
}

fn load(path: &Path) -> Result<SessionSigningKey> {
    let bytes = std::fs::read(path)
        .map_err(|e| ApiError::Internal(format!("reading signing key {}: {e}", path.display())))?;
    // PEM ("PRIVATE KEY", as Helm's genPrivateKey "ed25519" writes it) or raw PKCS#8 DER.
    let der = if bytes.starts_with(b"-----BEGIN") {
        let (label, der) = pem_rfc7468::decode_vec(&bytes)
            .map_err(|e| ApiError::Internal(format!("signing key {}: {e}", path.display())))?;
        if label != "PRIVATE KEY" {
            return Err(ApiError::Internal(format!(
                "signing key {}: expected a PKCS#8 \"PRIVATE KEY\", found {label:?}",
                path.display()
            )));
        }
        der
    } else {
        bytes
    };
    SessionSigningKey::from_pkcs8_der(kid_for(&der), &der)
        .map_err(|e| ApiError::Internal(format!("signing key {}: {e}", path.display())))
}

impl KeyRing {
    /// Loads every key file; the first one signs.
    pub fn from_files(paths: &[impl AsRef<Path>]) -> Result<Self> {
        if paths.is_empty() {
            return Err(ApiError::Internal("no signing key files given".into()));
        }
        let keys = paths.iter().map(|p| load(p.as_ref())).collect::<Result<Vec<_>>>()?;
        Ok(Self { keys })
    }

    /// Loads `path`, or generates a key there (mode 0600) on first start.
    pub fn load_or_generate(path: &Path) -> Result<Self> {
        if !path.exists() {
            let fresh = SessionSigningKey::generate("pending");
            write_private(path, fresh.pkcs8_der())?;
            tracing::info!(path = %path.display(), "generated a terminal-token signing key");
        }
        Ok(Self { keys: vec![load(path)?] })
    }

    pub fn active(&self) -> &SessionSigningKey {
        &self.keys[0]
    }

    /// Secrets that runners' status keys are derived from (`cliscale_core::event::status_key`):
    /// every key's private half, the signing one first, so a rotated key still opens the events
    /// of sessions it started.
    pub fn status_secrets(&self) -> Vec<Vec<u8>> {
        self.keys.iter().map(|k| k.pkcs8_der().to_vec()).collect()
    }

    /// The JWKS document publishing every key.
    pub fn jwks(&self) -> String {
        jwks_json(self.keys.iter())
    }

    /// The credential a session's runner appends its output with: audience
    /// [`OUTPUT_AUDIENCE`], which no terminal verifier accepts, bound to `session_id`, and
    /// valid as long as the session can run (its timeout, or the longest one) and a day more.
    pub fn output_token(
        &self,
        issuer: &str,
        session_id: &str,
        timeout_secs: Option<u32>,
    ) -> Result<String> {
        let runs = timeout_secs.unwrap_or(cliscale_core::spec::MAX_TIMEOUT_SECS);
        let ttl = u64::from(runs) + 86_400;
        let claims =
            new_claims(issuer, OUTPUT_AUDIENCE, "runner", session_id, TokenScope::View, ttl);
        self.active().sign(&claims).map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// Verifies output credentials signed by this ring.
    pub fn output_verifier(&self, issuer: &str) -> Result<JwksVerifier> {
        JwksVerifier::from_jwks_json(&self.jwks(), &[OUTPUT_AUDIENCE], Some(issuer))
            .map_err(|e| ApiError::Internal(e.to_string()))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| ApiError::Internal(format!("creating {}: {e}", parent.display())))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ApiError::Internal(format!("writing {}: {e}", path.display())))?;
    file.write_all(bytes)
        .map_err(|e| ApiError::Internal(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_persisted_and_reloaded_with_the_same_kid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.der");
        let first = KeyRing::load_or_generate(&path).unwrap();
        let again = KeyRing::load_or_generate(&path).unwrap();
        assert_eq!(first.active().kid(), again.active().kid());
        assert_eq!(first.jwks(), again.jwks());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_pem_key_loads_with_the_same_kid_as_its_der_and_other_pem_labels_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let der_path = dir.path().join("k.der");
        let from_der = KeyRing::load_or_generate(&der_path).unwrap();
        let der = std::fs::read(&der_path).unwrap();
        let pem =
            pem_rfc7468::encode_string("PRIVATE KEY", pem_rfc7468::LineEnding::LF, &der).unwrap();
        let pem_path = dir.path().join("k.pem");
        std::fs::write(&pem_path, pem).unwrap();
        let from_pem = KeyRing::from_files(&[&pem_path]).unwrap();
        assert_eq!(from_pem.active().kid(), from_der.active().kid());
        let cert =
            pem_rfc7468::encode_string("CERTIFICATE", pem_rfc7468::LineEnding::LF, &der).unwrap();
        std::fs::write(&pem_path, cert).unwrap();
        let err = KeyRing::from_files(&[&pem_path]).err().unwrap().to_string();
        assert!(err.contains("CERTIFICATE"), "{err}");
    }
}
