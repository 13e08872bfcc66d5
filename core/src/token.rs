//! Session tokens: short-lived EdDSA-signed JWTs that grant one terminal connection to one
//! session. The control plane signs them, the gateway and the runner verify them.
//!
//! The algorithm is pinned to EdDSA (Ed25519): a token whose header names any other algorithm
//! is refused before its signature is looked at.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Audience of tokens handed to browsers for the gateway.
pub const TERMINAL_AUDIENCE: &str = "cliscale-terminal";
/// Audience of tokens the gateway mints for itself to reach a runner.
pub const RUNNER_AUDIENCE: &str = "cliscale-runner";
/// The one algorithm cliscale signs and accepts.
pub const ALGORITHM: Algorithm = Algorithm::EdDSA;
/// Clock skew tolerated on `exp`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// What a terminal token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TokenScope {
    /// Read output, send input and resize.
    Interact,
    /// Read output only.
    View,
}

/// The claims of a session token (docs/api.md, "Terminal tokens").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    pub iss: String,
    pub aud: String,
    /// The principal the token was minted for (an API key id or user).
    pub sub: String,
    /// The session this token opens.
    pub sid: String,
    /// Unique token id, consumed once by the gateway.
    pub jti: String,
    pub iat: u64,
    pub exp: u64,
    pub scope: TokenScope,
}

/// Why a token was refused. Each variant has a stable [`TokenError::code`].
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no token was presented")]
    Missing,
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token header names algorithm {0:?}; only EdDSA is accepted")]
    WrongAlgorithm(Algorithm),
    #[error("token has no key id (kid)")]
    MissingKeyId,
    #[error("token is signed with unknown key id {0:?}")]
    UnknownKey(String),
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token audience is not accepted here")]
    WrongAudience,
    #[error("token issuer is not accepted here")]
    WrongIssuer,
    #[error("token is for session {token_sid:?}, not {expected:?}")]
    WrongSession { token_sid: String, expected: String },
    #[error("invalid key set: {0}")]
    BadKeySet(String),
    #[error("could not sign token: {0}")]
    Signing(String),
}

impl TokenError {
    /// Stable machine-readable code, used in HTTP error bodies and close reasons.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "token_missing",
            Self::Malformed(_) => "token_malformed",
            Self::WrongAlgorithm(_) => "token_wrong_algorithm",
            Self::MissingKeyId => "token_missing_kid",
            Self::UnknownKey(_) => "token_unknown_key",
            Self::BadSignature => "token_bad_signature",
            Self::Expired => "token_expired",
            Self::WrongAudience => "token_wrong_audience",
            Self::WrongIssuer => "token_wrong_issuer",
            Self::WrongSession { .. } => "token_wrong_session",
            Self::BadKeySet(_) => "bad_key_set",
            Self::Signing(_) => "token_signing_failed",
        }
    }
}

/// Checks a presented token for a given session. Implementations must be cheap to call per
/// connection: no network I/O on the hot path.
pub trait TokenVerifier: Send + Sync + 'static {
    fn verify(&self, token: &str, session_id: &str) -> Result<SessionClaims, TokenError>;
}

/// Verifies tokens against a fixed set of Ed25519 public keys (a JWKS document).
pub struct JwksVerifier {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
}

impl JwksVerifier {
    /// Builds a verifier from a JWKS JSON document. Every key must be an Ed25519 OKP key with a
    /// `kid`; anything else is refused rather than silently skipped.
    pub fn from_jwks_json(
        jwks: &str,
        audiences: &[&str],
        issuer: Option<&str>,
    ) -> Result<Self, TokenError> {
        let set: JwkSet =
            serde_json::from_str(jwks).map_err(|e| TokenError::BadKeySet(e.to_string()))?;
        if set.keys.is_empty() {
            return Err(TokenError::BadKeySet("the key set has no keys".into()));
        }
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let kid = jwk
                .common
                .key_id
                .clone()
                .ok_or_else(|| TokenError::BadKeySet("a key has no kid".into()))?;
            if !matches!(
                &jwk.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(p)
                    if p.curve == jsonwebtoken::jwk::EllipticCurve::Ed25519
            ) {
                return Err(TokenError::BadKeySet(format!(
                    "key {kid:?} is not an Ed25519 OKP key"
                )));
            }
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| TokenError::BadKeySet(format!("key {kid:?}: {e}")))?;
            keys.insert(kid, key);
        }
        let mut validation = Validation::new(ALGORITHM);
        validation.leeway = LEEWAY_SECS;
        validation.set_audience(audiences);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Self { keys, validation })
    }

    /// The key ids this verifier trusts.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }
}

