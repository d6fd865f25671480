//! Errors: malformed requests never reach the upstream; upstream errors before the stream
//! become HTTP statuses with problem bodies; errors after it become `event: error`.

use std::time::Duration;

use reqwest::header::HeaderMap;

use crate::helpers::{SseReader, TestApp, bearer, events, names, problem};

#[tokio::test]
async fn malformed_document_ids_are_rejected_without_calling_the_upstream() {
    let app = TestApp::spawn().await;
    let too_long = "a".repeat(129);
    let cases =
        ["", too_long.as_str(), "a%2Fb", "a/b", "a%20b", "a%00b", "%C3%A9t%C3%A9", "a;b", "a%0A%0Aevent:x", "%FF%FE"];
    for id in cases {
        let body = problem(app.open_progress(id).await, 400).await;
        assert_eq!(body["code"], "invalid_document_id", "id {id:?}");
    }
    let longest = "a".repeat(128);
    let response = app.open_progress(&longest).await;
    assert_eq!(response.status(), 403, "128 characters is still a valid id (unknown, so 403 for a tenant)");
    assert_eq!(app.sim.calls(), 1, "only the valid id reached the upstream");
}

#[tokio::test]
async fn upstream_errors_before_the_first_event_map_to_http_statuses() {
    let app = TestApp::spawn().await;
    let cases = [
        ("reject-permission-denied", 403, "permission_denied", 7, false),
        ("reject-not-found", 404, "not_found", 5, false),
        ("reject-invalid-argument", 400, "invalid_argument", 3, false),
        ("reject-failed-precondition", 400, "failed_precondition", 9, false),
        ("reject-unavailable", 503, "unavailable", 14, true),
        ("reject-deadline-exceeded", 504, "deadline_exceeded", 4, true),
        ("reject-resource-exhausted", 429, "resource_exhausted", 8, true),
        ("reject-unimplemented", 501, "unimplemented", 12, false),
        ("reject-internal", 500, "internal", 13, false),
        ("reject-unknown", 500, "unknown", 2, false),
        ("reject-data-loss", 500, "data_loss", 15, false),
        // An authenticated caller cannot tell an unknown id from another tenant's document.
        ("no-such-document", 403, "permission_denied", 7, false),
    ];
    // (document, status, code, gRPC code, retryable)
    for (id, status, code, grpc, retryable) in cases {
        let response = app.open_progress(id).await;
        let retry_after = response.headers().get("retry-after").cloned();
        let body = problem(response, status).await;
        assert_eq!(body["code"], code, "{id}");
        assert_eq!(body["grpcStatus"], grpc, "{id}");
        assert_eq!(body["retryable"], retryable, "{id}");
        assert_eq!(retry_after.is_some(), matches!(status, 429 | 503), "{id}: Retry-After only on 429 and 503");
    }
    let body = problem(app.open_progress("reject-permission-denied").await, 403).await;
    assert_eq!(body["detail"], "scripted permission_denied");
}

#[tokio::test]
async fn without_authentication_an_unknown_document_is_404() {
    let app = TestApp::builder().insecure().spawn().await;
    let body = problem(app.open_progress_with("no-such-document", &HeaderMap::new()).await, 404).await;
    assert_eq!(body["code"], "not_found");
    let seen = app.sim.seen();
    assert_eq!((seen[0].user_id.as_deref(), seen[0].tenant_id.as_deref()), (None, None), "anonymous upstream call");
}

#[tokio::test]
async fn an_unreachable_upstream_is_503_with_retry_after() {
    let app = TestApp::builder().without_sim().spawn().await;
    let response = app.open_progress("doc-1").await;
    assert!(response.headers().contains_key("retry-after"));
    let body = problem(response, 503).await;
    assert_eq!(body["code"], "unavailable");
    assert_eq!(body["retryable"], true);
}

#[tokio::test]
async fn an_upstream_error_mid_stream_ends_with_an_error_event() {
    let app = TestApp::spawn().await;
    let frames = app.transcript("broken").await;
    let events = events(&frames);
    let names = names(&frames);
    assert_eq!(names, ["progress", "progress", "error"]);
    let (id, _, error) = &events[2];
    assert_eq!(id, &None, "an error event carries no id, so a reconnect resumes after the last update");
    let mut fields: Vec<&str> = error.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["code", "grpcStatus", "httpStatus", "message", "retryable"], "exactly the contract's fields");
    assert_eq!(error["code"], "data_loss");
    assert_eq!(error["grpcStatus"], 15);
    assert_eq!(error["httpStatus"], 500);
    assert_eq!(error["retryable"], false);
    assert_eq!(error["message"], "worker lost the document\nbuffer");
}

