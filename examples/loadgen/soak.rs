//! `--mode soak`: viewers of every representation (SSE, NDJSON, long-poll, WebSocket) come and
//! go for `--duration` seconds: about `--connections` open at a time, `--churn` arriving (and as
//! many leaving) per second, over documents that start and finish. Each viewer checks that the
//! ids it receives are consecutive from its first one, across its own reconnects. Every
//! `--report-every` seconds one JSON line goes to stdout (`scripts/soak` reads them); the
//! totals follow at the end.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use sse_bff::sse::{Decoder, Frame};
use tokio::io::AsyncReadExt as _;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{Args, http1, http1::Dechunker, percentile};

/// The soak's flags.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// Soak: viewers arriving per second (about as many leave: each stays
    /// `--connections / --churn` seconds on average).
    #[arg(long, default_value_t = 50.0)]
    pub churn: f64,
    /// Soak: seconds between two reports.
    #[arg(long, default_value_t = 10.0)]
    pub report_every: f64,
    /// Soak: a new document every this many seconds; a viewer picks one of the
    /// `--doc-window` newest.
    #[arg(long, default_value_t = 1.0)]
    pub doc_every: f64,
    /// Soak: how many of the newest documents viewers pick from.
    #[arg(long, default_value_t = 30)]
    pub doc_window: u64,
}

/// Counters of the whole run, and the delivery lags of the current report.
#[derive(Default)]
struct Counters {
    open: AtomicU64,
    connects: AtomicU64,
    disconnects: AtomicU64,
    finished: AtomicU64,
    events: AtomicU64,
    lost: AtomicU64,
    repeated: AtomicU64,
    resets: AtomicU64,
    errors: AtomicU64,
    failed: AtomicU64,
    reconnects: AtomicU64,
    /// Viewers that saw their document end, by representation.
    finished_by_kind: [AtomicU64; 4],
    lags_us: Mutex<Vec<u32>>,
}

const TOTALS: [&str; 11] = [
    "open",
    "connects",
    "disconnects",
    "finished",
    "events",
    "lost",
    "repeated",
    "resets",
    "errors",
    "failed",
    "reconnects",
];

impl Counters {
    fn values(&self) -> [u64; 11] {
        [
            &self.open,
            &self.connects,
            &self.disconnects,
            &self.finished,
            &self.events,
            &self.lost,
            &self.repeated,
            &self.resets,
            &self.errors,
            &self.failed,
            &self.reconnects,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }
}

/// The four representations, in the mix 4 : 2 : 2 : 2.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Sse,
    Ndjson,
    LongPoll,
    WebSocket,
}

