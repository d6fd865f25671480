//! A route's resource in cluster mode: opening it follows the resource's Redis stream after the
//! resume point; when Redis does not answer, it calls the upstream itself.

use std::sync::Arc;

use futures_util::{StreamExt as _, future::BoxFuture};
use tonic::Code;

use super::{Cluster, interest::Interest, keys};
use crate::{
    event::{EventKind, StreamEvent},
    hub::{HubSettings, ShareKey},
    routes::Retention,
    upstream::{Call, EventStream, ParamRejected, Resource, SharedResource, UpstreamError},
};

/// A route's resource shared through the cluster (see the module `cluster`).
#[derive(Debug)]
pub struct Clustered {
    inner: SharedResource,
    cluster: Arc<Cluster>,
    /// The hub's settings for the route, for the holder's upstream calls.
    settings: HubSettings,
}

impl Clustered {
    /// `inner`, shared through `cluster`; `settings` are the route's hub settings (its share
    /// scope decides the sharing key, as in the hub).
    pub fn new(inner: SharedResource, cluster: Arc<Cluster>, mut settings: HubSettings) -> Self {
        settings.replay = inner.replay().max(1);
        settings.retention = inner.retention();
        Self { inner, cluster, settings }
    }

    /// The Redis keys of the resource `call` asks for: the hub's sharing key, hashed.
    fn keys(&self, call: &Call) -> keys::Keys {
        keys::Keys::of(&ShareKey::new(self.inner.route(), call, self.settings.share_scope))
    }

    /// Follows the resource's stream after `after`: what Redis has, then what the reader
    /// receives. `Ok(None)` when the point was trimmed away.
    async fn follow(self: &Arc<Self>, call: &Call, after: u64) -> redis::RedisResult<Option<EventStream>> {
        let keys = self.keys(call);
        let numbered = self.inner.numbered_by_bff() && !self.inner.resumable();
        let floor_ttl = self.cluster.live_ttl(&self.settings);
        let opened = self.cluster.open(&keys, after, self.settings.replay, numbered, floor_ttl).await?;
        if after > 0 && opened.trimmed > after {
            return Ok(None);
        }
        // From the first event, but Redis no longer has the first ones: the hub's log must not
        // answer resume points that were trimmed away.
        let trimmed =
            (opened.trimmed > after).then(|| StreamEvent::new(opened.trimmed, EventKind::TRIMMED, b"{}", None));
        let interest = self.cluster.interest(&keys, &self.inner, call, &self.settings);
        let mut cursor = keys::EntryId(after, 0);
        let backlog = opened.backlog.ids;
        if let Some(newest) = backlog.last().and_then(|entry| keys::EntryId::parse(&entry.id)) {
            cursor = cursor.max(newest);
        }
        let mut batches = self.cluster.reader.follow(&keys.stream, cursor, self.cluster.redis());
        let resource = Arc::clone(self);
        let events = async_stream::stream! {
            let _interest: Interest = interest;
            let kind = |name: &str| kind_of(&resource.inner, name);
            if let Some(trimmed) = trimmed {
                yield Ok(trimmed);
            }
            let mut pending = backlog;
            loop {
                for entry in pending.drain(..) {
                    match keys::decode(&entry.id, &entry.map, &kind) {
                        Ok((_, keys::Entry::Event(event))) => {
                            let terminal = event.kind.is_terminal();
                            yield Ok(event);
                            if terminal {
                                return;
                            }
                        }
                        Ok((_, keys::Entry::Failed(error))) => {
                            yield Err(error);
                            return;
                        }
                        Err(reason) => {
                            yield Err(UpstreamError::new(Code::Internal, format!("cluster stream entry: {reason}")));
                            return;
                        }
                    }
                }
                match batches.recv().await {
                    Some(Ok(entries)) => pending = entries,
                    Some(Err(reason)) => {
                        yield Err(UpstreamError::new(Code::Unavailable, reason));
                        return;
                    }
                    // Dropped for falling behind, or the reader stopped: open again from here.
                    None => {
                        yield Err(UpstreamError::new(Code::Unavailable, "the cluster reader dropped this stream; resuming"));
                        return;
                    }
                }
            }
        };
        Ok(Some(Box::pin(events) as EventStream))
    }

