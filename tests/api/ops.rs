//! Operations: metrics, the upstream connection pool, graceful drain of the real binary on
//! SIGTERM, and configuration errors at start.

use std::{process::Command, time::Duration};

use futures_util::future::join_all;
use reqwest::header::HeaderMap;
use sse_bff::sse::Frame;

use crate::helpers::{Binary, SECRET, SseReader, TestApp, bearer, events};

#[tokio::test]
async fn metrics_show_streams_upstream_calls_and_auth_failures_without_ids() {
    let app = TestApp::builder().speed(1.0).spawn().await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut reader = SseReader::new(app.open_progress("slow").await);
        assert!(reader.next_event().await.is_some());
        readers.push(reader);
    }
    assert_eq!(app.open_progress_as("doc-1", "not-a-token").await.status(), 401);

    let response = app.get("/metrics", &HeaderMap::new()).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = response.text().await.unwrap();
    for line in [
        r#"sse_bff_open_streams{route="/documents/{document_id}/progress",transport="sse"} 3"#,
        r#"sse_bff_upstream_calls_active{route="/documents/{document_id}/progress"} 1"#,
        r#"sse_bff_upstream_calls_started_total{route="/documents/{document_id}/progress"} 1"#,
        r#"sse_bff_shared_viewers{route="/documents/{document_id}/progress"} 3"#,
        r#"sse_bff_auth_failures_total{reason="malformed"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
    assert!(text.contains("sse_bff_delivery_lag_seconds_bucket"));
    assert!(text.contains("sse_bff_time_to_first_event_seconds_count 3"));
    assert!(!text.contains("slow") && !text.contains("alice"), "no document or user in any label");
}

#[tokio::test]
async fn more_documents_than_one_upstream_connection_allows_all_stream() {
    let app = TestApp::builder()
        .speed(1.0)
        .configure_sim(|s| s.max_concurrent_streams = Some(5))
        .configure(|c| c.upstream.upstream_streams_per_connection = 5)
        .spawn()
        .await;
    let documents: Vec<String> = (1..=16).map(|n| format!("slow.{n}")).collect();
    let firsts = join_all(documents.iter().map(|doc| async {
        let mut reader = SseReader::new(app.open_progress(doc).await);
        let first = reader.next_event().await;
        (reader, first)
    }))
    .await;
    for (doc, (_, first)) in documents.iter().zip(&firsts) {
        assert!(matches!(first, Some(Frame::Event { .. })), "{doc} streams");
    }
    assert_eq!(app.sim.active(), 16, "sixteen concurrent upstream calls over a server limit of five per connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_stream_with_a_retry_hint_and_exits_cleanly() {
    let sim = TestApp::builder().speed(1.0).spawn().await;
    let bff = Binary::serve(
        sim.sim_addr,
        &["--retry", "2s", "--max-streams-per-user", "100"],
        &[("SSE_BFF_JWT_SECRET", SECRET)],
    )
    .await;
    let streams = 40;
    let mut readers = Vec::new();
    for n in 0..streams {
        let response = sim
            .client
            .get(bff.url(&format!("/documents/slow.{n}/progress")))
            .headers(bearer(&sim.token))
            .send()
            .await
            .unwrap();
        let mut reader = SseReader::new(response);
        assert!(reader.next_event().await.is_some());
        readers.push(reader);
    }
    assert!(sim.sim.wait_until(Duration::from_secs(5), |s| s.active() == streams).await);

    let (status, took) = bff.terminate(Duration::from_secs(30)).await;

    assert!(status.success(), "exit code 0, got {status:?}");
    let ends = join_all(readers.into_iter().map(SseReader::read_to_end)).await;
    let mut hints = Vec::new();
    for rest in &ends {
        let Some(Frame::Retry(ms)) = rest.last() else { panic!("stream did not end with retry: {rest:?}") };
        hints.push(*ms);
        assert!(events(rest).iter().all(|(_, name, _)| name == "progress"), "no terminal or error event");
    }
    assert!(hints.iter().all(|ms| (1000..=3000).contains(ms)), "jittered around 2 s: {hints:?}");
    hints.sort_unstable();
    hints.dedup();
    assert!(hints.len() > 1, "reconnects are spread, not all the same delay");
    let cancelled = sim.sim.wait_until(Duration::from_secs(5), |s| s.cancelled() == streams && s.active() == 0).await;
    assert!(cancelled, "every upstream call was cancelled");
    eprintln!("drained {streams} streams; the process exited {took:?} after SIGTERM");
}

#[test]
fn bad_configuration_stops_the_start_with_a_message_naming_the_value() {
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_sse-bff")).args(args).output().expect("runs");
        assert!(!output.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let base = ["serve", "--insecure-no-auth", "--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:0"];
    let with = |extra: &[&'static str]| [&base[..], extra].concat();
    assert!(run(&with(&["--heartbeat", "0s"])).contains("\"0s\" must be longer than zero"));
    assert!(run(&with(&["--heartbeat", "soon"])).contains("\"soon\" is not a duration"));
    assert!(
        run(&["serve", "--insecure-no-auth", "--upstream", "localhost:50051"])
            .contains("must be an http:// or https:// URL")
    );
    let missing = run(&[
        "serve",
        "--upstream",
        "http://127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
        "--jwt-public-key",
        "/nonexistent.pem",
    ]);
    assert!(missing.contains("cannot read key file /nonexistent.pem"), "{missing}");
    assert!(
        run(&["serve", "--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:0"]).contains("--insecure-no-auth")
    );
}
