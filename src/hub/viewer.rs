//! One viewer's event stream: the backlog from the log, then live events, conflated to the
//! latest when the viewer falls behind (or, on a `log` route, caught up from the log), never
//! without the terminal event. The viewer's connection task polls it and writes what it yields.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::Stream;
use tokio::sync::broadcast::{Receiver, error::RecvError};

use super::shared::{End, ViewerGuard};
use crate::{event::StreamEvent, upstream::UpstreamError};

/// What a viewer receives.
#[derive(Debug)]
pub enum Delivery {
    /// The next event.
    Event(Arc<StreamEvent>),
    /// What the viewer had cannot be continued: its resume point lies beyond the call's end (a
    /// resource redone under the same id, say; the terminal event follows), or it fell out of
    /// a `log` route's replay log (events were lost; the latest follows).
    Reset,
    /// The error that ended the upstream call; nothing follows.
    Failed(UpstreamError),
}

/// A viewer's events. It ends after the terminal event, or an error. A reset (see
/// [`Delivery::Reset`]) is followed by the terminal event or the latest one. Dropping it detaches
/// the viewer.
pub struct ViewerStream {
    events: Pin<Box<dyn Stream<Item = Delivery> + Send>>,
}

impl std::fmt::Debug for ViewerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewerStream").finish_non_exhaustive()
    }
}

impl Stream for ViewerStream {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.events.as_mut().poll_next(cx)
    }
}

impl ViewerStream {
    /// A viewer stream made of `events` (a multiplexed stream's merge of several topics).
    pub fn from_stream(events: impl Stream<Item = Delivery> + Send + 'static) -> Self {
        Self { events: Box::pin(events) }
    }

    /// The stream of a viewer attached to a shared call, starting after `cursor`: `backlog`
    /// first, then what `live` receives. `unchecked`: the viewer resumes at `cursor` but
    /// attached before the call had events, so the log could not tell whether the point can be
    /// replayed; once events arrive, a point below what the log still has gets `reset` first.
    pub(super) fn attached(
        guard: ViewerGuard,
        backlog: Vec<Arc<StreamEvent>>,
        live: Option<Receiver<Arc<StreamEvent>>>,
        cursor: u64,
        unchecked: bool,
    ) -> Self {
        let events = async_stream::stream! {
            let shared = guard.shared();
            let mut cursor = cursor;
            let mut backlog = backlog;
            let mut live = live;
            let mut unchecked = unchecked;
            // Whether an event was yielded: a viewer that lags before that is not slow.
            let mut delivered = false;
            loop {
                for event in backlog.drain(..) {
                    cursor = event.id;
                    delivered = true;
                    let terminal = event.kind.is_terminal();
                    yield Delivery::Event(event);
                    if terminal {
                        return;
                    }
                }
                let received = match live.as_mut() {
                    Some(receiver) => receiver.recv().await,
                    None => Err(RecvError::Closed),
                };
                if std::mem::take(&mut unchecked) && shared.dropped() > cursor {
                    yield Delivery::Reset;
                }
                match received {
                    Ok(event) if event.id <= cursor => {}
                    Ok(event) => backlog.push(event),
                    Err(RecvError::Lagged(_)) if shared.keeps_every_event() || !delivered => {
                        // Every event matters (a log), or the viewer was not sent anything yet:
                        // it waits ahead of a call whose replay burst arrived at once, and is
                        // not slow. Catch up from the replay log, and say so on a log route
                        // when the viewer fell out of it (a state route's gets the latest).
                        let gap;
                        (live, backlog, gap) = shared.resume(cursor);
                        if gap && shared.keeps_every_event() {
                            yield Delivery::Reset;
                        }
                    }
                    Err(RecvError::Lagged(skipped)) => {
                        // Progress is state: a viewer that fell behind jumps to the latest update
                        // instead of buffering the ones it missed.
                        tracing::debug!(skipped, "slow viewer conflated to the latest update");
                        let (receiver, latest) = shared.catch_up();
                        live = receiver;
                        backlog.extend(latest.filter(|e| e.id > cursor));
                    }
                    Err(RecvError::Closed) => {
                        match shared.ending() {
                            (Some(End::Terminal), Some(last)) if last.id > cursor => yield Delivery::Event(last),
                            // The viewer asked to resume after a point the call never reached:
                            // it must still learn how the call ended.
                            (Some(End::Terminal), Some(last)) if last.id < cursor => {
                                yield Delivery::Reset;
                                yield Delivery::Event(last);
                            }
                            (Some(End::Terminal), _) => {}
                            (Some(End::Failed(error)), _) => yield Delivery::Failed(error),
                            (Some(End::Cancelled) | None, _) => yield Delivery::Failed(UpstreamError::ended_early()),
                        }
                        return;
                    }
                }
            }
        };
        Self { events: Box::pin(events) }
    }
}
