//! One shared upstream call: its driver task, its replay log and the broadcast of live events.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use futures_util::{FutureExt as _, StreamExt as _};
use tokio::{
    sync::{broadcast, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::{HubSettings, Subscription, viewer};
use crate::{
    event::StreamEvent,
    metrics::Metrics,
    upstream::{Call, EventStream, SharedResource, UpstreamError},
};

/// An upstream call that ended before the terminal event.
struct Broken {
    error: UpstreamError,
    /// It delivered events before failing, so it was healthy for a while.
    received: bool,
}

/// A viewer's end of the live broadcast.
pub(super) type Receiver = broadcast::Receiver<Arc<StreamEvent>>;

/// The first and the longest pause between two attempts of a failing upstream call.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// A shared upstream call.
#[derive(Debug)]
pub(super) struct Shared {
    state: Mutex<State>,
    /// Viewer count: the driver lingers when it drops to zero.
    viewers: watch::Sender<usize>,
    /// Bumped when the first events arrive or the call ends, for subscribers waiting on it.
    changed: watch::Sender<()>,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
struct State {
    /// The most recent events, oldest first, gap-free.
    log: VecDeque<Arc<StreamEvent>>,
    /// Live events; dropped when the call ends so viewers see the end.
    live: Option<broadcast::Sender<Arc<StreamEvent>>>,
    end: Option<End>,
    /// The failure being retried, reported to a first viewer that gets no event in time.
    retrying: Option<UpstreamError>,
}

/// How a shared call ended.
#[derive(Debug, Clone)]
pub(super) enum End {
    /// The terminal event is the last one of the log.
    Terminal,
    /// The upstream failed and retrying did not help.
    Failed(UpstreamError),
    /// No viewer was left after the linger, or the service is shutting down.
    Cancelled,
}

/// What a viewer gets when attaching.
pub(super) enum Attach {
    Ready(Subscription),
    Failed(UpstreamError),
    /// The call was cancelled and is leaving the hub; attach to a new one.
    Gone,
    /// The viewer's resume point is older than the log: it needs an upstream call of its own.
    NeedsPrivateCall(u64),
}

/// Counts a viewer until dropped.
#[derive(Debug)]
pub(super) struct ViewerGuard(Arc<Shared>);

impl ViewerGuard {
    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.0
    }
}

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        self.0.viewers.send_modify(|n| *n = n.saturating_sub(1));
        self.0.metrics.viewer_attached(false);
    }
}