#[tokio::test]
async fn an_update_with_an_invalid_status_ends_the_stream_with_an_internal_error() {
    let app = TestApp::spawn().await;
    let events = events(&app.transcript("invalid-status").await);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].1, "progress");
    assert_eq!(events[1].1, "error");
    assert_eq!(events[1].2["code"], "internal");
}

#[tokio::test]
async fn an_upstream_that_ends_without_a_terminal_update_is_a_retryable_error() {
    let app = TestApp::builder().configure(|c| c.hub.retry_budget = Duration::from_millis(500)).spawn().await;
    let frames = app.transcript("truncated").await;
    let events = events(&frames);
    assert_eq!(names(&frames), ["progress", "progress", "error"]);
    assert_eq!(events[2].2["code"], "unavailable");
    assert_eq!(events[2].2["retryable"], true);
}

#[tokio::test]
async fn other_media_types_are_not_acceptable() {
    let app = TestApp::spawn().await;
    let mut headers = bearer(&app.token);
    headers.insert("accept", "application/xml".parse().unwrap());
    let body = problem(app.open_progress_with("doc-1", &headers).await, 406).await;
    assert_eq!(body["code"], "not_acceptable");
    assert_eq!(app.sim.calls(), 0);

    for accept in ["*/*", "text/event-stream;q=0.9, application/xml", "text/*"] {
        let mut headers = bearer(&app.token);
        headers.insert("accept", accept.parse().unwrap());
        let response = app.open_progress_with("doc-1", &headers).await;
        assert_eq!(response.status(), 200, "{accept}");
        let mut reader = SseReader::new(response);
        assert!(reader.next_event().await.is_some());
    }
}

#[tokio::test]
async fn unknown_paths_are_404_problems() {
    let app = TestApp::spawn().await;
    let body = problem(app.get("/nothing/here", &HeaderMap::new()).await, 404).await;
    assert_eq!(body["code"], "no_route");
}

#[tokio::test]
async fn a_request_with_several_faults_is_refused_for_the_first_in_a_fixed_order() {
    let app = TestApp::spawn().await;
    let with = |pairs: &[(&'static str, &str)]| {
        let mut headers = bearer(&app.token);
        for (name, value) in pairs {
            headers.insert(*name, value.parse().unwrap());
        }
        headers
    };
    let doc = "/documents/doc-1/progress";
    let events = "/events?topic=/documents/doc-1/progress";
    // Each case's faults, the first of which is the answer: origin or token, then the path (a
    // parameter, a topic), then `Accept`, then the resume point, then `wait`.
    let cases: [(String, HeaderMap, u16, &str); 8] = [
        ("/documents/a%20b/progress".to_owned(), HeaderMap::new(), 401, "unauthorized"),
        ("/documents/a%20b/progress".to_owned(), with(&[("accept", "application/xml")]), 400, "invalid_document_id"),
        (doc.to_owned(), with(&[("accept", "application/xml"), ("last-event-id", "x")]), 406, "not_acceptable"),
        (format!("{doc}?after=x&wait=x"), with(&[("accept", "application/json")]), 400, "invalid_last_event_id"),
        (format!("{doc}?wait=x"), with(&[("accept", "application/json")]), 400, "invalid_wait"),
        ("/events?topic=/nothing".to_owned(), with(&[("accept", "application/xml")]), 400, "invalid_topic"),
        (events.to_owned(), with(&[("accept", "application/xml"), ("last-event-id", "x.y")]), 406, "not_acceptable"),
        (format!("{events}&after=x.y&wait=x"), with(&[("accept", "application/json")]), 400, "invalid_last_event_id"),
    ];
    for (path, headers, status, code) in &cases {
        let body = problem(app.get(path, headers).await, *status).await;
        assert_eq!(body["code"], *code, "{path} {headers:?}");
    }
    assert_eq!(app.sim.calls(), 0, "no refused request reached the upstream");
}
