//! API keys: random, shown once, stored as a SHA-256 of their secret, compared in constant time.
//!
//! A key reads `csk_<id>_<secret>`: the id finds the row, the secret is checked against its
//! hash. Secrets carry 256 bits of entropy, so a plain SHA-256 is enough (no password hashing).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use cliscale_core::rest::Role;

/// A freshly made key: `full` is shown to the user once and never stored.
pub struct NewKey {
    pub id: String,
    pub full: String,
    pub secret_hash: String,
}

pub(crate) fn random_token(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    URL_SAFE_NO_PAD.encode(raw)
}

/// Makes a new random key.
pub fn generate() -> NewKey {
    let id = hex::encode(rand::random::<[u8; 8]>());
    let secret = random_token(32);
    NewKey { full: format!("csk_{id}_{secret}"), secret_hash: hash_secret(&secret), id }
}

/// Splits a presented key into (id, secret).
pub fn parse(full: &str) -> Option<(&str, &str)> {
    let rest = full.strip_prefix("csk_")?;
    let (id, secret) = rest.split_once('_')?;
    let valid_id = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
    (valid_id && !secret.is_empty()).then_some((id, secret))
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares a presented secret with a stored hash in constant time.
pub fn secret_matches(secret: &str, stored_hash: &str) -> bool {
    hash_secret(secret).as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

/// Makes a key from a caller-chosen full string (`CLISCALE_API_KEY`), which must have the
/// `csk_<16 hex>_<secret>` shape and a secret of at least 32 characters.
pub fn from_full(full: &str) -> Option<NewKey> {
    let (id, secret) = parse(full)?;
    (secret.len() >= 32).then(|| NewKey {
        id: id.to_owned(),
        full: full.to_owned(),
        secret_hash: hash_secret(secret),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_match_only_their_own_hash() {
        let key = generate();
        let (id, secret) = parse(&key.full).unwrap();
        assert_eq!(id, key.id);
        assert!(secret_matches(secret, &key.secret_hash));
        assert!(!secret_matches("wrong", &key.secret_hash));
        assert_ne!(generate().full, key.full);
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        for bad in ["", "csk_", "csk_abc_def", "xyz_0123456789abcdef_s", "csk_0123456789abcdef_"] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        assert!(from_full("csk_0123456789abcdef_short").is_none());
        let chosen = format!("csk_0123456789abcdef_{}", "s".repeat(40));
        assert_eq!(from_full(&chosen).unwrap().id, "0123456789abcdef");
    }
}
