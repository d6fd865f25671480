//! Who is asking for a stream: the extractor that lets a request in (the WebSocket origin check,
//! then authentication), records the user in the request's span, and keeps what the upstream
//! is told about the caller.

use std::time::{Instant, SystemTime};

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{HeaderMap, HeaderValue, Uri, header, request::Parts},
    response::Response,
};

use super::{ApiError, AppState, representation::is_handshake};
use crate::{auth::Principal, upstream::Identity};

/// The longest inbound `x-request-id` passed on; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// An admitted caller. Extracting it refuses a WebSocket handshake from a foreign origin (403)
/// before the token is even looked at, then authenticates (401, logging and counting the
/// failure's reason, never the token); both come before anything else about the request.
#[derive(Debug)]
pub struct Caller {
    /// The token's principal; `None` only under `--insecure-no-auth`.
    pub principal: Option<Principal>,
    /// The request id: a valid inbound `x-request-id`, else a fresh one.
    pub request_id: String,
    /// A valid inbound W3C `traceparent`, passed on.
    pub traceparent: Option<String>,
    /// When the request was let in: the time to the first event counts from here.
    pub arrived: Instant,
}

impl<S> FromRequestParts<S> for Caller
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let arrived = Instant::now();
        let app = AppState::from_ref(state);
        // CORS does not cover WebSocket handshakes: a page of another site could open one with
        // the user's cookie. Refused before the token is even looked at.
        if !same_or_allowed_origin(&parts.headers, &parts.uri, &app.allowed_origins) && is_handshake(parts, state).await
        {
            return Err(ApiError::ForbiddenOrigin);
        }
        let principal = app.auth.authenticate(&parts.headers, parts.uri.query()).map_err(|reason| {
            tracing::warn!(%reason, "authentication failed");
            app.metrics.auth_failed(reason.label());
            ApiError::Unauthorized
        })?;
        let span = tracing::Span::current();
        match &principal {
            Some(principal) => {
                span.record("user", principal.user_id.as_str());
            }
            None => tracing::warn!("serving a stream without authentication (--insecure-no-auth)"),
        }
        let request_id = request_id(&parts.headers);
        span.record("request_id", request_id.as_str());
        let traceparent = parts
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .filter(|v| valid_traceparent(v))
            .map(str::to_owned);
        Ok(Self { principal, request_id, traceparent, arrived })
    }
}

impl Caller {
    /// The user that stream limits count against; `None` without authentication.
    pub fn user(&self) -> Option<&str> {
        self.principal.as_ref().map(|p| p.user_id.as_str())
    }

    /// When the token runs out: the stream ends with `token_expired` by then.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.principal.as_ref().map(|p| p.expires_at)
    }

    /// The identity passed to the upstream, so that logs on both sides line up.
    pub fn identity(&self) -> Identity {
        Identity {
            user_id: self.principal.as_ref().map(|p| p.user_id.clone()),
            tenant_id: self.principal.as_ref().and_then(|p| p.tenant_id.clone()),
            request_id: self.request_id.clone(),
            traceparent: self.traceparent.clone(),
        }
    }

    /// A stream's response, with the request id as `x-request-id`.
    pub fn tag(&self, mut response: Response) -> Response {
        if let Ok(request_id) = HeaderValue::from_str(&self.request_id) {
            response.headers_mut().insert("x-request-id", request_id);
        }
        response
    }
}

/// A valid inbound `x-request-id` is kept; anything else is replaced by a fresh one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_token(v, MAX_REQUEST_ID))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// Whether a WebSocket upgrade may proceed: it carries no `Origin` (curl, servers), or its
/// `Origin` is the BFF's own (the same host and port as `Host`, over http or https, since a
/// proxy in front may end TLS), or one of the allowed CORS origins (compared as RFC 6454
/// serialisations, ASCII case-insensitively).
fn same_or_allowed_origin(headers: &HeaderMap, uri: &Uri, allowed: &[HeaderValue]) -> bool {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let origin = match (origins.next(), origins.next()) {
        (None, _) => return true,
        (Some(origin), None) => origin,
        (Some(_), Some(_)) => return false,
    };
    let Ok(origin) = origin.to_str() else { return false };
    if allowed.iter().any(|a| a.to_str().is_ok_and(|a| a.eq_ignore_ascii_case(origin))) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()));
    let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    matches!((host, authority), (Some(host), Some(authority)) if host.eq_ignore_ascii_case(authority))
}

fn valid_token(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// W3C Trace Context: `version-traceid-parentid-flags`, lowercase hex, version `ff` invalid.
fn valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    match parts.as_slice() {
        [version, trace, parent, flags, ..] => {
            hex(version, 2)
                && *version != "ff"
                && (parts.len() == 4 || *version != "00")
                && hex(trace, 32)
                && trace.bytes().any(|b| b != b'0')
                && hex(parent, 16)
                && parent.bytes().any(|b| b != b'0')
                && hex(flags, 2)
        }
        _ => false,
    }
}
