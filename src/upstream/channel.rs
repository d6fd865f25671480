//! The tonic `Channel` toward the upstream service: timeouts, keep-alive and balancing.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

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
    /// HTTP/2 PING interval; kept above common server minimums (grpc-go allows 5 min idle by
    /// default but permits pings while streams are open).
    pub keepalive_interval: Duration,
    /// How long to wait for a PING acknowledgement before the connection counts as broken.
    pub keepalive_timeout: Duration,
}

impl UpstreamChannel {
    /// Builds a lazily connecting channel: the BFF starts even when the upstream is down, and
    /// calls fail with UNAVAILABLE until it is up.
    pub fn connect_lazy(&self) -> Result<Channel, ChannelError> {
        let endpoints = self.urls.iter().map(|url| self.endpoint(url)).collect::<Result<Vec<_>, _>>()?;
        match endpoints.len() {
            0 => Err(ChannelError::NoEndpoint),
            1 => Ok(endpoints.into_iter().next().map(|e| e.connect_lazy()).ok_or(ChannelError::NoEndpoint)?),
            _ => Ok(Channel::balance_list(endpoints.into_iter())),
        }
    }

    fn endpoint(&self, url: &str) -> Result<Endpoint, ChannelError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|source| ChannelError::BadUrl { url: url.to_owned(), source })?;
        Ok(endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(true)
            // Many small messages per stream: a generous window keeps the server from stalling
            // on flow control when a viewer reads slowly.
            .initial_stream_window_size(Some(1 << 20))
            .initial_connection_window_size(Some(8 << 20)))
    }
}
