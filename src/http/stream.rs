//! The SSE response body: `retry:` first, then one frame per event, heartbeats in silences,
//! and an orderly end on the terminal event, an upstream error or shutdown.
//!
//! The body owns the upstream stream: when the client goes away hyper drops the body, which
//! drops the tonic `Streaming` and so cancels the upstream call.

use std::{
    convert::Infallible,
    time::{Duration, SystemTime},
};

use axum::{
    body::Body,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::{ApiError, limits::StreamPermit};
use crate::{
    sse,
    upstream::{EventStream, UpstreamError},
};

/// Stream timing shared by every SSE response.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Silence after which a `: keep-alive` comment is sent.
    pub heartbeat: Duration,
    /// The `retry:` hint at the start of each stream.
    pub retry: Duration,
    /// The longest a stream stays open, whatever the token's lifetime; the client then
    /// reconnects and resumes.
    pub max_lifetime: Duration,
}

/// One viewer's stream: its limits permit and when its credentials run out.
#[derive(Debug)]
pub struct Viewer {
    /// Released when the stream ends.
    pub permit: StreamPermit,
    /// The token's `exp`: the stream ends with `token_expired` by then.
    pub expires_at: Option<SystemTime>,
}

/// How a stream ended, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Terminal,
    UpstreamError,
    Shutdown,
    TokenExpired,
    Lifetime,
}

enum Next {
    Item(Option<Result<crate::event::StreamEvent, UpstreamError>>),
    Heartbeat,
    Shutdown,
    Deadline,
}

/// Builds the `text/event-stream` response around `events`.
pub fn sse_response(
    events: EventStream,
    settings: StreamSettings,
    shutdown: CancellationToken,
    viewer: Viewer,
) -> Response {
    let span = tracing::Span::current();
    let until_expiry = viewer.expires_at.map(|exp| exp.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO));
    let token_ends_first = until_expiry.is_some_and(|left| left <= settings.max_lifetime);
    let until_deadline = until_expiry.map_or(settings.max_lifetime, |left| left.min(settings.max_lifetime));
    let body = async_stream::stream! {
        let _permit = viewer.permit;
        let deadline = tokio::time::sleep(until_deadline);
        tokio::pin!(deadline);
        yield Ok::<Bytes, Infallible>(sse::retry(settings.retry));
        let mut events = events;
        let heartbeat = tokio::time::sleep(settings.heartbeat);
        tokio::pin!(heartbeat);
        let outcome = loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => Next::Shutdown,
                () = &mut deadline => Next::Deadline,
                item = events.next() => Next::Item(item),
                () = &mut heartbeat => Next::Heartbeat,
            };
            match next {
                Next::Item(Some(Ok(event))) => {
                    yield Ok(sse::event(&event));
                    if event.kind.is_terminal() {
                        break Outcome::Terminal;
                    }
                }
                Next::Item(Some(Err(error))) => {
                    yield Ok(ApiError::Upstream(error).to_sse());
                    break Outcome::UpstreamError;
                }
                Next::Item(None) => {
                    yield Ok(ApiError::Upstream(UpstreamError::ended_early()).to_sse());
                    break Outcome::UpstreamError;
                }
                Next::Heartbeat => yield Ok(Bytes::from_static(sse::KEEP_ALIVE)),
                Next::Shutdown => {
                    // Ask the client to come back soon, spread out so that a fleet of viewers
                    // does not reconnect in one burst.
                    yield Ok(sse::retry(jittered(settings.retry)));
                    break Outcome::Shutdown;
                }
                Next::Deadline if token_ends_first => {
                    yield Ok(ApiError::TokenExpired.to_sse());
                    break Outcome::TokenExpired;
                }
                Next::Deadline => {
                    yield Ok(sse::retry(settings.retry));
                    break Outcome::Lifetime;
                }
            }
            heartbeat.as_mut().reset(tokio::time::Instant::now() + settings.heartbeat);
        };
        tracing::info!(parent: &span, ?outcome, "stream ended");
    };
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A reconnect delay between half and one and a half times `base`.
fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.5 + fastrand::f64())
}
