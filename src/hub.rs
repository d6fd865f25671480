//! The hub: one upstream call per shared resource, fanned out to every viewer, with a bounded
//! replay log.
//!
//! Viewers of the same [`ShareKey`] share one [`shared::SharedCall`], whose driver task owns the
//! upstream call: it resumes after transient failures, lingers when the last viewer leaves, and
//! keeps a finished resource's log for late reconnects. Each viewer reads the log and a
//! broadcast of live events; one that falls behind skips to the latest update (progress is
//! state), and the terminal event is never skipped. Every viewer's events are written by its
//! connection's own task: the hub never touches a socket.

mod shared;
#[cfg(test)]
mod tests;
mod viewer;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

pub use viewer::{Delivery, ViewerStream};

use self::shared::SharedCall;
use crate::{
    metrics::Metrics,
    routes::Retention,
    upstream::{Call, SharedResource, UpstreamError},
};

/// Events a private call (a resume older than the log) holds for its one viewer: the upstream
/// replays everything after the resume point at once.
const PRIVATE_BURST: usize = 1024;

/// Who may share an upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShareScope {
    /// Only the same user (the default): the upstream authorised exactly this caller.
    User,
    /// Everyone of the same tenant (opt-in: the upstream must authorise per tenant).
    Tenant,
}

/// Timing and bounds of the hub.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// How long a subscription waits for the upstream's first message before answering.
    pub first_event_wait: Duration,
    /// How long an upstream call outlives its last viewer.
    pub linger: Duration,
    /// How long a finished resource's log answers reconnects.
    pub keep_finished: Duration,
    /// Events kept per resource for resuming viewers (the route's `replay`).
    pub replay: usize,
    /// What a viewer that falls behind gets (the route's `retention`).
    pub retention: Retention,
    /// Events a viewer may fall behind before it is conflated to the latest.
    pub viewer_lag: usize,
    /// How long transient upstream failures are retried before viewers see an error.
    pub retry_budget: Duration,
    /// An upstream call that sends nothing for this long counts as broken and is resumed.
    pub idle_timeout: Duration,
    /// Who shares an upstream call.
    pub share_scope: ShareScope,
    /// Where the hub reports upstream calls, viewers and replays.
    pub metrics: Arc<Metrics>,
}

/// What identifies a shared upstream call. It always holds the route, the resource and the
/// tenant, and the user unless sharing across the tenant was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShareKey {
    pub(crate) route: &'static str,
    /// The route's path parameters: which resource.
    pub(crate) params: Arc<[(String, String)]>,
    pub(crate) tenant: Option<String>,
    /// `None` unless the scope is [`ShareScope::User`].
    pub(crate) user: Option<String>,
}

impl ShareKey {
    /// The key of the resource `call` asks for on `route`: the user is part of it only with
    /// [`ShareScope::User`].
    pub(crate) fn new(route: &'static str, call: &Call, scope: ShareScope) -> Self {
        let user = match scope {
            ShareScope::User => call.identity.user_id.clone(),
            ShareScope::Tenant => None,
        };
        Self { route, params: Arc::clone(&call.params), tenant: call.identity.tenant_id.clone(), user }
    }
}

/// The outcome of a subscription.
pub enum Subscription {
    /// The viewer already has the terminal event, `last`: nothing more will come (HTTP 204).
    Finished {
        /// The terminal event's sequence.
        last: u64,
    },
    /// Events to deliver; `reset` when the requested resume point could not be replayed and
    /// the stream restarts from the current state.
    Live {
        /// The requested point is gone; the client must discard what it had.
        reset: bool,
        /// The events.
        events: ViewerStream,
    },
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Finished { last } => f.debug_struct("Finished").field("last", last).finish(),
            Self::Live { reset, .. } => f.debug_struct("Live").field("reset", reset).finish_non_exhaustive(),
        }
    }
}

/// Shares upstream calls of one resource among viewers.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    resource: SharedResource,
    settings: HubSettings,
    entries: Mutex<HashMap<ShareKey, Arc<SharedCall>>>,
    shutdown: CancellationToken,
}

impl Hub {
    /// A hub for `resource`; every upstream call ends when `shutdown` is cancelled. The
    /// resource's own replay size and retention replace those of `settings`.
    pub fn new(resource: SharedResource, mut settings: HubSettings, shutdown: CancellationToken) -> Self {
        settings.replay = resource.replay().max(1);
        settings.retention = resource.retention();
        Self { inner: Arc::new(Inner { resource, settings, entries: Mutex::new(HashMap::new()), shutdown }) }
    }

