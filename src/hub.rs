//! Where every viewer's event stream comes from.
//!
//! Today each subscription opens its own upstream call; this is the one place that a shared hub
//! (one upstream call fanned out to many viewers, with a replay log) takes over, so the
//! transports never open upstream calls themselves.

use std::time::Duration;

use futures_util::StreamExt as _;

use crate::upstream::{Call, EventStream, SharedResource, UpstreamError};

/// Opens event streams of one resource for viewers.
#[derive(Debug, Clone)]
pub struct Hub {
    resource: SharedResource,
    first_event_wait: Duration,
}

impl Hub {
    /// A hub for `resource`. Subscribing waits up to `first_event_wait` for the first upstream
    /// message, so that an error the upstream sends at once becomes an HTTP status.
    pub fn new(resource: SharedResource, first_event_wait: Duration) -> Self {
        Self { resource, first_event_wait }
    }

    /// The route of the resource this hub serves.
    pub fn route(&self) -> &'static str {
        self.resource.route()
    }

    /// Opens a stream for one viewer. Errors are those known before anything was sent to the
    /// viewer; later ones arrive inside the stream.
    pub async fn subscribe(&self, call: Call) -> Result<EventStream, UpstreamError> {
        let mut upstream = self.resource.open(call).await?;
        match tokio::time::timeout(self.first_event_wait, upstream.next()).await {
            Ok(Some(Err(error))) => Err(error),
            Ok(Some(Ok(first))) => Ok(Box::pin(futures_util::stream::iter([Ok(first)]).chain(upstream))),
            // The upstream ended without a message, or is slow to send one: let the stream
            // itself report what happens next.
            Ok(None) => Ok(Box::pin(futures_util::stream::empty())),
            Err(_elapsed) => Ok(upstream),
        }
    }
}
