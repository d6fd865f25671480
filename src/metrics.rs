//! Prometheus metrics, registered in a registry owned by the app (no global recorder), and
//! served at `GET /metrics` in the OpenMetrics text format.
//!
//! Label values come from small fixed sets (transport, gRPC code, auth failure reason): never a
//! document id or a user, so the number of series stays bounded.

use std::time::{Duration, SystemTime};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// How a viewer receives events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `text/event-stream`.
    Sse,
    /// `application/x-ndjson`.
    Ndjson,
    /// `application/json` long-poll.
    LongPoll,
    /// WebSocket.
    WebSocket,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Self::Sse => "sse",
            Self::Ndjson => "ndjson",
            Self::LongPoll => "long_poll",
            Self::WebSocket => "websocket",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Stream {
    route: &'static str,
    transport: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Route {
    route: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Code {
    route: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Outcome {
    route: &'static str,
    outcome: &'static str,
}

/// Every metric of the service.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    open_streams: Family<Stream, Gauge>,
    events_sent: Family<Stream, Counter>,
    upstream_started: Family<Route, Counter>,
    upstream_active: Family<Route, Gauge>,
    upstream_ended: Family<Code, Counter>,
    shared_viewers: Family<Route, Gauge>,
    replay: Family<Outcome, Counter>,
    auth_failures: Family<Reason, Counter>,
    delivery_lag: Histogram,
    first_event: Histogram,
    cluster_degraded: Gauge,
    cluster_leases: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sse_bff");
        let open_streams = Family::<Stream, Gauge>::default();
        registry.register("open_streams", "Open event streams by route and transport", open_streams.clone());
        let events_sent = Family::<Stream, Counter>::default();
        registry.register("events_sent", "Events written to viewers", events_sent.clone());
        let upstream_started = Family::<Route, Counter>::default();
        registry.register(
            "upstream_calls_started",
            "Upstream calls started (including resumes)",
            upstream_started.clone(),
        );
        let upstream_active = Family::<Route, Gauge>::default();
        registry.register("upstream_calls_active", "Upstream calls streaming now", upstream_active.clone());
        let upstream_ended = Family::<Code, Counter>::default();
        registry.register("upstream_calls_ended", "Upstream calls ended, by final gRPC code", upstream_ended.clone());
        let shared_viewers = Family::<Route, Gauge>::default();
        registry.register("shared_viewers", "Viewers attached to shared upstream calls", shared_viewers.clone());
        let replay = Family::<Outcome, Counter>::default();
        registry.register("replay", "Resumes answered from the replay log (hit) or not (miss)", replay.clone());
        let auth_failures = Family::<Reason, Counter>::default();
        registry.register("auth_failures", "Rejected requests by authentication failure reason", auth_failures.clone());
        let delivery_lag = Histogram::new(latency_buckets());
        registry.register(
            "delivery_lag_seconds",
            "Time from the upstream's emitted_at to the event being handed to the socket (sampled: one delivery in 16 per stream)",
            delivery_lag.clone(),
        );
        let first_event = Histogram::new(latency_buckets());
        registry.register("time_to_first_event_seconds", "Time from request to the first event", first_event.clone());
        let cluster_degraded = Gauge::default();
        registry.register(
            "cluster_degraded",
            "1 while cluster mode (--redis) cannot reach Redis and every instance calls the upstream itself; else 0",
            cluster_degraded.clone(),
        );
        let cluster_leases = Gauge::default();
        registry.register(
            "cluster_leases_held",
            "Resources whose lease this instance holds: it calls their upstream for the whole cluster",
            cluster_leases.clone(),
        );
        Self {
            registry,
            open_streams,
            events_sent,
            upstream_started,
            upstream_active,
            upstream_ended,
            shared_viewers,
            replay,
            auth_failures,
            delivery_lag,
            first_event,
            cluster_degraded,
            cluster_leases,
        }
    }
}

/// 0.5 ms to about 16 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16)
}

impl Metrics {
    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Cluster mode is degraded (Redis does not answer), or no longer.
    pub fn cluster_degraded(&self, degraded: bool) {
        self.cluster_degraded.set(i64::from(degraded));
    }

    /// This instance took (`1`) or let go of (`-1`) a resource's lease.
    pub fn cluster_leases(&self, change: i64) {
        self.cluster_leases.inc_by(change);
    }

