//! TLS at the edge, with certificates the tests issue: HTTP/2 and HTTP/1.1 chosen by ALPN, many
//! streams on one HTTP/2 connection, certificates reloaded under open streams, and files that
//! refuse to start the server.

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{ClientConfig, RootCertStore, pki_types::CertificateDer};
use sse_bff::{App, ServeConfig, sse::Frame};
use tokio::{net::TcpStream, time::Instant};
use tokio_rustls::{TlsConnector, client::TlsStream, rustls};
use tokio_util::sync::CancellationToken;

use crate::helpers::{PATIENCE, TestApp, events, fresh, names, temp_file};

/// A certificate for `127.0.0.1` and its key, as PEM files, and the DER a client trusts.
struct Issued {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    der: CertificateDer<'static>,
}

fn issue() -> Issued {
    let issued = rcgen::generate_simple_self_signed(["127.0.0.1".to_owned()]).unwrap();
    Issued {
        cert: temp_file("cert.pem", &issued.cert.pem()),
        key: temp_file("key.pem", &issued.signing_key.serialize_pem()),
        der: issued.cert.der().clone(),
    }
}

async fn spawn_tls(issued: &Issued, speed: f64) -> TestApp {
    let (cert, key) = (issued.cert.clone(), issued.key.clone());
    TestApp::builder()
        .speed(speed)
        .configure(|config| {
            config.server.tls_cert = Some(cert);
            config.server.tls_key = Some(key);
        })
        .spawn()
        .await
}

/// A TLS connection that trusts `roots` and offers `alpn`.
async fn connect(app: &TestApp, roots: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(app.addr.ip().into());
    tokio::time::timeout(PATIENCE, TlsConnector::from(Arc::new(config)).connect(name, tcp)).await.unwrap().unwrap()
}

fn alpn(stream: &TlsStream<TcpStream>) -> Option<&[u8]> {
    stream.get_ref().1.alpn_protocol()
}

fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// An HTTP/2 connection over `stream`.
async fn h2(stream: TlsStream<TcpStream>) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    sender
}

fn progress(app: &TestApp, document: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("https://{}/documents/{document}/progress?lastEventId=0", app.addr))
        .header("authorization", format!("Bearer {}", app.token))
        .body(Empty::new())
        .unwrap()
}

/// Opens `document`'s stream on `sender` and checks it is a 200 event stream over HTTP/2.
async fn open_h2(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    request: Request<Empty<Bytes>>,
) -> Incoming {
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request)).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    response.into_body()
}

/// Reads SSE frames from a response body; `each` sees every event frame as it arrives.
async fn read_events(mut body: Incoming, mut each: impl FnMut(&Frame)) -> Vec<Frame> {
    let (mut decoder, mut frames) = (sse_bff::sse::Decoder::new(), Vec::new());
    while let Some(frame) = tokio::time::timeout(PATIENCE, body.frame()).await.expect("the stream goes on") {
        let Ok(data) = frame.unwrap().into_data() else { continue };
        for frame in decoder.feed(&data) {
            if matches!(frame, Frame::Event { .. }) {
                each(&frame);
            }
            frames.push(frame);
        }
    }
    frames
}

fn assert_whole_job(frames: &[Frame]) {
    let names = names(frames);
    assert_eq!(names.len(), 10, "every update of the job: {names:?}");
    assert_eq!(names.last().map(String::as_str), Some("completed"));
    let sequences: Vec<_> = events(frames).iter().map(|(_, _, data)| data["sequence"].as_u64().unwrap()).collect();
    assert_eq!(sequences, (1..=10).collect::<Vec<_>>(), "no update lost or repeated");
}

#[tokio::test]
async fn alpn_chooses_http_2_and_a_document_streams_to_its_end() {
    let issued = issue();
    let app = spawn_tls(&issued, 20.0).await;
    let stream = connect(&app, &[&issued.der], &[b"h2", b"http/1.1"]).await;
    assert_eq!(alpn(&stream), Some(&b"h2"[..]));
    let mut sender = h2(stream).await;

    let body = open_h2(&mut sender, progress(&app, "doc-1")).await;
    assert_whole_job(&read_events(body, |_| {}).await);
}

#[tokio::test]
async fn an_http_1_1_client_streams_over_tls() {
    let issued = issue();
    let app = spawn_tls(&issued, 20.0).await;
    let stream = connect(&app, &[&issued.der], &[b"http/1.1"]).await;
    assert_eq!(alpn(&stream), Some(&b"http/1.1"[..]));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);

    let request = Request::get("/documents/doc-1/progress?lastEventId=0")
        .header("host", "127.0.0.1")
        .header("authorization", format!("Bearer {}", app.token))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request)).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_11);
    assert_whole_job(&read_events(response.into_body(), |_| {}).await);
}

