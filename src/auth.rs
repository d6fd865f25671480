//! Authentication: where a request's token comes from, how it is verified, and who it names.
//!
//! Every failure is the same 401 for the client, so the reason is no oracle; the reason goes to
//! the log instead. Tokens themselves are never logged.

mod keys;
mod token;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::http::{HeaderMap, header};
use jsonwebtoken::{Validation, decode, decode_header};
use serde::Deserialize;

pub use keys::KeyError;
use keys::KeySet;
pub use token::{TokenConfig, mint};

/// The longest token accepted; real ones are well under 4 KiB.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The longest `sub` or tenant value accepted.
const MAX_CLAIM_BYTES: usize = 256;

/// Authentication flags of `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthConfig {
    /// HS256 shared secret (at least 32 bytes).
    #[arg(long, env = "SSE_BFF_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key file (RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA).
    #[arg(long, env = "SSE_BFF_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// JWKS file; tokens pick their key by `kid`.
    #[arg(long, env = "SSE_BFF_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` claim.
    #[arg(long, env = "SSE_BFF_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Accepted `aud` values (repeatable); without one, tokens carrying `aud` are rejected.
    #[arg(long, env = "SSE_BFF_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[arg(long, env = "SSE_BFF_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,
    /// The claim that names the caller's tenant.
    #[arg(long, env = "SSE_BFF_TENANT_CLAIM", default_value = "tenant_id")]
    pub tenant_claim: String,
    /// Accept tokens without a tenant claim.
    #[arg(long, env = "SSE_BFF_TENANT_OPTIONAL")]
    pub tenant_optional: bool,
    /// Cookie read when there is no Authorization header.
    #[arg(long, env = "SSE_BFF_AUTH_COOKIE", default_value = "access_token")]
    pub auth_cookie: String,
    /// Also accept `?access_token=` (for clients that can set neither header nor cookie).
    #[arg(long, env = "SSE_BFF_ALLOW_QUERY_TOKEN")]
    pub allow_query_token: bool,
    /// Run without authentication. Development only: every stream is anonymous.
    #[arg(long, env = "SSE_BFF_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
}

/// Who a verified token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The `sub` claim.
    pub user_id: String,
    /// The tenant claim.
    pub tenant_id: Option<String>,
    /// The `exp` claim plus the configured leeway: the token was accepted because this has not
    /// passed, and the stream must end by then (CONTRACT §3).
    pub expires_at: SystemTime,
}

/// Why a request was not authenticated. Logged and counted, never shown to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No token in any accepted place.
    Missing,
    /// Not a well-formed bearer credential or JWT.
    Malformed,
    /// The `alg` is not one the configured keys allow.
    AlgorithmNotAllowed,
    /// No configured key has the token's `kid`.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// `exp` has passed.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` is not accepted.
    WrongAudience,
    /// A required claim (`exp`, `sub`, the tenant) is missing or unusable.
    BadClaims,
}

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub enum Authenticator {
    /// `--insecure-no-auth`: every request is anonymous.
    Disabled,
    /// JWT verification.
    Jwt(Arc<Verifier>),
}

/// Verifies tokens against the configured keys and claims.
#[derive(Debug)]
pub struct Verifier {
    keys: KeySet,
    issuer: Option<String>,
    audience: Vec<String>,
    leeway: Duration,
    tenant_claim: String,
    tenant_required: bool,
    cookie: String,
    allow_query: bool,
}

impl AuthFailure {
    /// The reason as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::BadClaims => "bad_claims",
        }
    }
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl std::error::Error for AuthFailure {}

impl Authenticator {
    /// Builds the authenticator, loading keys. Exactly one key source, or the explicit
    /// `--insecure-no-auth`, must be configured.
    pub fn from_config(config: &AuthConfig) -> Result<Self, KeyError> {
        if config.insecure_no_auth {
            return Ok(Self::Disabled);
        }
        let keys = KeySet::load(config)?;
        Ok(Self::Jwt(Arc::new(Verifier {
            keys,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            leeway: config.jwt_leeway,
            tenant_claim: config.tenant_claim.clone(),
            tenant_required: !config.tenant_optional,
            cookie: config.auth_cookie.clone(),
            allow_query: config.allow_query_token,
        })))
    }

