//! `--mode storm`: the reconnect storm. Every connection is a viewer that behaves like
//! EventSource: it remembers the last id it saw, and when its stream ends it waits for the
//! `retry:` the server sent last and reconnects with `Last-Event-ID`. Once every viewer is
//! streaming, the generator sends SIGTERM to instance A (`--sigterm-pid`), and measures how the
//! viewers come back through the proxy to instance B (`--server-pid`): when each streams again,
//! events lost and repeated per viewer, the peak rate of reconnects B answered, and B's RSS and
//! CPU.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;
use sse_bff::sse::{Decoder, Frame};
use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;

use super::{
    Args, http1,
    http1::{Dechunker, Opened},
    percentile,
    process::Proc,
    source,
};

/// The storm's flags.
#[derive(Debug, clap::Args)]
pub struct StormArgs {
    /// Storm: the process sent SIGTERM once every viewer streams (instance A).
    #[arg(long)]
    pub sigterm_pid: Option<u32>,
    /// Storm: seconds from the last viewer streaming to the SIGTERM.
    #[arg(long, default_value_t = 3.0)]
    pub sigterm_after: f64,
    /// Storm: the longest wait, from the SIGTERM, for every viewer to stream again (seconds).
    #[arg(long, default_value_t = 60.0)]
    pub storm_timeout: f64,
    /// Storm: seconds the viewers go on streaming after the last one is back, so that lost and
    /// repeated events after the reconnect are counted too.
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,
}

/// What the viewers share with the conductor.
struct Shared {
    /// Viewers whose first stream is open.
    streaming: AtomicUsize,
    /// Viewers streaming again after their stream on A ended.
    back: AtomicUsize,
    /// Set just before the SIGTERM: from then on, a stream that ends is the storm's.
    killed: AtomicBool,
    stop: CancellationToken,
}

/// What one viewer saw over the whole run.
#[derive(Debug, Default)]
struct Viewer {
    events: u64,
    lost: u64,
    repeated: u64,
    resets: u64,
    errors: u64,
    /// Requests that did not get a 200 (or no response at all), by status (0: no response).
    failed: BTreeMap<u16, u64>,
    /// When its stream on A ended, and when it streamed again.
    left: Option<Instant>,
    back: Option<Instant>,
}

