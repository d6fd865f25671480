//! `text/event-stream`: the SSE representation, whose bytes are the frames each event was
//! encoded into once, plus the `retry:` hint, heartbeats and the ending.

use std::time::Duration;

use axum::response::Response;
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};

use super::{RESET, streaming::streaming};
use crate::{
    http::stream::{Ending, Output},
    sse,
};

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
