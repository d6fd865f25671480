//! The representations of a streamed resource, negotiated on one path: SSE (the default),
//! NDJSON, a JSON long-poll, and a WebSocket. All of them read the same hub feed.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{
    Json,
    body::Body,
    extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::{FutureExt as _, Stream, StreamExt as _};
use serde_json::value::RawValue;

use super::{
    ApiError,
    stream::{Ending, Output, Viewer},
};
use crate::{
    event::StreamEvent,
    hub::{Delivery, ViewerStream},
    sse,
};

/// The JSON data of the `reset` event.
pub fn reset_data() -> &'static [u8] {
    RESET.as_bytes()
}

/// The JSON data of the `reset` event, as text.
const RESET: &str = r#"{"reason":"the requested resume point is no longer available; this is the current state"}"#;

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    /// `text/event-stream`, `text/*`, `*/*` or no `Accept`.
    EventStream,
    /// `application/x-ndjson`: one JSON object per line.
    Ndjson,
    /// `application/json`: a long-poll.
    LongPoll,
}

impl Representation {
    /// Picks the representation from `Accept`, preferring SSE when several match.
    pub fn negotiate(headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut ranges = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|range| range.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
            .peekable();
        if ranges.peek().is_none() {
            return Ok(Self::EventStream);
        }
        let ranges: Vec<String> = ranges.collect();
        let has = |media: &str| ranges.iter().any(|r| r == media);
        if has("text/event-stream") {
            Ok(Self::EventStream)
        } else if has("application/x-ndjson") {
            Ok(Self::Ndjson)
        } else if has("application/json") {
            Ok(Self::LongPoll)
        } else if has("*/*") || has("text/*") {
            Ok(Self::EventStream)
        } else {
            Err(ApiError::NotAcceptable)
        }
    }
}

/// `text/event-stream`: one frame per output, the first block carrying the `retry:` field.
///
/// No block without `data` is ever sent: naive clients (httpx-sse's `connect_sse`, loops that
/// parse every event's data) dispatch a lone `retry:` block as an event with empty data and
/// crash on it. So `retry:` rides in the first block that has data (the first event, a reset
/// or an error); a heartbeat is a comment line with no blank line after it (see
/// [`sse::KEEP_ALIVE`]), which no client dispatches. The reconnect
/// hint at the end of a stream is a `retry:` line with no blank line after it: a WHATWG parser
/// applies the field as it reads the line, and a block left open at the end of the body is
/// discarded, never dispatched.
pub fn event_stream(feed: impl Stream<Item = Output> + Send + 'static, retry: Duration) -> Response {
    let mut first = Some(retry);
    let frames = feed.filter_map(move |output| {
        let mut with_retry = |frame: Bytes| match first.take() {
            Some(retry) => Bytes::from([sse::retry_field(retry).as_bytes(), &frame].concat()),
            None => frame,
        };
        std::future::ready(match output {
            Output::Reset => Some(with_retry(sse::frame(None, "reset", RESET.as_bytes()))),
            Output::Event(event) => Some(with_retry(event.sse.clone())),
            Output::Heartbeat => Some(Bytes::from_static(sse::KEEP_ALIVE)),
            Output::End(Ending::Terminal) => None,
            Output::End(Ending::Error(error)) => Some(with_retry(error.to_sse())),
            Output::End(Ending::Reconnect(after)) => Some(Bytes::from(sse::retry_field(after))),
        })
    });
    streaming(frames, "text/event-stream")
}

