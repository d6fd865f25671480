//! The reconnect storm, CI-sized (issue 16; `scripts/bench storm` is the full size): the real
//! binaries, a simulator and instances A and B, behind Debian's nginx rendering the shipped
//! template with B as `backup`, so every viewer starts on A, as the viewers of the instance a
//! rolling deploy stops next do. SIGTERM to A: every viewer reconnects like EventSource (after
//! the jittered `retry:`, with `Last-Event-ID`) and the proxy sends it to B, which must serve
//! them all with one upstream call per document, losing and repeating nothing.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::header::HeaderValue;
use sse_bff::sse::Frame;
use tokio_util::sync::CancellationToken;

use crate::{
    helpers::{Binary, SECRET, SseReader, bearer, free_addr, token},
    nginx::{self, Setup},
};

const VIEWERS: usize = 500;
const DOCUMENTS: usize = 10;

/// What one viewer saw over the whole run.
#[derive(Debug, Default)]
struct Seen {
    events: u64,
    lost: u64,
    repeated: u64,
    /// `reset` and `error` events, and requests that did not get a 200.
    faults: Vec<String>,
    /// It streamed again after its stream on A ended, and events came after that.
    back: bool,
    events_after_back: u64,
}

/// The viewers' common state.
struct Storm {
    client: reqwest::Client,
    proxy: std::net::SocketAddr,
    token: String,
    streaming: AtomicUsize,
    back: AtomicUsize,
    stop: CancellationToken,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_reconnect_storm_every_viewer_moves_to_b_with_one_upstream_call_per_document() {
    let started = Instant::now();
    let sim_listen = free_addr().to_string();
    // Every steady job is mid-way at any time: 4 updates/s, so events flow while viewers move.
    let sim =
        Binary::start(&["upstream-sim", "--listen", &sim_listen, "--steady-rate", "4", "--retain", "64"], &[]).await;
    let flags = ["--jwt-secret", SECRET, "--retry", "2s", "--max-streams-per-user", "10000"];
    let a = Binary::serve(sim.addr, &flags, &[]).await;
    let b = Binary::serve(sim.addr, &flags, &[]).await;
    let proxy = nginx::start(Setup {
        replicas: [a.addr.to_string(), format!("{} backup", b.addr)],
        read_timeout: "60s",
        worker_connections: 4 * VIEWERS,
    })
    .await;
    let storm = Arc::new(Storm {
        client: reqwest::Client::new(),
        proxy: proxy.addr,
        token: token("alice", "acme"),
        streaming: AtomicUsize::new(0),
        back: AtomicUsize::new(0),
        stop: CancellationToken::new(),
    });
    let viewers: Vec<_> = (0..VIEWERS).map(|n| tokio::spawn(viewer(Arc::clone(&storm), n % DOCUMENTS))).collect();
    wait_for(&storm.streaming, VIEWERS, "every viewer streams from A").await;
    assert_eq!(upstream_calls(&storm.client, &b).await, 0, "B has served nobody yet");

    let (status, _) = a.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "A drains and exits cleanly: {status}");
    wait_for(&storm.back, VIEWERS, "every viewer streams again, from B").await;
    // Long enough for several events after the last reconnect.
    tokio::time::sleep(Duration::from_secs(1)).await;
    storm.stop.cancel();
    let mut seen = Vec::new();
    for viewer in viewers {
        seen.push(viewer.await.unwrap());
    }

    let faults: Vec<_> = seen.iter().flat_map(|s| &s.faults).collect();
    assert!(faults.is_empty(), "no reset, error or refused reconnect: {faults:?}");
    assert_eq!(seen.iter().map(|s| s.lost).sum::<u64>(), 0, "no event lost");
    assert_eq!(seen.iter().map(|s| s.repeated).sum::<u64>(), 0, "no event repeated");
    assert!(seen.iter().all(|s| s.back && s.events_after_back > 0), "events flow again for every viewer");
    assert!(seen.iter().map(|s| s.events).sum::<u64>() > (2 * VIEWERS) as u64);
    assert_eq!(
        upstream_calls(&storm.client, &b).await,
        DOCUMENTS as u64,
        "B coalesced the reconnects into one upstream call per document"
    );
    assert!(started.elapsed() < Duration::from_secs(45), "the storm took {:?}", started.elapsed());
}

/// A viewer of `steady.<document>` that reconnects like EventSource until stopped.
async fn viewer(storm: Arc<Storm>, document: usize) -> Seen {
    let url = format!("http://{}/documents/steady.{document}/progress", storm.proxy);
    let mut seen = Seen::default();
    let mut last: Option<u64> = None;
    let mut retry = Duration::from_secs(3);
    let mut first = true;
    while !storm.stop.is_cancelled() {
        let mut headers = bearer(&storm.token);
        if let Some(id) = last {
            headers.insert("last-event-id", HeaderValue::from(id));
        }
        let request = storm.client.get(&url).headers(headers).header("accept", "text/event-stream").send();
        let response = tokio::select! {
            response = request => response,
            () = storm.stop.cancelled() => break,
        };
        match response {
            Ok(response) if response.status() == 200 => {
                if first {
                    first = false;
                    storm.streaming.fetch_add(1, Ordering::SeqCst);
                } else if !seen.back {
                    seen.back = true;
                    storm.back.fetch_add(1, Ordering::SeqCst);
                }
                let mut reader = SseReader::new(response);
                loop {
                    let frame = tokio::select! {
                        frame = reader.next() => frame,
                        () = storm.stop.cancelled() => return seen,
                    };
                    match frame {
                        None => break,
                        Some(Frame::Retry(ms)) => retry = Duration::from_millis(ms),
                        Some(Frame::Comment(_)) => {}
                        Some(Frame::Event { event, .. }) if event == "reset" || event == "error" => {
                            seen.faults.push(event);
                        }
                        Some(Frame::Event { id, .. }) => {
                            let id: u64 = id.expect("updates have ids").parse().expect("numeric ids");
                            match last {
                                Some(last) if id <= last => seen.repeated += 1,
                                Some(last) => seen.lost += id - last - 1,
                                None => {}
                            }
                            last = Some(id);
                            seen.events += 1;
                            seen.events_after_back += u64::from(seen.back);
                        }
                    }
                }
            }
            Ok(response) => seen.faults.push(format!("status {}", response.status())),
            Err(error) => seen.faults.push(format!("request failed: {error}")),
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            () = storm.stop.cancelled() => break,
        }
    }
    seen
}

async fn wait_for(counter: &AtomicUsize, target: usize, what: &str) {
    let until = Instant::now() + Duration::from_secs(20);
    while counter.load(Ordering::SeqCst) < target {
        assert!(Instant::now() < until, "{what}: only {} of {target}", counter.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `sse_bff_upstream_calls_started_total` of an instance.
async fn upstream_calls(client: &reqwest::Client, instance: &Binary) -> u64 {
    let text = client.get(instance.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|line| line.starts_with("sse_bff_upstream_calls_started_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
