//! `GET /documents/{document_id}/progress`: validates the request at the edge, then opens the
//! document's stream through the hub and answers with SSE.

use axum::{
    extract::{Path, State, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, header},
    response::Response,
};

use super::{ApiError, AppState, stream::sse_response};
use crate::upstream::{Call, Identity};

/// The longest document id accepted.
const MAX_DOCUMENT_ID: usize = 128;
/// The longest inbound `x-request-id` passed on; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// Streams a document's processing progress.
#[tracing::instrument(skip_all, fields(route = state.progress.route(), document_id, request_id))]
pub async fn progress(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let document_id = path.map_err(|_| ApiError::InvalidDocumentId)?.0;
    if !valid_document_id(&document_id) {
        return Err(ApiError::InvalidDocumentId);
    }
    let span = tracing::Span::current();
    span.record("document_id", document_id.as_str());
    if !accepts_event_stream(&headers) {
        return Err(ApiError::NotAcceptable);
    }
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let identity = identity(&headers);
    span.record("request_id", identity.request_id.as_str());
    let request_id = HeaderValue::from_str(&identity.request_id).ok();
    let call = Call {
        id: document_id,
        resume_after: 0,
        identity,
    };
    let events = state
        .progress
        .subscribe(call)
        .await
        .map_err(ApiError::Upstream)?;
    let mut response = sse_response(events, state.stream.clone(), state.shutdown.clone());
    if let Some(request_id) = request_id {
        response.headers_mut().insert("x-request-id", request_id);
    }
    Ok(response)
}

/// 1 to 128 bytes of `[A-Za-z0-9._-]`.
pub fn valid_document_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DOCUMENT_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `text/event-stream`, `text/*`, `*/*` or no `Accept` at all.
fn accepts_event_stream(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::ACCEPT).iter().peekable();
    if values.peek().is_none() {
        return true;
    }
    values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let media = range
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            matches!(media.as_str(), "text/event-stream" | "text/*" | "*/*")
        })
}

/// The identity passed to the upstream. A valid inbound `x-request-id` is kept so logs on both
/// sides line up; anything else is replaced by a fresh one.
fn identity(headers: &HeaderMap) -> Identity {
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_token(v, MAX_REQUEST_ID))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_traceparent(v))
        .map(str::to_owned);
    Identity {
        user_id: None,
        tenant_id: None,
        request_id,
        traceparent,
    }
}

fn valid_token(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// W3C Trace Context: `version-traceid-parentid-flags`, lowercase hex, version `ff` invalid.
fn valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
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
