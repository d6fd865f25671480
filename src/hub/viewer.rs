//! One viewer's event stream: the backlog from the log, then live events, conflated to the
//! latest when the viewer falls behind, never without the terminal event. A viewer with a
//! [`Sink`](super::Sink) parks whenever it is caught up, and the driver writes to its
//! connection until it hands it back (see `direct.rs`).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::Stream;
use tokio::{
    sync::broadcast::{
        Receiver,
        error::{RecvError, TryRecvError},
    },
    time::Instant,
};

use super::{
    direct::Parking,
    shared::{End, ViewerGuard},
};
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

/// A viewer's events. It ends after the terminal event, or an error; when it ends without
/// either, the hub wrote the terminal event to the connection itself. A reset (see
/// [`Delivery::Reset`]) is always followed by the terminal event. Dropping it detaches the
/// viewer.
pub struct ViewerStream {
    events: Pin<Box<dyn Stream<Item = Delivery> + Send>>,
    parking: Option<Arc<Parking>>,
}

impl std::fmt::Debug for ViewerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewerStream").field("parking", &self.parking).finish_non_exhaustive()
    }
}

impl Stream for ViewerStream {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.events.as_mut().poll_next(cx)
    }
}

impl ViewerStream {
    /// A viewer stream made of `events`, which the hub never writes to a connection itself (a
    /// multiplexed stream's merge of several topics).
    pub fn from_stream(events: impl Stream<Item = Delivery> + Send + 'static) -> Self {
        Self { events: Box::pin(events), parking: None }
    }

    /// Events the hub wrote to the connection itself since the last call (they never pass
    /// through this stream), and when it last did.
    pub fn take_written_directly(&self) -> (u64, Option<Instant>) {
        self.parking.as_ref().map_or((0, None), |parking| parking.take_written())
    }
}

/// What a viewer does next.
enum Step {
    Received(Result<Arc<StreamEvent>, RecvError>),
    /// Caught up and parked: the driver writes until it hands the connection back.
    Parked(Arc<Parking>),
}

/// The stream of a viewer attached to a shared call, starting after `cursor`.
pub(super) fn shared(
    guard: ViewerGuard,
    backlog: Vec<Arc<StreamEvent>>,
    live: Option<Receiver<Arc<StreamEvent>>>,
    cursor: u64,
) -> ViewerStream {
    let parking = guard.parking.clone();
    let events = async_stream::stream! {
        let shared = guard.shared();
        let mut cursor = cursor;
        let mut backlog = backlog;
        let mut live = live;
        // Parking waits for the first event, so the first one always passes through the
        // stream (its latency is measured there).
        let mut yielded = false;
        let mut listed = false;
        loop {
            for event in backlog.drain(..) {
                cursor = event.id;
                yielded = true;
                let terminal = event.kind.is_terminal();
                yield Delivery::Event(event);
                if terminal {
                    return;
                }
            }
            // Only a viewer that may park looks before it waits: each look locks the channel.
            let parking = guard.parking.as_ref().filter(|_| yielded);
            let step = match (live.as_mut(), parking) {
                (None, _) => Step::Received(Err(RecvError::Closed)),
                (Some(receiver), None) => Step::Received(receiver.recv().await),
                (Some(receiver), Some(parking)) => match receiver.try_recv() {
                    Ok(event) => Step::Received(Ok(event)),
                    Err(TryRecvError::Lagged(skipped)) => Step::Received(Err(RecvError::Lagged(skipped))),
                    Err(TryRecvError::Closed) => Step::Received(Err(RecvError::Closed)),
                    Err(TryRecvError::Empty) if shared.park(parking, cursor, &mut listed) => {
                        Step::Parked(Arc::clone(parking))
                    }
                    Err(TryRecvError::Empty) => Step::Received(receiver.recv().await),
                },
            };
            let received = match step {
                Step::Parked(parking) => {
                    // Parked viewers hold no receiver: the broadcast keeps nothing for them.
                    drop(live.take());
                    cursor = parking.woken().await;
                    let gap;
                    (live, backlog, gap) = shared.resume(cursor);
                    if gap && shared.keeps_every_event() {
                        yield Delivery::Reset;
                    }
                    continue;
                }
                Step::Received(received) => received,
            };
            match received {
                Ok(event) if event.id <= cursor => {}
                Ok(event) => backlog.push(event),
                Err(RecvError::Lagged(_)) if shared.keeps_every_event() => {
                    // Every event matters (a log): catch up from the replay log, and say so
                    // when the viewer fell out of it.
                    let gap;
                    (live, backlog, gap) = shared.resume(cursor);
                    if gap {
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
                        // The viewer asked to resume after a point the call never reached: it
                        // must still learn how the call ended.
                        (Some(End::Terminal), Some(last)) if last.id < cursor => {
                            yield Delivery::Reset;
                            yield Delivery::Event(last);
                        }
                        // The driver wrote the terminal event to the connection itself.
                        (Some(End::Terminal), _) => {}
                        (Some(End::Failed(error)), _) => yield Delivery::Failed(error),
                        (Some(End::Cancelled) | None, _) => yield Delivery::Failed(UpstreamError::ended_early()),
                    }
                    return;
                }
            }
        }
    };
    ViewerStream { events: Box::pin(events), parking }
}