/// `application/x-ndjson`: the event data objects one per line; an error ends the stream as
/// one more line (it has `code`, updates have `sequence`); heartbeats are blank lines.
pub fn ndjson(feed: impl Stream<Item = Output> + Send + 'static) -> Response {
    let lines = feed.filter_map(|output| {
        std::future::ready(match output {
            Output::Reset => Some(line(br#"{"event":"reset"}"#)),
            Output::Event(event) => Some(event.line()),
            Output::Heartbeat => Some(Bytes::from_static(b"\n")),
            Output::End(Ending::Error(error)) => Some(line(&error.body())),
            Output::End(Ending::Terminal | Ending::Reconnect(_)) => None,
        })
    });
    streaming(lines, "application/x-ndjson")
}

fn line(json: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + 1);
    out.put_slice(json);
    out.put_u8(b'\n');
    out.freeze()
}

fn streaming(body: impl Stream<Item = Bytes> + Send + 'static, content_type: &'static str) -> Response {
    // Whatever is ready at once goes out as one chunk: under load a viewer that wakes up to
    // several events pays for one write instead of one per event.
    let body = Coalesce { inner: Box::pin(body), done: false }.map(Ok::<_, Infallible>);
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The most frames joined into one write.
const COALESCE: usize = 16;

/// Joins the frames that are ready at once into one chunk, so a viewer that wakes up to several
/// pays for one write; a lone frame passes through without a copy or an allocation.
struct Coalesce<S> {
    inner: Pin<Box<S>>,
    done: bool,
}

impl<S: Stream<Item = Bytes>> Stream for Coalesce<S> {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.done {
            return Poll::Ready(None);
        }
        let Some(first) = ready!(self.inner.as_mut().poll_next(cx)) else {
            self.done = true;
            return Poll::Ready(None);
        };
        let mut joined: Option<BytesMut> = None;
        for _ in 1..COALESCE {
            match self.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(next)) => joined.get_or_insert_with(|| BytesMut::from(&first[..])).put_slice(&next),
                Poll::Ready(None) => {
                    self.done = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        Poll::Ready(Some(joined.map_or(first, BytesMut::freeze)))
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

/// `application/json`: every event after `after` that exists now, or the first one to come
/// within `wait`; with `latest`, the latest at once. `done` once the terminal event, or the
/// end of the stream (a multiplexed stream whose every topic ended), is in the answer.
pub async fn long_poll(
    mut events: ViewerStream,
    reset: bool,
    after: LastId,
    latest: bool,
    wait: Duration,
    mut viewer: Viewer,
) -> Response {
    // `None`: nothing came; `Some(None)`: the stream ended.
    let first = match latest {
        true => events.next().now_or_never(),
        false => tokio::time::timeout(wait, events.next()).await.ok(),
    };
    let mut poll = LongPoll { events: Vec::new(), last_event_id: after, done: false, reset };
    let mut next = first;
    while let Some(item) = next {
        let Some(item) = item else {
            poll.done = true;
            break;
        };
        match item {
            Delivery::Reset => {
                // The resume point was past the end: what follows replaces what the client had.
                poll.events.clear();
                poll.reset = true;
            }
            Delivery::Event(event) => {
                viewer.metrics.event_sent(event.emitted_at);
                poll.last_event_id = LastId::of(&event);
                poll.done = event.kind.is_terminal();
                // The data is one line of JSON produced by serde_json; it cannot fail to parse.
                if let Ok(raw) = RawValue::from_string(String::from_utf8_lossy(&event.data).into_owned()) {
                    poll.events.push(raw);
                }
                if poll.done {
                    break;
                }
            }
            Delivery::Failed(error) if poll.events.is_empty() => return ApiError::Upstream(error).into_response(),
            // Deliver what arrived; the next poll reports the error.
            Delivery::Failed(_) => break,
        }
        next = events.next().now_or_never();
    }
    poll_response(&poll)
}

/// A finished resource as a long-poll answer: no events, the terminal event's id (or the
/// cursor), done.
pub fn long_poll_finished(last: LastId) -> Response {
    poll_response(&LongPoll { events: Vec::new(), last_event_id: last, done: true, reset: false })
}

fn poll_response(poll: &LongPoll) -> Response {
    (StatusCode::OK, [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], Json(poll)).into_response()
}

/// A WebSocket: one text frame per event, `{"id":"7","event":"progress","data":{...}}`, pings
/// as heartbeats, and a close frame at the end.
pub fn websocket(upgrade: WebSocketUpgrade, feed: impl Stream<Item = Output> + Send + 'static) -> Response {
    upgrade.max_message_size(4096).on_upgrade(move |socket| relay(socket, feed))
}

async fn relay(mut socket: WebSocket, feed: impl Stream<Item = Output> + Send + 'static) {
    let mut feed = std::pin::pin!(feed);
    loop {
        tokio::select! {
            output = feed.next() => {
                let Some(output) = output else { break };
                let (messages, last) = ws_messages(output);
                for message in messages {
                    if socket.send(message).await.is_err() {
                        return;
                    }
                }
                if last {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                // Pongs and pings are answered by the library; text from the client is ignored.
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// The frames for one output, and whether they end the socket.
fn ws_messages(output: Output) -> (Vec<Message>, bool) {
    let text = |json: String| Message::Text(json.into());
    match output {
        Output::Reset => (vec![text(format!(r#"{{"event":"reset","data":{RESET}}}"#))], false),
        Output::Event(event) => {
            let data = String::from_utf8_lossy(&event.data);
            let id = event.sse_id();
            (vec![text(format!(r#"{{"id":"{id}","event":"{}","data":{data}}}"#, event.kind.name()))], false)
        }
        Output::Heartbeat => (vec![Message::Ping(Bytes::new())], false),
        Output::End(Ending::Terminal) => (vec![close(1000, "done")], true),
        Output::End(Ending::Error(error)) => {
            let data = String::from_utf8_lossy(&error.body()).into_owned();
            // 1013 "try again later" for retryable errors, 1011 "internal error" otherwise.
            let code = if error.retryable() { 1013 } else { 1011 };
            (vec![text(format!(r#"{{"event":"error","data":{data}}}"#)), close(code, error.code())], true)
        }
        // 1012 "service restart": the client reconnects and resumes.
        Output::End(Ending::Reconnect(_)) => (vec![close(1012, "reconnect")], true),
    }
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}
