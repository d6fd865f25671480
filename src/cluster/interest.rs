//! How an instance takes part in a resource: it counts the resource's followers here,
//! refreshes the resource's `interest` key while it has any, and takes the resource's lease when
//! nobody holds it (then `holder.rs` calls the upstream).

use std::sync::{Arc, PoisonError};

use super::{Cluster, Local, holder, keys::Keys};

use crate::{
    hub::HubSettings,
    upstream::{Call, SharedResource},
};

impl Cluster {
    /// Every third of the lease TTL: checks Redis, refreshes the interest in every resource
    /// with viewers here, and takes the leases nobody holds.
    pub(super) async fn upkeep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.lease_ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.shutdown.cancelled() => return,
            }
            // A failure is logged and counted by `set_healthy`, once per change.
            let _ = self.check().await;
            if !self.is_healthy() {
                continue;
            }
            let wanted = self.locals();
            if wanted.is_empty() {
                continue;
            }
            // One round trip for every resource: refresh the interest, and ask whether a lease
            // exists for those not held here.
            let mut pipe = redis::pipe();
            let interest_ttl = (self.lease_ttl * 2).as_millis() as u64;
            let mut unheld = Vec::new();
            for (keys, held) in &wanted {
                pipe.cmd("SET").arg(&keys.interest).arg(1).arg("PX").arg(interest_ttl).ignore();
                if !held {
                    pipe.cmd("EXISTS").arg(&keys.lease);
                    unheld.push(keys);
                }
            }
            let mut manager = self.redis();
            let leased: Vec<bool> = match pipe.query_async(&mut manager).await {
                Ok(leased) => leased,
                Err(error) => {
                    self.trouble(&error);
                    continue;
                }
            };
            for (keys, _) in unheld.into_iter().zip(leased).filter(|(_, leased)| !leased) {
                self.try_hold(&keys.base).await;
            }
        }
    }

    /// Takes the lease of the resource `base` when nobody holds it, and starts calling its
    /// upstream here.
    pub(super) async fn try_hold(self: &Arc<Self>, base: &str) {
        let (keys, resource, call, settings) = {
            let local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(l) = local.get(base) else { return };
            (l.keys.clone(), Arc::clone(&l.resource), l.call.clone(), l.settings.clone())
        };
        if !self.held.lock().unwrap_or_else(PoisonError::into_inner).insert(keys.base.clone()) {
            return;
        }
        let ttl = self.lease_ttl.as_millis() as u64;
        let fence_ttl = self.live_ttl(&settings).as_millis() as u64 * 4;
        let mut manager = self.redis();
        let taken: redis::RedisResult<Option<String>> = self
            .scripts
            .acquire
            .key(&keys.lease)
            .key(&keys.fence)
            .arg(ttl)
            .arg(&self.instance)
            .arg(fence_ttl)
            .invoke_async(&mut manager)
            .await;
        match taken {
            Ok(Some(token)) => {
                tracing::debug!(resource = %keys.base, "cluster: took the lease; calling the upstream");
                tokio::spawn(holder::hold(Arc::clone(self), keys, token, resource, call, settings));
            }
            Ok(None) => self.let_go(&keys.base),
            Err(error) => {
                self.let_go(&keys.base);
                self.trouble(&error);
            }
        }
    }

    /// This instance no longer holds (or takes) the lease of `base`.
    pub(super) fn let_go(&self, base: &str) {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).remove(base);
    }

    /// Counts a follower of `keys` here until the guard drops: the instance then refreshes the
    /// resource's interest and takes its lease when nobody holds it (at once for the first).
    pub(super) fn interest(
        self: &Arc<Self>,
        keys: &Keys,
        resource: &SharedResource,
        call: &Call,
        settings: &HubSettings,
    ) -> Interest {
        let first = {
            let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = local.entry(keys.base.clone()).or_insert_with(|| Local {
                keys: keys.clone(),
                refs: 0,
                resource: Arc::clone(resource),
                call: call.clone(),
                settings: settings.clone(),
            });
            entry.refs += 1;
            entry.refs == 1
        };
        if first {
            let cluster = Arc::clone(self);
            let keys = keys.clone();
            tokio::spawn(async move {
                let mut manager = cluster.redis();
                let ttl = (cluster.lease_ttl * 2).as_millis() as u64;
                let set: redis::RedisResult<()> =
                    redis::cmd("SET").arg(&keys.interest).arg(1).arg("PX").arg(ttl).query_async(&mut manager).await;
                match set {
                    Ok(()) => cluster.try_hold(&keys.base).await,
                    Err(error) => cluster.trouble(&error),
                }
            });
        }
        Interest { cluster: Arc::clone(self), base: keys.base.clone() }
    }
}

/// A follower of a resource on this instance (see [`Cluster::interest`]).
#[derive(Debug)]
pub(super) struct Interest {
    cluster: Arc<Cluster>,
    base: String,
}

impl Drop for Interest {
    fn drop(&mut self) {
        let mut local = self.cluster.local.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = local.get_mut(&self.base) {
            entry.refs = entry.refs.saturating_sub(1);
            if entry.refs == 0 {
                local.remove(&self.base);
            }
        }
    }
}
