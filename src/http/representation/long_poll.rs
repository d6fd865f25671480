//! `application/json`: the long-poll, one JSON answer of the events after the client's point,
//! for clients that cannot hold a stream open.

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::{FutureExt as _, StreamExt as _};
use serde_json::value::RawValue;

use crate::{
    event::StreamEvent,
    http::{ApiError, stream::Viewer},
    hub::{Delivery, ViewerStream},
};

/// Where a long-poll starts: after `after`, or, with `latest`, at the latest event at once.
#[derive(Debug)]
pub struct Poll {
    /// The client's last event id (or cursor); the answer's `lastEventId` when nothing came.
    pub after: LastId,
    /// No resume point was given: answer with what is there now rather than wait.
    pub latest: bool,
}

/// A long-poll's `lastEventId`: a resource's event id, or a multiplexed stream's cursor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum LastId {
    /// An event id of one resource.
    Id(u64),
    /// The cursor of a multiplexed stream.
    Cursor(String),
}

impl LastId {
    fn of(event: &StreamEvent) -> Self {
        match &event.cursor {
            Some(cursor) => Self::Cursor(cursor.to_string()),
            None => Self::Id(event.id),
        }
    }
}

/// The long-poll answer.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct LongPoll {
    events: Vec<Box<RawValue>>,
    last_event_id: LastId,
    done: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    reset: bool,
}

/// `application/json`: every event after `poll.after` that exists now, or the first one to
/// come within `wait`; with `poll.latest`, the latest at once. `done` once the terminal event,
/// or the end of the stream (a multiplexed stream whose every topic ended), is in the answer.
pub async fn long_poll(
    mut events: ViewerStream,
    reset: bool,
    poll: Poll,
    wait: Duration,
    mut viewer: Viewer,
) -> Response {
    // `None`: nothing came; `Some(None)`: the stream ended.
    let first = match poll.latest {
        true => events.next().now_or_never(),
        false => tokio::time::timeout(wait, events.next()).await.ok(),
    };
    let mut answer = LongPoll { events: Vec::new(), last_event_id: poll.after, done: false, reset };
    let mut next = first;
    while let Some(item) = next {
        let Some(item) = item else {
            answer.done = true;
            break;
        };
        match item {
            Delivery::Reset => {
                // The resume point was past the end: what follows replaces what the client had.
                answer.events.clear();
                answer.reset = true;
            }
            Delivery::Event(event) => {
                viewer.metrics.event_sent(event.emitted_at);
                answer.last_event_id = LastId::of(&event);
                answer.done = event.kind.is_terminal();
                // The data is one line of JSON produced by serde_json; it cannot fail to parse.
                if let Ok(raw) = RawValue::from_string(String::from_utf8_lossy(&event.data).into_owned()) {
                    answer.events.push(raw);
                }
                if answer.done {
                    break;
                }
            }
            Delivery::Failed(error) if answer.events.is_empty() => return ApiError::Upstream(error).into_response(),
            // Deliver what arrived; the next poll reports the error.
            Delivery::Failed(_) => break,
        }
        next = events.next().now_or_never();
    }
    respond(&answer)
}

/// A finished resource as a long-poll answer: no events, the terminal event's id (or the
/// cursor), done.
pub fn long_poll_finished(last: LastId) -> Response {
    respond(&LongPoll { events: Vec::new(), last_event_id: last, done: true, reset: false })
}

fn respond(answer: &LongPoll) -> Response {
    (StatusCode::OK, [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], Json(answer)).into_response()
}
