//! How the client reads a stream, negotiated on one path: SSE (the default), NDJSON, a JSON
//! long-poll, or a WebSocket. `Negotiated` is that choice, made once per request; each
//! representation's own file owns its bytes, and all of them read the same hub feed.

mod long_poll;
mod ndjson;
mod sse;
mod streaming;
#[cfg(test)]
mod tests;
mod websocket;

use std::time::Duration;

use axum::{
    extract::{FromRequestParts, ws::WebSocketUpgrade},
    http::{HeaderMap, header, request::Parts},
    response::Response,
};

pub use long_poll::{LastId, Poll, long_poll_finished};
pub use websocket::is_handshake;

use super::{
    ApiError, AppState,
    resume::query_number,
    stream::{Viewer, feed},
};
use crate::{hub::ViewerStream, metrics::Transport};

/// The default and the longest long-poll wait, in seconds.
const POLL_WAIT: (u64, u64) = (25, 60);

/// The JSON data of the `reset` event, as text.
const RESET: &str = r#"{"reason":"the requested resume point is no longer available; this is the current state"}"#;

/// The JSON data of the `reset` event.
pub fn reset_data() -> &'static [u8] {
    RESET.as_bytes()
}

/// How the client reads. Extracting it takes a WebSocket handshake's upgrade; anything else is
/// negotiated from `Accept`, preferring SSE when several match (406 when none does).
#[derive(Debug)]
pub enum Negotiated {
    /// `text/event-stream`, `text/*`, `*/*` or no `Accept`.
    Sse,
    /// `application/x-ndjson`: one JSON object per line.
    Ndjson,
    /// `application/json`: a long-poll, waiting at most `wait` (`?wait=` seconds: 25 unless
    /// given, at most 60) for an event.
    LongPoll {
        /// How long an answer with no events is held back.
        wait: Duration,
    },
    /// A WebSocket handshake, whatever `Accept` says.
    WebSocket(WebSocketUpgrade),
}

impl<S: Send + Sync> FromRequestParts<S> for Negotiated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if let Ok(upgrade) = WebSocketUpgrade::from_request_parts(parts, state).await {
            return Ok(Self::WebSocket(upgrade));
        }
        match Self::accepted(&parts.headers)? {
            // `wait` only means something to a long-poll; other representations ignore it.
            Self::LongPoll { wait } => {
                let given =
                    query_number(parts.uri.query().unwrap_or(""), "wait").map_err(|()| ApiError::InvalidWait)?;
                Ok(Self::LongPoll { wait: given.map_or(wait, |secs| Duration::from_secs(secs.min(POLL_WAIT.1))) })
            }
            other => Ok(other),
        }
    }
}

impl Negotiated {
    /// Whether the request is a long-poll, decided as extracting `Negotiated` decides it but
    /// without taking a WebSocket upgrade: where the resume point is read depends on it. An
    /// `Accept` that nothing matches is refused here too, so that 406 comes before a bad resume
    /// point whichever is extracted first.
    pub async fn is_long_poll<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<bool, ApiError> {
        if is_handshake(parts, state).await {
            return Ok(false);
        }
        Ok(matches!(Self::accepted(&parts.headers)?, Self::LongPoll { .. }))
    }

    /// Whether this is a long-poll.
    pub fn long_poll(&self) -> bool {
        matches!(self, Self::LongPoll { .. })
    }

    /// The label metrics count this representation under.
    pub fn transport(&self) -> Transport {
        match self {
            Self::Sse => Transport::Sse,
            Self::Ndjson => Transport::Ndjson,
            Self::LongPoll { .. } => Transport::LongPoll,
            Self::WebSocket(_) => Transport::WebSocket,
        }
    }

    /// A viewer's events in this representation: one long-poll answer from `poll`, or a stream
    /// fed by `feed` (SSE, NDJSON, WebSocket).
    pub async fn respond(
        self,
        state: &AppState,
        events: ViewerStream,
        reset: bool,
        poll: Poll,
        viewer: Viewer,
    ) -> Response {
        let fed = |events, viewer| feed(events, reset, state.stream.clone(), state.shutdown.clone(), viewer);
        match self {
            Self::LongPoll { wait } => long_poll::long_poll(events, reset, poll, wait, viewer).await,
            Self::WebSocket(upgrade) => websocket::websocket(upgrade, fed(events, viewer)),
            Self::Ndjson => ndjson::ndjson(fed(events, viewer)),
            Self::Sse => sse::event_stream(fed(events, viewer), state.stream.retry),
        }
    }

    /// The representation `Accept` asks for (a long-poll with the default wait).
    fn accepted(headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut ranges = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|range| range.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
            .peekable();
        if ranges.peek().is_none() {
            return Ok(Self::Sse);
        }
        let ranges: Vec<String> = ranges.collect();
        let has = |media: &str| ranges.iter().any(|r| r == media);
        if has("text/event-stream") {
            Ok(Self::Sse)
        } else if has("application/x-ndjson") {
            Ok(Self::Ndjson)
        } else if has("application/json") {
            Ok(Self::LongPoll { wait: Duration::from_secs(POLL_WAIT.0) })
        } else if has("*/*") || has("text/*") {
            Ok(Self::Sse)
        } else {
            Err(ApiError::NotAcceptable)
        }
    }
}
