//! Verification keys and the algorithms each one allows. The allow-list is bound to the key:
//! an HS256 secret only verifies HS256, an RSA key only RS256, and so on, so a token cannot
//! pick a weaker algorithm (or use a public key as an HMAC secret).

use std::{fs, path::Path};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet},
};

use super::{AuthConfig, AuthFailure};

/// The shortest HS256 secret accepted: 256 bits, as RFC 7518 requires for HS256.
pub(super) const MIN_SECRET_BYTES: usize = 32;

/// Why the keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Neither a key nor `--insecure-no-auth`.
    #[error(
        "no token verification key: set one of --jwt-secret, --jwt-public-key or --jwks-file, or run with --insecure-no-auth for development"
    )]
    None,
    /// More than one key source.
    #[error("set only one of --jwt-secret, --jwt-public-key and --jwks-file")]
    Several,
    /// The secret is too short.
    #[error("--jwt-secret must be at least {MIN_SECRET_BYTES} bytes long")]
    ShortSecret,
    /// A key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file's content is not a supported key.
    #[error("key file {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The configured keys.
#[derive(Debug)]
pub struct KeySet {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

impl KeySet {
    /// Loads the one configured key source.
    pub fn load(config: &AuthConfig) -> Result<Self, KeyError> {
        let sources = [config.jwt_secret.is_some(), config.jwt_public_key.is_some(), config.jwks_file.is_some()];
        match sources.iter().filter(|s| **s).count() {
            0 => return Err(KeyError::None),
            1 => {}
            _ => return Err(KeyError::Several),
        }
        if let Some(secret) = &config.jwt_secret {
            return Self::secret(secret.as_bytes());
        }
        if let Some(path) = &config.jwt_public_key {
            return Ok(Self { entries: vec![pem_entry(path)?] });
        }
        match &config.jwks_file {
            Some(path) => jwks(path),
            None => Err(KeyError::None),
        }
    }

    /// An HS256 secret.
    fn secret(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(KeyError::ShortSecret);
        }
        Ok(Self {
            entries: vec![Entry {
                kid: None,
                key: DecodingKey::from_secret(secret),
                algorithms: vec![Algorithm::HS256],
            }],
        })
    }

    /// The key for a token's `kid`: the matching entry, or the only one when the token names none.
    pub(super) fn select(&self, kid: Option<&str>) -> Result<(&DecodingKey, &[Algorithm]), AuthFailure> {
        let entry = match kid {
            Some(kid) => {
                self.entries.iter().find(|e| e.kid.as_deref() == Some(kid)).or_else(|| match self.entries.as_slice() {
                    [only] if only.kid.is_none() => Some(only),
                    _ => None,
                })
            }
            None => match self.entries.as_slice() {
                [only] => Some(only),
                _ => None,
            },
        };
        entry.map(|e| (&e.key, e.algorithms.as_slice())).ok_or(AuthFailure::UnknownKey)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    fs::read(path).map_err(|source| KeyError::Read { path: path.display().to_string(), source })
}

fn invalid(path: &Path, reason: impl Into<String>) -> KeyError {
    KeyError::Invalid { path: path.display().to_string(), reason: reason.into() }
}

/// A PEM public key; its type decides the one algorithm it verifies.
fn pem_entry(path: &Path) -> Result<Entry, KeyError> {
    let pem = read(path)?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("PRIVATE KEY") {
        return Err(invalid(path, "this is a private key; give the public key"));
    }
    let attempts = [
        (DecodingKey::from_rsa_pem(&pem), Algorithm::RS256),
        (DecodingKey::from_ec_pem(&pem), Algorithm::ES256),
        (DecodingKey::from_ed_pem(&pem), Algorithm::EdDSA),
    ];
    for (key, algorithm) in attempts {
        if let Ok(key) = key {
            return Ok(Entry { kid: None, key, algorithms: vec![algorithm] });
        }
    }
    Err(invalid(path, "not a PEM RSA, EC P-256 or Ed25519 public key"))
}

fn jwks(path: &Path) -> Result<KeySet, KeyError> {
    let set: JwkSet =
        serde_json::from_slice(&read(path)?).map_err(|e| invalid(path, format!("not a JWKS document: {e}")))?;
    let mut entries = Vec::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone().ok_or_else(|| invalid(path, "every key needs a kid"))?;
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
            _ => {
                return Err(invalid(
                    path,
                    format!("key {kid:?}: only RSA, EC P-256 and Ed25519 public keys are supported"),
                ));
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(path, format!("key {kid:?}: {e}")))?;
        entries.push(Entry { kid: Some(kid), key, algorithms: vec![algorithm] });
    }
    if entries.is_empty() {
        return Err(invalid(path, "the key set is empty"));
    }
    Ok(KeySet { entries })
}
