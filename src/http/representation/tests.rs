//! Upstream text can never break the framing of any representation: an update whose strings
//! hold line breaks (`\n`, `\r`, `\r\n`), NUL, SSE field lookalikes or any Unicode, mapped as a
//! call maps it, comes out of SSE, NDJSON, the long-poll and a WebSocket as exactly one event
//! whose data holds the same text; an upstream error message likewise as exactly one error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use axum::response::Response;
use proptest::prelude::*;
use serde_json::Value;
use tonic::Code;

use super::{long_poll, ndjson, sse, websocket};
use crate::{
    event::StreamEvent,
    http::{
        ApiError,
        limits::StreamLimits,
        stream::{Ending, Output, Viewer},
    },
    hub::{Delivery, ViewerStream},
    metrics::{Metrics, Transport},
    sse::{Decoder, Frame},
    upstream::{DocumentUpdate, UpstreamError, document_event},
};

/// Pieces that SSE, NDJSON or JSON framing could trip on, or any character at all.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\n".to_owned()),
        Just("\r".to_owned()),
        Just("\r\n".to_owned()),
        Just("\n\n".to_owned()),
        Just("\0".to_owned()),
        Just("data: {\"sequence\":99}".to_owned()),
        Just("\n\nid: 9\nevent: completed\ndata: {}\n\n".to_owned()),
        Just("retry: 1".to_owned()),
        Just(": keep-alive".to_owned()),
        Just("\"".to_owned()),
        Just("\\".to_owned()),
        Just("\u{2028}\u{2029}\u{85}\u{feff}".to_owned()),
        any::<char>().prop_map(String::from),
        "(?s).{0,16}",
    ]
}

/// Upstream text: any string, built from the pieces above.
fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(piece(), 0..12).prop_map(|pieces| pieces.concat())
}

fn update() -> impl Strategy<Value = DocumentUpdate> {
    (1..u64::MAX, any::<bool>(), text(), text(), text(), text()).prop_map(
        |(sequence, terminal, document_id, stage, message, error_code)| DocumentUpdate {
            sequence,
            terminal,
            document_id,
            stage,
            message,
            error_code,
        },
    )
}

/// What the upstream text must still be in the decoded data.
fn assert_carries(data: &Value, update: &DocumentUpdate) {
    assert_eq!(data["documentId"], update.document_id.as_str());
    assert_eq!(data["sequence"], update.sequence);
    assert_eq!(data["stage"], update.stage.as_str());
    assert_eq!(data["message"], update.message.as_str());
    if !update.error_code.is_empty() {
        assert_eq!(data["errorCode"], update.error_code.as_str());
    }
}

/// An error the upstream ended the call with, its message the same kind of text.
fn upstream_error(message: &str) -> ApiError {
    ApiError::Upstream(UpstreamError::new(Code::Unavailable, message))
}

/// The outputs every streamed representation is given: the event, then an upstream error.
fn outputs(event: &Arc<StreamEvent>, message: &str) -> impl futures_util::Stream<Item = Output> + Send + 'static {
    futures_util::stream::iter([Output::Event(Arc::clone(event)), Output::End(Ending::Error(upstream_error(message)))])
}

fn body(response: Response) -> Vec<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    runtime.block_on(axum::body::to_bytes(response.into_body(), usize::MAX)).unwrap().to_vec()
}

fn check_sse(event: &Arc<StreamEvent>, update: &DocumentUpdate, message: &str) {
    let bytes = body(sse::event_stream(outputs(event, message), Duration::from_secs(3)));
    let frames = Decoder::new().feed(&bytes);
    let events: Vec<_> = frames.iter().filter(|f| matches!(f, Frame::Event { .. })).collect();
    assert_eq!(events.len(), 2, "one event and one error, not {frames:?}");
    assert_eq!(frames.first(), Some(&Frame::Retry(3000)));
    let Frame::Event { id, event: name, data } = events[0] else { unreachable!() };
    assert_eq!(id.as_deref(), Some(update.sequence.to_string().as_str()));
    assert_eq!(name, if update.terminal { "completed" } else { "progress" });
    assert_eq!(data.as_bytes(), &event.data[..], "the data the client joins is the event's JSON");
    assert_carries(&serde_json::from_str(data).unwrap(), update);
    let Frame::Event { id, event: name, data } = events[1] else { unreachable!() };
    assert_eq!((id, name.as_str()), (&None, "error"));
    let error: Value = serde_json::from_str(data).unwrap();
    assert!(message.starts_with(error["message"].as_str().unwrap()), "the message, cut to 512 bytes at most");
}

fn check_ndjson(event: &Arc<StreamEvent>, update: &DocumentUpdate, message: &str) {
    let bytes = body(ndjson::ndjson(outputs(event, message)));
    let text = String::from_utf8(bytes).unwrap();
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    assert_eq!(lines.len(), 2, "one line for the event and one for the error: {text:?}");
    assert_eq!(lines[0].as_bytes(), &event.data[..]);
    assert_carries(&serde_json::from_str(lines[0]).unwrap(), update);
    let error: Value = serde_json::from_str(lines[1]).unwrap();
    assert!(message.starts_with(error["message"].as_str().unwrap()));
}

fn check_long_poll(event: &Arc<StreamEvent>, update: &DocumentUpdate) {
    let metrics = Arc::new(Metrics::default());
    let viewer = Viewer {
        permit: StreamLimits::new(1, 1).acquire(None).unwrap(),
        expires_at: None,
        metrics: metrics.stream_opened("/documents/{document_id}/progress", Transport::LongPoll),
        started: std::time::Instant::now(),
    };
    // The stream goes on after the event, as a live call's does.
    let one = futures_util::stream::iter([Delivery::Event(Arc::clone(event))]);
    let events = ViewerStream::from_stream(futures_util::StreamExt::chain(one, futures_util::stream::pending()));
    let poll = long_poll::Poll { after: long_poll::LastId::Id(0), latest: false };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let response = runtime.block_on(long_poll::long_poll(events, false, poll, Duration::from_secs(1), viewer));
    let answer: Value = serde_json::from_slice(&body(response)).unwrap();
    assert_eq!(answer["events"].as_array().map(Vec::len), Some(1), "one event: {answer}");
    assert_eq!(answer["lastEventId"], update.sequence);
    assert_eq!(answer["done"], update.terminal);
    assert_carries(&answer["events"][0], update);
}

fn check_websocket(event: &Arc<StreamEvent>, update: &DocumentUpdate, message: &str) {
    use axum::extract::ws::Message;
    let (frames, last) = websocket::messages(Output::Event(Arc::clone(event)));
    assert!(!last);
    let [Message::Text(text)] = &frames[..] else { panic!("one text frame, not {frames:?}") };
    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
    assert_eq!(frame["id"], update.sequence.to_string());
    assert_eq!(frame["event"], if update.terminal { "completed" } else { "progress" });
    assert_carries(&frame["data"], update);
    let (frames, last) = websocket::messages(Output::End(Ending::Error(upstream_error(message))));
    assert!(last);
    let Message::Text(text) = &frames[0] else { panic!("the error as a text frame first, not {frames:?}") };
    let error: Value = serde_json::from_str(text.as_str()).unwrap();
    assert!(message.starts_with(error["data"]["message"].as_str().unwrap()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn upstream_text_never_breaks_the_framing_of_any_representation(update in update(), message in text()) {
        let event = Arc::new(document_event(&update));
        check_sse(&event, &update, &message);
        check_ndjson(&event, &update, &message);
        check_long_poll(&event, &update);
        check_websocket(&event, &update, &message);
    }
}