    /// Authenticates a request from its headers and query string. `Ok(None)` means
    /// authentication is disabled.
    pub fn authenticate(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Option<Principal>, AuthFailure> {
        match self {
            Self::Disabled => Ok(None),
            Self::Jwt(verifier) => {
                let token = verifier.extract(headers, query)?;
                verifier.verify(&token).map(Some)
            }
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

impl Verifier {
    /// Takes the token from exactly one place: the Authorization header if present, else the
    /// cookie, else (when enabled) the query. A present but unusable source is a failure; it
    /// never falls through to the next one.
    fn extract(&self, headers: &HeaderMap, query: Option<&str>) -> Result<String, AuthFailure> {
        let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
        if let Some(value) = authorization.next() {
            if authorization.next().is_some() {
                return Err(AuthFailure::Malformed);
            }
            let value = value.to_str().map_err(|_| AuthFailure::Malformed)?;
            let (scheme, token) = value.split_once(' ').ok_or(AuthFailure::Malformed)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(AuthFailure::Malformed);
            }
            return Ok(token.trim().to_owned());
        }
        let mut cookies = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| *name == self.cookie);
        if let Some((_, token)) = cookies.next() {
            if cookies.next().is_some() {
                return Err(AuthFailure::Malformed);
            }
            return Ok(token.trim_matches('"').to_owned());
        }
        if self.allow_query {
            let mut tokens =
                form_urlencoded::parse(query.unwrap_or("").as_bytes()).filter(|(k, _)| k == "access_token");
            if let Some((_, token)) = tokens.next() {
                if tokens.next().is_some() {
                    return Err(AuthFailure::Malformed);
                }
                return Ok(token.into_owned());
            }
        }
        Err(AuthFailure::Missing)
    }

    /// Verifies signature, algorithm, time and claims.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthFailure> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(AuthFailure::Malformed);
        }
        let header = decode_header(token).map_err(|_| AuthFailure::Malformed)?;
        let (key, algorithms) = self.keys.select(header.kid.as_deref())?;
        if !algorithms.contains(&header.alg) {
            return Err(AuthFailure::AlgorithmNotAllowed);
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = algorithms.to_vec();
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        if !self.audience.is_empty() {
            validation.set_audience(&self.audience);
            validation.required_spec_claims.insert("aud".to_owned());
        }
        let claims = decode::<Claims>(token, key, &validation).map_err(|e| failure_of(e.kind()))?.claims;
        let user_id = usable_claim(&claims.sub).ok_or(AuthFailure::BadClaims)?;
        let tenant_id = match claims.other.get(&self.tenant_claim) {
            Some(serde_json::Value::String(tenant)) => Some(usable_claim(tenant).ok_or(AuthFailure::BadClaims)?),
            Some(_) => return Err(AuthFailure::BadClaims),
            None if self.tenant_required => return Err(AuthFailure::BadClaims),
            None => None,
        };
        // One clock for the token's life: it was accepted because `exp` plus the leeway has not
        // passed, so the stream it opens lives until that same moment, not until `exp` alone
        // (which may already be behind us and would end the stream in its first moment).
        let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp.min(u64::from(u32::MAX) * 4));
        let expires_at = exp + self.leeway;
        Ok(Principal { user_id, tenant_id, expires_at })
    }
}

/// A claim passed on as gRPC metadata must be non-empty printable ASCII of bounded length.
fn usable_claim(value: &str) -> Option<String> {
    let ok = !value.is_empty() && value.len() <= MAX_CLAIM_BYTES && value.bytes().all(|b| (0x21..0x7f).contains(&b));
    ok.then(|| value.to_owned())
}

fn failure_of(kind: &jsonwebtoken::errors::ErrorKind) -> AuthFailure {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature => AuthFailure::BadSignature,
        K::ExpiredSignature => AuthFailure::Expired,
        K::ImmatureSignature => AuthFailure::NotYetValid,
        K::InvalidIssuer => AuthFailure::WrongIssuer,
        K::InvalidAudience => AuthFailure::WrongAudience,
        K::InvalidAlgorithm | K::MissingAlgorithm => AuthFailure::AlgorithmNotAllowed,
        K::MissingRequiredClaim(_) | K::InvalidClaimFormat(_) | K::InvalidSubject | K::Json(_) => {
            AuthFailure::BadClaims
        }
        _ => AuthFailure::Malformed,
    }
}
