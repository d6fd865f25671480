//! One shared upstream call: its replay log, the broadcast of live events, and viewers
//! attaching to it. The task that calls the upstream lives in `driver.rs`.

mod driver;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::{
    sync::{broadcast, watch},
    time::Instant,
};

use super::{HubSettings, Subscription, ViewerStream};
use prometheus_client::metrics::gauge::Gauge;

use crate::{event::StreamEvent, metrics::Metrics, upstream::UpstreamError};

/// A viewer's end of the live broadcast.
pub(super) type Receiver = broadcast::Receiver<Arc<StreamEvent>>;

/// A shared upstream call.
#[derive(Debug)]
pub(super) struct SharedCall {
    state: Mutex<State>,
    /// Viewer count: the driver lingers when it drops to zero.
    viewers: watch::Sender<usize>,
    /// Bumped when the first events arrive or the call ends, for subscribers waiting on it.
    changed: watch::Sender<()>,
    metrics: Arc<Metrics>,
    /// The route's gauge of attached viewers.
    viewer_gauge: Gauge,
    /// `log` retention: a viewer that falls behind catches up from the log (and gets `reset`
    /// when it fell out of it), instead of skipping to the latest event.
    log: bool,
}

#[derive(Debug)]
struct State {
    /// The most recent events, oldest first: every event after `dropped`.
    log: VecDeque<Arc<StreamEvent>>,
    /// The id of the newest event that left the log (0: none did): a resume point at or after
    /// it is served from the log.
    dropped: u64,
    /// Live events; dropped when the call ends so viewers see the end.
    live: Option<broadcast::Sender<Arc<StreamEvent>>>,
    end: Option<End>,
    /// The failure being retried, reported to a first viewer that gets no event in time.
    retrying: Option<UpstreamError>,
    /// A recent resume point whose events the log keeps beyond its size (see [`State::pin`]).
    pin: Option<Pin>,
}

/// The most events a pin keeps in the log: bounded, however fast the resource.
pub(super) const MAX_PINNED: usize = 512;

/// Every event after `after` stays in the log until `until`.
#[derive(Debug, Clone, Copy)]
struct Pin {
    after: u64,
    until: Instant,
}

impl State {
    /// Keeps every event after `after` in the log (at most [`MAX_PINNED`]) for `linger` from
    /// now, if the log still holds them all. The viewers of an instance that stopped reconnect
    /// over the few seconds of their jittered `retry:`, each resuming at about the event that
    /// instance sent last, while new events push older ones out of the log: without the pin,
    /// every reconnect after the log moved past that point would need an upstream call of its
    /// own, thousands of calls for one document in a storm. The linger is the window in which
    /// the hub expects reconnects anyway.
    fn pin(&mut self, after: u64, linger: Duration) {
        if after < self.dropped {
            return;
        }
        let now = Instant::now();
        let until = now + linger;
        self.pin = Some(match self.pin {
            Some(pin) if pin.until > now => Pin { after: pin.after.min(after), until: pin.until.max(until) },
            _ => Pin { after, until },
        });
    }

    /// Drops the oldest events beyond `replay`, except those a pin still holds.
    pub(super) fn trim(&mut self, replay: usize) {
        let now = Instant::now();
        while self.log.len() > replay.max(1) {
            let pinned = self.pin.is_some_and(|pin| {
                pin.until > now && self.log.len() <= MAX_PINNED && self.log.front().is_some_and(|e| e.id > pin.after)
            });
            if pinned {
                break;
            }
            if let Some(gone) = self.log.pop_front() {
                self.dropped = gone.id;
            }
        }
    }
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
pub(super) struct ViewerGuard {
    shared: Arc<SharedCall>,
}

impl ViewerGuard {
    pub(super) fn shared(&self) -> &Arc<SharedCall> {
        &self.shared
    }
}

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        self.shared.viewers.send_modify(|n| *n = n.saturating_sub(1));
        self.shared.viewer_gauge.dec();
    }
}

