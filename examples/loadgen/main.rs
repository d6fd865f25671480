//! The load generator: opens N SSE connections spread over D documents, parses every event,
//! and reports delivery (events/s, gaps, duplicates, latency from the upstream's `emittedAt`)
//! and the server's cost (RSS and CPU from /proc). Not part of the shipped server.
//!
//! Modes: `steady` (the default: a measurement window of N open streams), `storm` (the
//! reconnect storm of `storm.rs`: viewers that reconnect like EventSource when instance A is
//! stopped) and `soak` (`soak.rs`: churning viewers of every representation for a long run).
//!
//! `cargo run --release --example loadgen -- --help`; `scripts/bench` runs the scenarios,
//! `scripts/soak` the soak.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

mod http1;
mod process;
mod soak;
mod storm;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use clap::Parser;
use tokio::io::AsyncReadExt as _;

use self::{http1::Dechunker, process::Proc};

/// What the generator does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// Open the connections, then measure delivery over a window.
    Steady,
    /// Viewers reconnect like EventSource; SIGTERM to `--sigterm-pid` starts the storm.
    Storm,
    /// Viewers of every representation come and go for `--duration` seconds.
    Soak,
}

#[derive(Debug, Parser)]
struct Args {
    /// The BFF (or proxy) address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// Connections to open.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Documents the connections are spread over: `<prefix>.0` ... `<prefix>.<D-1>`.
    #[arg(long, default_value_t = 1)]
    documents: usize,
    /// Topics per connection: with K > 0 each connection opens one multiplexed stream
    /// (`/events?topic=...`) of K documents, `<prefix>.<(n·K + j) mod D>`, instead of one
    /// document's own stream; gaps and duplicates are then counted per document by `sequence`.
    #[arg(long, default_value_t = 0)]
    topics: usize,
    /// Document id prefix (the simulator's `steady` job plays any `steady.<n>`).
    #[arg(long, default_value = "steady")]
    prefix: String,
    /// Bearer token for every connection.
    #[arg(long, env = "SSE_BFF_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Seconds to wait after the last connection before measuring.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Connections opened per second.
    #[arg(long, default_value_t = 4000.0)]
    connect_rate: f64,
    /// Source addresses 127.0.0.1 ..= 127.0.0.<sources>, for more connections than one source
    /// address has ports.
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// The server's process id, for its RSS and CPU.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print the summary as one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// What to do with the connections.
    #[arg(long, value_enum, default_value = "steady")]
    mode: Mode,
    #[command(flatten)]
    storm: storm::StormArgs,
    #[command(flatten)]
    soak: soak::SoakArgs,
}

/// What one connection saw during the measurement window.
#[derive(Debug, Default)]
struct Tally {
    events: u64,
    gaps: u64,
    duplicates: u64,
    latencies_us: Vec<u32>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024));
    if rlimit::Resource::NOFILE.set(hard, hard).is_err() {
        eprintln!("could not raise the open-file limit from {soft}");
    }
    let summary = match args.mode {
        Mode::Steady => steady(args).await,
        Mode::Storm => storm::run(args).await,
        Mode::Soak => soak::run(args).await,
    };
    if let Some(summary) = summary {
        println!("{summary}");
    }
}