/// Runs the storm and returns its summary.
pub async fn run(args: Args) -> Option<serde_json::Value> {
    let Some(pid) = args.storm.sigterm_pid else {
        eprintln!("--mode storm needs --sigterm-pid (instance A)");
        std::process::exit(2);
    };
    let shared = Arc::new(Shared {
        streaming: AtomicUsize::new(0),
        back: AtomicUsize::new(0),
        killed: AtomicBool::new(false),
        stop: CancellationToken::new(),
    });
    let args = Arc::new(args);
    let queues_at_start = listen_queue_counters();
    let start = Instant::now();
    let mut viewers = Vec::with_capacity(args.connections);
    for n in 0..args.connections {
        tokio::time::sleep_until((start + Duration::from_secs_f64(n as f64 / args.connect_rate)).into()).await;
        let (args, shared) = (Arc::clone(&args), Arc::clone(&shared));
        viewers.push(tokio::spawn(async move { viewer(&args, n, &shared).await }));
    }
    let all_streaming = wait_for(&shared.streaming, args.connections, Duration::from_secs(60)).await;
    if !all_streaming {
        eprintln!("only {} of {} viewers streaming", shared.streaming.load(Ordering::Relaxed), args.connections);
    }
    let streaming_before = shared.streaming.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(args.storm.sigterm_after)).await;

    let server = args.server_pid.map(Proc::new);
    let rss_before = server.as_ref().map(Proc::rss_kib);
    let queues_at_kill = listen_queue_counters();
    shared.killed.store(true, Ordering::SeqCst);
    let killed_at = Instant::now();
    let sent = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    if !sent.is_ok_and(|s| s.success()) {
        eprintln!("could not send SIGTERM to {pid}");
    }
    // Sample B while the viewers come back.
    let timeout = Duration::from_secs_f64(args.storm.storm_timeout);
    let mut samples = Vec::new();
    while shared.back.load(Ordering::Relaxed) < streaming_before && killed_at.elapsed() < timeout {
        if let Some(server) = &server {
            samples.push((killed_at.elapsed().as_secs_f64(), server.cpu_seconds(), server.rss_kib()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let settled_at = Instant::now() + Duration::from_secs_f64(args.storm.settle);
    while Instant::now() < settled_at {
        if let Some(server) = &server {
            samples.push((killed_at.elapsed().as_secs_f64(), server.cpu_seconds(), server.rss_kib()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    shared.stop.cancel();
    let mut seen = Vec::with_capacity(viewers.len());
    for viewer in viewers {
        seen.push(viewer.await.unwrap_or_default());
    }
    let queues_at_end = listen_queue_counters();
    let mut summary = summary(&seen, streaming_before, killed_at, rss_before, &samples);
    summary["documents"] = json!(args.documents);
    // The kernel counts every socket's; only this run's sockets are busy on a quiet machine.
    let delta = |a: [u64; 2], b: [u64; 2]| json!({"overflows": b[0] - a[0], "drops": b[1] - a[1]});
    summary["listen_queue"] = json!({
        "before_kill": delta(queues_at_start, queues_at_kill),
        "storm": delta(queues_at_kill, queues_at_end),
    });
    Some(summary)
}

/// The kernel's listen-queue counters, TcpExt `ListenOverflows` and `ListenDrops`.
fn listen_queue_counters() -> [u64; 2] {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut tcp_ext = netstat.lines().filter(|line| line.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (tcp_ext.next(), tcp_ext.next()) else { return [0, 0] };
    let value = |wanted: &str| {
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == wanted)
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(0)
    };
    [value("ListenOverflows"), value("ListenDrops")]
}

/// Waits until `counter` reaches `target` or `limit` passes; whether it did.
async fn wait_for(counter: &AtomicUsize, target: usize, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while counter.load(Ordering::Relaxed) < target {
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// One viewer, reconnecting like EventSource until the conductor stops it.
async fn viewer(args: &Args, n: usize, shared: &Shared) -> Viewer {
    let path = format!("/documents/{}.{}/progress", args.prefix, n % args.documents.max(1));
    let mut seen = Viewer::default();
    // EventSource's reconnection time until the server sets one.
    let mut retry = Duration::from_secs(3);
    let mut last_id: Option<u64> = None;
    let mut first = true;
    while !shared.stop.is_cancelled() {
        let mut headers = vec!["Accept: text/event-stream".to_owned()];
        headers.extend(args.token.as_ref().map(|t| format!("Authorization: Bearer {t}")));
        headers.extend(last_id.map(|id| format!("Last-Event-ID: {id}")));
        let opened = tokio::select! {
            opened = http1::get(args.target, source(args, n), &path, &headers) => opened,
            () = shared.stop.cancelled() => break,
        };
        match opened {
            Ok(opened) if opened.status == 200 => {
                if first {
                    first = false;
                    shared.streaming.fetch_add(1, Ordering::Relaxed);
                } else if seen.left.is_some() && seen.back.is_none() {
                    seen.back = Some(Instant::now());
                    shared.back.fetch_add(1, Ordering::Relaxed);
                }
                read(opened, &mut seen, &mut last_id, &mut retry, shared).await;
                if shared.killed.load(Ordering::SeqCst) && seen.left.is_none() {
                    seen.left = Some(Instant::now());
                }
            }
            Ok(opened) => *seen.failed.entry(opened.status).or_default() += 1,
            Err(_) => *seen.failed.entry(0).or_default() += 1,
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            () = shared.stop.cancelled() => break,
        }
    }
    seen
}

/// Reads one response to its end (or until stopped), counting events, lost and repeated ids.
async fn read(opened: Opened, seen: &mut Viewer, last_id: &mut Option<u64>, retry: &mut Duration, shared: &Shared) {
    let Opened { mut stream, body, .. } = opened;
    let (mut dechunk, mut decoder, mut sse) = (Dechunker::default(), Decoder::new(), Vec::new());
    let mut chunk = vec![0u8; 8192];
    let mut input = body;
    loop {
        dechunk.feed(&input, &mut sse);
        for frame in decoder.feed(&sse) {
            match frame {
                Frame::Retry(ms) => *retry = Duration::from_millis(ms),
                Frame::Event { event, .. } if event == "reset" => seen.resets += 1,
                Frame::Event { event, .. } if event == "error" => seen.errors += 1,
                Frame::Event { id, .. } => {
                    seen.events += 1;
                    let Some(id) = id.and_then(|id| id.parse::<u64>().ok()) else { continue };
                    match *last_id {
                        Some(last) if id <= last => seen.repeated += 1,
                        Some(last) => seen.lost += id - last - 1,
                        None => {}
                    }
                    *last_id = Some(last_id.map_or(id, |last| last.max(id)));
                }
                Frame::Comment(_) => {}
            }
        }
        sse.clear();
        if dechunk.finished() {
            return;
        }
        let read = tokio::select! {
            read = stream.read(&mut chunk) => read,
            () = shared.stop.cancelled() => return,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(read) => input = chunk[..read].to_vec(),
        }
    }
}

fn summary(
    seen: &[Viewer],
    streaming_before: usize,
    killed_at: Instant,
    rss_before: Option<u64>,
    samples: &[(f64, f64, u64)],
) -> serde_json::Value {
    let since_kill = |at: Instant| at.saturating_duration_since(killed_at).as_secs_f64();
    let mut back: Vec<f64> = seen.iter().filter_map(|v| v.back).map(since_kill).collect();
    back.sort_by(f64::total_cmp);
    let mut left: Vec<f64> = seen.iter().filter_map(|v| v.left).map(since_kill).collect();
    left.sort_by(f64::total_cmp);
    let mut gaps: Vec<f64> =
        seen.iter().filter_map(|v| Some(v.back?.saturating_duration_since(v.left?).as_secs_f64() * 1000.0)).collect();
    gaps.sort_by(f64::total_cmp);
    // The most reconnects answered within any one second, and within any 100 ms.
    let peak_in = |window: f64| {
        let mut peak = 0;
        let mut from = 0;
        for to in 0..back.len() {
            while back[to] - back[from] > window {
                from += 1;
            }
            peak = peak.max(to - from + 1);
        }
        peak
    };
    let (at_99, at_100) = if back.is_empty() {
        (None, None)
    } else {
        let needed_99 = (streaming_before as f64 * 0.99).ceil() as usize;
        (back.get(needed_99.max(1) - 1).copied(), (back.len() >= streaming_before).then(|| back[back.len() - 1]))
    };
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    for viewer in seen {
        for (status, count) in &viewer.failed {
            *failed.entry(status.to_string()).or_default() += count;
        }
    }
    // B's CPU: the mean from the SIGTERM to the last viewer back, and the busiest second.
    let busy_until = at_100.unwrap_or(f64::MAX);
    let storm: Vec<_> = samples.iter().filter(|s| s.0 <= busy_until + 0.25).collect();
    let mean_cores = match (storm.first(), storm.last()) {
        (Some(a), Some(b)) if b.0 > a.0 => Some((b.1 - a.1) / (b.0 - a.0)),
        _ => None,
    };
    let peak_cores = samples
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            let b = samples[i..].iter().find(|b| b.0 - a.0 >= 1.0)?;
            Some((b.1 - a.1) / (b.0 - a.0))
        })
        .fold(None, |peak: Option<f64>, c| Some(peak.map_or(c, |p| p.max(c))));
    let sum = |f: fn(&Viewer) -> u64| seen.iter().map(f).sum::<u64>();
    json!({
        "viewers": seen.len(),
        "streaming_before": streaming_before,
        "back": back.len(),
        "back_99_s": at_99,
        "back_100_s": at_100,
        "left_100_s": left.last(),
        "reconnect_gap_ms": {"p50": percentile(&gaps, 0.5), "p99": percentile(&gaps, 0.99), "max": percentile(&gaps, 1.0)},
        "peak_accepts_per_s": peak_in(1.0),
        "peak_accepts_per_100ms": peak_in(0.1),
        "events": sum(|v| v.events),
        "lost": sum(|v| v.lost),
        "repeated": sum(|v| v.repeated),
        "viewers_with_loss": seen.iter().filter(|v| v.lost > 0).count(),
        "viewers_with_repeats": seen.iter().filter(|v| v.repeated > 0).count(),
        "max_lost_per_viewer": seen.iter().map(|v| v.lost).max(),
        "max_repeated_per_viewer": seen.iter().map(|v| v.repeated).max(),
        "resets": sum(|v| v.resets),
        "errors": sum(|v| v.errors),
        "failed_requests": failed,
        "server_rss_kib": {"before": rss_before, "peak": samples.iter().map(|s| s.2).max()},
        "server_cores": {"mean": mean_cores, "peak_1s": peak_cores},
    })
}
