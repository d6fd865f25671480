//! The parked viewers of a shared call, and the writes of each event to their connections.
//!
//! A small audience is written by the driver itself. A large one is split into shards, each
//! written by a task of its own, so that every worker thread writes to sockets at once: on
//! loopback a write also runs the receiving side, and one thread alone cannot keep up with a
//! broadcast to thousands. Each shard writes its events in order; the events that queued up
//! while it wrote go out together, one write per viewer, so a shard that falls behind catches
//! up by writing more per system call. One that falls further behind than a batch hands its
//! viewers back to their tasks, which catch up from the log and skip to the latest update.

use std::sync::{
    Arc, Mutex, MutexGuard, PoisonError,
    atomic::{AtomicUsize, Ordering},
};

use tokio::time::Instant;

use crate::{
    event::StreamEvent,
    hub::direct::{MAX_BATCH, Parking},
    metrics::Metrics,
};

/// Shards of a large audience, each written by a task of its own: two, the cores of the machine
/// the benchmark runs on (`docs/PERFORMANCE.md`); more shards than worker threads only queue.
const SHARDS: usize = 2;
/// A shard of at most this many viewers is written by the driver itself, at once.
const INLINE: usize = 128;
/// The shortest time between two passes of a larger shard over its sockets. Events that come
/// faster share one write per viewer: on loopback each write costs several microseconds of
/// kernel time, which a broadcast pays per viewer. The first event after a pause goes out at
/// once.
const PACE: std::time::Duration = std::time::Duration::from_millis(16);

/// The parked viewers of one shared call.
#[derive(Debug, Default)]
pub(super) struct Audience {
    shards: [Arc<Shard>; SHARDS],
    /// Where the next viewer goes, round robin.
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct Shard {
    viewers: Mutex<Vec<Arc<Parking>>>,
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    events: Vec<Arc<StreamEvent>>,
    /// Viewers parked since the shard's task took its last batch; it adds them before the next
    /// (the driver never waits for a pass to add them itself).
    joining: Vec<Arc<Parking>>,
    /// A task is writing this shard's events.
    busy: bool,
    /// More events queued than one batch holds: they were dropped, and the viewers are handed
    /// back to catch up from the log.
    overflowed: bool,
}

impl Audience {
    /// Adds newly parked viewers and writes `events` to every parked viewer.
    pub(super) fn publish(&self, events: &[Arc<StreamEvent>], incoming: Vec<Arc<Parking>>, metrics: &Arc<Metrics>) {
        let mut joining: [Vec<Arc<Parking>>; SHARDS] = Default::default();
        for viewer in incoming {
            joining[self.next.fetch_add(1, Ordering::Relaxed) % SHARDS].push(viewer);
        }
        for (shard, joining) in self.shards.iter().zip(joining) {
            let mut queue = lock(&shard.queue);
            if queue.busy {
                // Its task takes these after the batch it is writing.
                queue.joining.extend(joining);
                queue.events.extend(events.iter().cloned());
                if queue.events.len() > MAX_BATCH {
                    queue.events.clear();
                    queue.overflowed = true;
                }
                continue;
            }
            // No task is writing this shard: its list is free.
            let mut viewers = lock(&shard.viewers);
            viewers.extend(joining);
            if viewers.is_empty() {
                continue;
            }
            if viewers.len() <= INLINE {
                drop(queue);
                write(viewers, events, metrics);
            } else {
                queue.busy = true;
                queue.events.extend(events.iter().cloned());
                drop((viewers, queue));
                let (shard, metrics) = (Arc::clone(shard), Arc::clone(metrics));
                tokio::spawn(async move { shard.drain(&metrics).await });
            }
        }
    }

    /// Takes every parked viewer out, for the call's end.
    pub(super) fn take_all(&self) -> Vec<Arc<Parking>> {
        // Each shard's queue and list are taken under both locks, so no viewer is between the
        // two, and no write is under way once they are out: this may wait for one pass, once per
        // call.
        let mut all = Vec::new();
        for shard in &self.shards {
            let mut queue = lock(&shard.queue);
            all.append(&mut lock(&shard.viewers));
            all.append(&mut queue.joining);
        }
        all
    }

    /// Forgets a viewer that left, unless its shard is being written: that write drops it.
    pub(super) fn forget(&self, parking: &Arc<Parking>) {
        for shard in &self.shards {
            if let Ok(mut viewers) = shard.viewers.try_lock() {
                viewers.retain(|p| !Arc::ptr_eq(p, parking));
            }
        }
    }
}

impl Shard {
    /// Writes queued events until none is left.
    async fn drain(&self, metrics: &Arc<Metrics>) {
        let mut pass: Option<Instant> = None;
        loop {
            if let Some(started) = pass {
                tokio::time::sleep_until(started + PACE).await;
            }
            pass = Some(Instant::now());
            let mut queue = lock(&self.queue);
            if queue.events.is_empty() && queue.joining.is_empty() && !queue.overflowed {
                queue.busy = false;
                return;
            }
            // The list is locked before the queue is let go (the order `publish` and `take_all`
            // use too), so joining viewers are never between the two when the call ends.
            let mut viewers = lock(&self.viewers);
            viewers.append(&mut queue.joining);
            let (events, overflowed) = (std::mem::take(&mut queue.events), std::mem::take(&mut queue.overflowed));
            drop(queue);
            if overflowed {
                tracing::debug!("direct writes fell behind; viewers catch up from the log");
                for viewer in viewers.iter() {
                    viewer.hand_back();
                }
                viewers.retain(|viewer| !viewer.is_detached());
                continue;
            }
            write(viewers, &events, metrics);
        }
    }
}

/// Writes the events to every viewer, one write per viewer and batch, and drops viewers that
/// left.
fn write(mut viewers: MutexGuard<'_, Vec<Arc<Parking>>>, events: &[Arc<StreamEvent>], metrics: &Metrics) {
    for batch in events.chunks(MAX_BATCH) {
        let now = Instant::now();
        let mut wrote = false;
        for viewer in viewers.iter() {
            wrote |= viewer.deliver(batch, now);
        }
        if let (true, Some(last)) = (wrote, batch.last()) {
            // One sample per batch and shard, taken after its last write: the slowest delivery.
            metrics.delivery_lag(last.emitted_at);
        }
    }
    viewers.retain(|viewer| !viewer.is_detached());
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
