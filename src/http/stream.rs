//! One viewer's feed, independent of the wire format: events, heartbeats in silences, and an
//! orderly end on the terminal event, an upstream error, token expiry, the maximum lifetime or
//! shutdown. Each representation (SSE, NDJSON, WebSocket) only encodes what this yields.
//!
//! The feed owns the viewer's hub subscription: when the client goes away the server drops the body
//! and with it the subscription, and the last viewer leaving starts the upstream call's linger.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures_util::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;

use super::{ApiError, limits::StreamPermit};
use crate::{
    event::StreamEvent,
    flags::{count, parse_duration},
    hub::{Delivery, ViewerStream},
    metrics::OpenStream,
};

/// Stream timing shared by every representation.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Silence after which a heartbeat is sent.
    pub heartbeat: Duration,
    /// The `retry:` hint at the start of each SSE stream.
    pub retry: Duration,
    /// The longest a stream stays open, whatever the token's lifetime; the client then
    /// reconnects and resumes.
    pub max_lifetime: Duration,
    /// The most topics of one multiplexed stream (`/events`).
    pub max_topics: usize,
}

/// The stream timing flags of `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamConfig {
    /// Send a `: keep-alive` comment after this long without other output.
    #[arg(long, env = "SSE_BFF_HEARTBEAT", default_value = "15s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// The `retry:` reconnect hint sent at the start of every stream.
    #[arg(long, env = "SSE_BFF_RETRY", default_value = "3s", value_parser = parse_duration)]
    pub retry: Duration,
    /// The longest a stream stays open before the client is asked to reconnect, whatever the
    /// token's lifetime.
    #[arg(long, env = "SSE_BFF_MAX_STREAM_LIFETIME", default_value = "1h", value_parser = parse_duration)]
    pub max_stream_lifetime: Duration,
    /// The most topics of one multiplexed stream (`/events?topic=...`).
    #[arg(long, env = "SSE_BFF_MAX_TOPICS", default_value_t = 50, value_parser = count(1000))]
    pub max_topics: usize,
}

impl StreamConfig {
    /// The timing every stream is fed with.
    pub fn settings(&self) -> StreamSettings {
        StreamSettings {
            heartbeat: self.heartbeat,
            retry: self.retry,
            max_lifetime: self.max_stream_lifetime,
            max_topics: self.max_topics,
        }
    }
}

/// One viewer: its limits permit, when its credentials run out, and its metrics.
#[derive(Debug)]
pub struct Viewer {
    /// Released when the stream ends.
    pub permit: StreamPermit,
    /// The token's `exp` plus the leeway: the stream ends with `token_expired` by then.
    pub expires_at: Option<SystemTime>,
    /// Counts the stream and its events.
    pub metrics: OpenStream,
    /// When the request arrived.
    pub started: Instant,
}

/// What a representation writes next.
#[derive(Debug)]
pub enum Output {
    /// The requested resume point is gone: the client must drop what it had.
    Reset,
    /// An update.
    Event(Arc<StreamEvent>),
    /// Nothing else was sent for the heartbeat interval.
    Heartbeat,
    /// The last thing the stream carries.
    End(Ending),
}

/// Why a feed ended.
#[derive(Debug)]
pub enum Ending {
    /// The terminal event was the previous output.
    Terminal,
    /// An error the client should see.
    Error(ApiError),
    /// The client should reconnect (and resume) after this long: shutdown or maximum lifetime.
    Reconnect(Duration),
}

enum Next {
    Item(Option<Delivery>),
    Heartbeat,
    Shutdown,
    Deadline,
}