impl Shared {
    /// Starts the driver of a new shared call. `remove` takes it out of the hub when it is over.
    /// The receiver returned has every event from the first one on.
    pub(super) fn start(
        resource: SharedResource,
        call: Call,
        settings: HubSettings,
        cancel: CancellationToken,
        remove: impl FnOnce(&Arc<Shared>) + Send + 'static,
    ) -> (Arc<Self>, Receiver) {
        let (live, first) = broadcast::channel(settings.viewer_lag.max(1));
        let shared = Arc::new(Self {
            state: Mutex::new(State { log: VecDeque::new(), live: Some(live), end: None, retrying: None }),
            viewers: watch::channel(0).0,
            changed: watch::channel(()).0,
            metrics: Arc::clone(&settings.metrics),
        });
        let driver = Arc::clone(&shared);
        tokio::spawn(async move {
            let end = tokio::select! {
                end = driver.run(&resource, call, &settings) => end,
                () = driver.idle(settings.linger) => End::Cancelled,
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
            remove(&driver);
        });
        (shared, first)
    }

    /// Attaches a viewer, waiting (up to the first-event wait) for the call's first events.
    /// A viewer that holds the receiver from [`Shared::start`] (the only viewer of a private
    /// call) reads everything from it instead of from the log.
    pub(super) async fn attach(
        self: &Arc<Self>,
        resume: Option<u64>,
        settings: &HubSettings,
        mut from_start: Option<Receiver>,
    ) -> Attach {
        let mut changes = self.changed.subscribe();
        let deadline = Instant::now() + settings.first_event_wait;
        loop {
            let cancelled = {
                let state = self.lock();
                match state.end {
                    Some(End::Cancelled) => true,
                    Some(_) => return self.attach_now(state, resume, from_start.take()),
                    None if !state.log.is_empty() || Instant::now() >= deadline => {
                        return self.attach_now(state, resume, from_start.take());
                    }
                    None => false,
                }
            };
            if cancelled {
                // Let the driver finish leaving the hub before the caller looks again.
                tokio::task::yield_now().await;
                return Attach::Gone;
            }
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    fn attach_now(
        self: &Arc<Self>,
        state: MutexGuard<'_, State>,
        resume: Option<u64>,
        from_start: Option<Receiver>,
    ) -> Attach {
        let (Some(first), Some(latest)) = (state.log.front(), state.log.back()) else {
            return match (&state.end, &state.retrying) {
                (Some(End::Failed(error)), _) | (None, Some(error)) => Attach::Failed(error.clone()),
                (Some(End::Terminal), _) => Attach::Failed(UpstreamError::ended_early()),
                (Some(End::Cancelled), _) => Attach::Gone,
                // Connected, but the upstream has not sent anything yet: stream what comes.
                (None, None) => self.ready(&state, Vec::new(), resume.unwrap_or(0), from_start),
            };
        };
        if from_start.is_some() {
            return self.ready(&state, Vec::new(), resume.unwrap_or(0), from_start);
        }
        let finished = matches!(state.end, Some(End::Terminal));
        let backlog: Vec<_> = match resume {
            Some(after) if finished && after >= latest.id => return Attach::Ready(Subscription::Finished),
            Some(after) if after + 1 < first.id => return Attach::NeedsPrivateCall(after),
            Some(after) => state.log.iter().filter(|e| e.id > after).cloned().collect(),
            None => vec![Arc::clone(latest)],
        };
        if let (Some(End::Failed(error)), true) = (&state.end, backlog.is_empty()) {
            return Attach::Failed(error.clone());
        }
        self.ready(&state, backlog, resume.unwrap_or(0), None)
    }

    fn ready(
        self: &Arc<Self>,
        state: &State,
        backlog: Vec<Arc<StreamEvent>>,
        cursor: u64,
        from_start: Option<Receiver>,
    ) -> Attach {
        self.viewers.send_modify(|n| *n += 1);
        self.metrics.viewer_attached(true);
        let guard = ViewerGuard(Arc::clone(self));
        let live = from_start.or_else(|| state.live.as_ref().map(broadcast::Sender::subscribe));
        Attach::Ready(Subscription::Live { reset: false, events: viewer::shared(guard, backlog, live, cursor) })
    }

    /// A fresh receiver and the latest event, for a viewer that fell behind.
    pub(super) fn catch_up(&self) -> (Option<broadcast::Receiver<Arc<StreamEvent>>>, Option<Arc<StreamEvent>>) {
        let state = self.lock();
        (state.live.as_ref().map(broadcast::Sender::subscribe), state.log.back().cloned())
    }

    /// How the call ended and its last event, for a viewer whose receiver closed.
    pub(super) fn ending(&self) -> (Option<End>, Option<Arc<StreamEvent>>) {
        let state = self.lock();
        (state.end.clone(), state.log.back().cloned())
    }

    /// Calls the upstream until the terminal event, resuming after transient failures within
    /// the retry budget.
    async fn run(&self, resource: &SharedResource, mut call: Call, settings: &HubSettings) -> End {
        let mut last = call.resume_after;
        let mut failing_since: Option<Instant> = None;
        let mut backoff = BACKOFF.0;
        loop {
            call.resume_after = last;
            self.metrics.upstream_started();
            let attempt = self.attempt(resource, &call, &mut last, settings).await;
            self.metrics.upstream_ended(attempt.as_ref().err().map_or("ok", |broken| broken.error.code_name()));
            let error = match attempt {
                Ok(()) => return End::Terminal,
                Err(Broken { error, received }) => {
                    if received {
                        failing_since = None;
                        backoff = BACKOFF.0;
                    }
                    error
                }
            };
            let since = *failing_since.get_or_insert_with(Instant::now);
            if !is_transient(&error) || since.elapsed() >= settings.retry_budget {
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
        let mut events = resource.open(call.clone()).await.map_err(|error| Broken { error, received })?;
        loop {
            let next = tokio::time::timeout(settings.idle_timeout, next_batch(&mut events)).await;
            let (batch, failure) = next.unwrap_or_else(|_| {
                let silence = format!("no message from the upstream for {:?}", settings.idle_timeout);
                (Vec::new(), Some(UpstreamError::new(Code::Unavailable, silence)))
            });
            if !batch.is_empty() {
                received = true;
                if self.publish(batch, last, settings.replay) {
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

    /// Appends events to the log and sends them to viewers; returns whether the terminal event
    /// was among them. Events at or below the last sequence (repeated after a resume) are
    /// dropped.
    fn publish(&self, batch: Vec<StreamEvent>, last: &mut u64, replay: usize) -> bool {
        let mut terminal = false;
        {
            let mut state = self.lock();
            state.retrying = None;
            for event in batch {
                if event.id <= *last || terminal {
                    continue;
                }
                if *last != 0 && event.id != *last + 1 {
                    tracing::warn!(expected = *last + 1, got = event.id, "upstream skipped sequence numbers");
                    // The log must stay gap-free for resuming viewers: start it afresh.
                    state.log.clear();
                }
                *last = event.id;
                terminal = event.kind.is_terminal();
                let event = Arc::new(event);
                state.log.push_back(Arc::clone(&event));
                while state.log.len() > replay.max(1) {
                    state.log.pop_front();
                }
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
        }
        self.changed.send_replace(());
        terminal
    }

    fn finish(&self, end: End) {
        {
            let mut state = self.lock();
            state.end = Some(end);
            state.live = None;
        }
        self.changed.send_replace(());
    }

    /// Resolves once no viewer has been attached for `linger`.
    async fn idle(&self, linger: Duration) {
        let mut viewers = self.viewers.subscribe();
        loop {
            if viewers.wait_for(|n| *n == 0).await.is_err() {
                return std::future::pending().await;
            }
            if tokio::time::timeout(linger, viewers.wait_for(|n| *n > 0)).await.is_err() {
                return;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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

/// Failures worth resuming after: the upstream or the connection to it went away.
fn is_transient(error: &UpstreamError) -> bool {
    let broken_connection = ["transport", "h2 protocol", "connection", "broken pipe", "stream closed"]
        .iter()
        .any(|needle| error.message.to_ascii_lowercase().contains(needle));
    error.code == Code::Unavailable
        || (matches!(error.code, Code::Unknown | Code::Internal | Code::Cancelled) && broken_connection)
}
