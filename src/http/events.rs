//! `GET /events?topic=<resource path>&topic=...`: one stream for several resources (CONTRACT
//! §10), so that a browser page watches more than six of them over one HTTP/1.1 connection.
//!
//! Each topic is the path of a resource that has a route, checked exactly as its own route would
//! check it, and subscribed through that route's hub: a topic shares its upstream call with
//! every other viewer of the resource, whichever endpoint they use. Every event keeps its
//! route's name; its data is `{"topic":"<path>","data":<the route's data>}`; its SSE id is the
//! cursor of every topic's position (`cursor.rs`). A topic's terminal event ends that topic, a
//! topic that fails gets its own `event: error` and ends, and the response ends when every
//! topic has; a reconnect then gets 204.

mod cursor;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{
        State,
        ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::{HeaderMap, HeaderValue, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use futures_util::{StreamExt as _, future::join_all, stream::select_all};

pub use cursor::CursorError;

use self::cursor::Position;
use super::{
    ApiError, AppState,
    representation::{self, LastId, Representation, reset_data},
    resource::{POLL_WAIT, Poll, admit, identity, query_number, respond, transport},
    stream::Viewer,
};
use crate::{
    event::{EventKind, StreamEvent},
    hub::{Delivery, Hub, Subscription, ViewerStream},
    upstream::{Call, UpstreamError},
};

/// The route label of multiplexed streams in metrics and logs.
pub const ROUTE: &str = "/events";

/// The longest topic accepted, in bytes.
const MAX_TOPIC: usize = 1024;

/// One topic of the request: its path, its route's hub and its parameters.
struct Topic {
    path: String,
    hub: Hub,
    params: Arc<[(String, String)]>,
}

/// Streams every topic's events in the representation the client asked for.
#[tracing::instrument(skip_all, fields(route = ROUTE, topics, request_id, user))]
pub async fn stream(
    hubs: Arc<[Hub]>,
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let principal = admit(&state, &headers, &uri, upgrade.is_ok())?;
    let query = uri.query().unwrap_or("");
    let topics = topics(query, &hubs, state.stream.max_topics)?;
    tracing::Span::current().record("topics", topics.len());
    let upgrade = upgrade.ok();
    let representation = match upgrade {
        Some(_) => None,
        None => Some(Representation::negotiate(&headers)?),
    };
    let long_poll = representation == Some(Representation::LongPoll);
    let positions = match cursor_text(&headers, query, long_poll)? {
        Some(text) => cursor::parse(&text, topics.len()).map_err(ApiError::InvalidCursor)?,
        None => vec![None; topics.len()],
    };
    let wait = match long_poll {
        true => query_number(query, "wait").map_err(|()| ApiError::InvalidWait)?,
        false => None,
    };
    let wait = Duration::from_secs(wait.unwrap_or(POLL_WAIT.0).min(POLL_WAIT.1));
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let permit = state.limits.acquire(principal.as_ref().map(|p| p.user_id.as_str()))?;
    let identity = identity(&headers, principal.as_ref());
    tracing::Span::current().record("request_id", identity.request_id.as_str());
    let request_id = HeaderValue::from_str(&identity.request_id).ok();
    let subscriptions = join_all(topics.iter().zip(&positions).map(|(topic, position)| {
        let call = Call { params: Arc::clone(&topic.params), resume_after: 0, identity: identity.clone() };
        topic.hub.subscribe(call, *position)
    }))
    .await;
    let opened = Opened::sort(subscriptions, positions);
    if opened.live.is_empty() && opened.failed.is_empty() {
        // Every topic had ended at the client's positions.
        let cursor = cursor::format(&opened.positions);
        return Ok(match long_poll {
            true => representation::long_poll_finished(LastId::Cursor(cursor)),
            false => StatusCode::NO_CONTENT.into_response(),
        });
    }
    if let (true, Some((_, error))) = (opened.live.is_empty(), opened.failed.first()) {
        // Nothing to stream: the first failure is the answer, as it would be for one resource.
        return Err(ApiError::Upstream(error.clone()));
    }
    let transport = transport(upgrade.is_some(), representation);
    let poll = Poll { after: LastId::Cursor(cursor::format(&opened.positions)), latest: false, wait };
    let events = ViewerStream::from_stream(opened.merge(topics));
    let metrics = state.metrics.stream_opened(ROUTE, transport);
    let viewer = Viewer { permit, expires_at: principal.map(|p| p.expires_at), metrics, started };
    let mut response = respond(&state, events, false, upgrade, transport, poll, viewer).await;
    if let Some(request_id) = request_id {
        response.headers_mut().insert("x-request-id", request_id);
    }
    Ok(response)
}

/// The `topic` parameters: 1 to `max` distinct paths, each of a resource that has a route and
/// whose parameters pass its rules. Anything else is a 400, before any upstream call.
fn topics(query: &str, hubs: &[Hub], max: usize) -> Result<Vec<Topic>, ApiError> {
    let mut topics: Vec<Topic> = Vec::new();
    for (key, path) in form_urlencoded::parse(query.as_bytes()) {
        if key != "topic" {
            continue;
        }
        if topics.len() == max {
            return Err(ApiError::InvalidTopic(format!("at most {max} topics (--max-topics)")));
        }
        if topics.iter().any(|t| t.path == path) {
            return Err(ApiError::InvalidTopic(format!("topic {path:?} is given twice")));
        }
        let topic = route(&path, hubs)
            .ok_or_else(|| ApiError::InvalidTopic(format!("topic {:?} is not the path of a resource", cut(&path))))?;
        topic.hub.resource().check(&topic.params).map_err(ApiError::InvalidParameter)?;
        topics.push(topic);
    }
    if topics.is_empty() {
        return Err(ApiError::InvalidTopic("at least one topic=<resource path> is required".into()));
    }
    Ok(topics)
}

/// The route of `path` and its parameters (percent-decoded); `None` when no route matches.
fn route(path: &str, hubs: &[Hub]) -> Option<Topic> {
    if path.len() > MAX_TOPIC || !path.starts_with('/') {
        return None;
    }
    hubs.iter().find_map(|hub| {
        let template = hub.route();
        let (mut names, mut segments) = (template.split('/'), path.split('/'));
        let mut params = Vec::new();
        loop {
            match (names.next(), segments.next()) {
                (None, None) => break,
                (Some(name), Some(segment)) => match name.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
                    Some(param) => {
                        let value = percent_encoding::percent_decode_str(segment).decode_utf8().ok()?;
                        params.push((param.to_owned(), value.into_owned()));
                    }
                    None if name == segment => {}
                    None => return None,
                },
                _ => return None,
            }
        }
        Some(Topic { path: path.to_owned(), hub: hub.clone(), params: params.into() })
    })
}

/// At most 64 characters of a topic, for error messages.
fn cut(path: &str) -> String {
    path.chars().take(64).collect()
}

/// The cursor: for a long-poll `?after=`, else the `Last-Event-ID` header, else
/// `?lastEventId=`; empty means none.
fn cursor_text(headers: &HeaderMap, query: &str, long_poll: bool) -> Result<Option<String>, ApiError> {
    let key = if long_poll { "after" } else { "lastEventId" };
    let mut header = headers.get_all("last-event-id").iter();
    let text = match (long_poll, header.next(), header.next()) {
        (false, Some(_), Some(_)) => return Err(ApiError::InvalidLastEventId),
        (false, Some(value), None) => Some(value.to_str().map_err(|_| ApiError::InvalidLastEventId)?.to_owned()),
        _ => {
            let mut values = form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == key);
            match (values.next(), values.next()) {
                (Some(_), Some(_)) => return Err(ApiError::InvalidLastEventId),
                (Some((_, value)), None) => Some(value.into_owned()),
                (None, _) => None,
            }
        }
    };
    Ok(text.filter(|t| !t.is_empty()))
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
