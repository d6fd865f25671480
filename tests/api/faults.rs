//! Regression tests for the faults users found by trying the service as they would (issue 17),
//! one test per kind of fault, each asserting what a user would notice. The naive-client kind
//! (httpx-sse's `json.loads(sse.data)` loop) is tested in Python: `tests/python/`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use sse_bff::sse::Frame;
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

use crate::helpers::{
    PATIENCE, SECRET, SseReader, TestApp, WsError, bearer, events, fresh, names, problem, read_websocket,
};

// 1. A viewer must always learn how the job ended.

#[tokio::test]
async fn a_resume_point_beyond_the_end_of_a_running_job_gets_reset_then_the_terminal_event() {
    let app = TestApp::spawn().await;
    // Three brand-new doc-2 jobs (they end at id 10), each first opened with a resume point of
    // 500, so each job is running when its viewer arrives.
    let (sse_doc, ndjson_doc, ws_doc) = (fresh("doc-2"), fresh("doc-2"), fresh("doc-2"));
    let sse = async {
        let response = app.open_progress_with(&sse_doc, &resume_from(&app, "500")).await;
        assert_eq!(response.status(), 200, "SSE: a running job is streamed");
        SseReader::new(response).read_to_end().await
    };
    let ndjson = async {
        let response = app.get(&format!("/documents/{ndjson_doc}/progress?lastEventId=500"), &ndjson(&app)).await;
        assert_eq!(response.status(), 200, "NDJSON: a running job is streamed");
        ndjson_lines(response).await
    };
    let ws = async {
        let path = format!("/documents/{ws_doc}/progress?lastEventId=500");
        let (socket, _) = app.websocket(&path, &bearer(&app.token)).await.expect("WebSocket upgrade");
        read_websocket(socket).await
    };
    let (frames, lines, (ws_frames, close)) = tokio::join!(sse, ndjson, ws);

    let names = names(&frames);
    assert_eq!(names.first().map(String::as_str), Some("reset"), "SSE starts with `event: reset`: {frames:?}");
    let updates = &events(&frames)[1..];
    let ids: Vec<u64> =
        updates.iter().map(|(id, _, _)| id.as_deref().expect("updates have ids").parse().unwrap()).collect();
    assert_eq!(names.last().map(String::as_str), Some("completed"), "SSE ends with the terminal event: {names:?}");
    assert_eq!(ids.last(), Some(&10), "the terminal event is id 10: {ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    assert!(names[1..].iter().all(|n| n == "progress" || n == "completed"), "only updates after the reset: {names:?}");

    assert_eq!(lines.first().map(|l| &l["event"]), Some(&json!("reset")), "NDJSON starts with a reset line: {lines:?}");
    let last = lines.last().unwrap();
    assert_eq!(
        (&last["sequence"], &last["status"]),
        (&json!(10), &json!("completed")),
        "NDJSON ends with the terminal update: {lines:?}"
    );
    assert!(lines[1..].iter().all(|l| l.get("sequence").is_some()), "only updates after the reset: {lines:?}");

    assert_eq!(
        ws_frames.first().map(|f| &f["event"]),
        Some(&json!("reset")),
        "WebSocket starts with reset: {ws_frames:?}"
    );
    let last = ws_frames.last().unwrap();
    assert_eq!(
        (&last["id"], &last["event"]),
        (&json!("10"), &json!("completed")),
        "WebSocket: the terminal event: {ws_frames:?}"
    );
    assert_eq!(close, Some(CloseCode::Normal), "then a normal close");
}

#[tokio::test]
async fn a_resume_point_beyond_the_end_of_a_finished_job_gets_reset_then_the_terminal_event() {
    let app = TestApp::spawn().await;
    let doc = fresh("doc-2");
    let transcript = events(&app.transcript(&doc).await);
    let (id, name, terminal) = transcript.last().expect("doc-2 streams").clone();
    assert_eq!((id.as_deref(), name.as_str()), (Some("10"), "completed"), "doc-2 ends at id 10");

    let response = app.open_progress_with(&doc, &resume_from(&app, "500")).await;
    assert_eq!(response.status(), 200, "Last-Event-ID 500 is past the end: not 204, which would stop EventSource");
    let frames = SseReader::new(response).read_to_end().await;
    assert_eq!(names(&frames), ["reset", "completed"], "SSE: reset, then the terminal event: {frames:?}");
    assert_eq!(events(&frames)[1], (Some("10".to_owned()), "completed".to_owned(), terminal.clone()));

    let response = app.open_progress_with(&doc, &resume_from(&app, "10")).await;
    assert_eq!(response.status(), 204, "Last-Event-ID equal to the terminal id: nothing left to send");

    let response = app.get(&format!("/documents/{doc}/progress?lastEventId=500"), &ndjson(&app)).await;
    assert_eq!(response.status(), 200, "NDJSON past the end");
    let lines = ndjson_lines(response).await;
    assert_eq!(lines.len(), 2, "NDJSON: a reset line and the terminal update: {lines:?}");
    assert_eq!((&lines[0]["event"], &lines[1]), (&json!("reset"), &terminal), "NDJSON: {lines:?}");

    let path = format!("/documents/{doc}/progress?lastEventId=500");
    let (socket, _) = app.websocket(&path, &bearer(&app.token)).await.expect("WebSocket upgrade");
    let (frames, close) = read_websocket(socket).await;
    assert_eq!(frames.len(), 2, "WebSocket: a reset frame and the terminal event: {frames:?}");
    assert_eq!(frames[0]["event"], "reset", "WebSocket: {frames:?}");
    assert_eq!(frames[1], json!({"id": "10", "event": "completed", "data": terminal}), "WebSocket: {frames:?}");
    assert_eq!(close, Some(CloseCode::Normal));

    let mut long_poll = bearer(&app.token);
    long_poll.insert("accept", HeaderValue::from_static("application/json"));
    let response = app.get(&format!("/documents/{doc}/progress?after=500"), &long_poll).await;
    assert_eq!(response.status(), 200, "long-poll past the end");
    let poll: Value = response.json().await.unwrap();
    assert_eq!(
        poll,
        json!({"events": [terminal], "lastEventId": 10, "done": true, "reset": true}),
        "long-poll: the terminal event, flagged as a reset"
    );
}

// 2. Every metric that goes up goes down, on every path.

#[tokio::test]
async fn every_gauge_is_back_to_zero_after_the_viewer_left_and_the_linger_passed() {
    let linger = Duration::from_secs(2);
    let app = TestApp::builder().speed(1.0).configure(|c| c.hub.linger = linger).spawn().await;
    // `slow` runs for a minute at speed 1: only the cancel can end its upstream call here.
    let mut reader = SseReader::new(app.open_progress(&fresh("slow")).await);
    assert!(matches!(reader.next_event().await, Some(Frame::Event { .. })), "the stream delivers");
    let during = app.metrics().await;
    assert_eq!(
        sample(&during, r#"sse_bff_upstream_calls_active{route="/documents/{document_id}/progress"}"#),
        Some(1.0),
        "one call while streaming:\n{during}"
    );
    assert!(gauges(&during).iter().any(|(_, v)| *v > 0.0), "the open stream shows in the gauges:\n{during}");

    // The user reads for a while, then closes the tab.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(reader);
    let cancelled = app.sim.wait_until(linger + PATIENCE, |s| s.cancelled() == 1 && s.active() == 0).await;
    assert!(cancelled, "the upstream call is cancelled once the linger has passed");

    let settled = settle_metrics(&app, |text| {
        let raised: Vec<_> = gauges(text).into_iter().filter(|(_, v)| *v != 0.0).collect();
        let ended = sample(
            text,
            r#"sse_bff_upstream_calls_ended_total{route="/documents/{document_id}/progress",code="cancelled"}"#,
        );
        match (raised.is_empty(), ended) {
            (true, Some(1.0)) => None,
            _ => Some(format!("gauges not at 0: {raised:?}; ended{{code=\"cancelled\"}}: {ended:?}")),
        }
    })
    .await;
    if let Err(why) = settled {
        panic!("metrics never settled after the viewer left and the call was cancelled: {why}");
    }
}

// 3. One clock for a token's life.

#[tokio::test]
async fn a_token_is_valid_until_exp_plus_leeway_at_connect_and_on_every_stream() {
    let leeway = Duration::from_secs(6);
    let app = TestApp::builder().speed(4.0).configure(|c| c.auth.jwt_leeway = leeway).spawn().await;

    let response = app.open_progress_as("doc-1", &token_expiring_at(unix_now() as u64 - 9)).await;
    assert!(response.headers().contains_key("www-authenticate"), "401 carries WWW-Authenticate");
    assert_eq!(problem(response, 401).await["code"], "unauthorized", "9 s past exp is beyond the 6 s leeway");
    assert_eq!(app.sim.calls(), 0, "a refused token never reaches the upstream");

    let exp = unix_now() as u64 - 2;
    let token = token_expiring_at(exp);
    let valid_until = (exp + leeway.as_secs()) as f64;
    // `slow` at speed 4 sends an update every half second for 15 s: the token runs out first.
    let sse = async {
        let opened = Instant::now();
        let response = app.open_progress_as(&fresh("slow"), &token).await;
        assert_eq!(response.status(), 200, "SSE: 2 s past exp is inside the 6 s leeway");
        let mut reader = SseReader::new(response);
        let (mut events, mut last_update) = (Vec::new(), Duration::ZERO);
        while let Some(frame) = reader.next().await {
            if let Frame::Event { event, data, .. } = frame {
                if event == "progress" {
                    last_update = opened.elapsed();
                }
                events.push((event, serde_json::from_str::<Value>(&data).unwrap()));
            }
        }
        (events, last_update, unix_now())
    };
    let ndjson = async {
        let opened = Instant::now();
        let response = app.get(&format!("/documents/{}/progress", fresh("slow")), &ndjson_as(&token)).await;
        assert_eq!(response.status(), 200, "NDJSON: 2 s past exp is inside the 6 s leeway");
        let lines = ndjson_lines(response).await;
        (lines, opened.elapsed(), unix_now())
    };
    let ((events, last_update, sse_ended), (lines, ndjson_lasted, ndjson_ended)) = tokio::join!(sse, ndjson);

    let (name, error) = events.last().expect("the SSE stream carried events");
    assert_eq!(name, "error", "SSE ends with an error event: {events:?}");
    assert_eq!((&error["code"], &error["retryable"]), (&json!("token_expired"), &json!(true)), "SSE: {error}");
    assert!(last_update >= Duration::from_secs(2), "SSE delivered updates for only {last_update:?}: {events:?}");
    assert!(sse_ended <= valid_until + 1.0, "SSE ended {:.1}s after exp + leeway", sse_ended - valid_until);

    let error = lines.last().expect("the NDJSON stream carried lines");
    assert_eq!((&error["code"], &error["retryable"]), (&json!("token_expired"), &json!(true)), "NDJSON: {lines:?}");
    let updates = lines.iter().filter(|l| l.get("sequence").is_some()).count();
    assert!(ndjson_lasted >= Duration::from_secs(2) && updates >= 3, "NDJSON: {updates} updates in {ndjson_lasted:?}");
    assert!(ndjson_ended <= valid_until + 1.0, "NDJSON ended {:.1}s after exp + leeway", ndjson_ended - valid_until);
}

// 4. Cross-site WebSocket hijacking.

#[tokio::test]
async fn a_websocket_upgrade_from_a_foreign_origin_is_refused_before_any_upstream_call() {
    let app = TestApp::builder()
        .configure(|c| c.cors_origins = vec![HeaderValue::from_static("https://portal.example")])
        .spawn()
        .await;
    let with_cookie = |origin: Option<&str>| {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", format!("access_token={}", app.token).parse().unwrap());
        if let Some(origin) = origin {
            headers.insert("origin", origin.parse().unwrap());
        }
        headers
    };
    let path = "/documents/doc-1/progress";

    let response = match app.websocket(path, &with_cookie(Some("https://evil.example"))).await {
        Err(WsError::Http(response)) => response,
        Ok((_, response)) => panic!("a foreign origin got a WebSocket: HTTP {}", response.status()),
        Err(error) => panic!("the handshake failed without an HTTP answer: {error}"),
    };
    assert_eq!(response.status(), 403, "a foreign origin is forbidden");
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: Value = serde_json::from_slice(response.body().as_deref().unwrap_or_default()).expect("problem JSON");
    assert_eq!(body["code"], "forbidden_origin", "{body}");
    assert_eq!(app.sim.calls(), 0, "the upstream saw no call for the foreign origin");

    let own = format!("http://{}", app.addr);
    for origin in [Some("https://portal.example"), None, Some(own.as_str())] {
        let result = app.websocket(path, &with_cookie(origin)).await;
        let (mut socket, response) = result.unwrap_or_else(|e| panic!("Origin {origin:?} was refused: {e:?}"));
        assert_eq!(response.status(), 101, "Origin {origin:?}");
        let first = tokio::time::timeout(PATIENCE, socket.next()).await.expect("a frame within patience");
        assert!(matches!(first, Some(Ok(Message::Text(_)))), "Origin {origin:?}: events flow: {first:?}");
    }
}

// 5. An upstream message larger than the BFF's decode limit is the upstream side's fault.

#[tokio::test]
async fn an_upstream_message_over_the_decode_limit_is_a_502_before_and_during_the_stream() {
    let app = TestApp::spawn().await;

    let response = app.open_progress("oversized-first").await;
    assert!(response.headers().get("retry-after").is_none(), "a 502 is not retried: no Retry-After");
    let body = problem(response, 502).await;
    assert_eq!((&body["code"], &body["retryable"]), (&json!("bad_gateway"), &json!(false)), "{body}");
    assert!(calls_for(&app, "oversized-first") <= 2, "not retried endlessly: {:?}", app.sim.seen());

    let frames = app.transcript("oversized-second").await;
    let events = events(&frames);
    assert_eq!(names(&frames), ["progress", "error"], "the first update, then an error: {events:?}");
    let error = &events[1].2;
    assert_eq!(
        (&error["httpStatus"], &error["code"], &error["retryable"]),
        (&json!(502), &json!("bad_gateway"), &json!(false)),
        "mid-stream: {error}"
    );
    assert!(calls_for(&app, "oversized-second") <= 2, "not retried endlessly: {:?}", app.sim.seen());
}

#[tokio::test]
async fn the_upstream_message_limit_is_a_setting() {
    let app = TestApp::builder().configure(|c| c.upstream.max_upstream_message_bytes = 10 * 1024).spawn().await;
    let body = problem(app.open_progress("oversized-20k").await, 502).await;
    assert_eq!(body["code"], "bad_gateway", "a 20 KiB message over a 10 KiB limit: {body}");
    let frames = app.transcript("doc-1").await;
    assert_eq!(names(&frames).last().map(String::as_str), Some("completed"), "small messages still stream");
}

// 7. Readiness must say something true.

#[tokio::test]
async fn an_upstream_without_a_health_service_is_ready_and_the_body_says_so() {
    // A gRPC server that answers, with reflection only: every health call is UNIMPLEMENTED.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sse_bff::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(tonic::transport::Server::builder().add_service(reflection).serve_with_incoming(incoming));
    let app = TestApp::builder().upstream(addr).spawn().await;

    let response = app.get("/readyz", &HeaderMap::new()).await;
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "a reachable upstream without grpc.health.v1 is ready: {body}");
    let said = body.to_lowercase();
    let no_health = ["no health", "no grpc.health", "unimplemented", "not implement", "without"];
    assert!(
        said.contains("health") && no_health.iter().any(|w| said.contains(w)),
        "says there is no health service: {body:?}"
    );
}

#[tokio::test]
async fn an_upstream_nobody_listens_on_is_not_ready_with_a_reason_naming_it() {
    let app = TestApp::builder().without_sim().spawn().await;
    let body = problem(app.get("/readyz", &HeaderMap::new()).await, 503).await;
    let detail = body["detail"].as_str().expect("a detail");
    assert!(detail.contains(&app.sim_addr.to_string()), "names the upstream {}: {detail:?}", app.sim_addr);
    let reason = detail.rsplit(": ").next().unwrap_or_default().trim();
    assert!(!reason.is_empty() && !detail.trim_end().ends_with(':'), "says what failed: {detail:?}");
}

fn resume_from(app: &TestApp, last: &'static str) -> HeaderMap {
    let mut headers = bearer(&app.token);
    headers.insert("last-event-id", HeaderValue::from_static(last));
    headers
}

fn ndjson(app: &TestApp) -> HeaderMap {
    ndjson_as(&app.token)
}

fn ndjson_as(token: &str) -> HeaderMap {
    let mut headers = bearer(token);
    headers.insert("accept", HeaderValue::from_static("application/x-ndjson"));
    headers
}

/// The non-blank lines of an NDJSON body (blank lines are heartbeats), each parsed.
async fn ndjson_lines(response: reqwest::Response) -> Vec<Value> {
    let body = tokio::time::timeout(PATIENCE, response.text()).await.expect("NDJSON body within patience").unwrap();
    body.lines().filter(|l| !l.is_empty()).map(|l| serde_json::from_str(l).expect("each line is JSON")).collect()
}

/// The value of one sample (`name` or `name{labels}`) of a metrics exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    samples(text).find(|(s, _)| *s == series).map(|(_, value)| value)
}

/// Every sample of every gauge, as (series, value).
fn gauges(text: &str) -> Vec<(&str, f64)> {
    let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" gauge")).collect();
    samples(text).filter(|(series, _)| names.contains(&series.split('{').next().unwrap_or(series))).collect()
}

fn samples(text: &str) -> impl Iterator<Item = (&str, f64)> {
    text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        Some((series, value.parse().ok()?))
    })
}

/// Polls `/metrics` until `unsettled` finds nothing wrong (`None`), for at most [`PATIENCE`];
/// the last complaint otherwise.
async fn settle_metrics(app: &TestApp, unsettled: impl Fn(&str) -> Option<String>) -> Result<(), String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = app.metrics().await;
        match unsettled(&text) {
            None => return Ok(()),
            Some(why) if Instant::now() >= deadline => return Err(format!("{why}\n{text}")),
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A token of alice of acme signed with the test secret, expiring at `exp` (Unix seconds).
fn token_expiring_at(exp: u64) -> String {
    let claims = json!({"sub": "alice", "tenant_id": "acme", "exp": exp});
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// Upstream calls the simulator saw for `document`.
fn calls_for(app: &TestApp, document: &str) -> usize {
    app.sim.seen().iter().filter(|call| call.document_id == document).count()
}
