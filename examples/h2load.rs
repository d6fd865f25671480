//! HTTP/2 over TLS load: opens N TLS connections (ALPN `h2`) to the BFF with M event streams
//! each, and reports the server's RSS per open stream from /proc. Not part of the shipped server.
//!
//! ```text
//! sse-bff upstream-sim --steady-rate 0.001 &
//! sse-bff serve --tls-cert cert.pem --tls-key key.pem --insecure-no-auth \
//!     --max-streams 100000 --max-streams-per-user 100000 --upstream http://127.0.0.1:50051 &
//! cargo run --release --example h2load -- --ca cert.pem --server-pid $(pgrep -n -f 'sse-bff serve')
//! ```

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::{
    TlsConnector,
    rustls::{
        ClientConfig, RootCertStore,
        crypto::ring,
        pki_types::{CertificateDer, ServerName, pem::PemObject as _},
    },
};

#[derive(Debug, Parser)]
struct Args {
    /// The BFF's TLS address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// The BFF's certificate (PEM), trusted as the root.
    #[arg(long)]
    ca: PathBuf,
    /// TLS connections to open.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// HTTP/2 streams per connection (the BFF allows 200 at once per connection).
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// Documents the streams are spread over: `<prefix>.0` ... `<prefix>.<D-1>`.
    #[arg(long, default_value_t = 1)]
    documents: usize,
    /// Document id prefix (the simulator's `steady` job plays any `steady.<n>`).
    #[arg(long, default_value = "steady")]
    prefix: String,
    /// Bearer token for every stream.
    #[arg(long, env = "SSE_BFF_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The server's process id, for its RSS.
    #[arg(long)]
    server_pid: u32,
    /// Seconds to wait once every stream is open, before measuring.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args.ca).expect("the CA file is PEM") {
        roots.add(cert.expect("a PEM certificate")).expect("a usable root");
    }
    let mut tls = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(tls));
    let name = ServerName::IpAddress(args.target.ip().into());

    let before = rss_kb(args.server_pid);
    let started = Instant::now();
    let open = Arc::new(AtomicUsize::new(0));
    let events = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for connection in 0..args.connections {
        let tcp = TcpStream::connect(args.target).await.expect("connects");
        let stream = connector.connect(name.clone(), tcp).await.expect("TLS handshake");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN chose h2");
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2");
        tokio::spawn(conn);
        for stream in 0..args.streams {
            let document = (connection * args.streams + stream) % args.documents;
            let mut request =
                http::Request::get(format!("https://{}/documents/{}.{document}/progress", args.target, args.prefix));
            if let Some(token) = &args.token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            let request = request.body(Empty::<Bytes>::new()).expect("request");
            let (mut sender, open, events) = (sender.clone(), Arc::clone(&open), Arc::clone(&events));
            tokio::spawn(async move {
                let response = sender.send_request(request).await.expect("a response");
                assert_eq!(response.status(), 200, "the stream opens");
                open.fetch_add(1, Ordering::Relaxed);
                let mut body = response.into_body();
                while let Some(Ok(frame)) = body.frame().await {
                    if frame.is_data() {
                        events.fetch_add(1, Ordering::Relaxed);
                    }
                }
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
        senders.push(sender);
    }
    let total = args.connections * args.streams;
    while open.load(Ordering::Relaxed) < total {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {} of {total} streams opened",
            open.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opened_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let after = rss_kb(args.server_pid);
    let still_open = open.load(Ordering::Relaxed);
    let bytes_per_stream = after.saturating_sub(before) * 1024 / total.max(1) as u64;
    println!(
        "{{\"connections\":{},\"streams_per_connection\":{},\"streams\":{total},\"still_open\":{still_open},\
         \"opened_in_s\":{:.2},\"data_frames\":{},\"rss_before_kb\":{before},\"rss_after_kb\":{after},\
         \"bytes_per_stream\":{bytes_per_stream}}}",
        args.connections,
        args.streams,
        opened_in.as_secs_f64(),
        events.load(Ordering::Relaxed),
    );
    drop(senders);
}

/// The resident set of process `pid`, in KiB (`VmRSS` in /proc/<pid>/status).
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the server's /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}