impl SharedCall {
    /// Attaches a viewer, waiting (up to the first-event wait) for the call's first events.
    /// A viewer that holds the receiver from [`SharedCall::start`] (the only viewer of a private
    /// call) reads everything from it instead of from the log.
    pub(super) async fn attach(
        self: &Arc<Self>,
        resume: Option<u64>,
        settings: &HubSettings,
        mut from_start: Option<Receiver>,
    ) -> Attach {
        let mut changes = self.changed.subscribe();
        // A reconnect resumes after an event it had; 0 asks for everything from the first, and
        // pinning that would keep a resource's whole history for the linger.
        if let (Some(after @ 1..), None) = (resume, &from_start) {
            self.lock().pin(after, settings.linger);
        }
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
                // The driver took the call out of the hub before it showed it was cancelled:
                // the caller's next look finds no call, and starts one.
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
        let Some(latest) = state.log.back() else {
            return match (&state.end, &state.retrying) {
                (Some(End::Failed(error)), _) | (None, Some(error)) => Attach::Failed(error.clone()),
                (Some(End::Terminal), _) => Attach::Failed(UpstreamError::ended_early()),
                (Some(End::Cancelled), _) => Attach::Gone,
                // Connected, but the upstream has not sent anything yet: stream what comes. A
                // resume point is checked against the log once events arrive (`viewer.rs`).
                (None, None) => {
                    let unchecked = resume.is_some() && from_start.is_none();
                    self.ready(&state, Vec::new(), resume.unwrap_or(0), false, from_start, unchecked)
                }
            };
        };
        if from_start.is_some() {
            return self.ready(&state, Vec::new(), resume.unwrap_or(0), false, from_start, false);
        }
        let finished = matches!(state.end, Some(End::Terminal));
        let backlog: Vec<_> = match resume {
            Some(after) if finished && after == latest.id => {
                return Attach::Ready(Subscription::Finished { last: latest.id });
            }
            // A point past a finished call's end (the resource was redone under the same id,
            // say) cannot be replayed: the viewer starts over from the end, and so still learns
            // how the call ended.
            Some(after) if finished && after > latest.id => {
                let current = vec![Arc::clone(latest)];
                return self.ready(&state, current, 0, true, None, false);
            }
            // Ahead of a live call (another instance, or a call that started over, is a little
            // ahead): wait for what comes after it. If the call ends below it, the viewer gets
            // `reset` and the terminal event (`viewer.rs`).
            Some(after) if after > latest.id => Vec::new(),
            Some(after) if after < state.dropped => return Attach::NeedsPrivateCall(after),
            Some(after) => state.log.iter().filter(|e| e.id > after).cloned().collect(),
            None => vec![Arc::clone(latest)],
        };
        if let (Some(End::Failed(error)), true) = (&state.end, backlog.is_empty()) {
            return Attach::Failed(error.clone());
        }
        self.ready(&state, backlog, resume.unwrap_or(0), false, None, false)
    }

    fn ready(
        self: &Arc<Self>,
        state: &State,
        backlog: Vec<Arc<StreamEvent>>,
        cursor: u64,
        reset: bool,
        from_start: Option<Receiver>,
        unchecked: bool,
    ) -> Attach {
        self.viewers.send_modify(|n| *n += 1);
        self.viewer_gauge.inc();
        let guard = ViewerGuard { shared: Arc::clone(self) };
        let live = from_start.or_else(|| state.live.as_ref().map(broadcast::Sender::subscribe));
        let events = ViewerStream::attached(guard, backlog, live, cursor, unchecked);
        Attach::Ready(Subscription::Live { reset, events })
    }

    /// The stream of the one reader of a call of its own that holds the receiver `from_start`
    /// from [`SharedCall::start`]: every event after `after` as it comes, then how the call
    /// ended.
    pub(super) fn follow(self: &Arc<Self>, from_start: Receiver, after: u64) -> ViewerStream {
        let state = self.lock();
        self.viewers.send_modify(|n| *n += 1);
        self.viewer_gauge.inc();
        let guard = ViewerGuard { shared: Arc::clone(self) };
        drop(state);
        ViewerStream::attached(guard, Vec::new(), Some(from_start), after, false)
    }

    /// A fresh receiver and the events after `cursor`, for a viewer of a `log` route that fell
    /// behind, or one that lagged before it was sent anything. One that fell out of the log gets
    /// only the latest event, and `true`: events were lost.
    pub(super) fn resume(&self, cursor: u64) -> (Option<Receiver>, Vec<Arc<StreamEvent>>, bool) {
        let state = self.lock();
        let receiver = state.live.as_ref().map(broadcast::Sender::subscribe);
        match state.log.back() {
            Some(_) if cursor >= state.dropped => {
                (receiver, state.log.iter().filter(|e| e.id > cursor).cloned().collect(), false)
            }
            Some(latest) => (receiver, Some(latest).filter(|e| e.id > cursor).cloned().into_iter().collect(), true),
            None => (receiver, Vec::new(), false),
        }
    }

    /// The id of the newest event that left the log (0: none did), or that the upstream no
    /// longer has (see [`crate::event::EventKind::TRIMMED`]).
    pub(super) fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Whether a viewer that falls behind catches up from the log (`log` retention).
    pub(super) fn keeps_every_event(&self) -> bool {
        self.log
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

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