/// The feed of one viewer over its hub subscription.
pub fn feed(
    events: ViewerStream,
    reset: bool,
    settings: StreamSettings,
    shutdown: CancellationToken,
    viewer: Viewer,
) -> impl Stream<Item = Output> + Send + 'static {
    let span = tracing::Span::current();
    let until_expiry = viewer.expires_at.map(|exp| exp.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO));
    let token_ends_first = until_expiry.is_some_and(|left| left <= settings.max_lifetime);
    let until_deadline = until_expiry.map_or(settings.max_lifetime, |left| left.min(settings.max_lifetime));
    async_stream::stream! {
        let _permit = viewer.permit;
        let mut first = true;
        let mut events = events;
        let mut metrics = viewer.metrics;
        let deadline = tokio::time::sleep(until_deadline);
        let heartbeat = tokio::time::sleep(settings.heartbeat);
        // A child token of its own: polling it locks only this stream's node, where polling the
        // shared token would contend on one lock with every other stream, at every event.
        let shutdown = shutdown.child_token().cancelled_owned();
        tokio::pin!(deadline, heartbeat, shutdown);
        // The heartbeat timer is re-armed only when it fires (not after every event): it then
        // waits out whatever is left of the interval since the last output.
        let mut last_output = tokio::time::Instant::now();
        if reset {
            yield Output::Reset;
        }
        let deadline_at = deadline.deadline();
        let ending = loop {
            // Events come before the timers, so a busy stream polls no timer per event; the
            // deadline is then checked against the clock read for the event anyway.
            let next = tokio::select! {
                biased;
                () = &mut shutdown => Next::Shutdown,
                item = events.next() => Next::Item(item),
                () = &mut deadline => Next::Deadline,
                () = &mut heartbeat => Next::Heartbeat,
            };
            match next {
                Next::Item(Some(Delivery::Reset)) => {
                    last_output = tokio::time::Instant::now();
                    yield Output::Reset;
                }
                Next::Item(Some(Delivery::Event(event))) => {
                    let terminal = event.kind.is_terminal();
                    if std::mem::take(&mut first) {
                        metrics.first_event(viewer.started.elapsed());
                    }
                    metrics.event_sent(event.emitted_at);
                    last_output = tokio::time::Instant::now();
                    yield Output::Event(event);
                    if terminal {
                        break Ending::Terminal;
                    }
                    if last_output >= deadline_at {
                        break deadline_ending(token_ends_first, &settings);
                    }
                }
                Next::Item(Some(Delivery::Failed(error))) => break Ending::Error(ApiError::Upstream(error)),
                // A multiplexed stream whose every topic has ended.
                Next::Item(None) => break Ending::Terminal,
                Next::Heartbeat => {
                    let due = last_output + settings.heartbeat;
                    if tokio::time::Instant::now() >= due {
                        last_output = tokio::time::Instant::now();
                        heartbeat.as_mut().reset(last_output + settings.heartbeat);
                        yield Output::Heartbeat;
                    } else {
                        heartbeat.as_mut().reset(due);
                    }
                }
                // Spread reconnects out, so that a fleet of viewers does not come back at once.
                Next::Shutdown => break Ending::Reconnect(settings.retry.mul_f64(0.5 + fastrand::f64())),
                Next::Deadline => break deadline_ending(token_ends_first, &settings),
            }
        };
        tracing::info!(parent: &span, ending = ending.label(), "stream ended");
        yield Output::End(ending);
    }
}

/// The end at the stream's deadline: the token expired, or the maximum lifetime was reached.
fn deadline_ending(token_expired: bool, settings: &StreamSettings) -> Ending {
    if token_expired { Ending::Error(ApiError::TokenExpired) } else { Ending::Reconnect(settings.retry) }
}

impl Ending {
    fn label(&self) -> &'static str {
        match self {
            Self::Terminal => "terminal",
            Self::Error(error) => error.code(),
            Self::Reconnect(_) => "reconnect",
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{
        http::StreamLimits,
        metrics::{Metrics, Transport},
    };

    /// Every open stream holds its feed for its whole life: this is most of the idle figure
    /// (4.1 KB per stream), so an undone optimisation fails here, not in a benchmark.
    #[test]
    fn a_feed_stays_small() {
        let limits = StreamLimits::new(1, 1);
        let metrics = Arc::new(Metrics::default()).stream_opened("/t", Transport::Sse);
        let viewer =
            Viewer { permit: limits.acquire(None).unwrap(), expires_at: None, metrics, started: Instant::now() };
        let settings = StreamSettings {
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(3),
            max_lifetime: Duration::from_secs(3600),
            max_topics: 1,
        };
        let events = ViewerStream::from_stream(futures_util::stream::empty());
        let feed = feed(events, false, settings, CancellationToken::new(), viewer);
        let size = std::mem::size_of_val(&feed);
        assert!(size <= FEED_BUDGET, "the feed future is {size} bytes");
    }

    /// 792 bytes when this was written (a timer or buffer kept inline would add kilobytes).
    const FEED_BUDGET: usize = 1024;
}