    /// A stream opened; the returned guard closes it in the gauge when dropped.
    pub fn stream_opened(self: &std::sync::Arc<Self>, route: &'static str, transport: Transport) -> OpenStream {
        let labels = Stream { route, transport: transport.label() };
        let open = self.open_streams.get_or_create(&labels).clone();
        open.inc();
        // The handles are resolved once per stream, not once per event.
        let sent = self.events_sent.get_or_create(&labels).clone();
        OpenStream { metrics: std::sync::Arc::clone(self), open, sent, delivered: 0 }
    }

    /// An upstream call of `route` was started; it counts as active until the returned guard
    /// is ended or dropped.
    pub fn upstream_started(self: &std::sync::Arc<Self>, route: &'static str) -> UpstreamCall {
        self.upstream_started.get_or_create(&Route { route }).inc();
        let active = self.upstream_active.get_or_create(&Route { route }).clone();
        active.inc();
        UpstreamCall { metrics: Some(std::sync::Arc::clone(self)), route, active }
    }

    /// The gauge of viewers attached to shared calls of `route`, resolved once per shared
    /// call; each viewer's guard increments it and decrements it when the viewer leaves.
    pub fn shared_viewers(&self, route: &'static str) -> Gauge {
        self.shared_viewers.get_or_create(&Route { route }).clone()
    }

    /// A resume of `route` was served from the replay log.
    pub fn replay_hit(&self, route: &'static str) {
        self.replay.get_or_create(&Outcome { route, outcome: "hit" }).inc();
    }

    /// A resume of `route` needed an upstream call of its own, or a reset.
    pub fn replay_miss(&self, route: &'static str) {
        self.replay.get_or_create(&Outcome { route, outcome: "miss" }).inc();
    }

    /// One sample of the delivery lag of an event emitted at `emitted_at`, taken now: by a
    /// stream for one delivery in 16.
    pub fn delivery_lag(&self, emitted_at: Option<SystemTime>) {
        if let Some(lag) = emitted_at.and_then(|at| SystemTime::now().duration_since(at).ok()) {
            self.delivery_lag.observe(lag.as_secs_f64());
        }
    }

    /// A request failed authentication.
    pub fn auth_failed(&self, reason: &'static str) {
        self.auth_failures.get_or_create(&Reason { reason }).inc();
    }
}

/// An upstream call in flight. [`UpstreamCall::end`] records how it ended; a call dropped
/// without it (the linger passed, shutdown, its viewer left) ends as `cancelled`, so that the
/// active gauge falls on every path.
#[derive(Debug)]
pub struct UpstreamCall {
    metrics: Option<std::sync::Arc<Metrics>>,
    route: &'static str,
    active: Gauge,
}

impl UpstreamCall {
    /// The call ended with this gRPC code name (`ok` for a stream that reached its end).
    pub fn end(mut self, code: &'static str) {
        self.record(code);
    }

    fn record(&mut self, code: &'static str) {
        if let Some(metrics) = self.metrics.take() {
            self.active.dec();
            metrics.upstream_ended.get_or_create(&Code { route: self.route, code }).inc();
        }
    }
}

impl Drop for UpstreamCall {
    fn drop(&mut self) {
        self.record("cancelled");
    }
}

/// An open stream, counted until dropped.
#[derive(Debug)]
pub struct OpenStream {
    metrics: std::sync::Arc<Metrics>,
    open: Gauge,
    sent: Counter,
    /// Deliveries of this stream so far, for sampling.
    delivered: u64,
}

/// One delivery in this many goes into the lag histogram: observing takes a lock shared by every
/// stream, and a sample describes the distribution as well.
const LAG_SAMPLE_EVERY: u64 = 16;

impl OpenStream {
    /// An event was handed to the socket.
    pub fn event_sent(&mut self, emitted_at: Option<SystemTime>) {
        self.sent.inc();
        self.delivered += 1;
        // The first delivery of every stream is sampled, then one in LAG_SAMPLE_EVERY.
        if !(self.delivered - 1).is_multiple_of(LAG_SAMPLE_EVERY) {
            return;
        }
        self.metrics.delivery_lag(emitted_at);
    }

    /// The stream's first event went out `after` the request arrived.
    pub fn first_event(&self, after: Duration) {
        self.metrics.first_event.observe(after.as_secs_f64());
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.open.dec();
    }
}
