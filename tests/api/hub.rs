//! Sharing one upstream call among viewers: fan-out, resume, upstream restarts, slow viewers,
//! the end of a job, and who may share.

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::header::{HeaderMap, HeaderValue};
use sse_bff::{
    hub::ShareScope,
    sse::{Decoder, Frame},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::{Binary, PATIENCE, SseReader, TestApp, bearer, dechunk, events, free_addr, names, token};

fn ids(frames: &[Frame]) -> Vec<u64> {
    events(frames).iter().filter_map(|(id, _, _)| id.as_deref()?.parse().ok()).collect()
}

fn resume_from(app: &TestApp, last: u64) -> HeaderMap {
    let mut headers = bearer(&app.token);
    headers.insert("last-event-id", HeaderValue::from(last));
    headers
}

#[tokio::test]
async fn fifty_viewers_of_one_document_cost_one_upstream_call() {
    let app = TestApp::builder().speed(4.0).configure(|c| c.limits.max_streams_per_user = 100).spawn().await;
    let transcripts = join_all((0..50).map(|_| app.transcript("doc-2"))).await;
    for frames in &transcripts {
        assert_eq!(ids(frames), (1..=10).collect::<Vec<_>>(), "every viewer gets every update");
    }
    let first = events(&transcripts[0]);
    assert!(transcripts.iter().all(|t| events(t) == first), "all viewers see the same events");
    assert_eq!(app.sim.calls(), 1, "one upstream call for fifty viewers");
}

#[tokio::test]
async fn a_late_joiner_starts_with_the_latest_update() {
    let app = TestApp::builder().speed(4.0).spawn().await;
    let mut early = SseReader::new(app.open_progress_with("slow", &resume_from(&app, 0)).await);
    let mut seen = 0;
    while seen < 3 {
        let Some(Frame::Event { id, .. }) = early.next_event().await else { panic!("stream ended") };
        seen = id.unwrap().parse().unwrap();
    }
    let mut late = SseReader::new(app.open_progress("slow").await);
    let Some(Frame::Event { id, .. }) = late.next_event().await else { panic!("no event") };
    let first: u64 = id.unwrap().parse().unwrap();
    assert!(first == 3 || first == 4, "the latest update first, not the history: got {first}");
    let Some(Frame::Event { id, .. }) = late.next_event().await else { panic!("no event") };
    assert_eq!(id.unwrap().parse::<u64>().unwrap(), first + 1, "then live updates");
    assert_eq!(app.sim.calls(), 1);
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_loses_and_repeats_nothing() {
    let app = TestApp::builder().speed(4.0).spawn().await;
    let mut first = SseReader::new(app.open_progress_with("doc-2", &resume_from(&app, 0)).await);
    let mut received = Vec::new();
    while received.len() < 4 {
        let Some(Frame::Event { id, .. }) = first.next_event().await else { panic!("stream ended early") };
        received.push(id.unwrap().parse::<u64>().unwrap());
    }
    drop(first);
    let last = *received.last().unwrap();
    let rest = SseReader::new(app.open_progress_with("doc-2", &resume_from(&app, last)).await).read_to_end().await;
    received.extend(ids(&rest));
    assert_eq!(received, (1..=10).collect::<Vec<_>>(), "the union of both connections is exactly 1..=10");
}

#[tokio::test]
async fn an_upstream_restart_is_invisible_to_the_viewer() {
    let sim_addr = free_addr();
    let sim = Binary::sim(sim_addr, 8.0).await;
    let app = TestApp::builder().upstream(sim_addr).spawn().await;
    let mut reader = SseReader::new(app.open_progress_with("slow", &resume_from(&app, 0)).await);
    let mut received = Vec::new();
    while received.len() < 3 {
        let Some(Frame::Event { id, .. }) = reader.next_event().await else { panic!("stream ended early") };
        received.push(id.unwrap().parse::<u64>().unwrap());
    }
    sim.kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _restarted = Binary::sim(sim_addr, 8.0).await;
    while received.len() < 8 {
        match reader.next().await {
            Some(Frame::Event { id, event, data }) => {
                assert_eq!(event, "progress", "no error reaches the viewer: {data}");
                received.push(id.unwrap().parse::<u64>().unwrap());
            }
            Some(_) => {}
            None => panic!("the stream ended after {received:?}"),
        }
    }
    assert_eq!(received, (1..=8).collect::<Vec<_>>(), "one continuous, gap-free sequence");
}

/// A raw connection that has asked for `path` (with `Connection: close`), with a 4 KiB receive
/// buffer when `small_buffer`.
async fn raw_request(app: &TestApp, path: &str, small_buffer: bool) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if small_buffer {
        socket.set_recv_buffer_size(4096).unwrap();
    }
    let mut stream = socket.connect(app.addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\r\n", app.token);
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// A raw connection with a 4 KiB receive buffer that has asked for `document` from the first
/// event and reads nothing until the test says so.
async fn stalled_viewer(app: &TestApp, document: &str) -> tokio::net::TcpStream {
    raw_request(app, &format!("/documents/{document}/progress?lastEventId=0"), true).await
}

#[tokio::test]
async fn a_stalled_viewer_neither_delays_others_nor_misses_the_end() {
    let app = TestApp::spawn().await;
    // A viewer with a tiny receive window that reads nothing until the job is over.
    let mut stalled = stalled_viewer(&app, "firehose").await;

    let started = std::time::Instant::now();
    let frames = app.transcript("firehose").await;
    let reader_ids = ids(&frames);
    assert_eq!(reader_ids, (1..=301).collect::<Vec<_>>(), "the reading viewer gets every update");
    assert!(started.elapsed() < Duration::from_secs(8), "and is not held back by the stalled one");

    let mut body = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut body)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&body);
    let stalled_ids: Vec<u64> =
        text.lines().filter_map(|l| l.strip_prefix("id: ")).filter_map(|id| id.parse().ok()).collect();
    assert_eq!(stalled_ids.last(), Some(&301), "the terminal event is never dropped");
    assert!(stalled_ids.len() < 301, "the stalled viewer was conflated, not buffered: {} events", stalled_ids.len());
    assert!(stalled_ids.windows(2).all(|w| w[0] < w[1]), "still in order");
}

/// A raw HTTP/1.1 viewer of `document` from its latest update; a slow one has a 4 KiB receive
/// buffer, reads nothing for a second and then 1 KiB every 5 ms, so the server's writes to it
/// go out in part or not at all. Returns the de-chunked body once the server ends the response.
async fn raw_viewer(app: &TestApp, document: &str, slow: bool) -> String {
    let mut stream = raw_request(app, &format!("/documents/{document}/progress"), slow).await;
    let mut received = Vec::new();
    let mut chunk = vec![0; if slow { 1024 } else { 1 << 16 }];
    let read = tokio::time::timeout(PATIENCE, async {
        if slow {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        loop {
            match stream.read(&mut chunk).await.unwrap() {
                0 => return,
                n => received.extend_from_slice(&chunk[..n]),
            }
            if slow {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the response ended");
    let text = String::from_utf8(received).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    dechunk(body)
}

/// Three hundred viewers of one busy job, every tenth of them slow to read: every stream must
/// stay intact, in order, and end with the terminal event.
#[tokio::test]
async fn three_hundred_viewers_fast_and_slow_get_intact_ordered_streams() {
    // A log and a lag allowance as long as the job: a fast viewer that falls behind on a busy
    // machine catches up without conflation, so any gap would be a delivery fault.
    let app = TestApp::builder()
        .speed(1.0)
        .configure(|c| {
            c.limits.max_streams_per_user = 400;
            c.hub.replay_log = 256;
            c.hub.viewer_lag = 256;
        })
        .spawn()
        .await;
    let bodies = join_all((0..300).map(|n| raw_viewer(&app, "chatty", n % 10 == 0))).await;
    for (n, body) in bodies.iter().enumerate() {
        let frames = Decoder::new().feed(body.as_bytes());
        // `events` parses every event's data as JSON: a torn or interleaved frame fails here.
        let ids = ids(&frames);
        assert_eq!(ids.len(), events(&frames).len(), "viewer {n}: every event has an id");
        assert_eq!(names(&frames).last().map(String::as_str), Some("completed"), "viewer {n} ends with the job");
        assert_eq!(ids.last(), Some(&152), "viewer {n}: the terminal event is never dropped");
        if n % 10 == 0 {
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "slow viewer {n}: in order, nothing twice: {ids:?}");
        } else {
            let from = ids[0];
            assert_eq!(ids, (from..=152).collect::<Vec<_>>(), "viewer {n}: every update from its first one");
        }
    }
    assert_eq!(app.sim.calls(), 1, "one upstream call for all of them");
}

#[tokio::test]
async fn a_viewer_that_never_reads_is_dropped_after_the_stall_timeout() {
    let app = TestApp::builder().configure(|c| c.server.stall_timeout = Duration::from_millis(500)).spawn().await;
    let mut stalled = stalled_viewer(&app, "flood").await;
    // A 32 MB flood fills both socket buffers within a second; the server gives up half a
    // second after its writes block, long before the flood is over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut body = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), async {
        let mut chunk = vec![0; 1 << 16];
        loop {
            match stalled.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server closed the connection instead of waiting for the reader");
    assert!(!String::from_utf8_lossy(&body).contains("event: completed"), "the job was still running");
}

#[tokio::test]
async fn a_reconnect_after_the_end_is_204_from_the_kept_log() {
    let app = TestApp::spawn().await;
    assert_eq!(ids(&app.transcript("doc-1").await).last(), Some(&10));
    let response = app.open_progress_with("doc-1", &resume_from(&app, 10)).await;
    assert_eq!(response.status(), 204, "Last-Event-ID at the terminal event");
    // A point past the end was never this job's (it was redone under the same id, say): the
    // viewer starts over and still learns how the job ended.
    for last in [11, 99_999] {
        let frames =
            SseReader::new(app.open_progress_with("doc-1", &resume_from(&app, last)).await).read_to_end().await;
        assert_eq!(names(&frames), ["reset", "completed"], "Last-Event-ID {last}");
        assert_eq!(ids(&frames), [10], "Last-Event-ID {last}");
    }
    let rest = SseReader::new(app.open_progress_with("doc-1", &resume_from(&app, 7)).await).read_to_end().await;
    assert_eq!(ids(&rest), [8, 9, 10], "a late reconnect gets what it missed");
    assert_eq!(app.sim.calls(), 1, "all answered from the kept log");
}

#[tokio::test]
async fn a_resume_point_nobody_keeps_starts_with_reset_then_the_current_state() {
    let app = TestApp::builder().configure_sim(|s| s.retain = 3).configure(|c| c.hub.replay_log = 2).spawn().await;
    assert_eq!(ids(&app.transcript("doc-1").await).last(), Some(&10));

    let frames = SseReader::new(app.open_progress_with("doc-1", &resume_from(&app, 2)).await).read_to_end().await;
    let names = names(&frames);
    assert_eq!(names, ["reset", "completed"], "{frames:?}");
    assert_eq!(ids(&frames), [10]);

    // Older than the BFF's log but still kept upstream: its own upstream call, no reset.
    let frames = SseReader::new(app.open_progress_with("doc-1", &resume_from(&app, 7)).await).read_to_end().await;
    assert_eq!(ids(&frames), [8, 9, 10]);
    assert!(events(&frames).iter().all(|(_, name, _)| name != "reset"));
    assert_eq!(app.sim.seen().last().map(|c| c.resume_after), Some(7), "resumed upstream with resume_after");
}

#[tokio::test]
async fn sharing_is_per_user_by_default_and_per_tenant_when_chosen() {
    // `None`: the default, which must be per user.
    for (scope, expected) in [(None, 2), (Some(ShareScope::Tenant), 1)] {
        let mut builder = TestApp::builder().speed(4.0);
        if let Some(scope) = scope {
            builder = builder.configure(|c| c.hub.share_scope = scope);
        }
        let app = builder.spawn().await;
        let alice = app.open_progress_as("doc-2", &token("alice", "acme")).await;
        let bob = app.open_progress_as("doc-2", &token("bob", "acme")).await;
        let (mut alice, mut bob) = (SseReader::new(alice), SseReader::new(bob));
        assert!(alice.next_event().await.is_some() && bob.next_event().await.is_some());
        assert_eq!(app.sim.calls(), expected, "{scope:?}");
        let carol = app.open_progress_as("report-q3", &token("carol", "globex")).await;
        assert_eq!(carol.status(), 200);
        assert_eq!(app.sim.calls(), expected + 1, "another tenant never shares");
    }
}