/// The measurement window: N streams open, then events, gaps, latency and the server's cost.
async fn steady(args: Args) -> Option<serde_json::Value> {
    let server = args.server_pid.map(Proc::new);
    let before = server.as_ref().map(Proc::rss_kib);
    let established = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let ramp = Duration::from_secs_f64(args.connections as f64 / args.connect_rate);
    let start = Instant::now();
    let measure_from = start + ramp + Duration::from_secs_f64(args.warmup);
    let measure_until = measure_from + Duration::from_secs_f64(args.duration);
    let mut tasks = Vec::with_capacity(args.connections);
    let args = Arc::new(args);
    for n in 0..args.connections {
        let at = start + Duration::from_secs_f64(n as f64 / args.connect_rate);
        tokio::time::sleep_until(at.into()).await;
        let (args, established, failed) = (Arc::clone(&args), Arc::clone(&established), Arc::clone(&failed));
        tasks.push(tokio::spawn(async move {
            match connection(&args, n, measure_from, measure_until, &established).await {
                Ok(tally) => tally,
                Err(error) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("connection {n}: {error}");
                    }
                    Tally::default()
                }
            }
        }));
    }
    // Sample the server while the window runs.
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_start = (server.as_ref().map(Proc::cpu_seconds), Proc::own().cpu_seconds());
    let mut rss_full = None;
    let mut rss_peak = 0;
    while Instant::now() < measure_until {
        if let Some(server) = &server {
            let rss = server.rss_kib();
            rss_full.get_or_insert(rss);
            rss_peak = rss_peak.max(rss);
        }
        tokio::time::sleep(Duration::from_millis(250).min(measure_until.saturating_duration_since(Instant::now())))
            .await;
    }
    let window = Duration::from_secs_f64(args.duration).as_secs_f64();
    let server_cores = cpu_start.0.zip(server.as_ref().map(Proc::cpu_seconds)).map(|(a, b)| (b - a) / window);
    let own_cores = (Proc::own().cpu_seconds() - cpu_start.1) / window;
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.unwrap_or_default();
        total.events += tally.events;
        total.gaps += tally.gaps;
        total.duplicates += tally.duplicates;
        total.latencies_us.extend(tally.latencies_us);
    }
    total.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        let lat = &total.latencies_us;
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        f64::from(lat[i]) / 1000.0
    };
    let connections = established.load(Ordering::Relaxed);
    let per_conn = |rss: Option<u64>| rss.zip(before).map(|(r, b)| r.saturating_sub(b) * 1024 / connections.max(1));
    let summary = serde_json::json!({
        "connections": connections,
        "failed": failed.load(Ordering::Relaxed),
        "events": total.events,
        "events_per_s": total.events as f64 / window,
        "gaps": total.gaps,
        "duplicates": total.duplicates,
        "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "p999": pct(0.999), "max": pct(1.0)},
        "server_rss_kib": {"before": before, "full": rss_full, "peak": (rss_peak > 0).then_some(rss_peak)},
        // At the peak: per-stream state grows while events accumulate (replay logs).
        "server_bytes_per_connection": per_conn((rss_peak > 0).then_some(rss_peak)),
        "server_cores": server_cores,
        "loadgen_cores": own_cores,
    });
    if !args.json {
        println!("{}", serde_json::to_string_pretty(&summary).unwrap());
        return None;
    }
    Some(summary)
}

