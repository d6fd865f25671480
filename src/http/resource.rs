//! `GET` on a streamed resource (any route: `/documents/{document_id}/progress`, say):
//! validates the request at the edge, authenticates it, opens the resource's stream through its
//! hub, and answers in the negotiated representation. Nothing here is specific to a route.

use std::time::{Duration, Instant};

use axum::{
    extract::{
        Path, State,
        rejection::PathRejection,
        ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};

use super::{
    ApiError, AppState,
    representation::{self, LastId, Representation},
    stream::{Viewer, feed},
};
use crate::{
    auth::Principal,
    hub::{Hub, Subscription, ViewerStream},
    metrics::Transport,
    upstream::{Call, Identity},
};

/// The longest inbound `x-request-id` passed on; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;
/// `u64::MAX` has 20 digits.
const MAX_LAST_EVENT_ID: usize = 20;
/// The default and the longest long-poll wait, in seconds.
pub(super) const POLL_WAIT: (u64, u64) = (25, 60);

/// Streams a resource's events in the representation the client asked for.
#[tracing::instrument(skip_all, fields(route = hub.route(), id, request_id, user))]
pub async fn stream(
    hub: Hub,
    State(state): State<AppState>,
    path: Result<Path<Vec<(String, String)>>, PathRejection>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let span = tracing::Span::current();
    let started = Instant::now();
    let principal = admit(&state, &headers, &uri, upgrade.is_ok())?;
    let resource = hub.resource();
    let params = match path {
        Ok(Path(params)) => params,
        // A parameter that is not valid UTF-8 once decoded: no parameter at all, which the
        // check refuses with the first parameter's code.
        Err(_) => Vec::new(),
    };
    resource.check(&params).map_err(ApiError::InvalidParameter)?;
    span.record("id", uri.path());
    let upgrade = upgrade.ok();
    let representation = match upgrade {
        Some(_) => None,
        None => Some(Representation::negotiate(&headers)?),
    };
    let query = uri.query().unwrap_or("");
    let resume = match representation {
        Some(Representation::LongPoll) => query_number(query, "after").map_err(|()| ApiError::InvalidLastEventId)?,
        _ => last_event_id(&headers, Some(query))?,
    };
    // `wait` only means something to a long-poll; other representations ignore it.
    let wait = match representation {
        Some(Representation::LongPoll) => query_number(query, "wait").map_err(|()| ApiError::InvalidWait)?,
        _ => None,
    };
    let wait = Duration::from_secs(wait.unwrap_or(POLL_WAIT.0).min(POLL_WAIT.1));
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let permit = state.limits.acquire(principal.as_ref().map(|p| p.user_id.as_str()))?;
    let identity = identity(&headers, principal.as_ref());
    span.record("request_id", identity.request_id.as_str());
    let request_id = HeaderValue::from_str(&identity.request_id).ok();
    let transport = transport(upgrade.is_some(), representation);
    let call = Call { params: params.into(), resume_after: 0, identity };
    let subscription = hub.subscribe(call, resume).await.map_err(ApiError::Upstream)?;
    let (reset, events) = match subscription {
        Subscription::Finished { last } if representation == Some(Representation::LongPoll) => {
            return Ok(representation::long_poll_finished(LastId::Id(last)));
        }
        // The viewer already has the terminal event: 204 tells EventSource to stop reconnecting.
        Subscription::Finished { .. } => return Ok(StatusCode::NO_CONTENT.into_response()),
        Subscription::Live { reset, events } => (reset, events),
    };
    let metrics = state.metrics.stream_opened(hub.route(), transport);
    let viewer = Viewer { permit, expires_at: principal.map(|p| p.expires_at), metrics, started };
    let poll = Poll { after: LastId::Id(resume.unwrap_or(0)), latest: resume.is_none(), wait };
    let mut response = respond(&state, events, reset, upgrade, transport, poll, viewer).await;
    if let Some(request_id) = request_id {
        response.headers_mut().insert("x-request-id", request_id);
    }
    Ok(response)
}

/// What a long-poll asked for: events after `after` (or, with `latest`, the latest at once),
/// waiting at most `wait` for the first.
pub(super) struct Poll {
    pub after: LastId,
    pub latest: bool,
    pub wait: Duration,
}

/// How the client reads, from the upgrade and the negotiated representation.
pub(super) fn transport(upgrade: bool, representation: Option<Representation>) -> Transport {
    match (upgrade, representation) {
        (true, _) => Transport::WebSocket,
        (false, Some(Representation::LongPoll)) => Transport::LongPoll,
        (false, Some(Representation::Ndjson)) => Transport::Ndjson,
        (false, _) => Transport::Sse,
    }
}

/// A viewer's events as the response of its transport: one long-poll answer, or a stream fed
/// by `feed` (SSE, NDJSON, WebSocket).
pub(super) async fn respond(
    state: &AppState,
    events: ViewerStream,
    reset: bool,
    upgrade: Option<WebSocketUpgrade>,
    transport: Transport,
    poll: Poll,
    viewer: Viewer,
) -> Response {
    if transport == Transport::LongPoll {
        return representation::long_poll(events, reset, poll.after, poll.latest, poll.wait, viewer).await;
    }
    let feed = feed(events, reset, state.stream.clone(), state.shutdown.clone(), viewer);
    match (upgrade, transport) {
        (Some(upgrade), _) => representation::websocket(upgrade, feed),
        (None, Transport::Ndjson) => representation::ndjson(feed),
        (None, _) => representation::event_stream(feed, state.stream.retry),
    }
}

/// Lets a stream request in: refuses a WebSocket upgrade from a foreign origin, then
/// authenticates (logging and counting a failure's reason, never the token), and records the
/// user in the current span.
pub(super) fn admit(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    upgrade: bool,
) -> Result<Option<Principal>, ApiError> {
    // CORS does not cover WebSocket handshakes: a page of another site could open one with the
    // user's cookie. Refused before the token is even looked at.
    if upgrade && !same_or_allowed_origin(headers, uri, &state.allowed_origins) {
        return Err(ApiError::ForbiddenOrigin);
    }
    let principal = state.auth.authenticate(headers, uri.query()).map_err(|reason| {
        tracing::warn!(%reason, "authentication failed");
        state.metrics.auth_failed(reason.label());
        ApiError::Unauthorized
    })?;
    match &principal {
        Some(principal) => {
            tracing::Span::current().record("user", principal.user_id.as_str());
        }
        None => tracing::warn!("serving a stream without authentication (--insecure-no-auth)"),
    }
    Ok(principal)
}

/// The resume point: the `Last-Event-ID` header, else `?lastEventId=` (which EventSource users
/// set on a first connect). An empty value means none; anything but 1 to 20 digits is a 400.
pub fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> Result<Option<u64>, ApiError> {
    let mut values = headers.get_all("last-event-id").iter();
    match (values.next(), values.next()) {
        (Some(_), Some(_)) => Err(()),
        (Some(value), None) => value.to_str().map_err(|_| ()).and_then(number),
        (None, _) => query_number(query.unwrap_or(""), "lastEventId"),
    }
    .map_err(|()| ApiError::InvalidLastEventId)
}

/// A numeric query parameter (`lastEventId`, `after`, `wait`): at most once, 1 to 20 digits.
pub(super) fn query_number(query: &str, key: &str) -> Result<Option<u64>, ()> {
    let mut values = form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == key);
    match (values.next(), values.next()) {
        (Some(_), Some(_)) => Err(()),
        (Some((_, value)), None) => number(&value),
        (None, _) => Ok(None),
    }
}

