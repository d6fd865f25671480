//! The instance's one reader of the cluster's streams: a task with a connection of its own
//! that waits in `XREAD BLOCK` on every stream this instance follows at once, and hands each
//! follower the entries after its cursor. Followers register with a cursor and receive batches
//! on a bounded channel; one that does not keep up is dropped (its stream ends and the hub
//! opens it again from where it was, by `XRANGE`).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{
    AsyncConnectionConfig, Client,
    aio::{ConnectionManager, MultiplexedConnection},
    streams::{StreamId, StreamReadOptions, StreamReadReply},
};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::keys::EntryId;

/// What a follower receives: entries after its cursor, or why reading stopped.
pub(super) type Batch = Result<Vec<StreamId>, String>;

/// How long one `XREAD` blocks when nothing comes; new followers wake it earlier.
const BLOCK: Duration = Duration::from_millis(500);
/// Entries one `XREAD` returns per stream at most.
const COUNT: usize = 256;
/// Batches a follower may have unread before it is dropped.
const FOLLOWER_QUEUE: usize = 64;

/// The registrations of this instance's followers, by stream key.
#[derive(Debug, Default)]
pub(super) struct Reader {
    followers: Mutex<HashMap<String, Vec<Follower>>>,
    wake: Notify,
    /// The reader connection's `CLIENT ID` (0: none yet), for `CLIENT UNBLOCK`.
    client_id: AtomicI64,
    /// Whether the reader waits in `XREAD` now.
    blocked: AtomicBool,
    /// Bumped by every new follower: a read prepared before it is not started.
    generation: AtomicU64,
}

#[derive(Debug)]
struct Follower {
    cursor: EntryId,
    sender: mpsc::Sender<Batch>,
}

impl Reader {
    /// Follows `stream` after `cursor`: the receiver gets every later entry, in order.
    /// `manager` wakes the reader if it waits in `XREAD` (a wake-up that arrives before the read
    /// is lost; the read then ends after `BLOCK`).
    pub fn follow(&self, stream: &str, cursor: EntryId, manager: ConnectionManager) -> mpsc::Receiver<Batch> {
        let (sender, receiver) = mpsc::channel(FOLLOWER_QUEUE);
        self.lock().entry(stream.to_owned()).or_default().push(Follower { cursor, sender });
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
        let id = self.client_id.load(Ordering::SeqCst);
        if id > 0 && self.blocked.load(Ordering::SeqCst) {
            // The reader waits on what it knew before: make it look again now.
            let mut manager = manager;
            tokio::spawn(async move {
                let unblocked: redis::RedisResult<i64> =
                    redis::cmd("CLIENT").arg("UNBLOCK").arg(id).query_async(&mut manager).await;
                if let Err(error) = unblocked {
                    tracing::debug!(%error, "could not wake the cluster reader; it wakes by itself");
                }
            });
        }
        receiver
    }

    /// Every followed stream with the oldest cursor of its followers, and the generation it
    /// was taken at; followers that left are forgotten.
    fn snapshot(&self) -> (Vec<(String, EntryId)>, u64) {
        let mut followers = self.lock();
        let generation = self.generation.load(Ordering::SeqCst);
        followers.retain(|_, list| {
            list.retain(|f| !f.sender.is_closed());
            !list.is_empty()
        });
        let streams = followers
            .iter()
            .filter_map(|(key, list)| Some((key.clone(), list.iter().map(|f| f.cursor).min()?)))
            .collect();
        (streams, generation)
    }

