//! `TestApp`: the simulator and the BFF on ephemeral loopback ports, with one method per
//! endpoint, and an SSE reader over a real HTTP response.

use std::{collections::VecDeque, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;
use sse_bff::{
    App, ServeConfig, Sim,
    auth::{TokenConfig, mint},
    sim::{SimConfig, SimStats},
    sse::{Decoder, Frame},
};
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};
use tokio_util::sync::CancellationToken;

/// How long any single wait in a test may take before the test fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(10);
/// The HS256 secret the test BFF verifies with, unless a test configures other keys.
pub const SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";

/// A path under `fixtures/`.
pub fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(path)
}

/// A valid token for `sub` in `tenant`, signed with [`SECRET`], valid for an hour.
pub fn token(sub: &str, tenant: &str) -> String {
    mint(&TokenConfig {
        secret: SECRET.to_owned(),
        sub: sub.to_owned(),
        tenant: Some(tenant.to_owned()),
        ttl: Duration::from_secs(3600),
        tenant_claim: "tenant_id".to_owned(),
        issuer: None,
        audience: None,
    })
    .expect("token mints")
}

/// `Authorization: Bearer <token>`.
pub fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().expect("header value"));
    headers
}

/// A client WebSocket to the BFF.
pub type WebSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
/// The HTTP response to a WebSocket handshake (with its body when the upgrade was refused).
pub type WsResponse = tokio_tungstenite::tungstenite::handshake::client::Response;
/// Why a WebSocket handshake or read failed.
pub type WsError = tokio_tungstenite::tungstenite::Error;

/// A document id no test used before whose job plays the script `base` (the simulator picks the
/// script by the part before the first `.`), so the test gets a brand-new job of its own.
pub fn fresh(base: &str) -> String {
    format!("{base}.{}", uuid::Uuid::new_v4().simple())
}

/// A running simulator and BFF.
pub struct TestApp {
    pub addr: SocketAddr,
    pub sim_addr: SocketAddr,
    pub sim: Arc<SimStats>,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    /// A token for alice of tenant acme, sent by `open_progress`.
    pub token: String,
    sim_shutdown: CancellationToken,
}

/// Options for a [`TestApp`], defaulting to the service's own defaults and a fast simulator.
pub struct TestAppBuilder {
    sim: SimConfig,
    config: ServeConfig,
    start_sim: bool,
    upstream: Option<SocketAddr>,
    routes: Option<RoutesText>,
}

/// Makes a routes file's TOML from the simulator's URL (`http://127.0.0.1:port`).
type RoutesText = Box<dyn FnOnce(&str) -> String + Send>;

