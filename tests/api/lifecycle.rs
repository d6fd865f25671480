//! Connection lifecycle: a client that leaves cancels the upstream call, readiness follows the
//! upstream, and shutdown ends open streams with a reconnect hint.

use std::time::Duration;

use reqwest::header::HeaderMap;
use sse_bff::sse::Frame;

use crate::helpers::{SseReader, TestApp, problem};

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_call_within_a_second() {
    let app = TestApp::builder().speed(1.0).spawn().await;
    let mut reader = SseReader::new(app.open_progress("slow").await);
    assert!(matches!(reader.next_event().await, Some(Frame::Event { .. })));
    assert!(app.sim.wait_until(Duration::from_secs(1), |s| s.active() == 1).await, "the call is streaming");

    drop(reader);

    let cancelled = app.sim.wait_until(Duration::from_secs(1), |s| s.cancelled() == 1 && s.active() == 0).await;
    assert!(cancelled, "the simulator saw the cancel within one second");
}

#[tokio::test]
async fn readiness_follows_the_upstream_health() {
    let app = TestApp::spawn().await;
    let ready = app.get("/readyz", &HeaderMap::new()).await;
    assert_eq!(ready.status(), 200);
    let alive = app.get("/healthz", &HeaderMap::new()).await;
    assert_eq!(alive.status(), 200);

    let down = TestApp::builder().without_sim().spawn().await;
    let body = problem(down.get("/readyz", &HeaderMap::new()).await, 503).await;
    assert_eq!(body["code"], "not_ready");
    assert_eq!(down.get("/healthz", &HeaderMap::new()).await.status(), 200, "alive even when not ready");
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_a_retry_hint_and_no_terminal_event() {
    let app = TestApp::builder().speed(1.0).spawn().await;
    let mut reader = SseReader::new(app.open_progress("slow").await);
    assert!(matches!(reader.next_event().await, Some(Frame::Event { .. })));

    app.shutdown.cancel();

    let rest = reader.read_to_end().await;
    let Some(Frame::Retry(ms)) = rest.last() else { panic!("stream ends with retry:, got {rest:?}") };
    assert!((1500..=4500).contains(ms), "jittered around the 3 s hint: {ms}");
    assert!(
        !rest.iter().any(|f| matches!(f, Frame::Event { event, .. } if event != "progress")),
        "no terminal or error event on shutdown: {rest:?}"
    );
    assert!(app.sim.wait_until(Duration::from_secs(1), |s| s.cancelled() == 1).await, "upstream call cancelled");
}
