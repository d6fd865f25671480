//! `/events`: one stream for several resources (CONTRACT §10). Names kept, data wrapped with its
//! topic, a cursor id that resumes every topic, 204 once all ended, per-topic errors, 400s
//! before any upstream call, and topics sharing upstream calls with everyone else.

use std::collections::BTreeMap;

use futures_util::future::join_all;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;
use sse_bff::sse::Frame;

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{SseReader, TestApp, bearer, problem, read_websocket};

fn fresh(script: &str) -> String {
    format!("/documents/{script}.{}/progress", uuid::Uuid::new_v4())
}

fn events_path(topics: &[&str]) -> String {
    let query: Vec<String> = topics.iter().map(|t| format!("topic={}", urlencode(t))).collect();
    format!("/events?{}", query.join("&"))
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn with_cursor(app: &TestApp, cursor: &str) -> HeaderMap {
    let mut headers = bearer(&app.token);
    headers.insert("last-event-id", HeaderValue::from_str(cursor).unwrap());
    headers
}

/// (cursor, name, topic, data) of every event.
fn mux(frames: &[Frame]) -> Vec<(String, String, String, Value)> {
    frames
        .iter()
        .filter_map(|frame| match frame {
            Frame::Event { id, event, data } => {
                let body: Value = serde_json::from_str(data).expect("data is JSON");
                let topic = body["topic"].as_str().expect("every event names its topic").to_owned();
                Some((
                    id.clone().expect("every event has the cursor as id"),
                    event.clone(),
                    topic,
                    body["data"].clone(),
                ))
            }
            _ => None,
        })
        .collect()
}

/// The sequences each topic received, in order.
fn sequences(events: &[(String, String, String, Value)]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, _, topic, data) in events {
        if let Some(sequence) = data["sequence"].as_u64() {
            out.entry(topic.clone()).or_default().push(sequence);
        }
    }
    out
}

#[tokio::test]
async fn several_resources_stream_on_one_response_and_a_reconnect_resumes_each() {
    let app = TestApp::spawn().await;
    let (a, b, c) = (fresh("doc-1"), fresh("doc-2"), fresh("doc-3"));
    let path = events_path(&[&a, &b, &c]);
    // From the first event of every topic ("0" each), then the first five events only.
    let mut reader = SseReader::new(app.get(&path, &with_cursor(&app, "0.0.0")).await);
    let mut first = Vec::new();
    while first.len() < 5 {
        first.push(reader.next_event().await.expect("events"));
    }
    drop(reader);
    let first = mux(&first);
    let cursor = first.last().unwrap().0.clone();
    assert_eq!(cursor.split('.').count(), 3, "one position per topic: {cursor}");

    let response = app.get(&path, &with_cursor(&app, &cursor)).await;
    assert_eq!(response.status(), 200);
    let rest = mux(&SseReader::new(response).read_to_end().await);
    let all: Vec<_> = first.iter().chain(&rest).cloned().collect();
    let got = sequences(&all);
    assert_eq!(got[&a], (1..=10).collect::<Vec<_>>(), "doc-1: every update once, in order");
    assert_eq!(got[&b], (1..=10).collect::<Vec<_>>(), "doc-2");
    assert_eq!(got[&c], (1..=4).collect::<Vec<_>>(), "doc-3 (it fails at its fourth update)");
    let names: Vec<&str> = all.iter().filter(|e| e.2 == a).map(|e| e.1.as_str()).collect();
    assert_eq!(names.last(), Some(&"completed"), "each event keeps its route's name");
    assert!(names[..names.len() - 1].iter().all(|n| *n == "progress"));
    assert_eq!(all[0].3["documentId"].as_str().map(|id| format!("/documents/{id}/progress")), Some(all[0].2.clone()));

    let done = app.get(&path, &with_cursor(&app, &rest.last().unwrap().0)).await;
    assert_eq!(done.status(), 204, "every topic ended: EventSource stops");
    assert_eq!(app.sim.calls(), 3, "one upstream call per resource, reconnects served from the logs");
}

#[tokio::test]
async fn a_topic_that_fails_gets_its_own_error_while_the_others_go_on() {
    let app = TestApp::spawn().await;
    let good = fresh("doc-1");
    let path = events_path(&["/documents/reject-permission-denied/progress", &good]);
    let events = mux(&SseReader::new(app.get(&path, &with_cursor(&app, ".0")).await).read_to_end().await);
    let error = events.iter().find(|e| e.1 == "error").expect("an error event");
    assert_eq!(error.2, "/documents/reject-permission-denied/progress", "with its topic");
    assert_eq!((error.3["code"].as_str(), error.3["httpStatus"].as_u64()), (Some("permission_denied"), Some(403)));
    assert_eq!(sequences(&events)[&good], (1..=10).collect::<Vec<_>>(), "the other topic streams to its end");
}