    /// Hands out what one `XREAD` after `from` returned. A follower gets entries only from a
    /// read that started at or before its cursor (one that came later waits for the next read,
    /// which starts at its cursor): nothing between is skipped, unless Redis trimmed it first
    /// (a follower that far behind was dropped long before: its queue holds 64 batches).
    fn dispatch(&self, reply: StreamReadReply, from: &[(String, EntryId)]) {
        let mut followers = self.lock();
        for stream in reply.keys {
            let Some(list) = followers.get_mut(&stream.key) else { continue };
            let Some(start) = from.iter().find(|(key, _)| *key == stream.key).map(|(_, id)| *id) else { continue };
            let entries: Vec<(EntryId, StreamId)> =
                stream.ids.into_iter().filter_map(|e| Some((EntryId::parse(&e.id)?, e))).collect();
            let Some(newest) = entries.last().map(|(id, _)| *id) else { continue };
            list.retain_mut(|follower| {
                if follower.cursor < start {
                    return true;
                }
                let fresh: Vec<StreamId> =
                    entries.iter().filter(|(id, _)| *id > follower.cursor).map(|(_, e)| e.clone()).collect();
                if fresh.is_empty() {
                    return true;
                }
                follower.cursor = newest.max(follower.cursor);
                // A follower that cannot take more is dropped; it starts again from Redis.
                follower.sender.try_send(Ok(fresh)).is_ok()
            });
        }
    }

    /// Tells every follower that reading stopped, and forgets them all.
    pub fn fail_all(&self, reason: &str) {
        let mut followers = self.lock();
        for follower in followers.drain().flat_map(|(_, list)| list) {
            let _ = follower.sender.try_send(Err(reason.to_owned()));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Follower>>> {
        self.followers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs the reader until `shutdown`: `trouble` is told of every Redis failure (the cluster then
/// degrades), and reading starts again on a new connection after `pause`.
pub(super) async fn run(
    reader: Arc<Reader>,
    client: Client,
    pause: Duration,
    trouble: impl Fn(&redis::RedisError),
    shutdown: CancellationToken,
) {
    let mut connection: Option<MultiplexedConnection> = None;
    loop {
        let (streams, generation) = reader.snapshot();
        if streams.is_empty() {
            tokio::select! {
                () = reader.wake.notified() => continue,
                () = shutdown.cancelled() => return,
            }
        }
        let result = tokio::select! {
            result = read(&reader, &client, &mut connection, pause, &streams, generation) => result,
            () = shutdown.cancelled() => return,
        };
        if let Err(error) = result {
            connection = None;
            reader.client_id.store(0, Ordering::SeqCst);
            trouble(&error);
            reader.fail_all(&format!("the cluster's Redis failed: {}", super::describe(&error)));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// One `XREAD` of `streams`, each after its cursor, on the reader's connection (made first if
/// needed); not started when a follower came after `generation`.
async fn read(
    reader: &Reader,
    client: &Client,
    connection: &mut Option<MultiplexedConnection>,
    pause: Duration,
    streams: &[(String, EntryId)],
    generation: u64,
) -> redis::RedisResult<()> {
    let connection = match connection {
        Some(connection) => connection,
        None => {
            // The reply to a blocked read comes after up to BLOCK: wait longer than that.
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(pause))
                .set_response_timeout(Some(BLOCK + pause));
            let mut made = client.get_multiplexed_async_connection_with_config(&config).await?;
            let id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut made).await?;
            reader.client_id.store(id, Ordering::SeqCst);
            connection.insert(made)
        }
    };
    let options = StreamReadOptions::default().block(BLOCK.as_millis() as usize).count(COUNT);
    let keys: Vec<&str> = streams.iter().map(|(key, _)| key.as_str()).collect();
    let ids: Vec<String> = streams.iter().map(|(_, id)| id.to_string()).collect();
    reader.blocked.store(true, Ordering::SeqCst);
    if reader.generation.load(Ordering::SeqCst) != generation {
        // A follower came meanwhile and did not see the reader blocked: read again with it.
        reader.blocked.store(false, Ordering::SeqCst);
        return Ok(());
    }
    let reply: redis::RedisResult<Option<StreamReadReply>> =
        redis::AsyncCommands::xread_options(connection, &keys, &ids, &options).await;
    reader.blocked.store(false, Ordering::SeqCst);
    if let Some(reply) = reply? {
        reader.dispatch(reply, streams);
    }
    Ok(())
}