impl TokenVerifier for JwksVerifier {
    fn verify(&self, token: &str, session_id: &str) -> Result<SessionClaims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if header.alg != ALGORITHM {
            return Err(TokenError::WrongAlgorithm(header.alg));
        }
        let kid = header.kid.ok_or(TokenError::MissingKeyId)?;
        let key = self.keys.get(&kid).ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
        let data = jsonwebtoken::decode::<SessionClaims>(token, key, &self.validation)
            .map_err(map_jwt_error)?;
        if data.claims.sid != session_id {
            return Err(TokenError::WrongSession {
                token_sid: data.claims.sid,
                expected: session_id.to_owned(),
            });
        }
        Ok(data.claims)
    }
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        _ => TokenError::Malformed(e.to_string()),
    }
}

/// An Ed25519 signing key with its key id.
pub struct SessionSigningKey {
    kid: String,
    pkcs8_der: Vec<u8>,
    public_x: String,
    encoding: EncodingKey,
}

impl SessionSigningKey {
    /// Generates a fresh key from the OS random source.
    pub fn generate(kid: impl Into<String>) -> Self {
        let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let der = signing.to_pkcs8_der().expect("an Ed25519 key always encodes as PKCS#8");
        Self::from_dalek(kid.into(), &signing, der.as_bytes().to_vec())
    }

    /// Loads a key from PKCS#8 DER, as persisted by [`SessionSigningKey::pkcs8_der`].
    pub fn from_pkcs8_der(kid: impl Into<String>, der: &[u8]) -> Result<Self, TokenError> {
        let signing = ed25519_dalek::SigningKey::from_pkcs8_der(der)
            .map_err(|e| TokenError::BadKeySet(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        Ok(Self::from_dalek(kid.into(), &signing, der.to_vec()))
    }

    fn from_dalek(kid: String, signing: &ed25519_dalek::SigningKey, der: Vec<u8>) -> Self {
        let public_x = URL_SAFE_NO_PAD.encode(signing.verifying_key().to_bytes());
        let encoding = EncodingKey::from_ed_der(&der);
        Self { kid, pkcs8_der: der, public_x, encoding }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key as PKCS#8 DER, for persisting. Never log this.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8_der
    }

    /// The public half as a JWK.
    pub fn public_jwk(&self) -> Jwk {
        serde_json::from_value(serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": self.public_x,
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }))
        .expect("a well-formed OKP JWK")
    }

    /// Signs claims into a compact JWT with this key's `kid`.
    pub fn sign(&self, claims: &SessionClaims) -> Result<String, TokenError> {
        let mut header = Header::new(ALGORITHM);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| TokenError::Signing(e.to_string()))
    }
}

/// A JWKS document publishing the public halves of `keys` (several, for rotation).
pub fn jwks_json<'a>(keys: impl IntoIterator<Item = &'a SessionSigningKey>) -> String {
    let set = JwkSet { keys: keys.into_iter().map(SessionSigningKey::public_jwk).collect() };
    serde_json::to_string(&set).expect("a JWK set always serializes")
}

