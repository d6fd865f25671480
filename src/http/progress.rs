//! `GET /documents/{document_id}/progress`: validates the request at the edge, then opens the
//! document's stream through the hub and answers with SSE.

use axum::{
    extract::{Path, State, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, Uri, header},
    response::Response,
};

use super::{
    ApiError, AppState,
    stream::{Viewer, sse_response},
};
use crate::{
    auth::Principal,
    upstream::{Call, Identity},
};

/// The longest document id accepted.
const MAX_DOCUMENT_ID: usize = 128;
/// The longest inbound `x-request-id` passed on; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;
/// `u64::MAX` has 20 digits.
const MAX_LAST_EVENT_ID: usize = 20;

/// Streams a document's processing progress.
#[tracing::instrument(skip_all, fields(route = state.progress.route(), document_id, request_id, user))]
pub async fn progress(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let span = tracing::Span::current();
    let principal = state.auth.authenticate(&headers, uri.query()).map_err(|reason| {
        tracing::warn!(%reason, "authentication failed");
        ApiError::Unauthorized
    })?;
    match &principal {
        Some(principal) => {
            span.record("user", principal.user_id.as_str());
        }
        None => tracing::warn!("serving a stream without authentication (--insecure-no-auth)"),
    }
    let document_id = path.map_err(|_| ApiError::InvalidDocumentId)?.0;
    if !valid_document_id(&document_id) {
        return Err(ApiError::InvalidDocumentId);
    }
    span.record("document_id", document_id.as_str());
    let resume_after = last_event_id(&headers, uri.query())?;
    if !accepts_event_stream(&headers) {
        return Err(ApiError::NotAcceptable);
    }
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let permit = state.limits.acquire(principal.as_ref().map(|p| p.user_id.as_str()))?;
    let identity = identity(&headers, principal.as_ref());
    span.record("request_id", identity.request_id.as_str());
    let request_id = HeaderValue::from_str(&identity.request_id).ok();
    let call = Call { id: document_id, resume_after: resume_after.unwrap_or(0), identity };
    let events = state.progress.subscribe(call).await.map_err(ApiError::Upstream)?;
    let viewer = Viewer { permit, expires_at: principal.map(|p| p.expires_at) };
    let mut response = sse_response(events, state.stream.clone(), state.shutdown.clone(), viewer);
    if let Some(request_id) = request_id {
        response.headers_mut().insert("x-request-id", request_id);
    }
    Ok(response)
}

/// 1 to 128 bytes of `[A-Za-z0-9._-]`.
pub fn valid_document_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DOCUMENT_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The resume point: the `Last-Event-ID` header, else `?lastEventId=` (which EventSource users
/// set on a first connect). An empty value means none; anything but 1 to 20 digits is a 400.
pub fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> Result<Option<u64>, ApiError> {
    let mut values = headers.get_all("last-event-id").iter();
    let value = match (values.next(), values.next()) {
        (Some(_), Some(_)) => return Err(ApiError::InvalidLastEventId),
        (Some(value), None) => Some(value.to_str().map_err(|_| ApiError::InvalidLastEventId)?.to_owned()),
        (None, _) => form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .find(|(key, _)| key == "lastEventId")
            .map(|(_, value)| value.into_owned()),
    };
    match value.as_deref() {
        None | Some("") => Ok(None),
        Some(id) if id.len() <= MAX_LAST_EVENT_ID && id.bytes().all(|b| b.is_ascii_digit()) => {
            id.parse().map(Some).map_err(|_| ApiError::InvalidLastEventId)
        }
        Some(_) => Err(ApiError::InvalidLastEventId),
    }
}

/// `text/event-stream`, `text/*`, `*/*` or no `Accept` at all.
fn accepts_event_stream(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::ACCEPT).iter().peekable();
    if values.peek().is_none() {
        return true;
    }
    values.filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|range| {
        let media = range.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        matches!(media.as_str(), "text/event-stream" | "text/*" | "*/*")
    })
}

/// The identity passed to the upstream. A valid inbound `x-request-id` is kept so logs on both
/// sides line up; anything else is replaced by a fresh one.
fn identity(headers: &HeaderMap, principal: Option<&Principal>) -> Identity {
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_token(v, MAX_REQUEST_ID))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let traceparent =
        headers.get("traceparent").and_then(|v| v.to_str().ok()).filter(|v| valid_traceparent(v)).map(str::to_owned);
    Identity {
        user_id: principal.map(|p| p.user_id.clone()),
        tenant_id: principal.and_then(|p| p.tenant_id.clone()),
        request_id,
        traceparent,
    }
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
