//! The driver of a shared call: calls the upstream, resumes after transient failures within
//! the retry budget, publishes events to the log and the broadcast, and ends the call.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{FutureExt as _, StreamExt as _};
use tokio::{
    sync::{broadcast, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::{End, Receiver, SharedCall, State};
use crate::{
    event::{EventKind, StreamEvent},
    hub::HubSettings,
    routes::Retention,
    upstream::{Call, EventStream, SharedResource, UpstreamError},
};

/// An upstream call that ended before the terminal event.
struct Broken {
    error: UpstreamError,
    /// It delivered events before failing, so it was healthy for a while.
    received: bool,
}

/// The first and the longest pause between two attempts of a failing upstream call.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

impl SharedCall {
    /// Starts the driver of a new shared call, asking the upstream for the events after
    /// `resume_after`. `leave` takes it out of the hub when it is over (see `Hub::remover`):
    /// a lingering call decides to end under the map's lock, so that no subscriber attaches to
    /// a call that is ending. The receiver returned has every event from the first one on.
    pub(in crate::hub) fn start(
        resource: SharedResource,
        call: Call,
        resume_after: u64,
        settings: HubSettings,
        cancel: CancellationToken,
        leave: impl Fn(&Arc<SharedCall>, &mut dyn FnMut() -> bool) -> bool + Send + Sync + 'static,
    ) -> (Arc<Self>, Receiver) {
        let (live, first) = broadcast::channel(settings.viewer_lag.max(1));
        let shared = Arc::new(Self {
            state: Mutex::new(State {
                log: VecDeque::new(),
                dropped: 0,
                live: Some(live),
                end: None,
                retrying: None,
                pin: None,
            }),
            viewers: watch::channel(0).0,
            changed: watch::channel(()).0,
            metrics: Arc::clone(&settings.metrics),
            viewer_gauge: settings.metrics.shared_viewers(resource.route()),
            log: settings.retention == Retention::Log,
        });
        let driver = Arc::clone(&shared);
        tokio::spawn(async move {
            let end = tokio::select! {
                end = driver.run(&resource, call, resume_after, &settings) => end,
                // Lingered out: the call already marked itself cancelled and left the hub.
                () = driver.idle(settings.linger, &leave) => return driver.changed.send_replace(()),
                () = cancel.cancelled() => End::Cancelled,
            };
            let keep = matches!(end, End::Terminal);
            driver.finish(end);
            if keep {
                // Late reconnects are answered from the log, without calling the upstream.
                tokio::select! {
                    () = tokio::time::sleep(settings.keep_finished) => {}
                    () = cancel.cancelled() => {}
                }
            }
            leave(&driver, &mut || true);
        });
        (shared, first)
    }

    /// Calls the upstream until the terminal event, resuming after transient failures within
    /// the retry budget.
    async fn run(&self, resource: &SharedResource, call: Call, resume_after: u64, settings: &HubSettings) -> End {
        let mut last = resume_after;
        let mut failing_since: Option<Instant> = None;
        let mut backoff = BACKOFF.0;
        loop {
            // Dropped with this future when the call is cancelled: it then counts as `cancelled`.
            let counted = resource.calls_upstream().then(|| self.metrics.upstream_started(resource.route()));
            let began = Instant::now();
            let attempt = self.attempt(resource, &call, &mut last, settings).await;
            if let Some(counted) = counted {
                counted.end(attempt.as_ref().err().map_or("ok", |broken| broken.error.metric_label()));
            }
            let error = match attempt {
                Ok(()) => return End::Terminal,
                Err(Broken { error, received }) => {
                    // New events prove the call was healthy, and so does a call that stayed up
                    // for the whole retry budget (silent: a job that has nothing to say, or
                    // one an upstream restarted and is replaying up to our point): what ends
                    // it is a new failure, not the old one going on. A call that breaks
                    // sooner and sends nothing new keeps the budget running, so an upstream
                    // that fails again and again still ends in an error.
                    // The BFF's own numbers on a call that started over (no id field, no
                    // resume field) prove nothing: the upstream may be sending the same events
                    // again, so only staying up counts there.
                    let ids_tell = resource.resumable() || !resource.numbered_by_bff();
                    let proven = received && ids_tell;
                    if proven || began.elapsed() >= settings.retry_budget {
                        failing_since = None;
                        backoff = BACKOFF.0;
                    }
                    error
                }
            };
            let since = *failing_since.get_or_insert_with(Instant::now);
            if !error.is_transient() || since.elapsed() >= settings.retry_budget {
                tracing::warn!(code = ?error.code, message = %error.message, "upstream call failed");
                return End::Failed(error);
            }
            tracing::info!(code = ?error.code, message = %error.message, resume_after = last, "upstream call broke; resuming");
            self.lock().retrying = Some(error);
            self.changed.send_replace(());
            tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64())).await;
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }

    /// One upstream call: `Ok` once the terminal event is published.
    async fn attempt(
        &self,
        resource: &SharedResource,
        call: &Call,
        last: &mut u64,
        settings: &HubSettings,
    ) -> Result<(), Broken> {
        let mut received = false;
        // Each attempt resumes after the last event published.
        let opened = Arc::clone(resource).open(call.clone(), *last).await;
        let mut events = opened.map_err(|error| Broken { error, received })?;
        loop {
            let next = tokio::time::timeout(settings.idle_timeout, next_batch(&mut events)).await;
            let (batch, failure) = next.unwrap_or_else(|_| {
                let silence = format!("no message from the upstream for {:?}", settings.idle_timeout);
                (Vec::new(), Some(UpstreamError::new(Code::Unavailable, silence)))
            });
            if !batch.is_empty() {
                let (fresh, terminal) = self.publish(batch, last, settings.replay);
                // Only new events prove the call healthy: an upstream that cannot resume
                // replays what was already published, and that must not renew the budget.
                received |= fresh;
                if terminal {
                    return Ok(());
                }
            }
            if let Some(mut error) = failure {
                // Our own per-call deadline ending a healthy stream is a reason to resume.
                if received && error.code == Code::DeadlineExceeded {
                    error.code = Code::Unavailable;
                }
                return Err(Broken { error, received });
            }
        }
    }

    /// Appends events to the log and sends them to viewers; returns whether any was new, and
    /// whether the terminal event was among them. Events at or below the last id (repeated
    /// after a resume, or by an upstream that starts over) are dropped. Ids need not be
    /// consecutive: the log remembers the newest id that left it, so that a resume point is
    /// served from the log exactly when nothing after it has left.
    fn publish(&self, batch: Vec<StreamEvent>, last: &mut u64, replay: usize) -> (bool, bool) {
        let mut terminal = false;
        let mut fresh = false;
        let first = {
            let mut state = self.lock();
            let first = state.log.is_empty();
            state.retrying = None;
            for event in batch {
                if event.kind == EventKind::TRIMMED {
                    state.dropped = state.dropped.max(event.id);
                    continue;
                }
                if event.id <= *last || terminal {
                    continue;
                }
                *last = event.id;
                terminal = event.kind.is_terminal();
                let event = Arc::new(event);
                fresh = true;
                state.log.push_back(Arc::clone(&event));
                state.trim(replay);
                if let Some(live) = &state.live {
                    // No receiver is fine: nobody is watching right now.
                    let _ = live.send(event);
                }
            }
            if terminal {
                // Under the same lock as the terminal event: a viewer attaching now sees a
                // finished call (and a resume at the end gets 204), never a live one that ends.
                state.end = Some(End::Terminal);
                state.live = None;
            }
            first
        };
        // Subscribers wait only for the first events or the end; waking them for every event
        // would cost a notification per event.
        if first || terminal {
            self.changed.send_replace(());
        }
        (fresh, terminal)
    }

    fn finish(&self, end: End) {
        {
            let mut state = self.lock();
            state.end = Some(end);
            // Closing the broadcast tells every viewer the call is over.
            state.live = None;
        }
        self.changed.send_replace(());
    }

    /// Resolves once no viewer has been attached for `linger` since the last one left, having
    /// marked the call cancelled and left the hub in one step under the hub's lock (`leave`);
    /// a viewer that attached at the last moment keeps it running.
    async fn idle(
        self: &Arc<Self>,
        linger: Duration,
        leave: &impl Fn(&Arc<SharedCall>, &mut dyn FnMut() -> bool) -> bool,
    ) {
        let mut viewers = self.viewers.subscribe();
        loop {
            if viewers.wait_for(|n| *n == 0).await.is_err() {
                return std::future::pending().await;
            }
            // Any change restarts the linger, even a viewer that came and left again before
            // this task looked: the linger runs from the last viewer leaving.
            match tokio::time::timeout(linger, viewers.changed()).await {
                Err(_) => {}
                Ok(Err(_)) => return std::future::pending().await,
                Ok(Ok(())) => continue,
            }
            // Viewers attach under the call's state lock: checked under it, none is missed.
            let mut cancel_if_idle = || {
                let mut state = self.lock();
                if *self.viewers.borrow() != 0 {
                    return false;
                }
                state.end = Some(End::Cancelled);
                state.live = None;
                true
            };
            if leave(self, &mut cancel_if_idle) {
                return;
            }
        }
    }
}

/// The next event and every one already received behind it, so that a replay burst is
/// published at once (a new viewer then starts at the latest update, not the oldest), plus the
/// failure that ended the stream, if it did.
async fn next_batch(events: &mut EventStream) -> (Vec<StreamEvent>, Option<UpstreamError>) {
    let mut batch = Vec::new();
    let mut next = events.next().await;
    loop {
        match next {
            Some(Ok(event)) => batch.push(event),
            Some(Err(error)) => return (batch, Some(error)),
            None => return (batch, Some(UpstreamError::ended_early())),
        }
        match events.next().now_or_never() {
            Some(item) => next = item,
            None => return (batch, None),
        }
    }
}
