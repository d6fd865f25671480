//! Connections to the upstream service: a pool of HTTP/2 connections over one or more
//! endpoints, with connect timeout and keep-alive.
//!
//! One HTTP/2 connection carries a bounded number of concurrent streams (servers commonly allow
//! 100 to 200, and queue the rest), so thousands of watched documents need several connections.
//! The pool leases the least busy connection and opens another, round-robin over the endpoints,
//! once every connection carries `streams_per_connection` calls.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tonic::transport::{Channel, Endpoint};

use crate::flags::{count, parse_duration};

/// Why the upstream endpoints could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// No `--upstream` was given.
    #[error("no upstream endpoint configured (set --upstream or SSE_BFF_UPSTREAM)")]
    NoEndpoint,
    /// An endpoint URL did not parse.
    #[error("upstream {url:?} is not a valid URL (expected e.g. http://127.0.0.1:50051): {source}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What tonic said about it.
        source: tonic::transport::Error,
    },
}

/// Connection settings shared by every upstream endpoint.
#[derive(Debug, Clone)]
pub struct UpstreamChannel {
    /// Endpoint URLs, e.g. `http://127.0.0.1:50051`.
    pub urls: Vec<String>,
    /// How long establishing a connection may take.
    pub connect_timeout: Duration,
    /// HTTP/2 PING interval while calls are open. Servers commonly refuse pings more often than
    /// every 5 minutes (grpc-go's default), so keep it at or above theirs.
    pub keepalive_interval: Duration,
    /// How long to wait for a PING acknowledgement before the connection counts as broken.
    pub keepalive_timeout: Duration,
    /// Calls per connection before the pool opens another one.
    pub streams_per_connection: usize,
    /// The most connections the pool opens.
    pub max_connections: usize,
}

/// The upstream flags of `serve`: its connections, and the bounds of every call.
#[derive(Debug, Clone, clap::Args)]
pub struct UpstreamConfig {
    /// Timeout for establishing an upstream connection.
    #[arg(long, env = "SSE_BFF_UPSTREAM_CONNECT_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub upstream_connect_timeout: Duration,
    /// HTTP/2 keep-alive PING interval toward the upstream. Servers commonly reject pings more
    /// often than every 5 minutes (grpc-go's default), so the default stays at that limit.
    #[arg(long, env = "SSE_BFF_UPSTREAM_KEEPALIVE", default_value = "5m", value_parser = parse_duration)]
    pub upstream_keepalive: Duration,
    /// Concurrent calls per upstream HTTP/2 connection before another connection is opened
    /// (servers commonly allow 100 to 200 and queue the rest).
    #[arg(long, env = "SSE_BFF_UPSTREAM_STREAMS_PER_CONNECTION", default_value_t = 100, value_parser = count(10_000))]
    pub upstream_streams_per_connection: usize,
    /// The most upstream connections (over all endpoints).
    #[arg(long, env = "SSE_BFF_UPSTREAM_MAX_CONNECTIONS", default_value_t = 256, value_parser = count(10_000))]
    pub upstream_max_connections: usize,
    /// The gRPC deadline of each upstream call; a call that reaches it after delivering
    /// updates is resumed, one that delivered nothing answers 504.
    #[arg(long, env = "SSE_BFF_UPSTREAM_DEADLINE", default_value = "1h", value_parser = parse_duration)]
    pub upstream_deadline: Duration,
    /// The largest upstream message accepted, in bytes. A larger one ends the call as the
    /// upstream's fault: 502 `bad_gateway`, not retryable.
    #[arg(long, env = "SSE_BFF_MAX_UPSTREAM_MESSAGE_BYTES", default_value_t = 4 << 20, value_parser = count(1 << 30))]
    pub max_upstream_message_bytes: usize,
}

/// How long a keep-alive PING may go unacknowledged before the connection counts as broken
/// (tonic's own default; not a flag).
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

impl UpstreamConfig {
    /// The connection settings for one upstream's endpoint `urls`.
    pub fn channel(&self, urls: Vec<String>) -> UpstreamChannel {
        UpstreamChannel {
            urls,
            connect_timeout: self.upstream_connect_timeout,
            keepalive_interval: self.upstream_keepalive,
            keepalive_timeout: KEEPALIVE_TIMEOUT,
            streams_per_connection: self.upstream_streams_per_connection,
            max_connections: self.upstream_max_connections,
        }
    }
}

/// Lazily connected HTTP/2 connections to the upstream endpoints.
#[derive(Debug)]
pub struct UpstreamPool {
    endpoints: Vec<Endpoint>,
    connections: Mutex<Vec<Connection>>,
    streams_per_connection: usize,
    max_connections: usize,
}

#[derive(Debug)]
struct Connection {
    channel: Channel,
    active: Arc<AtomicUsize>,
}

/// A connection leased for one call; the call count drops when the lease does.
#[derive(Debug)]
pub struct Lease {
    /// The connection to call on.
    pub channel: Channel,
    active: Arc<AtomicUsize>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl UpstreamChannel {
    /// Builds the pool. Nothing connects yet: the BFF starts even when the upstream is down,
    /// and calls fail with UNAVAILABLE until it is up.
    pub fn pool(&self) -> Result<UpstreamPool, ChannelError> {
        let endpoints = self.endpoints()?;
        Ok(UpstreamPool {
            endpoints,
            connections: Mutex::new(Vec::new()),
            streams_per_connection: self.streams_per_connection.max(1),
            max_connections: self.max_connections.max(1),
        })
    }

    /// One more channel over every endpoint, for health checks.
    pub fn health_channel(&self) -> Result<Channel, ChannelError> {
        let endpoints = self.endpoints()?;
        Ok(Channel::balance_list(endpoints.into_iter()))
    }

    fn endpoints(&self) -> Result<Vec<Endpoint>, ChannelError> {
        if self.urls.is_empty() {
            return Err(ChannelError::NoEndpoint);
        }
        self.urls.iter().map(|url| self.endpoint(url)).collect()
    }

    fn endpoint(&self, url: &str) -> Result<Endpoint, ChannelError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|source| ChannelError::BadUrl { url: url.to_owned(), source })?;
        Ok(endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            // Many small messages per stream: a generous window keeps the server from stalling
            // on flow control when the BFF is busy for a moment.
            .initial_stream_window_size(Some(1 << 20))
            .initial_connection_window_size(Some(16 << 20)))
    }
}

impl UpstreamPool {
    /// The least busy connection, opening a new one when all of them are full.
    pub fn lease(&self) -> Lease {
        let mut connections = self.connections.lock().unwrap_or_else(PoisonError::into_inner);
        let least_busy =
            connections.iter().map(|c| c.active.load(Ordering::Relaxed)).enumerate().min_by_key(|(_, active)| *active);
        let index = match least_busy {
            Some((index, active))
                if active < self.streams_per_connection || connections.len() >= self.max_connections =>
            {
                index
            }
            // Every connection is full (or there is none yet): open one more, round-robin over
            // the endpoints (there is always at least one).
            _ => {
                let endpoint = &self.endpoints[connections.len() % self.endpoints.len()];
                connections
                    .push(Connection { channel: endpoint.connect_lazy(), active: Arc::new(AtomicUsize::new(0)) });
                connections.len() - 1
            }
        };
        let connection = &connections[index];
        connection.active.fetch_add(1, Ordering::Relaxed);
        Lease { channel: connection.channel.clone(), active: Arc::clone(&connection.active) }
    }
}