#[tokio::test]
async fn malformed_duplicate_or_too_many_topics_and_bad_cursors_are_400_before_any_call() {
    let app = TestApp::builder().configure(|c| c.stream.max_topics = 3).spawn().await;
    let doc = "/documents/doc-1/progress";
    let cases = [
        ("/events".to_owned(), "invalid_topic"),
        (events_path(&["documents/doc-1/progress"]), "invalid_topic"),
        (events_path(&["/nothing/here"]), "invalid_topic"),
        (events_path(&[doc, doc]), "invalid_topic"),
        (
            events_path(&[doc, "/documents/a/progress", "/documents/b/progress", "/documents/c/progress"]),
            "invalid_topic",
        ),
        (events_path(&["/documents/a%20b/progress"]), "invalid_document_id"),
        (events_path(&[&"/documents/x/progress".replace('x', &"y".repeat(2000))]), "invalid_topic"),
    ];
    for (path, code) in &cases {
        let body = problem(app.get(path, &bearer(&app.token)).await, 400).await;
        assert_eq!(body["code"], *code, "{path}");
    }
    for cursor in ["1", "1.2.3", "zzzzzzzzzzzzzz.1", "A.1", &"9".repeat(100)] {
        let body =
            problem(app.get(&events_path(&[doc, "/documents/doc-2/progress"]), &with_cursor(&app, cursor)).await, 400)
                .await;
        assert_eq!(body["code"], "invalid_last_event_id", "cursor {cursor:?}");
    }
    assert_eq!(app.sim.calls(), 0, "no bad request reached the upstream");
    let unauthenticated = app.get(&events_path(&[doc]), &HeaderMap::new()).await;
    assert_eq!(unauthenticated.status(), 401);
}

#[tokio::test]
async fn multiplexed_viewers_share_upstream_calls_with_each_other() {
    let app = TestApp::builder().speed(1.0).spawn().await;
    let docs: Vec<String> = (0..5).map(|_| fresh("slow")).collect();
    let topics: Vec<&str> = docs.iter().map(String::as_str).collect();
    let path = events_path(&topics);
    let readers = join_all((0..20).map(|_| async {
        let mut reader = SseReader::new(app.get(&path, &bearer(&app.token)).await);
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < 5 {
            let frame = reader.next_event().await.expect("an event of every topic");
            seen.insert(mux(&[frame])[0].2.clone());
        }
        reader
    }))
    .await;
    assert_eq!(app.sim.calls(), 5, "20 viewers of 5 topics: one upstream call per resource");
    let single = app.open_progress(&docs[0][11..docs[0].len() - 9]).await;
    assert_eq!(single.status(), 200);
    assert_eq!(app.sim.calls(), 5, "a viewer of the resource's own route shares it too");
    drop(readers);
}

#[tokio::test]
async fn ndjson_websocket_and_long_poll_carry_the_same_topics() {
    let app = TestApp::spawn().await;
    let (a, b) = (fresh("doc-1"), fresh("doc-3"));
    let path = events_path(&[&a, &b]);
    let mut headers = with_cursor(&app, "0.0");
    headers.insert("accept", HeaderValue::from_static("application/x-ndjson"));
    let body = app.get(&path, &headers).await.text().await.unwrap();
    let lines: Vec<Value> = body.lines().filter(|l| !l.is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 14, "10 + 4 updates, one line each: {body}");
    assert!(lines.iter().all(|l| l["topic"] == a.as_str() || l["topic"] == b.as_str()));

    let (socket, _) = app.websocket(&format!("{path}&lastEventId=0.0"), &bearer(&app.token)).await.unwrap();
    let (frames, close) = read_websocket(socket).await;
    assert_eq!(frames.len(), 14, "one frame per update: {frames:?}");
    assert!(frames.iter().all(|f| f["id"].as_str().is_some_and(|id| id.contains('.'))), "ids are cursors");
    assert!(frames.iter().all(|f| f["data"]["topic"] == a.as_str() || f["data"]["topic"] == b.as_str()));
    assert_eq!(close, Some(CloseCode::Normal), "all topics ended: a normal close");

    let mut poll_headers = bearer(&app.token);
    poll_headers.insert("accept", HeaderValue::from_static("application/json"));
    let mut cursor = "0.0".to_owned();
    let mut collected = 0;
    for _ in 0..40 {
        let poll: Value = app.get(&format!("{path}&after={cursor}&wait=5"), &poll_headers).await.json().await.unwrap();
        collected += poll["events"].as_array().unwrap().len();
        cursor = poll["lastEventId"].as_str().expect("the cursor is the long-poll's lastEventId").to_owned();
        if poll["done"] == true {
            break;
        }
    }
    assert_eq!(collected, 14, "the long-poll collects every update once");
    let finished = app.get(&format!("{path}&after={cursor}"), &poll_headers).await;
    assert_eq!(finished.status(), 200);
    let finished: Value = finished.json().await.unwrap();
    assert_eq!((finished["done"].as_bool(), finished["events"].as_array().map(Vec::len)), (Some(true), Some(0)));
}

#[tokio::test]
async fn another_users_cursor_gives_nobody_elses_data() {
    let app = TestApp::spawn().await;
    let (a, b) = (fresh("doc-1"), fresh("doc-2"));
    let path = events_path(&[&a, &b]);
    let alice = mux(&SseReader::new(app.get(&path, &with_cursor(&app, "0.0")).await).read_to_end().await);
    let cursor = alice.last().unwrap().0.clone();
    // Mallory of another tenant replays Alice's cursor on the same topics: the cursor holds only
    // positions, and each topic is still authorised for the caller by the upstream.
    let mut headers = bearer(&crate::helpers::token("mallory", "evil"));
    headers.insert("last-event-id", HeaderValue::from_str("0.0").unwrap());
    let refused = app.get(&path, &headers).await;
    assert_eq!(refused.status(), 403, "every topic refused: the first refusal is the answer");
    headers.insert("last-event-id", HeaderValue::from_str(&cursor).unwrap());
    let response = app.get(&path, &headers).await;
    assert!(matches!(response.status().as_u16(), 204 | 403), "never Alice's events: {}", response.status());
    assert!(!response.text().await.unwrap().contains("documentId"), "no data of another tenant");
}
