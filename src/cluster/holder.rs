//! The lease holder of one resource: calls its upstream (through the hub's machinery for one
//! call: retries, idle timeout, backoff, metrics) and appends each event to the resource's
//! stream with the fenced script, renewing the lease while any instance has viewers.
//!
//! Taking over from a holder that died, it starts after the stream's last event: with the
//! route's resume field the upstream continues there; a route with upstream ids re-calls and
//! Redis refuses the events it already has; a route numbered by the BFF cannot tell, so the
//! new call is announced with a `reset` event and numbered on from there.

use std::{sync::Arc, time::Duration};

use futures_util::{FutureExt as _, StreamExt as _};
use tokio_util::sync::CancellationToken;

use super::{Cluster, keys};
use crate::{
    event::{EventKind, StreamEvent},
    hub::{self, Delivery, HubSettings},
    upstream::{Call, SharedResource, UpstreamError},
};

/// Why appending stopped.
enum Stop {
    /// Another instance holds the lease now.
    Fenced,
    /// Redis failed.
    Redis(redis::RedisError),
}

/// Holds the lease of `keys` with `token` until the resource ends, the lease is lost, no
/// instance has viewers any more, or Redis fails; then lets go.
pub(super) async fn hold(
    cluster: Arc<Cluster>,
    keys: keys::Keys,
    token: String,
    resource: SharedResource,
    call: Call,
    settings: HubSettings,
) {
    let cancel = cluster.shutdown.child_token();
    let _stop_call = cancel.clone().drop_guard();
    cluster.metrics.cluster_leases(1);
    let holder = Holder { cluster: &cluster, keys: &keys, token: &token, settings: &settings };
    if let Err(Stop::Redis(error)) = holder.run(resource, call, cancel).await {
        cluster.trouble(&error);
    }
    cluster.metrics.cluster_leases(-1);
    let mut manager = cluster.redis();
    let released: redis::RedisResult<i64> =
        cluster.scripts.release.key(&keys.lease).arg(&token).invoke_async(&mut manager).await;
    if let Err(error) = released {
        tracing::debug!(error = %super::describe(&error), "cluster: lease not released; it expires");
    }
    cluster.let_go(&keys.base);
}

struct Holder<'a> {
    cluster: &'a Arc<Cluster>,
    keys: &'a keys::Keys,
    token: &'a str,
    settings: &'a HubSettings,
}

