//! The HTTP/1.1 server as raw clients see it: keep-alive and pipelining, chunked streams,
//! HTTP/1.0 streams that end with the connection, `HEAD`, and requests handed to hyper.

use std::time::Duration;

use sse_bff::sse::Decoder;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::helpers::{PATIENCE, TestApp, dechunk, names};

/// Sends raw bytes and reads until the server closes the connection.
async fn exchange(app: &TestApp, request: &str) -> String {
    let mut socket = TcpStream::connect(app.addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(PATIENCE, socket.read_to_end(&mut received)).await.expect("the server closes").unwrap();
    String::from_utf8(received).expect("responses are UTF-8")
}

fn stream_request(app: &TestApp, document: &str, version: &str, extra: &str) -> String {
    format!(
        "GET /documents/{document}/progress?lastEventId=0 {version}\r\nHost: x\r\nAuthorization: Bearer {}\r\n{extra}\r\n",
        app.token
    )
}

#[tokio::test]
async fn one_connection_carries_pipelined_requests_then_a_chunked_stream() {
    let app = TestApp::spawn().await;
    let requests = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nHEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n{}",
        stream_request(&app, "doc-1", "HTTP/1.1", "Connection: close\r\n")
    );
    let received = exchange(&app, &requests).await;

    let (health, rest) = received.split_once("\r\n\r\nok\n").expect("the first response carries its body");
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    assert!(health.to_ascii_lowercase().contains("content-length: 3"), "{health}");
    let (head, rest) = rest.split_once("\r\n\r\n").expect("the HEAD response");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "HEAD is answered without a body: {head}");
    let (stream_head, body) = rest.split_once("\r\n\r\n").expect("the stream's head");
    assert!(stream_head.starts_with("HTTP/1.1 200 OK\r\n"), "{stream_head}");
    let lower = stream_head.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/event-stream"), "{stream_head}");
    assert!(lower.contains("transfer-encoding: chunked"), "{stream_head}");

    let frames = Decoder::new().feed(dechunk(body).as_bytes());
    let names = names(&frames);
    assert_eq!(names.len(), 10, "every update of the job: {names:?}");
    assert_eq!(names.last().map(String::as_str), Some("completed"));
}

#[tokio::test]
async fn an_http_1_0_stream_ends_with_the_connection() {
    let app = TestApp::spawn().await;
    let received = exchange(&app, &stream_request(&app, "doc-1", "HTTP/1.0", "")).await;
    let (head, body) = received.split_once("\r\n\r\n").expect("a head");
    let lower = head.to_ascii_lowercase();
    assert!(!lower.contains("transfer-encoding"), "HTTP/1.0 has no chunked encoding: {head}");
    assert!(lower.contains("connection: close"), "{head}");
    let names = names(&Decoder::new().feed(body.as_bytes()));
    assert_eq!(names.last().map(String::as_str), Some("completed"), "{names:?}");
}

#[tokio::test]
async fn requests_with_a_body_and_malformed_heads_are_still_answered() {
    let app = TestApp::spawn().await;
    let with_body =
        exchange(&app, "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
            .await;
    assert!(with_body.starts_with("HTTP/1.1 405 "), "served by the same routes: {with_body}");
    let malformed = exchange(&app, "GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n").await;
    assert!(malformed.starts_with("HTTP/1.1 400 "), "{malformed}");
}

#[tokio::test]
async fn a_client_that_goes_away_mid_stream_leaves_the_hub() {
    let app = TestApp::builder().speed(1.0).configure(|c| c.hub.linger = Duration::from_millis(100)).spawn().await;
    let mut socket = TcpStream::connect(app.addr).await.unwrap();
    // `silent` sends its first update and then nothing for a minute: the server must notice the
    // close from the socket, not from a failing write.
    socket.write_all(stream_request(&app, "silent", "HTTP/1.1", "").as_bytes()).await.unwrap();
    let mut first = [0; 256];
    let read = tokio::time::timeout(PATIENCE, socket.read(&mut first)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first[..read]).starts_with("HTTP/1.1 200 OK"));
    drop(socket);
    // The upstream call ends one linger after the server notices the close, long before the
    // next update or heartbeat (15 s) would fail to write.
    let cancelled = app.sim.wait_until(Duration::from_secs(3), |s| s.cancelled() == 1 && s.active() == 0).await;
    assert!(cancelled, "the upstream call is cancelled after the client left");
}
