//! `sse-bff token`: mints an HS256 development token for curl and the demo.

use std::time::{Duration, SystemTime};

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Map, Value, json};

use super::keys::MIN_SECRET_BYTES;

/// Flags of `sse-bff token`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenConfig {
    /// The HS256 secret the BFF verifies with.
    #[arg(long, env = "SSE_BFF_JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// The user (`sub`).
    #[arg(long)]
    pub sub: String,
    /// The tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Lifetime of the token.
    #[arg(long, default_value = "1h", value_parser = crate::flags::parse_duration)]
    pub ttl: Duration,
    /// The claim that carries the tenant.
    #[arg(long, env = "SSE_BFF_TENANT_CLAIM", default_value = "tenant_id")]
    pub tenant_claim: String,
    /// `iss` claim.
    #[arg(long, env = "SSE_BFF_JWT_ISSUER")]
    pub issuer: Option<String>,
    /// `aud` claim.
    #[arg(long, env = "SSE_BFF_JWT_AUDIENCE")]
    pub audience: Option<String>,
}

/// Signs a token for the configured subject and tenant, refusing a secret `serve` would refuse.
pub fn mint(config: &TokenConfig) -> Result<String, MintError> {
    if config.secret.len() < MIN_SECRET_BYTES {
        return Err(MintError::ShortSecret);
    }
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(config.sub));
    claims.insert("iat".into(), json!(now.as_secs()));
    claims.insert("exp".into(), json!((now + config.ttl).as_secs()));
    if let Some(tenant) = &config.tenant {
        claims.insert(config.tenant_claim.clone(), json!(tenant));
    }
    if let Some(issuer) = &config.issuer {
        claims.insert("iss".into(), json!(issuer));
    }
    if let Some(audience) = &config.audience {
        claims.insert("aud".into(), json!(audience));
    }
    Ok(encode(&Header::default(), &Value::Object(claims), &EncodingKey::from_secret(config.secret.as_bytes()))?)
}

/// Why no token was minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The secret is shorter than `serve` accepts.
    #[error("--secret must be at least {MIN_SECRET_BYTES} bytes long, as for `serve --jwt-secret`")]
    ShortSecret,
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}