impl Holder<'_> {
    async fn run(&self, resource: SharedResource, call: Call, cancel: CancellationToken) -> Result<(), Stop> {
        let numbered = !resource.resumable() && resource.numbered_by_bff();
        let (mut last, ended) = self.last(&resource, numbered).await.map_err(Stop::Redis)?;
        if ended {
            return Ok(());
        }
        if last > 0 && numbered {
            // The calls before were numbered by whoever held the lease: start over visibly.
            last += 1;
            let reset = StreamEvent::new(last, EventKind::RESET, br#"{"reason":"upstream call restarted"}"#, None);
            self.append(&[Appended::Event(&reset)], Ending::Live).await?;
        }
        let mut events = hub::dedicated(resource, call, last, self.settings.clone(), cancel);
        let mut renew = tokio::time::interval(self.cluster.lease_ttl / 3);
        renew.tick().await;
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    if !self.renew().await? {
                        return Ok(());
                    }
                }
                delivery = events.next() => {
                    let Some(delivery) = delivery else { return Ok(()) };
                    let mut batch = vec![delivery];
                    while let Some(Some(more)) = events.next().now_or_never() {
                        batch.push(more);
                    }
                    let mut entries = Vec::with_capacity(batch.len());
                    let mut ended = false;
                    let mut failed = false;
                    for delivery in &batch {
                        match delivery {
                            Delivery::Event(event) => {
                                last = event.id;
                                ended = event.kind.is_terminal();
                                entries.push(Appended::Event(event));
                            }
                            // Shutting down is not the resource failing: stop without a
                            // trace, and another instance takes over.
                            Delivery::Failed(_) if self.cluster.shutdown.is_cancelled() => return Ok(()),
                            Delivery::Failed(error) => {
                                ended = true;
                                failed = true;
                                entries.push(Appended::Failed(last, error));
                            }
                            // This holder fell behind its own call (Redis slower than the
                            // upstream): let go, so that a new holder starts again from the
                            // stream's last event, where nothing is missing.
                            Delivery::Reset => {
                                tracing::warn!(resource = %self.keys.base, "cluster: the holder fell behind its upstream call; handing the lease over");
                                self.append(&entries, Ending::Live).await?;
                                return Ok(());
                            }
                        }
                        if ended {
                            break;
                        }
                    }
                    self.append(&entries, Ending::of(ended, failed)).await?;
                    if ended {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The stream's last event id, and whether the stream has ended. For a route `numbered` by
    /// the BFF, at least the floor: the highest id a follower asked to resume after, which a
    /// stream that expired or was lost with Redis no longer shows.
    async fn last(&self, resource: &SharedResource, numbered: bool) -> redis::RedisResult<(u64, bool)> {
        let mut manager = self.cluster.redis();
        let floor = if numbered {
            let floor: Option<u64> = redis::cmd("GET").arg(&self.keys.floor).query_async(&mut manager).await?;
            floor.unwrap_or(0)
        } else {
            0
        };
        let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&self.keys.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut manager)
            .await?;
        let Some(entry) = newest.ids.first() else { return Ok((floor, false)) };
        let kind = |name: &str| super::resource::kind_of(resource, name);
        let (last, ended) = match keys::decode(&entry.id, &entry.map, &kind) {
            Ok((id, entry)) => (id.0, entry.ends()),
            // Unreadable (another version wrote it): numbered on after it, never reused.
            Err(_) => (keys::EntryId::parse(&entry.id).map_or(0, |id| id.0), false),
        };
        Ok((last.max(floor), ended))
    }

    /// Renews the lease: `false` when it is gone (another instance has it) or was let go (no
    /// instance has viewers).
    async fn renew(&self) -> Result<bool, Stop> {
        let mut manager = self.cluster.redis();
        let renewed: i64 = self
            .cluster
            .scripts
            .renew
            .key(&self.keys.lease)
            .key(&self.keys.interest)
            .key(&self.keys.stream)
            .arg(self.token)
            .arg(self.cluster.lease_ttl.as_millis() as u64)
            .arg(self.cluster.live_ttl(self.settings).as_millis() as u64)
            .invoke_async(&mut manager)
            .await
            .map_err(Stop::Redis)?;
        match renewed {
            1 => Ok(true),
            0 => {
                tracing::warn!(resource = %self.keys.base, "cluster: lease lost to another instance; stopping the upstream call");
                Ok(false)
            }
            _ => {
                tracing::debug!(resource = %self.keys.base, "cluster: no viewer on any instance; upstream call ends");
                Ok(false)
            }
        }
    }

    /// Appends `entries` if the lease is still ours; `ending` sets how long the stream is kept.
    async fn append(&self, entries: &[Appended<'_>], ending: Ending) -> Result<(), Stop> {
        if entries.is_empty() {
            return Ok(());
        }
        let ttl = match ending {
            Ending::Live => self.cluster.live_ttl(self.settings),
            Ending::Finished => self.settings.keep_finished,
            // Kept only long enough for every follower to read it: as without a cluster, the next
            // viewer after a failure gets a new call.
            Ending::Failed => self.settings.keep_finished.min(self.cluster.lease_ttl),
        };
        let mut args = Vec::new();
        for entry in entries {
            match entry {
                Appended::Event(event) => keys::event_args(event, &mut args),
                Appended::Failed(last, error) => keys::failure_args(*last, error, &mut args),
            }
        }
        let mut invocation = self.cluster.scripts.append.key(&self.keys.stream);
        invocation.key(&self.keys.lease).arg(self.token).arg(self.settings.replay.max(1)).arg(millis(ttl).max(1));
        for arg in &args {
            invocation.arg(arg.as_slice());
        }
        let mut manager = self.cluster.redis();
        let added: i64 = invocation.invoke_async(&mut manager).await.map_err(Stop::Redis)?;
        if added < 0 {
            tracing::warn!(resource = %self.keys.base, "cluster: fenced off (the lease passed to another instance); stopping the upstream call");
            return Err(Stop::Fenced);
        }
        Ok(())
    }
}

/// What an append does to the resource.
#[derive(Clone, Copy)]
enum Ending {
    /// It goes on.
    Live,
    /// Its terminal event: kept for `--keep-finished`.
    Finished,
    /// Its failure.
    Failed,
}

impl Ending {
    fn of(ended: bool, failed: bool) -> Self {
        match (ended, failed) {
            (_, true) => Self::Failed,
            (true, false) => Self::Finished,
            (false, false) => Self::Live,
        }
    }
}

/// An entry to append.
enum Appended<'a> {
    Event(&'a StreamEvent),
    /// The call failed after the event with this id.
    Failed(u64, &'a UpstreamError),
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