/// More streams than a browser's six HTTP/1.1 connections, all live at once on one connection:
/// every one has its second update before any has its last.
#[tokio::test]
async fn twelve_streams_are_live_at_once_on_one_http_2_connection() {
    let issued = issue();
    let app = spawn_tls(&issued, 2.0).await;
    let sender = h2(connect(&app, &[&issued.der], &[b"h2"]).await).await;

    let streams = (0..12).map(|_| {
        let (mut sender, request) = (sender.clone(), progress(&app, &fresh("doc-1")));
        tokio::spawn(async move {
            let body = open_h2(&mut sender, request).await;
            let (mut count, mut second) = (0, None);
            let frames = read_events(body, |_| {
                count += 1;
                if count == 2 {
                    second = Some(Instant::now());
                }
            })
            .await;
            (frames, second.expect("a second update"), Instant::now())
        })
    });
    let results = futures_util::future::join_all(streams).await;

    let results: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    for (frames, _, _) in &results {
        assert_whole_job(frames);
    }
    let last_second = results.iter().map(|(_, second, _)| *second).max().unwrap();
    let first_end = results.iter().map(|(_, _, end)| *end).min().unwrap();
    assert!(last_second < first_end, "every stream had its second update before any ended");
}

/// Replaces the files (as a renewal does, in place) with a new certificate and key.
fn renew(issued: &Issued) -> CertificateDer<'static> {
    let renewed = rcgen::generate_simple_self_signed(["127.0.0.1".to_owned()]).unwrap();
    std::fs::write(&issued.key, renewed.signing_key.serialize_pem()).unwrap();
    std::fs::write(&issued.cert, renewed.cert.pem()).unwrap();
    renewed.cert.der().clone()
}

/// Connects until the server presents `wanted`, for at most 20 s.
async fn wait_for_certificate(app: &TestApp, roots: &[&CertificateDer<'static>], wanted: &CertificateDer<'static>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while presented(&connect(app, roots, &[b"h2"]).await) != *wanted {
        assert!(Instant::now() < deadline, "the new certificate is presented within 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_renewed_certificate_serves_new_connections_while_open_streams_go_on() {
    let issued = issue();
    // doc-1 takes 12 s at half speed: longer than the reload takes.
    let app = spawn_tls(&issued, 0.5).await;
    let before = connect(&app, &[&issued.der], &[b"h2"]).await;
    assert_eq!(presented(&before), issued.der);
    let mut sender = h2(before).await;
    let body = open_h2(&mut sender, progress(&app, &fresh("doc-1"))).await;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(read_events(body, move |_| {
        let _ = seen_tx.send(());
    }));
    seen_rx.recv().await.expect("the first update arrives before the renewal");

    let renewed = renew(&issued);
    wait_for_certificate(&app, &[&issued.der, &renewed], &renewed).await;

    let frames = reader.await.unwrap();
    assert_whole_job(&frames);
}

#[tokio::test]
async fn files_that_cannot_be_used_keep_the_current_certificate() {
    let issued = issue();
    let app = spawn_tls(&issued, 20.0).await;
    std::fs::write(&issued.cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    // Two checks for the bad file to settle and load, and one more.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(presented(&connect(&app, &[&issued.der], &[b"h2"]).await), issued.der);

    let renewed = renew(&issued);
    wait_for_certificate(&app, &[&issued.der, &renewed], &renewed).await;
}

async fn build_error(cert: Option<&Path>, key: Option<&Path>) -> String {
    let mut config = ServeConfig::with_upstream("http://127.0.0.1:1");
    config.server.tls_cert = cert.map(Path::to_owned);
    config.server.tls_key = key.map(Path::to_owned);
    match App::build(config, CancellationToken::new()).await {
        Ok(_) => panic!("the app must not start"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn a_missing_invalid_or_mismatched_key_refuses_to_start() {
    let issued = issue();
    let other = issue();
    let missing = issued.key.with_file_name("missing.pem");
    let garbage = temp_file("garbage.pem", "not a key");

    let error = build_error(Some(&issued.cert), Some(&missing)).await;
    assert!(error.contains("cannot read") && error.contains(&*missing.to_string_lossy()), "{error}");
    let error = build_error(Some(&issued.cert), Some(&garbage)).await;
    assert!(error.contains("no PEM private key") && error.contains(&*garbage.to_string_lossy()), "{error}");
    let error = build_error(Some(&issued.cert), Some(&other.key)).await;
    assert!(error.contains("is not the private key") && error.contains(&*other.key.to_string_lossy()), "{error}");
    let error = build_error(Some(&garbage), Some(&issued.key)).await;
    assert!(error.contains("no PEM certificate") && error.contains(&*garbage.to_string_lossy()), "{error}");
    let error = build_error(Some(&issued.cert), None).await;
    assert!(error.contains("--tls-key"), "{error}");
}
