//! Direct delivery: while a viewer is caught up, the shared call's driver writes each new event
//! to the viewer's connection itself. A broadcast to thousands of viewers then costs one pass
//! over their sockets per event, instead of a task wake-up, a channel receive and a trip through
//! the response body per viewer and event.
//!
//! The viewer's own task sleeps meanwhile, parked. The driver hands the connection back (and
//! wakes the task) when a write did not go out whole, when the connection refused it (it has
//! something of its own to write, such as a heartbeat), after the terminal event, and when the
//! call ends. The task then catches up from the log, exactly as after a wake-up by the
//! broadcast, so nothing is lost or sent twice whoever wrote an event.

use std::sync::{
    Arc,
    atomic::{AtomicU8, AtomicU64, Ordering},
};

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use crate::event::StreamEvent;

/// The most events written to a connection at once.
pub const MAX_BATCH: usize = 32;

/// A client connection the hub may write events to while the viewer's task sleeps.
pub trait Sink: Send + Sync + std::fmt::Debug + 'static {
    /// Writes the events (at most [`MAX_BATCH`], in order) now, in one write, without waiting.
    fn offer(&self, events: &[Arc<StreamEvent>]) -> Offer;
}

/// What became of offered events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// All of it was written.
    Written,
    /// Part of it was written; the sink keeps the rest and writes it before anything else.
    Held,
    /// Nothing was written: the connection is writing something of its own, or is gone.
    Refused,
}

/// The viewer's task owns the connection.
const ACTIVE: u8 = 0;
/// The driver may write to the connection.
const PARKED: u8 = 1;
/// The driver is writing to the connection.
const WRITING: u8 = 2;
/// The viewer left; the driver forgets it.
const DETACHED: u8 = 3;

/// A viewer that may be parked on its connection.
#[derive(Debug)]
pub struct Parking {
    sink: Arc<dyn Sink>,
    state: AtomicU8,
    /// The last event the viewer has: set when parking, advanced by the driver.
    cursor: AtomicU64,
    /// Events the driver wrote that the viewer's task has not counted yet.
    written: AtomicU64,
    /// When the driver last wrote, in milliseconds after `since`, plus one (0: never).
    last_write: AtomicU64,
    since: Instant,
    waker: AtomicWaker,
}

impl Parking {
    pub(super) fn new(sink: Arc<dyn Sink>) -> Self {
        Self {
            sink,
            state: AtomicU8::new(ACTIVE),
            cursor: AtomicU64::new(0),
            written: AtomicU64::new(0),
            last_write: AtomicU64::new(0),
            since: Instant::now(),
            waker: AtomicWaker::new(),
        }
    }

    /// The viewer hands its connection to the driver; it has every event up to `cursor`.
    pub(super) fn park(&self, cursor: u64) {
        self.cursor.store(cursor, Ordering::Relaxed);
        self.state.store(PARKED, Ordering::Release);
    }

    /// Resolves with the viewer's cursor once the driver has handed the connection back.
    pub(super) async fn woken(&self) -> u64 {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            match self.state.load(Ordering::Acquire) {
                PARKED | WRITING => std::task::Poll::Pending,
                _ => std::task::Poll::Ready(self.cursor.load(Ordering::Relaxed)),
            }
        })
        .await
    }

    /// The viewer left: once this returns the driver no longer writes to its connection.
    pub(super) fn detach(&self) {
        loop {
            match self.state.load(Ordering::Acquire) {
                // One non-blocking write; it is over in microseconds.
                WRITING => std::thread::yield_now(),
                current => {
                    let swapped = self.state.compare_exchange(current, DETACHED, Ordering::AcqRel, Ordering::Acquire);
                    if swapped.is_ok() {
                        return;
                    }
                }
            }
        }
    }

    pub(super) fn is_detached(&self) -> bool {
        self.state.load(Ordering::Acquire) == DETACHED
    }

    /// The driver writes `events` (consecutive, at most [`MAX_BATCH`]) if the viewer is parked;
    /// returns whether it wrote.
    pub(super) fn deliver(&self, events: &[Arc<StreamEvent>], now: Instant) -> bool {
        if self.state.compare_exchange(PARKED, WRITING, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return false;
        }
        // Parked after some of these were logged: the viewer has those already.
        let cursor = self.cursor.load(Ordering::Relaxed);
        let fresh = &events[events.partition_point(|event| event.id <= cursor)..];
        let Some(last) = fresh.last() else {
            self.state.store(PARKED, Ordering::Release);
            return false;
        };
        // Should the sink panic, the viewer still gets its connection back.
        let restore = Restore(self);
        let offer = self.sink.offer(fresh);
        std::mem::forget(restore);
        let terminal = last.kind.is_terminal();
        if offer != Offer::Refused {
            self.cursor.store(last.id, Ordering::Relaxed);
            self.written.fetch_add(fresh.len() as u64, Ordering::Relaxed);
            let millis = u64::try_from(now.saturating_duration_since(self.since).as_millis()).unwrap_or(u64::MAX);
            self.last_write.store(millis.saturating_add(1), Ordering::Relaxed);
        }
        if offer == Offer::Written && !terminal {
            self.state.store(PARKED, Ordering::Release);
        } else {
            self.state.store(ACTIVE, Ordering::Release);
            self.waker.wake();
        }
        offer != Offer::Refused
    }

    /// The call ended, or its shard fell behind: the viewer's task takes its connection back.
    pub(super) fn hand_back(&self) {
        // No write can reach the viewer here (callers hold its shard, as every write does, or
        // took it out of its shard): the state is never `WRITING`.
        if self.state.compare_exchange(PARKED, ACTIVE, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.waker.wake();
        }
    }

    /// Events the driver wrote since the last call, and when it last wrote.
    pub fn take_written(&self) -> (u64, Option<Instant>) {
        let last = match self.last_write.load(Ordering::Relaxed) {
            0 => None,
            millis => Some(self.since + std::time::Duration::from_millis(millis - 1)),
        };
        (self.written.swap(0, Ordering::Relaxed), last)
    }
}

