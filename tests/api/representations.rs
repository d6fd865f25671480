//! The other representations of the same resource (NDJSON, long-poll, WebSocket) deliver the
//! same events as SSE, from the same shared upstream call.

use futures_util::StreamExt as _;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _, protocol::frame::coding::CloseCode};

use crate::helpers::{PATIENCE, TestApp, bearer, events};

fn accept(app: &TestApp, media: &'static str) -> HeaderMap {
    let mut headers = bearer(&app.token);
    headers.insert("accept", HeaderValue::from_static(media));
    headers
}

/// The SSE data objects of doc-1, the reference every representation must match.
async fn sse_reference(app: &TestApp) -> Vec<Value> {
    events(&app.transcript("doc-1").await).into_iter().map(|(_, _, data)| data).collect()
}

#[tokio::test]
async fn ndjson_streams_the_same_objects_one_per_line() {
    // A log that holds the whole ten-event job, so both representations read the same call.
    let app = TestApp::builder().configure(|c| c.hub.replay_log = 16).spawn().await;
    let reference = sse_reference(&app).await;
    let response = app.get("/documents/doc-1/progress?lastEventId=0", &accept(&app, "application/x-ndjson")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let body = response.text().await.unwrap();
    let lines: Vec<Value> =
        body.lines().filter(|l| !l.is_empty()).map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
    assert_eq!(lines, reference);
    assert_eq!(app.sim.calls(), 1, "served from the same shared call");
}

#[tokio::test]
async fn a_long_poll_loop_collects_the_same_sequence() {
    let app = TestApp::builder().speed(4.0).spawn().await;
    let mut after = 0;
    let mut collected: Vec<Value> = Vec::new();
    for _ in 0..50 {
        let response = app
            .get(&format!("/documents/doc-1/progress?after={after}&wait=5"), &accept(&app, "application/json"))
            .await;
        assert_eq!(response.status(), 200);
        let poll: Value = response.json().await.unwrap();
        collected.extend(poll["events"].as_array().unwrap().iter().cloned());
        after = poll["lastEventId"].as_u64().unwrap();
        if poll["done"] == true {
            break;
        }
    }
    let sequences: Vec<u64> = collected.iter().map(|e| e["sequence"].as_u64().unwrap()).collect();
    assert_eq!(sequences, (1..=10).collect::<Vec<_>>());
    assert_eq!(collected, sse_reference(&app).await, "the same objects as the SSE stream");

    let response = app.get("/documents/doc-1/progress?after=10", &accept(&app, "application/json")).await;
    assert_eq!(response.headers()["cache-control"], "no-store");
    let done: Value = response.json().await.unwrap();
    assert_eq!(done, serde_json::json!({"events": [], "lastEventId": 10, "done": true}), "after=10");
    // Past the end: a reset, and the terminal event again so the client learns how it ended.
    let past: Value =
        app.get("/documents/doc-1/progress?after=99", &accept(&app, "application/json")).await.json().await.unwrap();
    assert_eq!(past["reset"], true, "after=99: {past}");
    assert_eq!(past["done"], true);
    assert_eq!(past["lastEventId"], 10);
    assert_eq!(past["events"].as_array().map(Vec::as_slice), Some(&collected[9..]), "after=99: the terminal event");
    let latest: Value =
        app.get("/documents/doc-1/progress", &accept(&app, "application/json")).await.json().await.unwrap();
    assert_eq!(latest["events"].as_array().unwrap().len(), 1, "without after: the latest at once");
    assert_eq!(latest["lastEventId"], 10);
    let bad = app.get("/documents/doc-1/progress?after=x", &accept(&app, "application/json")).await;
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn a_websocket_sends_one_json_frame_per_event_then_closes() {
    let app = TestApp::spawn().await;
    let reference = sse_reference(&app).await;
    let mut request =
        format!("ws://{}/documents/doc-1/progress?lastEventId=0", app.addr).into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {}", app.token).parse().unwrap());
    let (mut socket, _) =
        tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request)).await.unwrap().unwrap();
    let mut frames = Vec::new();
    let close = loop {
        match tokio::time::timeout(PATIENCE, socket.next()).await.unwrap() {
            Some(Ok(tungstenite::Message::Text(text))) => frames.push(serde_json::from_str::<Value>(&text).unwrap()),
            Some(Ok(tungstenite::Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    let _ = socket.close(None).await;
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Normal));
    let ids: Vec<&str> = frames.iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]);
    assert_eq!(frames[9]["event"], "completed");
    let data: Vec<Value> = frames.iter().map(|f| f["data"].clone()).collect();
    assert_eq!(data, reference);
}

#[tokio::test]
async fn a_websocket_without_a_token_is_refused_before_the_upgrade() {
    let app = TestApp::spawn().await;
    let request = format!("ws://{}/documents/doc-1/progress", app.addr).into_client_request().unwrap();
    let error = tokio_tungstenite::connect_async(request).await.unwrap_err();
    assert!(matches!(error, tungstenite::Error::Http(ref r) if r.status() == 401), "{error:?}");
    assert_eq!(app.sim.calls(), 0);
}
