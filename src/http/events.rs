//! `GET /events?topic=<resource path>&topic=...`: one stream for several resources (CONTRACT
//! §10), so that a browser page watches more than six of them over one HTTP/1.1 connection.
//!
//! Each topic is the path of a resource that has a route, checked exactly as its own route would
//! check it (`topics.rs`), and subscribed through that route's hub: a topic shares its upstream
//! call with every other viewer of the resource, whichever endpoint they use. Every event keeps
//! its route's name; its data is `{"topic":"<path>","data":<the route's data>}`; its SSE id is
//! the cursor of every topic's position (`cursor.rs`). A topic's terminal event ends that topic,
//! a topic that fails gets its own `event: error` and ends, and the response ends when every
//! topic has; a reconnect then gets 204.

mod cursor;

/// The cursor parser, for the fuzzers (`http/fuzzing.rs`).
#[cfg(fuzzing)]
pub(super) fn parse_cursor(text: &str, topics: usize) -> bool {
    cursor::parse(text, topics).is_ok()
}
mod topics;

use std::sync::Arc;

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use futures_util::{StreamExt as _, future::join_all, stream::select_all};

pub use cursor::CursorError;

use self::{
    cursor::Position,
    topics::{Topic, Topics},
};
use super::{
    ApiError, AppState,
    caller::Caller,
    representation::{LastId, Negotiated, Poll, long_poll_finished, reset_data},
    stream::Viewer,
};
use crate::{
    event::{EventKind, StreamEvent},
    hub::{Delivery, Subscription, ViewerStream},
    upstream::{Call, UpstreamError},
};

/// The route label of multiplexed streams in metrics and logs.
pub const ROUTE: &str = "/events";

/// Streams every topic's events in the representation the client asked for. The extractors run
/// in the order of their answers: 403 or 401, a bad topic, 406, a bad cursor, a bad `wait`.
#[tracing::instrument(skip_all, fields(route = ROUTE, topics = watched.topics.len()))]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    watched: Topics,
    negotiated: Negotiated,
) -> Result<Response, ApiError> {
    let permit = state.permit(&caller)?;
    let Topics { topics, positions } = watched;
    let identity = caller.identity();
    let subscriptions = join_all(topics.iter().zip(&positions).map(|(topic, position)| {
        let call = Call { params: Arc::clone(&topic.params), identity: identity.clone() };
        topic.hub.subscribe(call, *position)
    }))
    .await;
    let opened = Opened::sort(subscriptions, positions);
    if opened.live.is_empty() && opened.failed.is_empty() {
        // Every topic had ended at the client's positions.
        let cursor = cursor::format(&opened.positions);
        return Ok(match negotiated.long_poll() {
            true => long_poll_finished(LastId::Cursor(cursor)),
            false => StatusCode::NO_CONTENT.into_response(),
        });
    }
    if let (true, Some((_, error))) = (opened.live.is_empty(), opened.failed.first()) {
        // Nothing to stream: the first failure is the answer, as it would be for one resource.
        return Err(ApiError::Upstream(error.clone()));
    }
    let poll = Poll { after: LastId::Cursor(cursor::format(&opened.positions)), latest: false };
    let events = ViewerStream::from_stream(opened.merge(topics));
    let metrics = state.metrics.stream_opened(ROUTE, negotiated.transport());
    let viewer = Viewer { permit, expires_at: caller.expires_at(), metrics, started: caller.arrived };
    Ok(caller.tag(negotiated.respond(&state, events, false, poll, viewer).await))
}

/// The topics' subscriptions, sorted.
struct Opened {
    /// Every topic's position: the client's, or the terminal id of one that had ended.
    positions: Vec<Position>,
    /// Topics streaming now, with whether their resume point had to be reset.
    live: Vec<(usize, bool, ViewerStream)>,
    /// Topics whose subscription failed before anything was sent.
    failed: Vec<(usize, UpstreamError)>,
}

impl Opened {
    fn sort(subscriptions: Vec<Result<Subscription, UpstreamError>>, mut positions: Vec<Position>) -> Self {
        let (mut live, mut failed) = (Vec::new(), Vec::new());
        for (index, subscription) in subscriptions.into_iter().enumerate() {
            match subscription {
                Ok(Subscription::Finished { last }) => positions[index] = Some(last),
                Ok(Subscription::Live { reset, events }) => live.push((index, reset, events)),
                Err(error) => failed.push((index, error)),
            }
        }
        Self { positions, live, failed }
    }

    /// One stream of every topic's deliveries, as events of this multiplexed stream: first
    /// each failed topic's error and each reset, then every event as it comes.
    fn merge(self, topics: Vec<Topic>) -> impl futures_util::Stream<Item = Delivery> + Send + 'static {
        let Self { mut positions, live, failed } = self;
        let resets: Vec<usize> = live.iter().filter(|(_, reset, _)| *reset).map(|(index, ..)| *index).collect();
        let mut merged = select_all(live.into_iter().map(|(index, _, events)| events.map(move |d| (index, d))));
        async_stream::stream! {
            for (index, error) in failed {
                yield Delivery::Event(failure(&topics[index].path, &error, &positions));
            }
            for index in resets {
                yield Delivery::Event(notice(&topics[index].path, "reset", reset_data(), &positions));
            }
            while let Some((index, delivery)) = merged.next().await {
                let path = &topics[index].path;
                match delivery {
                    Delivery::Event(event) => {
                        positions[index] = Some(event.id);
                        yield Delivery::Event(Arc::new(wrap(path, &event, &positions)));
                    }
                    Delivery::Reset => yield Delivery::Event(notice(path, "reset", reset_data(), &positions)),
                    Delivery::Failed(error) => yield Delivery::Event(failure(path, &error, &positions)),
                }
            }
        }
    }
}

/// `{"topic":"<path>","data":<data>}`.
fn envelope(path: &str, data: &[u8]) -> Vec<u8> {
    let topic = serde_json::to_vec(path).unwrap_or_else(|_| b"\"\"".to_vec());
    [&br#"{"topic":"#[..], &topic, br#","data":"#, data, b"}"].concat()
}

/// A topic's event on the multiplexed stream: its route's name (never ending the stream), the
/// envelope, and the cursor as its id.
fn wrap(path: &str, event: &StreamEvent, positions: &[Position]) -> StreamEvent {
    let cursor = cursor::format(positions);
    let kind = event.kind.continuing();
    StreamEvent::with_cursor(event.id, &cursor, kind, &envelope(path, &event.data), event.emitted_at)
}

/// A topic's `reset` or `error`, carrying the cursor unchanged.
fn notice(path: &str, name: &'static str, data: &[u8], positions: &[Position]) -> Arc<StreamEvent> {
    let kind = EventKind::new(name, false).unwrap_or(EventKind::PROGRESS);
    Arc::new(StreamEvent::with_cursor(0, &cursor::format(positions), kind, &envelope(path, data), None))
}

/// A topic's failure as its `event: error`, with the data a resource's own stream would have.
fn failure(path: &str, error: &UpstreamError, positions: &[Position]) -> Arc<StreamEvent> {
    notice(path, "error", &ApiError::Upstream(error.clone()).body(), positions)
}