    /// An upstream call of this instance's own (counted as one). With `rejoin`, it ends with a
    /// transient error once Redis answers again, so that the hub resumes through the cluster.
    async fn own_call(self: &Arc<Self>, call: Call, after: u64, rejoin: bool) -> Result<EventStream, UpstreamError> {
        let counted = self.cluster.metrics.upstream_started(self.inner.route());
        let mut events = match Arc::clone(&self.inner).open(call, after).await {
            Ok(events) => events,
            Err(error) => {
                counted.end(error.metric_label());
                return Err(error);
            }
        };
        let mut healthy = self.cluster.healthy.subscribe();
        let events = async_stream::stream! {
            let mut counted = Some(counted);
            loop {
                let item = tokio::select! {
                    item = events.next() => item,
                    () = answers_again(&mut healthy), if rejoin => {
                        if let Some(counted) = counted.take() {
                            counted.end("cancelled");
                        }
                        yield Err(UpstreamError::new(Code::Unavailable, "Redis answers again: rejoining the cluster"));
                        return;
                    }
                };
                match item {
                    Some(Ok(event)) => {
                        let terminal = event.kind.is_terminal();
                        if terminal && let Some(counted) = counted.take() {
                            counted.end("ok");
                        }
                        yield Ok(event);
                        if terminal {
                            return;
                        }
                    }
                    Some(Err(error)) => {
                        if let Some(counted) = counted.take() {
                            counted.end(error.metric_label());
                        }
                        yield Err(error);
                        return;
                    }
                    None => return,
                }
            }
        };
        Ok(Box::pin(events) as EventStream)
    }
}

/// Resolves when the cluster is healthy.
async fn answers_again(healthy: &mut tokio::sync::watch::Receiver<bool>) {
    if healthy.wait_for(|healthy| *healthy).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The kind of an event named `name` of `resource`: its own, or a failover's `reset`.
pub(super) fn kind_of(resource: &SharedResource, name: &str) -> Option<EventKind> {
    resource.kind(name).or_else(|| (name == EventKind::RESET.name()).then_some(EventKind::RESET))
}

impl Resource for Clustered {
    fn route(&self) -> &'static str {
        self.inner.route()
    }

    fn retention(&self) -> Retention {
        self.inner.retention()
    }

    fn replay(&self) -> usize {
        self.inner.replay()
    }

    /// Redis keeps the stream: any point it still has is served from it, on any instance.
    fn resumable(&self) -> bool {
        self.inner.resumable() || self.cluster.is_healthy()
    }

    fn check(&self, params: &[(String, String)]) -> Result<(), ParamRejected> {
        self.inner.check(params)
    }

    fn available(&self) -> Result<(), UpstreamError> {
        self.inner.available()
    }

    fn kind(&self, name: &str) -> Option<EventKind> {
        kind_of(&self.inner, name)
    }

    fn numbered_by_bff(&self) -> bool {
        self.inner.numbered_by_bff()
    }

    /// Opens count themselves: most read Redis, and only the fallback calls the upstream.
    fn calls_upstream(&self) -> bool {
        false
    }

    fn open(self: Arc<Self>, call: Call, resume_after: u64) -> BoxFuture<'static, Result<EventStream, UpstreamError>> {
        Box::pin(async move {
            if !self.cluster.is_healthy() {
                return self.own_call(call, resume_after, true).await;
            }
            match self.follow(&call, resume_after).await {
                Ok(Some(events)) => Ok(events),
                // Trimmed away: a route that can resume is asked from there (a call of its
                // own, as without a cluster); otherwise the viewer gets `reset`.
                Ok(None) if self.inner.resumable() => self.own_call(call, resume_after, false).await,
                Ok(None) => {
                    Err(UpstreamError::new(Code::OutOfRange, "the resume point is no longer in the cluster's stream"))
                }
                Err(error) => {
                    self.cluster.trouble(&error);
                    if self.cluster.is_healthy() {
                        return Err(UpstreamError::new(
                            Code::Unavailable,
                            format!("cluster: {}", super::describe(&error)),
                        ));
                    }
                    self.own_call(call, resume_after, true).await
                }
            }
        })
    }
}