/// 1 to 20 decimal digits that fit a `u64`; empty means none.
fn number(value: &str) -> Result<Option<u64>, ()> {
    match value {
        "" => Ok(None),
        id if id.len() <= MAX_LAST_EVENT_ID && id.bytes().all(|b| b.is_ascii_digit()) => {
            id.parse().map(Some).map_err(|_| ())
        }
        _ => Err(()),
    }
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

/// The identity passed to the upstream. A valid inbound `x-request-id` is kept so logs on both
/// sides line up; anything else is replaced by a fresh one.
pub(super) fn identity(headers: &HeaderMap, principal: Option<&Principal>) -> Identity {
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn last_event_id_accepts_exactly_decimal_u64s(value in "\\PC{0,24}|[0-9]{1,22}") {
            let mut headers = axum::http::HeaderMap::new();
            if let Ok(header) = axum::http::HeaderValue::from_str(&value) {
                headers.insert("last-event-id", header);
                let parsed = last_event_id(&headers, None);
                let expected = if value.is_empty() {
                    Some(None)
                } else if value.len() <= 20 && value.bytes().all(|b| b.is_ascii_digit()) {
                    value.parse::<u64>().ok().map(Some)
                } else {
                    None
                };
                prop_assert_eq!(parsed.ok(), expected);
            }
        }
    }
}