/// Writes `text` to a fresh file under the system's temporary folder and returns its path.
pub fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sse-bff-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("temp file written");
    path
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        init_logs();
        let mut config = ServeConfig::with_upstream("http://127.0.0.1:1");
        config.auth.insecure_no_auth = false;
        config.auth.jwt_secret = Some(SECRET.to_owned());
        let fixtures = ["jobs", "scenarios"].map(fixture).to_vec();
        TestAppBuilder { sim: SimConfig::new(fixtures, 20.0), config, start_sim: true, upstream: None, routes: None }
    }

    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET /documents/{id}/progress` as alice of acme, with `Accept: text/event-stream`.
    pub async fn open_progress(&self, document_id: &str) -> reqwest::Response {
        self.open_progress_with(document_id, &bearer(&self.token)).await
    }

    /// The same with the given token.
    pub async fn open_progress_as(&self, document_id: &str, token: &str) -> reqwest::Response {
        self.open_progress_with(document_id, &bearer(token)).await
    }

    /// The same with exactly these headers (add a token yourself).
    pub async fn open_progress_with(&self, document_id: &str, headers: &HeaderMap) -> reqwest::Response {
        self.get(&format!("/documents/{document_id}/progress"), headers).await
    }

    pub async fn get(&self, path: &str, headers: &HeaderMap) -> reqwest::Response {
        let mut request = self.client.get(self.url(path)).headers(headers.clone());
        if !headers.contains_key("accept") {
            request = request.header("accept", "text/event-stream");
        }
        tokio::time::timeout(PATIENCE, request.send()).await.expect("response within patience").expect("request sent")
    }

    /// `GET /metrics`: the Prometheus text exposition.
    pub async fn metrics(&self) -> String {
        let response = self.get("/metrics", &HeaderMap::new()).await;
        assert_eq!(response.status(), 200, "GET /metrics");
        response.text().await.expect("metrics body")
    }

    /// A WebSocket upgrade on `path` (with its query) carrying exactly these extra headers (add
    /// a token yourself). A refused handshake is the `Err`, with the HTTP response in it.
    pub async fn websocket(&self, path: &str, headers: &HeaderMap) -> Result<(WebSocket, WsResponse), WsError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut request = format!("ws://{}{path}", self.addr).into_client_request().expect("a WebSocket request");
        for (name, value) in headers {
            request.headers_mut().insert(name, value.clone());
        }
        tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request))
            .await
            .expect("handshake within patience")
    }

    /// Opens a stream from the first event (`Last-Event-ID: 0`), asserts it is a 200 event
    /// stream, and reads it to its end.
    pub async fn transcript(&self, document_id: &str) -> Vec<Frame> {
        let mut headers = bearer(&self.token);
        headers.insert("last-event-id", HeaderValue::from_static("0"));
        let response = self.open_progress_with(document_id, &headers).await;
        assert_eq!(response.status(), 200, "stream of {document_id} opens");
        SseReader::new(response).read_to_end().await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.sim_shutdown.cancel();
    }
}

impl TestAppBuilder {
    /// Changes any setting of the BFF.
    pub fn configure(mut self, change: impl FnOnce(&mut ServeConfig)) -> Self {
        change(&mut self.config);
        self
    }

    /// Verifies tokens with a public key file (`--jwt-public-key`) instead of the test secret.
    pub fn public_key(self, path: PathBuf) -> Self {
        self.configure(|c| {
            c.auth.jwt_secret = None;
            c.auth.jwt_public_key = Some(path);
        })
    }

    /// Verifies tokens with a JWKS file (`--jwks-file`) instead of the test secret.
    pub fn jwks(self, path: PathBuf) -> Self {
        self.configure(|c| {
            c.auth.jwt_secret = None;
            c.auth.jwks_file = Some(path);
        })
    }

    /// Runs the BFF with `--insecure-no-auth`.
    pub fn insecure(self) -> Self {
        self.configure(|c| {
            c.auth.jwt_secret = None;
            c.auth.insecure_no_auth = true;
        })
    }

    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.config.stream.heartbeat = every;
        self
    }

    pub fn speed(mut self, speed: f64) -> Self {
        self.sim.speed = speed;
        self
    }

    /// Changes any setting of the simulator.
    pub fn configure_sim(mut self, change: impl FnOnce(&mut SimConfig)) -> Self {
        change(&mut self.sim);
        self
    }

    /// Serves a routes file (`serve --routes`) instead of the built-in route; `text` makes its
    /// TOML from the simulator's URL.
    pub fn routes(mut self, text: impl FnOnce(&str) -> String + Send + 'static) -> Self {
        self.routes = Some(Box::new(text));
        self
    }

    /// Points the BFF at another upstream (the in-process simulator still runs, unused).
    pub fn upstream(mut self, addr: SocketAddr) -> Self {
        self.upstream = Some(addr);
        self
    }

    /// Points the BFF at an address where nothing listens.
    pub fn without_sim(mut self) -> Self {
        self.start_sim = false;
        self
    }

    pub async fn spawn(self) -> TestApp {
        let sim_shutdown = CancellationToken::new();
        let sim = Sim::build(self.sim).await.expect("sim builds");
        let sim_addr = sim.local_addr();
        let stats = sim.stats();
        if self.start_sim {
            tokio::spawn(sim.run(sim_shutdown.clone()));
        } else {
            drop(sim);
        }
        let mut config = self.config;
        let upstream = format!("http://{}", self.upstream.unwrap_or(sim_addr));
        if let Some(text) = self.routes {
            config.routes = Some(temp_file("routes.toml", &text(&upstream)));
        }
        config.upstreams = vec![upstream];
        let shutdown = CancellationToken::new();
        let app = App::build(config, shutdown.clone()).await.expect("app builds");
        let addr = app.local_addr();
        tokio::spawn(app.run());
        let client = reqwest::Client::builder().build().expect("client builds");
        TestApp { addr, sim_addr, sim: stats, client, shutdown, token: token("alice", "acme"), sim_shutdown }
    }
}

/// Reads SSE frames from a response, in any chunking.
pub struct SseReader {
    response: reqwest::Response,
    decoder: Decoder,
    pending: VecDeque<Frame>,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self { response, decoder: Decoder::new(), pending: VecDeque::new() }
    }

    /// The next frame, or `None` when the response ended.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Some(frame);
            }
            let chunk = tokio::time::timeout(PATIENCE, self.response.chunk())
                .await
                .expect("next chunk within patience")
                .expect("body reads without error")?;
            self.pending.extend(self.decoder.feed(&chunk));
        }
    }

    /// The next event (skipping comments and `retry:`).
    pub async fn next_event(&mut self) -> Option<Frame> {
        loop {
            match self.next().await? {
                frame @ Frame::Event { .. } => return Some(frame),
                _ => continue,
            }
        }
    }

    pub async fn read_to_end(mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next().await {
            frames.push(frame);
        }
        frames
    }
}

/// The body of a chunked response, de-chunked; panics on broken framing.
pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size, 16).expect("hex chunk size");
        if size == 0 {
            assert_eq!(rest, "\r\n", "nothing after the last chunk");
            return out;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").expect("CRLF after a chunk");
    }
}

/// The events of a transcript as (id, event name, parsed data).
pub fn events(frames: &[Frame]) -> Vec<(Option<String>, String, Value)> {
    frames
        .iter()
        .filter_map(|frame| match frame {
            Frame::Event { id, event, data } => {
                Some((id.clone(), event.clone(), serde_json::from_str(data).expect("data is JSON")))
            }
            _ => None,
        })
        .collect()
}

/// The event names of a transcript, in order.
pub fn names(frames: &[Frame]) -> Vec<String> {
    events(frames).into_iter().map(|(_, name, _)| name).collect()
}

/// Parses a problem+json response, asserting its content type and status fields.
pub async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status, "status");
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status);
    assert_eq!(body["httpStatus"], status);
    body
}

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        sse_bff::telemetry::init(sse_bff::telemetry::LogFormat::Text);
    }
}

/// The real `sse-bff` binary running as a child process, with its log collected.
pub struct Binary {
    pub addr: SocketAddr,
    child: tokio::process::Child,
    log: Arc<std::sync::Mutex<String>>,
}

impl Binary {
    /// Starts `sse-bff serve` on an ephemeral port with extra arguments.
    pub async fn serve(upstream: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> Self {
        let upstream = format!("http://{upstream}");
        let mut all = vec!["serve", "--listen", "127.0.0.1:0", "--upstream", upstream.as_str()];
        all.extend_from_slice(args);
        Self::start(&all, env).await
    }

    /// Starts `sse-bff upstream-sim` on `listen` with the test fixtures.
    pub async fn sim(listen: SocketAddr, speed: f64) -> Self {
        let (listen, speed) = (listen.to_string(), speed.to_string());
        let (jobs, scenarios) = (fixture("jobs"), fixture("scenarios"));
        let args = ["upstream-sim", "--listen", &listen, "--speed", &speed, "--fixtures"];
        let dirs = format!("{},{}", jobs.display(), scenarios.display());
        let mut all: Vec<&str> = args.to_vec();
        all.push(&dirs);
        Self::start(&all, &[]).await
    }

    /// Runs the binary with JSON logs and waits until it says where it listens.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        use tokio::io::AsyncBufReadExt as _;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sse-bff"))
            .arg("--log-format")
            .arg("json")
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("binary starts");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr piped")).lines();
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let addr = tokio::time::timeout(PATIENCE, async {
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().expect("log lock").push_str(&line);
                log.lock().expect("log lock").push('\n');
                let Ok(entry) = serde_json::from_str::<Value>(&line) else { continue };
                if entry["message"].as_str().is_some_and(|m| m.ends_with("listening")) {
                    return entry["addr"].as_str().and_then(|a| a.parse().ok());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("binary did not start listening: {}", log.lock().expect("log lock")));
        let sink = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = sink.lock().expect("log lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self { addr, child, log }
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    /// Everything the binary logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends SIGTERM and waits (at most `limit`) for the exit; returns the status and how long
    /// the process took to exit.
    pub async fn terminate(mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let pid = self.child.id().expect("still running").to_string();
        let started = std::time::Instant::now();
        let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        assert!(sent.success());
        let status =
            tokio::time::timeout(limit, self.child.wait()).await.expect("exits within the limit").expect("wait");
        (status, started.elapsed())
    }

    /// SIGKILL: the process dies without closing anything gracefully.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill");
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

/// Every text frame (parsed) until the close, and the close code.
pub async fn read_websocket(mut socket: WebSocket) -> (Vec<Value>, Option<CloseCode>) {
    let mut frames = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, socket.next()).await.expect("a WebSocket frame within patience") {
            Some(Ok(Message::Text(text))) => frames.push(serde_json::from_str(&text).expect("each frame is JSON")),
            Some(Ok(Message::Close(frame))) => return (frames, frame.map(|f| f.code)),
            Some(Ok(_)) => {}
            None => return (frames, None),
            Some(Err(error)) => panic!("WebSocket broke after {frames:?}: {error}"),
        }
    }
}