/// One SSE connection: request, response head, then chunked SSE until the window ends.
async fn connection(
    args: &Args,
    n: usize,
    measure_from: Instant,
    measure_until: Instant,
    established: &AtomicU64,
) -> Result<Tally, String> {
    let documents = args.documents.max(1);
    let path = match args.topics {
        0 => format!("/documents/{}.{}/progress", args.prefix, n % documents),
        topics => {
            let each = (0..topics)
                .map(|j| format!("topic=%2Fdocuments%2F{}.{}%2Fprogress", args.prefix, (n * topics + j) % documents));
            format!("/events?{}", each.collect::<Vec<_>>().join("&"))
        }
    };
    let mut headers = vec!["Accept: text/event-stream".to_owned()];
    headers.extend(args.token.as_ref().map(|t| format!("Authorization: Bearer {t}")));
    let opened = http1::get(args.target, source(args, n), &path, &headers).await?;
    if opened.status != 200 {
        return Err(opened.head.lines().next().unwrap_or("").to_owned());
    }
    let mut stream = opened.stream;
    let mut chunk = [0u8; 16384];
    established.fetch_add(1, Ordering::Relaxed);
    let mut dechunk = Dechunker::default();
    let mut sse = Vec::new();
    let mut tally = Tally::default();
    // The last id seen, per document on a multiplexed stream (keyed by its `documentId`).
    let mut last_ids: std::collections::HashMap<Vec<u8>, u64> = std::collections::HashMap::new();
    dechunk.feed(&opened.body, &mut sse);
    let window_end = tokio::time::sleep_until(measure_until.into());
    tokio::pin!(window_end);
    loop {
        scan_events(&mut sse, &mut |id, data| {
            let emitted_at = emitted_at(data);
            let (document, id) = match id {
                Some(id) => (Vec::new(), Some(id)),
                None => (field(data, b"\"documentId\":\"", b'"').unwrap_or_default().to_vec(), sequence(data)),
            };
            let last_id = last_ids.entry(document).or_default();
            let now = Instant::now();
            if now < measure_from || now >= measure_until {
                *last_id = id.unwrap_or(*last_id);
                return;
            }
            if let Some(id) = id {
                if id <= *last_id {
                    tally.duplicates += 1;
                } else if *last_id != 0 && id > *last_id + 1 {
                    tally.gaps += id - *last_id - 1;
                }
                *last_id = id;
            }
            tally.events += 1;
            if let Some(emitted) = emitted_at {
                let lag = SystemTime::now().duration_since(emitted).unwrap_or_default();
                tally.latencies_us.push(u32::try_from(lag.as_micros()).unwrap_or(u32::MAX));
            }
        });
        // One timer for the whole window, not one per read.
        let read = tokio::select! {
            biased;
            read = stream.read(&mut chunk) => read,
            () = &mut window_end => return Ok(tally),
        };
        match read {
            Ok(0) => return Err("server closed the stream".into()),
            Ok(read) => dechunk.feed(&chunk[..read], &mut sse),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The source address of connection `n`: 127.0.0.1 ..= 127.0.0.<sources>, in turn.
fn source(args: &Args, n: usize) -> u8 {
    1 + (n % usize::from(args.sources.max(1))) as u8
}

/// Takes complete events (blank-line terminated) out of `buf`, calling `each` with the numeric
/// id (`None` for a cursor) and the data of every event that has data.
fn scan_events(buf: &mut Vec<u8>, each: &mut impl FnMut(Option<u64>, &[u8])) {
    let mut start = 0;
    while let Some(end) = memchr::memmem::find(&buf[start..], b"\n\n") {
        let block = &buf[start..start + end];
        let mut id = None;
        let mut data = None;
        for line in block.split(|b| *b == b'\n') {
            if let Some(value) = line.strip_prefix(b"id: ") {
                id = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            } else if let Some(value) = line.strip_prefix(b"data: ") {
                data = Some(value);
            }
        }
        if let Some(data) = data {
            each(id, data);
        }
        start += end + 2;
    }
    buf.drain(..start);
}

/// The bytes after `key` up to `end`, in an event's data.
fn field<'a>(json: &'a [u8], key: &[u8], end: u8) -> Option<&'a [u8]> {
    let at = memchr::memmem::find(json, key)? + key.len();
    let len = memchr::memchr(end, json.get(at..)?)?;
    json.get(at..at + len)
}

/// The `"sequence":N` of a document update's data.
fn sequence(json: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(json, b"\"sequence\":")? + b"\"sequence\":".len();
    let digits = json.get(at..)?.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(json.get(at..at + digits)?).ok()?.parse().ok()
}

/// The `"emittedAt":"2026-11-23T10:00:00.123456789Z"` of an event's data.
fn emitted_at(json: &[u8]) -> Option<SystemTime> {
    const KEY: &[u8] = b"\"emittedAt\":\"";
    let at = memchr::memmem::find(json, KEY)? + KEY.len();
    let len = memchr::memchr(b'"', json.get(at..)?)?;
    let text = std::str::from_utf8(json.get(at..at + len)?).ok()?;
    SystemTime::try_from(text.parse::<prost_types::Timestamp>().ok()?).ok()
}

/// The `p` quantile (0 to 1) of sorted values, NaN when there are none.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}