    /// The route of the resource this hub serves.
    pub fn route(&self) -> &'static str {
        self.inner.resource.route()
    }

    /// The resource this hub serves, for the handler's checks at the edge.
    pub fn resource(&self) -> &SharedResource {
        &self.inner.resource
    }

    /// Subscribes a viewer to the resource of `call.params`, resuming after `resume` when given (else starting
    /// with the latest update). Errors are those known before anything was sent. With a
    pub async fn subscribe(&self, call: Call, resume: Option<u64>) -> Result<Subscription, UpstreamError> {
        self.inner.resource.available()?;
        let key = self.key(&call);
        loop {
            let shared = self.shared(&key, &call);
            match shared.attach(resume, &self.inner.settings, None).await {
                shared::Attach::Ready(subscription) => {
                    if resume.is_some() {
                        self.inner.settings.metrics.replay_hit(self.route());
                    }
                    return Ok(subscription);
                }
                shared::Attach::Failed(error) => return Err(error),
                // The call ended while we attached (it was being removed): start a new one.
                shared::Attach::Gone => continue,
                // Without a resume field, the BFF's log was the only way back: start over.
                shared::Attach::NeedsPrivateCall(_) if !self.inner.resource.resumable() => {
                    self.inner.settings.metrics.replay_miss(self.route());
                    return Ok(reset(Box::pin(self.subscribe(call, None)).await?));
                }
                shared::Attach::NeedsPrivateCall(after) => {
                    self.inner.settings.metrics.replay_miss(self.route());
                    return self.private(call, after).await;
                }
            }
        }
    }

    fn key(&self, call: &Call) -> ShareKey {
        ShareKey::new(self.route(), call, self.inner.settings.share_scope)
    }

    /// The shared call for `key`, started on first use.
    fn shared(&self, key: &ShareKey, call: &Call) -> Arc<SharedCall> {
        let mut entries = self.lock();
        if let Some(shared) = entries.get(key) {
            return Arc::clone(shared);
        }
        // A shared call starts from the upstream's first event, so that its log can answer any
        // resume point into it.
        let (shared, _) = SharedCall::start(
            Arc::clone(&self.inner.resource),
            call.clone(),
            0,
            self.inner.settings.clone(),
            self.inner.shutdown.child_token(),
            self.remover(key.clone()),
        );
        entries.insert(key.clone(), Arc::clone(&shared));
        shared
    }

    /// How the driver leaves the map: under the map's lock, it asks `decide` whether the call
    /// is over (for a lingering call: no viewer attached meanwhile, and it marks itself
    /// cancelled), and only then removes it. A subscriber therefore either finds the call in
    /// the map and attaches before it ends, or does not find it and starts a new one.
    fn remover(
        &self,
        key: ShareKey,
    ) -> impl Fn(&Arc<SharedCall>, &mut dyn FnMut() -> bool) -> bool + Send + Sync + 'static {
        let inner = Arc::downgrade(&self.inner);
        move |shared, decide| {
            let Some(inner) = inner.upgrade() else { return decide() };
            let mut entries = inner.entries.lock().unwrap_or_else(PoisonError::into_inner);
            if !decide() {
                return false;
            }
            if entries.get(&key).is_some_and(|current| Arc::ptr_eq(current, shared)) {
                entries.remove(&key);
            }
            true
        }
    }

    /// A viewer whose resume point is older than the shared log gets its own upstream call
    /// from that point; if the upstream no longer has it either, the stream is reset and joins
    /// the shared call at its latest update.
    async fn private(&self, call: Call, after: u64) -> Result<Subscription, UpstreamError> {
        let inner = &self.inner;
        // Not in the map: nobody else attaches, and it ends when its viewer leaves. Its one
        // viewer takes the upstream's replay from `after` at once: room for the whole burst
        // (a resume must lose nothing), not just for a slow viewer's lag.
        let settings =
            HubSettings { viewer_lag: inner.settings.viewer_lag.max(PRIVATE_BURST), ..inner.settings.clone() };
        let (private, from_start) = SharedCall::start(
            Arc::clone(&inner.resource),
            call.clone(),
            after,
            settings,
            inner.shutdown.child_token(),
            |_: &Arc<SharedCall>, decide: &mut dyn FnMut() -> bool| decide(),
        );
        match private.attach(Some(after), &inner.settings, Some(from_start)).await {
            shared::Attach::Ready(subscription) => Ok(subscription),
            shared::Attach::Failed(error) if error.code == tonic::Code::OutOfRange => {
                Ok(reset(Box::pin(self.subscribe(call, None)).await?))
            }
            shared::Attach::Failed(error) => Err(error),
            shared::Attach::Gone | shared::Attach::NeedsPrivateCall(_) => Err(UpstreamError::ended_early()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ShareKey, Arc<SharedCall>>> {
        self.inner.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An upstream call of its own for a reader that is not a viewer: the cluster's lease holder,
/// which appends what the call delivers to Redis. It asks for the events after `after`, with
/// the retries, idle timeout, backoff and metrics of a shared call, and its stream yields every
/// event from the first one the upstream sends (never the backlog of a log), then the end as
/// [`Delivery::Failed`] or the terminal event. Failures being retried are not reported: the
/// stream waits through them. The call ends when `cancel` is cancelled (or `settings.linger`
/// after the stream is dropped).
pub(crate) fn dedicated(
    resource: SharedResource,
    call: Call,
    after: u64,
    settings: HubSettings,
    cancel: CancellationToken,
) -> ViewerStream {
    let leave = |_: &Arc<SharedCall>, decide: &mut dyn FnMut() -> bool| decide();
    // Its one reader may wait on Redis now and then: room for bursts before it falls behind.
    let settings = HubSettings { viewer_lag: settings.viewer_lag.max(128), ..settings };
    let (own, from_start) = SharedCall::start(resource, call, after, settings, cancel, leave);
    own.follow(from_start, after)
}

/// A subscription from the current state, for a viewer whose resume point could not be
/// replayed.
fn reset(subscription: Subscription) -> Subscription {
    match subscription {
        Subscription::Live { events, .. } => Subscription::Live { reset: true, events },
        finished @ Subscription::Finished { .. } => finished,
    }
}

/// The hub's flags of `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct HubConfig {
    /// How long the BFF waits for the upstream's first message before answering 200, so that an
    /// immediate upstream error still becomes a proper HTTP status.
    #[arg(long, env = "SSE_BFF_FIRST_EVENT_WAIT", default_value = "2s", value_parser = crate::flags::parse_duration)]
    pub first_event_wait: Duration,
    /// Who shares one upstream call: the same user only, or everyone of the tenant.
    #[arg(long, env = "SSE_BFF_SHARE_SCOPE", default_value = "user")]
    pub share_scope: ShareScope,
    /// How long an upstream call outlives its last viewer, for reloads and reconnects.
    #[arg(long, env = "SSE_BFF_LINGER", default_value = "10s", value_parser = crate::flags::parse_duration)]
    pub linger: Duration,
    /// How long a finished job's events answer late reconnects without calling the upstream.
    #[arg(long, env = "SSE_BFF_KEEP_FINISHED", default_value = "60s", value_parser = crate::flags::parse_duration)]
    pub keep_finished: Duration,
    /// Events kept per shared call for resuming viewers. A resume point older than the log is
    /// still served without loss, by an upstream call of its own that resumes there: the log
    /// only saves those calls, and it is most of the memory of a watched document.
    #[arg(long, env = "SSE_BFF_REPLAY_LOG", default_value_t = 8, value_parser = crate::flags::count(100_000))]
    pub replay_log: usize,
    /// Events a viewer may fall behind before it skips to the latest update.
    #[arg(long, env = "SSE_BFF_VIEWER_LAG", default_value_t = 16, value_parser = crate::flags::count(100_000))]
    pub viewer_lag: usize,
    /// An upstream call that sends nothing for this long counts as broken and is resumed.
    #[arg(long, env = "SSE_BFF_UPSTREAM_IDLE_TIMEOUT", default_value = "5m", value_parser = crate::flags::parse_duration)]
    pub upstream_idle_timeout: Duration,
    /// How long transient upstream failures are retried (resuming) before viewers see an error.
    #[arg(long, env = "SSE_BFF_RETRY_BUDGET", default_value = "30s", value_parser = crate::flags::parse_duration)]
    pub retry_budget: Duration,
}

impl HubConfig {
    /// The settings of a hub reporting to `metrics`. `--replay-log` is the size of the built-in
    /// route's log: [`Hub::new`] takes every route's replay size and retention from its resource.
    pub fn settings(&self, metrics: Arc<Metrics>) -> HubSettings {
        HubSettings {
            first_event_wait: self.first_event_wait,
            linger: self.linger,
            keep_finished: self.keep_finished,
            replay: self.replay_log,
            retention: Retention::State,
            viewer_lag: self.viewer_lag,
            retry_budget: self.retry_budget,
            idle_timeout: self.upstream_idle_timeout,
            share_scope: self.share_scope,
            metrics,
        }
    }
}
