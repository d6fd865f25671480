//! The happy path and the framing of the SSE stream.

use std::time::Duration;

use serde_json::Value;
use sse_bff::sse::Frame;

use crate::helpers::{SseReader, TestApp, bearer, events, names};

#[tokio::test]
async fn a_job_streams_every_update_in_order_and_ends_after_completed() {
    let app = TestApp::spawn().await;
    let mut headers = bearer(&app.token);
    headers.insert("accept-encoding", "gzip, br, deflate".parse().unwrap());
    let response = app.get("/documents/doc-1/progress?lastEventId=0", &headers).await;

    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(headers.get("content-encoding").is_none(), "event streams are never compressed");

    let frames = SseReader::new(response).read_to_end().await;
    assert_eq!(frames.first(), Some(&Frame::Retry(3000)), "the stream starts with retry:");
    let events = events(&frames);
    let ids: Vec<u64> = events.iter().map(|(id, _, _)| id.as_deref().unwrap().parse().unwrap()).collect();
    assert_eq!(ids, (1..=10).collect::<Vec<_>>(), "ids are the upstream sequence, gap-free");
    let names = names(&frames);
    assert_eq!(names[..9], ["progress"; 9]);
    assert_eq!(names[9], "completed");
    assert!(
        matches!(frames.last(), Some(Frame::Event { event, .. }) if event == "completed"),
        "nothing after the terminal event"
    );

    let mut last_percent = 0;
    for (id, _, data) in &events {
        let fields: Vec<&str> = data.as_object().unwrap().keys().map(String::as_str).collect();
        let mut fields = fields;
        fields.sort_unstable();
        assert_eq!(fields, ["documentId", "emittedAt", "message", "percent", "sequence", "stage", "status"]);
        assert_eq!(data["documentId"], "doc-1");
        assert_eq!(data["sequence"].to_string(), *id.as_ref().unwrap());
        let percent = data["percent"].as_u64().unwrap();
        assert!(percent >= last_percent, "percent never decreases");
        last_percent = percent;
        assert_rfc3339_utc(&data["emittedAt"]);
    }
    assert_eq!(events[0].2["status"], "queued");
    assert_eq!(events[1].2["status"], "running");
    assert_eq!(events[5].2["stage"], "embedding");
    assert_eq!(events[5].2["message"], "Embedded 120/300 chunks");
    assert_eq!(events[9].2["status"], "completed");
    assert_eq!(events[9].2["percent"], 100);
    assert_eq!(events[9].2["message"], "Indexed 300 chunks\nready for search");
}

#[tokio::test]
async fn a_failing_job_ends_with_a_failed_event_carrying_the_error_code() {
    let app = TestApp::spawn().await;
    let frames = app.transcript("doc-3").await;
    let events = events(&frames);
    let (id, name, data) = events.last().unwrap();
    assert_eq!(name, "failed");
    assert_eq!(id.as_deref(), Some("4"));
    assert_eq!(data["status"], "failed");
    assert_eq!(data["errorCode"], "UNSUPPORTED_FORMAT");
    assert!(data["message"].as_str().unwrap().contains("JBIG2"));
    assert!(events[..3].iter().all(|(_, _, d)| d.get("errorCode").is_none()), "errorCode only when present");
}

#[tokio::test]
async fn hostile_upstream_text_stays_inside_one_event_each() {
    let app = TestApp::spawn().await;
    let frames = app.transcript("hostile").await;
    let events = events(&frames);
    let names = names(&frames);
    assert_eq!(names, ["progress", "progress", "progress", "progress", "progress", "progress", "completed"]);
    let ids: Vec<&str> = events.iter().map(|(id, _, _)| id.as_deref().unwrap()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5", "6", "7"], "no injected id");
    assert!(!frames.contains(&Frame::Retry(1)), "no injected retry");

    let message = |i: usize| events[i].2["message"].as_str().unwrap().to_owned();
    assert_eq!(message(0), "line one\nline two");
    assert_eq!(message(1), "carriage\rreturn and \r\n crlf");
    assert_eq!(message(2), "nul\0byte");
    assert_eq!(message(3), "\n\nevent: x\ndata: injected\n\n");
    assert_eq!(events[4].2["stage"], "parsing\nevent: y");
    assert_eq!(message(4), "id: 999\r\nretry: 1");
    assert!(message(5).len() >= 65536 && message(5).bytes().all(|b| b == b'x'), "64 KiB message intact");
    assert_eq!(message(6), "\"quoted\" \\ backslash </script> \u{2028} ✓");
    for frame in &frames {
        if let Frame::Event { data, .. } = frame {
            assert!(!data.contains('\n'), "data is one line of JSON");
        }
    }
}

#[tokio::test]
async fn a_heartbeat_comment_keeps_a_silent_stream_alive() {
    let app = TestApp::builder().heartbeat(Duration::from_millis(200)).speed(1.0).spawn().await;
    let mut reader = SseReader::new(app.open_progress("silent").await);
    assert_eq!(reader.next().await, Some(Frame::Retry(3000)));
    assert!(matches!(reader.next().await, Some(Frame::Event { .. })));
    for _ in 0..3 {
        assert_eq!(reader.next().await, Some(Frame::Comment("keep-alive".to_owned())));
    }
}

#[tokio::test]
async fn identity_and_trace_context_reach_the_upstream() {
    let app = TestApp::spawn().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = bearer(&app.token);
    headers.insert("x-request-id", "req-42".parse().unwrap());
    headers.insert("traceparent", traceparent.parse().unwrap());
    // A client cannot claim another identity: the token's is the one passed on.
    headers.insert("x-user-id", "mallory".parse().unwrap());
    headers.insert("x-tenant-id", "globex".parse().unwrap());
    let response = app.open_progress_with("doc-2", &headers).await;
    assert_eq!(response.headers()["x-request-id"], "req-42");
    drop(response);

    let mut headers = bearer(&app.token);
    headers.insert("traceparent", "00-zzzz-bad-01".parse().unwrap());
    headers.insert("x-request-id", "has spaces and \"quotes\"".parse().unwrap());
    let response = app.open_progress_with("scan-42", &headers).await;
    let generated = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    drop(response);

    let seen = app.sim.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].request_id.as_deref(), Some("req-42"));
    assert_eq!((seen[0].document_id.as_str(), seen[1].document_id.as_str()), ("doc-2", "scan-42"));
    assert_eq!(seen[0].user_id.as_deref(), Some("alice"), "x-user-id is the token's sub");
    assert_eq!(seen[0].tenant_id.as_deref(), Some("acme"), "x-tenant-id is the tenant claim");
    assert_eq!(seen[0].traceparent.as_deref(), Some(traceparent));
    assert_eq!(seen[1].traceparent, None, "an invalid traceparent is not passed on");
    assert_ne!(generated, "has spaces and \"quotes\"");
    assert_eq!(seen[1].request_id.as_deref(), Some(generated.as_str()), "a fresh request id is generated");
}

fn assert_rfc3339_utc(value: &Value) {
    let text = value.as_str().expect("emittedAt is a string");
    let parsed: prost_types::Timestamp = text.parse().expect("emittedAt is RFC 3339");
    assert!(text.ends_with('Z'), "UTC: {text}");
    assert!(parsed.seconds > 1_700_000_000, "a real time stamp: {text}");
    let fraction = text.split('.').nth(1).unwrap_or("");
    assert_eq!(fraction.len(), 10, "nanosecond precision kept: {text}");
}