/// Hands the connection back if a write unwinds.
struct Restore<'a>(&'a Parking);

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        self.0.state.store(ACTIVE, Ordering::Release);
        self.0.waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures_util::FutureExt as _;

    use super::*;
    use crate::event::EventKind;

    /// Records the ids it is offered and answers `offer`.
    #[derive(Debug)]
    struct Recorder {
        offer: Offer,
        offered: Mutex<Vec<u64>>,
    }

    fn viewer_with(offer: Offer) -> (Arc<Recorder>, Parking) {
        let recorder = Arc::new(Recorder { offer, offered: Mutex::default() });
        let parking = Parking::new(Arc::clone(&recorder) as Arc<dyn Sink>);
        (recorder, parking)
    }

    impl Recorder {
        fn offered(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
            self.offered.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }

    impl Sink for Recorder {
        fn offer(&self, events: &[Arc<StreamEvent>]) -> Offer {
            self.offered().extend(events.iter().map(|e| e.id));
            self.offer
        }
    }

    fn events(ids: std::ops::RangeInclusive<u64>, last: EventKind) -> Vec<Arc<StreamEvent>> {
        let end = *ids.end();
        ids.map(|id| Arc::new(StreamEvent::new(id, if id == end { last } else { EventKind::PROGRESS }, b"{}", None)))
            .collect()
    }

    #[test]
    fn a_parked_viewer_gets_only_what_it_lacks_and_stays_parked() {
        let (recorder, parking) = viewer_with(Offer::Written);
        parking.park(5);
        assert!(parking.deliver(&events(4..=7, EventKind::PROGRESS), Instant::now()));
        assert_eq!(*recorder.offered(), [6, 7], "events up to the cursor are not written again");
        assert_eq!(parking.take_written().0, 2);
        assert!(parking.woken().now_or_never().is_none(), "still parked");
        assert!(!parking.deliver(&events(6..=7, EventKind::PROGRESS), Instant::now()), "nothing new");
        assert_eq!(recorder.offered().len(), 2);
    }

    #[test]
    fn a_viewer_that_is_not_parked_is_never_written() {
        let (recorder, parking) = viewer_with(Offer::Written);
        assert!(!parking.deliver(&events(1..=2, EventKind::PROGRESS), Instant::now()));
        parking.park(0);
        parking.detach();
        assert!(!parking.deliver(&events(1..=2, EventKind::PROGRESS), Instant::now()));
        assert!(recorder.offered().is_empty());
        assert!(parking.is_detached());
    }

    #[test]
    fn a_partial_write_hands_the_connection_back_after_the_events_it_took() {
        let (_, parking) = viewer_with(Offer::Held);
        parking.park(1);
        assert!(parking.deliver(&events(2..=3, EventKind::PROGRESS), Instant::now()));
        assert_eq!(parking.woken().now_or_never(), Some(3), "the sink holds the rest of 2 and 3");
    }

    #[test]
    fn a_refused_write_hands_the_connection_back_where_it_was() {
        let (_, parking) = viewer_with(Offer::Refused);
        parking.park(1);
        assert!(!parking.deliver(&events(2..=3, EventKind::PROGRESS), Instant::now()));
        assert_eq!(parking.woken().now_or_never(), Some(1), "the viewer catches up from 1");
        assert_eq!(parking.take_written().0, 0);
    }

    #[test]
    fn the_terminal_event_hands_the_connection_back_and_the_end_wakes_the_parked() {
        let (_, parking) = viewer_with(Offer::Written);
        parking.park(1);
        assert!(parking.deliver(&events(2..=3, EventKind::COMPLETED), Instant::now()));
        assert_eq!(parking.woken().now_or_never(), Some(3));

        let (_, parked) = viewer_with(Offer::Written);
        parked.park(4);
        parked.hand_back();
        assert_eq!(parked.woken().now_or_never(), Some(4));
    }
}
