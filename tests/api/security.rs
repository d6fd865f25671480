//! The security suite: one test per attack or boundary. Each asserts the status and body a
//! client sees and, where the request must not get through, that the upstream saw no call.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sse_bff::sse::Frame;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::{Binary, SECRET, SseReader, TestApp, bearer, events, fixture, problem, token};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "tenant_id": "acme", "exp": now() + 600})
}

fn hs256(claims: &Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn with_private_key(alg: Algorithm, file: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = std::fs::read(fixture(file)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_ed_pem(&pem),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).unwrap()
}

/// A token with an arbitrary header and no usable signature.
fn unsigned(header: &Value, claims: &Value) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    format!("{}.{}.", part(header), part(claims))
}

/// `token` with its claims replaced and its header and signature kept.
fn with_claims(token: &str, claims: &Value) -> String {
    let mut parts = token.split('.');
    let (header, _, signature) = (parts.next().unwrap(), parts.next(), parts.next().unwrap());
    format!("{header}.{}.{signature}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap()))
}

/// Asserts the uniform 401 (same body, `WWW-Authenticate`) and that nothing reached the upstream.
async fn assert_rejected(app: &TestApp, response: reqwest::Response) {
    assert_eq!(response.headers()["www-authenticate"], r#"Bearer error="invalid_token""#);
    let body = problem(response, 401).await;
    assert_eq!(body["code"], "unauthorized");
    assert_eq!(body["detail"], "a valid bearer token is required", "no reason leaks to the client");
    assert_eq!(app.sim.calls(), 0, "the upstream was not called");
}

async fn reject_token(app: &TestApp, token: &str) {
    assert_rejected(app, app.open_progress_as("doc-1", token).await).await;
}

async fn accept_token(app: &TestApp, token: &str) {
    let response = app.open_progress_as("doc-1", token).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
}

#[tokio::test]
async fn no_token_is_rejected() {
    let app = TestApp::spawn().await;
    assert_rejected(&app, app.open_progress_with("doc-1", &HeaderMap::new()).await).await;
}

#[tokio::test]
async fn alg_none_is_rejected() {
    let app = TestApp::spawn().await;
    reject_token(&app, &unsigned(&json!({"alg": "none", "typ": "JWT"}), &claims("alice"))).await;
}

#[tokio::test]
async fn alg_none_in_mixed_case_is_rejected() {
    let app = TestApp::spawn().await;
    reject_token(&app, &unsigned(&json!({"alg": "noNE", "typ": "JWT"}), &claims("alice"))).await;
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_rejected() {
    let app = TestApp::builder().public_key(fixture("keys/rsa-public.pem")).spawn().await;
    let public_pem = std::fs::read(fixture("keys/rsa-public.pem")).unwrap();
    let forged =
        encode(&Header::new(Algorithm::HS256), &claims("alice"), &EncodingKey::from_secret(&public_pem)).unwrap();
    reject_token(&app, &forged).await;
    accept_token(&app, &with_private_key(Algorithm::RS256, "keys/rsa-private.pem", None, &claims("alice"))).await;
}

#[tokio::test]
async fn an_algorithm_outside_the_allow_list_is_rejected() {
    let app = TestApp::spawn().await;
    let hs384 =
        encode(&Header::new(Algorithm::HS384), &claims("alice"), &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
    reject_token(&app, &hs384).await;
    reject_token(&app, &with_private_key(Algorithm::RS256, "keys/rsa-private.pem", None, &claims("alice"))).await;
}

#[tokio::test]
async fn a_token_without_exp_is_rejected() {
    let app = TestApp::spawn().await;
    reject_token(&app, &hs256(&json!({"sub": "alice", "tenant_id": "acme"}))).await;
}

#[tokio::test]
async fn a_token_without_sub_or_tenant_is_rejected() {
    let app = TestApp::spawn().await;
    reject_token(&app, &hs256(&json!({"tenant_id": "acme", "exp": now() + 600}))).await;
    reject_token(&app, &hs256(&json!({"sub": "alice", "exp": now() + 600}))).await;
    reject_token(&app, &hs256(&json!({"sub": "alice", "tenant_id": 7, "exp": now() + 600}))).await;
    reject_token(&app, &hs256(&json!({"sub": "al ice\n", "tenant_id": "acme", "exp": now() + 600}))).await;
}

#[tokio::test]
async fn an_expired_token_is_rejected() {
    let app = TestApp::spawn().await;
    reject_token(&app, &hs256(&json!({"sub": "alice", "tenant_id": "acme", "exp": now() - 120}))).await;
}

#[tokio::test]
async fn a_token_not_yet_valid_is_rejected() {
    let app = TestApp::spawn().await;
    reject_token(&app, &hs256(&json!({"sub": "alice", "tenant_id": "acme", "exp": now() + 600, "nbf": now() + 120})))
        .await;
}

#[tokio::test]
async fn a_wrong_issuer_is_rejected() {
    let app =
        TestApp::builder().configure(|c| c.auth.jwt_issuer = Some("https://id.example.test".into())).spawn().await;
    let mut wrong = claims("alice");
    wrong["iss"] = json!("https://evil.example.test");
    reject_token(&app, &hs256(&wrong)).await;
    reject_token(&app, &hs256(&claims("alice"))).await;
    let mut right = claims("alice");
    right["iss"] = json!("https://id.example.test");
    accept_token(&app, &hs256(&right)).await;
}

#[tokio::test]
async fn a_wrong_audience_is_rejected() {
    let app = TestApp::builder().configure(|c| c.auth.jwt_audience = vec!["sse-bff".into()]).spawn().await;
    let mut wrong = claims("alice");
    wrong["aud"] = json!("billing");
    reject_token(&app, &hs256(&wrong)).await;
    reject_token(&app, &hs256(&claims("alice"))).await;
    let mut right = claims("alice");
    right["aud"] = json!(["other", "sse-bff"]);
    accept_token(&app, &hs256(&right)).await;
}

#[tokio::test]
async fn an_audience_is_rejected_when_none_is_configured() {
    let app = TestApp::spawn().await;
    let mut with_aud = claims("alice");
    with_aud["aud"] = json!("sse-bff");
    reject_token(&app, &hs256(&with_aud)).await;
}

#[tokio::test]
async fn leeway_boundaries_hold_to_the_second() {
    let app = TestApp::spawn().await;
    let at = |exp: u64, nbf: u64| hs256(&json!({"sub": "alice", "tenant_id": "acme", "exp": exp, "nbf": nbf}));
    // Leeway is 30 s: one second inside passes, one second outside fails.
    reject_token(&app, &at(now() - 31, now() - 100)).await;
    reject_token(&app, &at(now() + 600, now() + 31)).await;
    accept_token(&app, &at(now() - 29, now() - 100)).await;
    accept_token(&app, &at(now() + 600, now() + 29)).await;
}

#[tokio::test]
async fn malformed_tokens_are_rejected() {
    let app = TestApp::spawn().await;
    let valid = token("alice", "acme");
    let cases = [
        "not-a-jwt".to_owned(),
        "a.b.c".to_owned(),
        "!!!.@@@.###".to_owned(),
        format!("{valid}.extra"),
        format!("{valid}x"),
        valid.replace('.', ".."),
        "x".repeat(9 * 1024),
    ];
    for bad in &cases {
        reject_token(&app, bad).await;
    }
    let mut basic = HeaderMap::new();
    basic.insert("authorization", "Basic YWxpY2U6c2VjcmV0".parse().unwrap());
    assert_rejected(&app, app.open_progress_with("doc-1", &basic).await).await;
}

#[tokio::test]
async fn a_64_kib_token_is_refused_as_oversized_headers() {
    let app = TestApp::spawn().await;
    let response = app.open_progress_as("doc-1", &"x".repeat(64 * 1024)).await;
    let body = problem(response, 431).await;
    assert_eq!(body["code"], "headers_too_large");
    assert_eq!(app.sim.calls(), 0);
}

#[tokio::test]
async fn the_header_wins_over_the_cookie_and_identities_never_merge() {
    let app = TestApp::spawn().await;
    let cookie = |token: &str| format!("theme=dark; access_token={token}").parse().unwrap();

    let mut only_cookie = HeaderMap::new();
    only_cookie.insert("cookie", cookie(&token("bob", "acme")));
    accept_token_headers(&app, &only_cookie).await;

    let mut both = bearer(&token("alice", "acme"));
    both.insert("cookie", cookie(&token("bob", "acme")));
    accept_token_headers(&app, &both).await;

    let seen = app.sim.seen();
    assert_eq!(seen[0].user_id.as_deref(), Some("bob"), "the cookie alone authenticates");
    assert_eq!(seen[1].user_id.as_deref(), Some("alice"), "the header takes precedence");

    let mut bad_header = bearer("garbage");
    bad_header.insert("cookie", cookie(&token("bob", "acme")));
    let response = app.open_progress_with("doc-1", &bad_header).await;
    assert_eq!(response.status(), 401, "a bad header never falls back to the cookie");
    assert_eq!(app.sim.calls(), 2);
}

async fn accept_token_headers(app: &TestApp, headers: &HeaderMap) {
    let response = app.open_progress_with("doc-1", headers).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_query_token_is_ignored_unless_enabled() {
    let app = TestApp::spawn().await;
    let path = format!("/documents/doc-1/progress?access_token={}", token("alice", "acme"));
    assert_rejected(&app, app.get(&path, &HeaderMap::new()).await).await;
}

#[tokio::test]
async fn an_enabled_query_token_works_and_is_never_logged() {
    let sim = TestApp::spawn().await;
    let bff =
        Binary::serve(sim.sim_addr, &["--allow-query-token"], &[("SSE_BFF_JWT_SECRET", SECRET), ("RUST_LOG", "trace")])
            .await;
    let secret_token = token("alice", "acme");
    let response = sim
        .client
        .get(bff.url(&format!("/documents/doc-1/progress?access_token={secret_token}")))
        .send()
        .await
        .unwrap();
    let mut reader = SseReader::new(response);
    assert!(matches!(reader.next_event().await, Some(Frame::Event { .. })), "the query token authenticates");
    drop(reader);
    let expired = hs256(&json!({"sub": "alice", "tenant_id": "acme", "exp": now() - 600}));
    let response =
        sim.client.get(bff.url(&format!("/documents/doc-1/progress?access_token={expired}"))).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body = response.text().await.unwrap();
    assert!(!body.contains(&expired), "the token is not echoed");

    let logged = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let log = bff.log();
            if log.contains("authentication failed") {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the failure is logged");
    assert!(logged.contains("\"reason\":\"expired\""), "the reason is in the log");
    let signature = |t: &str| t.rsplit('.').next().unwrap().to_owned();
    for t in [&secret_token, &expired] {
        assert!(!logged.contains(&signature(t)), "a token leaked into the logs");
    }
    assert!(!logged.contains("access_token="), "not even the query is logged");
}

#[tokio::test]
async fn another_tenants_document_is_indistinguishable_from_an_unknown_one() {
    let app = TestApp::spawn().await;
    let foreign = app.open_progress("report-q3").await;
    let (foreign_status, foreign_body) = (foreign.status(), foreign.text().await.unwrap());
    let unknown = app.open_progress("no-such-doc").await;
    let (unknown_status, unknown_body) = (unknown.status(), unknown.text().await.unwrap());
    assert_eq!(foreign_status, 403);
    assert_eq!((foreign_status, &foreign_body), (unknown_status, &unknown_body), "same status and byte-identical body");

    let response = app.open_progress_as("report-q3", &token("carol", "globex")).await;
    assert_eq!(response.status(), 200, "the owning tenant sees it");
}

#[tokio::test]
async fn a_token_expiring_mid_stream_ends_the_stream_by_exp() {
    let app = TestApp::builder().speed(1.0).configure(|c| c.auth.jwt_leeway = Duration::ZERO).spawn().await;
    let exp = now() + 2;
    let short = hs256(&json!({"sub": "alice", "tenant_id": "acme", "exp": exp}));
    let frames = SseReader::new(app.open_progress_as("slow", &short).await).read_to_end().await;
    let ended = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(ended <= exp as f64 + 0.5, "ended {:.2}s after exp", ended - exp as f64);
    assert!(ended >= exp as f64 - 0.1, "not before exp: ended {:.2}s early", exp as f64 - ended);
    let events = events(&frames);
    assert!(events.len() >= 2, "updates flowed until the token ran out: {events:?}");
    let (_, name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["code"], "token_expired");
    assert_eq!(data["retryable"], true);
    assert!(events[..events.len() - 1].iter().all(|(_, n, _)| n == "progress"));

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = app.open_progress_as("slow", &short).await;
    assert_eq!(response.status(), 401, "a reconnect with the expired token is refused");
}

#[tokio::test]
async fn the_maximum_stream_lifetime_applies_to_long_lived_tokens() {
    let app = TestApp::builder()
        .speed(1.0)
        .configure(|c| c.stream.max_stream_lifetime = Duration::from_millis(700))
        .spawn()
        .await;
    let started = Instant::now();
    let frames = app.transcript("slow").await;
    let lasted = started.elapsed();
    assert!((Duration::from_millis(700)..Duration::from_secs(3)).contains(&lasted), "lasted {lasted:?}");
    assert_eq!(frames.last(), Some(&Frame::Retry(3000)), "ends with a reconnect hint: {frames:?}");
    let retries = frames.iter().filter(|f| matches!(f, Frame::Retry(_))).count();
    assert_eq!(retries, 2, "the opening hint and the closing one: {frames:?}");
    let events = events(&frames);
    assert!(!events.is_empty(), "the stream carried updates before its lifetime ran out");
    assert!(events.iter().all(|(_, name, _)| name == "progress"), "no error event");
}

#[tokio::test]
async fn hostile_last_event_ids_are_400_without_calling_the_upstream() {
    let app = TestApp::spawn().await;
    for bad in ["abc", "-1", "1.5", "7 8", "0x10", "123456789012345678901", "99999999999999999999", "１２"] {
        let mut headers = bearer(&app.token);
        headers.insert("last-event-id", bad.parse().unwrap());
        let body = problem(app.open_progress_with("doc-1", &headers).await, 400).await;
        assert_eq!(body["code"], "invalid_last_event_id", "{bad:?}");
    }
    let response = app.get("/documents/doc-1/progress?lastEventId=%00", &bearer(&app.token)).await;
    assert_eq!(problem(response, 400).await["code"], "invalid_last_event_id");
    assert_eq!(app.sim.calls(), 0);

    // Bytes no HTTP client library will send: through a raw socket.
    for raw in ["7\0", "7\rX: y", "7\r\n folded"] {
        let status = raw_request(&app, &format!("Last-Event-ID: {raw}\r\n")).await;
        assert_eq!(status, 400, "{raw:?}");
    }
    let huge = "1".repeat(1 << 20);
    let status = raw_request(&app, &format!("Last-Event-ID: {huge}\r\n")).await;
    assert_eq!(status, 431, "a 1 MiB header is refused as too large");
    assert_eq!(app.sim.calls(), 0);
}

/// Sends a request with extra raw header lines and returns the status code.
async fn raw_request(app: &TestApp, extra: &str) -> u16 {
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "GET /documents/doc-1/progress HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n{extra}Connection: close\r\n\r\n",
        app.token
    );
    // The server may answer and close before reading everything; that is fine.
    let _ = socket.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn the_per_user_connection_limit_is_429_with_retry_after() {
    let app = TestApp::builder().speed(1.0).configure(|c| c.limits.max_streams_per_user = 2).spawn().await;
    let first = app.open_progress("slow").await;
    let second = app.open_progress("slow").await;
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    let third = app.open_progress("slow").await;
    assert!(third.headers().contains_key("retry-after"));
    let body = problem(third, 429).await;
    assert_eq!(body["code"], "too_many_streams");
    assert_eq!(body["retryable"], true);
    let other_user = app.open_progress_as("slow", &token("bob", "acme")).await;
    assert_eq!(other_user.status(), 200, "the limit is per user");
    assert_eq!(app.sim.calls(), 2, "alice's streams share one call, bob has his own, the refused one made none");

    drop(first);
    let again = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let response = app.open_progress("slow").await;
            if response.status() == 200 {
                return response;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(again.is_ok(), "a closed stream frees its slot");
}

#[tokio::test]
async fn asymmetric_keys_verify_through_pem_and_jwks() {
    for (alg, private, public) in [
        (Algorithm::RS256, "keys/rsa-private.pem", "keys/rsa-public.pem"),
        (Algorithm::ES256, "keys/ec-private.pem", "keys/ec-public.pem"),
        (Algorithm::EdDSA, "keys/ed25519-private.pem", "keys/ed25519-public.pem"),
    ] {
        let app = TestApp::builder().public_key(fixture(public)).spawn().await;
        let valid = with_private_key(alg, private, None, &claims("alice"));
        // The same signature over other claims: the signature is checked, not just the shape.
        reject_token(&app, &with_claims(&valid, &claims("mallory"))).await;
        accept_token(&app, &valid).await;
    }
    let app = TestApp::builder().jwks(fixture("keys/jwks.json")).spawn().await;
    for (alg, private, kid) in [
        (Algorithm::RS256, "keys/rsa-private.pem", "rsa-1"),
        (Algorithm::ES256, "keys/ec-private.pem", "ec-1"),
        (Algorithm::EdDSA, "keys/ed25519-private.pem", "ed-1"),
    ] {
        accept_token(&app, &with_private_key(alg, private, Some(kid), &claims("alice"))).await;
    }
    let calls = app.sim.calls();
    let wrong_kid = with_private_key(Algorithm::RS256, "keys/rsa-private.pem", Some("ec-1"), &claims("alice"));
    let unknown_kid = with_private_key(Algorithm::RS256, "keys/rsa-private.pem", Some("nope"), &claims("alice"));
    let no_kid = with_private_key(Algorithm::RS256, "keys/rsa-private.pem", None, &claims("alice"));
    for bad in [wrong_kid, unknown_kid, no_kid] {
        let response = app.open_progress_as("doc-1", &bad).await;
        assert_eq!(response.status(), 401);
    }
    assert_eq!(app.sim.calls(), calls);
}

#[tokio::test]
async fn cors_allows_only_configured_origins_with_credentials() {
    let app = TestApp::builder()
        .configure(|c| c.cors_origins = vec!["https://portal.example.test".parse().unwrap()])
        .spawn()
        .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/documents/doc-1/progress"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization,last-event-id")
            .send()
    };
    let allowed = preflight("https://portal.example.test").await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://portal.example.test");
    assert_eq!(allowed.headers()["access-control-allow-credentials"], "true");
    let denied = preflight("https://evil.example.test").await.unwrap();
    assert!(denied.headers().get("access-control-allow-origin").is_none());

    // EventSource sends a simple GET: the stream's own response carries the grant.
    for (origin, granted) in [("https://portal.example.test", true), ("https://evil.example.test", false)] {
        let mut headers = bearer(&app.token);
        headers.insert("origin", origin.parse().unwrap());
        let response = app.open_progress_with("doc-1", &headers).await;
        assert_eq!(response.status(), 200);
        let allowed = response.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(allowed.as_deref(), granted.then_some(origin), "{origin}");
        if granted {
            assert_eq!(response.headers()["access-control-allow-credentials"], "true");
        }
    }
}

#[tokio::test]
async fn unsafe_auth_configurations_refuse_to_start() {
    use sse_bff::{App, ServeConfig};
    use tokio_util::sync::CancellationToken;
    let base = || {
        let mut c = ServeConfig::with_upstream("http://127.0.0.1:1");
        c.auth.insecure_no_auth = false;
        c
    };
    let mut none = base();
    none.auth.jwt_secret = None;
    let mut short = base();
    short.auth.jwt_secret = Some("short".into());
    let mut two = base();
    two.auth.jwt_secret = Some(SECRET.into());
    two.auth.jwks_file = Some(fixture("keys/jwks.json"));
    let mut private = base();
    private.auth.jwt_public_key = Some(fixture("keys/rsa-private.pem"));
    for (config, expected) in [
        (none, "no token verification key"),
        (short, "at least 32 bytes"),
        (two, "only one of"),
        (private, "private key"),
    ] {
        let error = App::build(config, CancellationToken::new()).await.unwrap_err().to_string();
        assert!(error.contains(expected), "{error}");
    }
    let parsed = <sse_bff::cli::Cli as clap::Parser>::try_parse_from([
        "sse-bff",
        "serve",
        "--upstream",
        "http://127.0.0.1:1",
        "--insecure-no-auth",
        "--cors-origin",
        "*",
    ]);
    assert!(parsed.unwrap_err().to_string().contains("not allowed with credentials"));
}

#[tokio::test]
async fn the_global_connection_limit_is_429_for_everyone() {
    let app = TestApp::builder().speed(1.0).configure(|c| c.limits.max_streams = 2).spawn().await;
    let first = app.open_progress_as("slow", &token("alice", "acme")).await;
    let second = app.open_progress_as("slow", &token("bob", "acme")).await;
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    let third = app.open_progress_as("slow", &token("carol", "acme")).await;
    assert!(third.headers().contains_key("retry-after"));
    assert_eq!(problem(third, 429).await["code"], "too_many_streams");
}
