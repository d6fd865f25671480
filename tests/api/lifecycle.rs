//! Connection lifecycle: a client that leaves cancels the upstream call, readiness follows the
//! upstream, and shutdown ends open streams with a reconnect hint.

use std::time::Duration;

use reqwest::header::HeaderMap;
use sse_bff::sse::Frame;

use crate::helpers::{SseReader, TestApp, problem};

#[tokio::test]
async fn the_last_viewer_leaving_cancels_the_upstream_call_after_the_linger() {
    let linger = Duration::from_millis(300);
    let app = TestApp::builder().speed(1.0).configure(|c| c.hub.linger = linger).spawn().await;
    let mut reader = SseReader::new(app.open_progress("slow").await);
    assert!(matches!(reader.next_event().await, Some(Frame::Event { .. })));
    assert!(app.sim.wait_until(Duration::from_secs(1), |s| s.active() == 1).await, "the call is streaming");

    drop(reader);

    let cancelled =
        app.sim.wait_until(linger + Duration::from_secs(1), |s| s.cancelled() == 1 && s.active() == 0).await;
    assert!(cancelled, "the simulator saw the cancel within a second after the linger");
}

#[tokio::test]
async fn a_reconnect_within_the_linger_reuses_the_upstream_call() {
    let app = TestApp::builder().speed(1.0).configure(|c| c.hub.linger = Duration::from_secs(5)).spawn().await;
    let mut first = SseReader::new(app.open_progress("slow").await);
    assert!(first.next_event().await.is_some());
    drop(first);
    // At once: the linger's timing itself is a component test (src/hub/tests.rs, paused clock).
    let mut second = SseReader::new(app.open_progress("slow").await);
    assert!(second.next_event().await.is_some());
    assert_eq!((app.sim.calls(), app.sim.cancelled()), (1, 0), "one upstream call, never cancelled");
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