/// Runs the soak; the totals are its summary.
pub async fn run(args: Args) -> Option<Value> {
    let args = Arc::new(args);
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let viewers = TaskTracker::new();
    let poller = reqwest::Client::builder().pool_max_idle_per_host(4096).build().expect("an HTTP client");
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(args.duration);
    // Viewers started: the steady arrivals, and those that top the count up.
    let (mut spawned, mut arrivals) = (0u64, 0u64);
    let mut next_report = start + Duration::from_secs_f64(args.soak.report_every);
    let mut last = counters.values();
    while Instant::now() < until {
        let elapsed = start.elapsed().as_secs_f64();
        // The steady arrivals, and a top-up (at most 500/s) while fewer than the target are open:
        // at the start, and for viewers that left early because their document finished.
        let due = (elapsed * args.soak.churn) as u64;
        let arriving = due.saturating_sub(arrivals);
        arrivals = due;
        let open = counters.open.load(Ordering::Relaxed) + arriving;
        let top_up = (args.connections as u64).saturating_sub(open).min(50);
        for _ in 0..(arriving + top_up) {
            spawned += 1;
            // Counted open from here, so that the next top-up does not count it again.
            counters.open.fetch_add(1, Ordering::Relaxed);
            let kind = match spawned % 10 {
                0..=3 => Kind::Sse,
                4 | 5 => Kind::Ndjson,
                6 | 7 => Kind::LongPoll,
                _ => Kind::WebSocket,
            };
            // Numbered from the window's size, so that the window is full from the start.
            let window = args.soak.doc_window.max(1);
            let newest = window + (elapsed / args.soak.doc_every) as u64;
            let document = newest - fastrand::u64(0..window);
            // Exponential stays (memoryless): the open count stays level from the start on.
            let mean = args.connections as f64 / args.soak.churn;
            let stay = Duration::from_secs_f64((-mean * (1.0 - fastrand::f64()).ln()).min(20.0 * mean));
            let viewer = Viewer {
                args: Arc::clone(&args),
                counters: Arc::clone(&counters),
                path: format!("/documents/{}.{document}/progress", args.prefix),
                source: 1 + (spawned % u64::from(args.sources.max(1))) as u8,
                last: None,
                leave: Instant::now() + stay,
                stop: stop.clone(),
                terminal: false,
            };
            let poller = poller.clone();
            viewers.spawn(viewer.run(kind, poller));
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs_f64(args.soak.report_every);
            let now = counters.values();
            println!("{}", report(start, &counters, &last, &now));
            last = now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    viewers.close();
    if tokio::time::timeout(Duration::from_secs(30), viewers.wait()).await.is_err() {
        eprintln!("viewers still running 30 s after the stop");
    }
    let totals = counters.values();
    let mut summary = serde_json::Map::new();
    summary.insert("final".into(), json!(true));
    summary.insert("seconds".into(), json!(start.elapsed().as_secs_f64()));
    for (name, value) in TOTALS.iter().zip(totals) {
        summary.insert((*name).into(), json!(value));
    }
    let by_kind = counters.finished_by_kind.each_ref().map(|c| c.load(Ordering::Relaxed));
    summary.insert(
        "finished_by_kind".into(),
        json!({"sse": by_kind[0], "ndjson": by_kind[1], "long_poll": by_kind[2], "websocket": by_kind[3]}),
    );
    Some(Value::Object(summary))
}

/// One report: the open viewers, what happened since the last report, and its delivery lag.
fn report(start: Instant, counters: &Counters, last: &[u64; 11], now: &[u64; 11]) -> Value {
    let mut lags: Vec<f64> =
        std::mem::take(&mut *counters.lags_us.lock().unwrap()).into_iter().map(|us| f64::from(us) / 1000.0).collect();
    lags.sort_by(f64::total_cmp);
    let mut line = serde_json::Map::new();
    line.insert("t".into(), json!(start.elapsed().as_secs_f64()));
    for (i, name) in TOTALS.iter().enumerate() {
        let value = if i == 0 { now[0] } else { now[i] - last[i] };
        line.insert((*name).into(), json!(value));
    }
    line.insert("lag_p50_ms".into(), json!(percentile(&lags, 0.5)));
    line.insert("lag_p99_ms".into(), json!(percentile(&lags, 0.99)));
    Value::Object(line)
}

/// One viewer: a document, a representation, and when it leaves.
struct Viewer {
    args: Arc<Args>,
    counters: Arc<Counters>,
    path: String,
    source: u8,
    /// The last id received.
    last: Option<u64>,
    leave: Instant,
    stop: CancellationToken,
    /// The terminal event arrived: the viewer is done.
    terminal: bool,
}

/// How one request or connection ended.
enum Ended {
    /// The viewer left (its time was up, or the soak stopped).
    Left,
    /// The stream ended: reconnect after this long unless the terminal event came.
    Closed(Duration),
}

impl Viewer {
    async fn run(mut self, kind: Kind, poller: reqwest::Client) {
        self.counters.connects.fetch_add(1, Ordering::Relaxed);
        let mut first = true;
        loop {
            // A long-poll asks again after every answer; that is no reconnect.
            if !first && !matches!(kind, Kind::LongPoll) {
                self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            let ended = match kind {
                Kind::Sse | Kind::Ndjson => self.stream(kind).await,
                Kind::LongPoll => self.long_poll(&poller).await,
                Kind::WebSocket => self.websocket().await,
            };
            match ended {
                _ if self.terminal => {
                    self.counters.finished.fetch_add(1, Ordering::Relaxed);
                    self.counters.finished_by_kind[kind as usize].fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ended::Left => break,
                Ended::Closed(after) => {
                    tokio::select! {
                        () = tokio::time::sleep(after) => {}
                        () = self.until_leave() => break,
                    }
                }
            }
        }
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
        self.counters.disconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Resolves when the viewer's time is up or the soak stops.
    async fn until_leave(&self) {
        tokio::select! {
            () = tokio::time::sleep_until(self.leave.into()) => {}
            () = self.stop.cancelled() => {}
        }
    }

    fn headers(&self, accept: &str) -> Vec<String> {
        let mut headers = vec![format!("Accept: {accept}")];
        headers.extend(self.args.token.as_ref().map(|t| format!("Authorization: Bearer {t}")));
        headers.extend(self.last.map(|id| format!("Last-Event-ID: {id}")));
        headers
    }

    /// An event with id `id`: counts it and checks it follows the last one.
    fn saw(&mut self, id: u64, emitted_at: Option<&str>, terminal: bool) {
        let counters = &self.counters;
        counters.events.fetch_add(1, Ordering::Relaxed);
        match self.last {
            Some(last) if id <= last => {
                counters.repeated.fetch_add(1, Ordering::Relaxed);
            }
            Some(last) => {
                counters.lost.fetch_add(id - last - 1, Ordering::Relaxed);
            }
            None => {}
        }
        // A new viewer's first event is the current state, as old as the last update: only the
        // events after it were delivered as they happened.
        let first = self.last.is_none();
        self.last = Some(self.last.map_or(id, |last| last.max(id)));
        self.terminal |= terminal;
        if first {
            return;
        }
        let emitted = emitted_at.and_then(|t| t.parse::<prost_types::Timestamp>().ok());
        if let Some(emitted) = emitted.and_then(|t| SystemTime::try_from(t).ok()) {
            let lag = SystemTime::now().duration_since(emitted).unwrap_or_default();
            counters.lags_us.lock().unwrap().push(u32::try_from(lag.as_micros()).unwrap_or(u32::MAX));
        }
    }

    /// A failed request: counted, and retried a second later.
    fn failed(&self) -> Ended {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        Ended::Closed(Duration::from_secs(1))
    }

    /// An update's data: its sequence, `emittedAt` and whether it is terminal.
    fn update(&mut self, data: &Value) {
        let Some(id) = data["sequence"].as_u64() else { return };
        let terminal = matches!(data["status"].as_str(), Some("completed" | "failed"));
        self.saw(id, data["emittedAt"].as_str(), terminal);
    }

    /// SSE or NDJSON over one HTTP/1.1 connection.
    async fn stream(&mut self, kind: Kind) -> Ended {
        let accept = if matches!(kind, Kind::Sse) { "text/event-stream" } else { "application/x-ndjson" };
        let headers = self.headers(accept);
        let opened = tokio::select! {
            opened = http1::get(self.args.target, self.source, &self.path, &headers) => opened,
            () = self.until_leave() => return Ended::Left,
        };
        let Ok(opened) = opened.map_err(|_| ()).and_then(|o| if o.status == 200 { Ok(o) } else { Err(()) }) else {
            return self.failed();
        };
        let mut stream = opened.stream;
        let (mut dechunk, mut decoder, mut body, mut lines) =
            (Dechunker::default(), Decoder::new(), Vec::new(), Vec::new());
        let mut retry = Duration::from_secs(3);
        let mut input = opened.body;
        let mut chunk = vec![0u8; 8192];
        loop {
            dechunk.feed(&input, &mut body);
            match kind {
                Kind::Sse => {
                    for frame in decoder.feed(&body) {
                        match frame {
                            Frame::Retry(ms) => retry = Duration::from_millis(ms),
                            Frame::Event { event, .. } if event == "reset" => self.bump(&self.counters.resets),
                            Frame::Event { event, .. } if event == "error" => self.bump(&self.counters.errors),
                            Frame::Event { data, .. } => self.update(&serde_json::from_str(&data).unwrap_or_default()),
                            Frame::Comment(_) => {}
                        }
                    }
                    body.clear();
                }
                _ => {
                    lines.append(&mut body);
                    while let Some(end) = lines.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = lines.drain(..=end).collect();
                        let Ok(value) = serde_json::from_slice::<Value>(&line) else { continue };
                        if value["event"] == "reset" {
                            self.bump(&self.counters.resets);
                        } else if value.get("code").is_some() {
                            self.bump(&self.counters.errors);
                        } else {
                            self.update(&value);
                        }
                    }
                }
            }
            if self.terminal || dechunk.finished() {
                return Ended::Closed(retry);
            }
            let read = tokio::select! {
                read = stream.read(&mut chunk) => read,
                () = self.until_leave() => return Ended::Left,
            };
            match read {
                Ok(0) | Err(_) => return Ended::Closed(retry),
                Ok(read) => input = chunk[..read].to_vec(),
            }
        }
    }

    fn bump(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// One long-poll request: the events after the last id, or the latest at first.
    async fn long_poll(&mut self, poller: &reqwest::Client) -> Ended {
        let query = self.last.map(|id| format!("?after={id}&wait=25")).unwrap_or_default();
        let url = format!("http://{}{}{query}", self.args.target, self.path);
        let mut request = poller.get(url).header("accept", "application/json");
        if let Some(token) = &self.args.token {
            request = request.bearer_auth(token);
        }
        let answer = tokio::select! {
            response = request.send() => match response {
                Ok(response) if response.status() == 200 => response.json::<Value>().await.ok(),
                _ => None,
            },
            () = self.until_leave() => return Ended::Left,
        };
        let Some(answer) = answer else { return self.failed() };
        if answer["reset"] == true {
            self.bump(&self.counters.resets);
        }
        for event in answer["events"].as_array().into_iter().flatten() {
            self.update(event);
        }
        if answer["done"] == true {
            self.terminal = true;
        }
        Ended::Closed(Duration::ZERO)
    }

    /// A WebSocket on the same path: one JSON text frame per event.
    async fn websocket(&mut self) -> Ended {
        let mut request = format!("ws://{}{}", self.args.target, self.path).into_client_request().expect("a request");
        if let Some(token) = &self.args.token {
            request.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("a header"));
        }
        if let Some(id) = self.last {
            request.headers_mut().insert("last-event-id", id.into());
        }
        let connected = tokio::select! {
            connected = tokio_tungstenite::connect_async(request) => connected,
            () = self.until_leave() => return Ended::Left,
        };
        let Ok((mut socket, _)) = connected else { return self.failed() };
        loop {
            let message = tokio::select! {
                message = socket.next() => message,
                () = self.until_leave() => {
                    let _ = socket.close(None).await;
                    return Ended::Left;
                }
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).unwrap_or_default();
                    match frame["event"].as_str() {
                        Some("reset") => self.bump(&self.counters.resets),
                        Some("error") => self.bump(&self.counters.errors),
                        _ => self.update(&frame["data"]),
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ended::Closed(Duration::from_secs(1)),
                Some(Ok(_)) => {}
            }
            if self.terminal {
                let _ = socket.close(None).await;
                return Ended::Closed(Duration::ZERO);
            }
        }
    }
}
