//! `application/x-ndjson`: one JSON object per line, each event's line a slice of the frame it
//! was encoded into once.

use axum::response::Response;
use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _};

use super::streaming::streaming;
use crate::http::stream::{Ending, Output};

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