/// The `kid` a token's header names, without verifying anything.
pub fn token_kid(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Claims for a new token: a random `jti`, issued now, valid for `ttl_secs`.
pub fn new_claims(
    issuer: &str,
    audience: &str,
    subject: &str,
    session_id: &str,
    scope: TokenScope,
    ttl_secs: u64,
) -> SessionClaims {
    let now = now_secs();
    let jti: [u8; 16] = rand::random();
    SessionClaims {
        iss: issuer.into(),
        aud: audience.into(),
        sub: subject.into(),
        sid: session_id.into(),
        jti: URL_SAFE_NO_PAD.encode(jti),
        iat: now,
        exp: now + ttl_secs,
        scope,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(keys: &[&SessionSigningKey]) -> JwksVerifier {
        JwksVerifier::from_jwks_json(
            &jwks_json(keys.iter().copied()),
            &[TERMINAL_AUDIENCE, RUNNER_AUDIENCE],
            Some("cliscale"),
        )
        .unwrap()
    }

    fn claims(sid: &str) -> SessionClaims {
        new_claims("cliscale", TERMINAL_AUDIENCE, "key-1", sid, TokenScope::View, 300)
    }

    #[test]
    fn a_signed_token_verifies_for_its_own_session_only() {
        let key = SessionSigningKey::generate("k1");
        let v = verifier(&[&key]);
        let token = key.sign(&claims("s1")).unwrap();
        let got = v.verify(&token, "s1").unwrap();
        assert_eq!(got.sid, "s1");
        assert_eq!(got.scope, TokenScope::View);
        assert_eq!(v.verify(&token, "s2").unwrap_err().code(), "token_wrong_session");
    }

    #[test]
    fn rotation_accepts_every_published_key() {
        let old = SessionSigningKey::generate("old");
        let new = SessionSigningKey::generate("new");
        let v = verifier(&[&old, &new]);
        for key in [&old, &new] {
            assert!(v.verify(&key.sign(&claims("s")).unwrap(), "s").is_ok());
        }
        let stranger = SessionSigningKey::generate("stranger");
        let token = stranger.sign(&claims("s")).unwrap();
        assert_eq!(v.verify(&token, "s").unwrap_err().code(), "token_unknown_key");
    }

    #[test]
    fn forged_expired_and_foreign_tokens_are_refused() {
        let key = SessionSigningKey::generate("k1");
        let v = verifier(&[&key]);
        // Same kid, different private key: the signature cannot match.
        let impostor = SessionSigningKey::generate("k1");
        let forged = impostor.sign(&claims("s")).unwrap();
        assert_eq!(v.verify(&forged, "s").unwrap_err().code(), "token_bad_signature");

        let mut old = claims("s");
        old.exp = now_secs() - LEEWAY_SECS - 10;
        assert_eq!(v.verify(&key.sign(&old).unwrap(), "s").unwrap_err().code(), "token_expired");

        let mut foreign = claims("s");
        foreign.aud = "someone-else".into();
        let token = key.sign(&foreign).unwrap();
        assert_eq!(v.verify(&token, "s").unwrap_err().code(), "token_wrong_audience");

        let mut wrong_iss = claims("s");
        wrong_iss.iss = "mallory".into();
        let token = key.sign(&wrong_iss).unwrap();
        assert_eq!(v.verify(&token, "s").unwrap_err().code(), "token_wrong_issuer");

        assert_eq!(v.verify("", "s").unwrap_err().code(), "token_missing");
        assert_eq!(v.verify("a.b", "s").unwrap_err().code(), "token_malformed");
    }

    #[test]
    fn an_hs256_token_is_refused_before_its_signature_is_checked() {
        let key = SessionSigningKey::generate("k1");
        let v = verifier(&[&key]);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let token = jsonwebtoken::encode(
            &header,
            &claims("s"),
            &EncodingKey::from_secret(key.public_x.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(&token, "s").unwrap_err().code(), "token_wrong_algorithm");
    }

    #[test]
    fn keys_survive_a_pkcs8_round_trip() {
        let key = SessionSigningKey::generate("k1");
        let loaded = SessionSigningKey::from_pkcs8_der("k1", key.pkcs8_der()).unwrap();
        let v = verifier(&[&key]);
        assert!(v.verify(&loaded.sign(&claims("s")).unwrap(), "s").is_ok());
        assert!(SessionSigningKey::from_pkcs8_der("k1", b"junk").is_err());
    }

    #[test]
    fn bad_key_sets_are_refused() {
        for bad in
            ["", "{}", r#"{"keys":[]}"#, r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AA"}]}"#]
        {
            assert!(
                JwksVerifier::from_jwks_json(bad, &[TERMINAL_AUDIENCE], None).is_err(),
                "{bad}"
            );
        }
    }
}
