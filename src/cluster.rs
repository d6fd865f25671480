//! Cluster mode on Redis Streams (`serve --redis URL`): many instances, one upstream call per
//! shared resource, resume on any instance.
//!
//! Every route's resource is wrapped in a [`Clustered`] resource. The hub of each instance still
//! shares one call per resource among its viewers and fans it out as without a cluster; only
//! that call now reads the resource's Redis stream (`XRANGE` for what is there, then the
//! instance's one reader task in `XREAD BLOCK`, `reader.rs`) instead of calling the upstream.
//! The upstream is called by the one instance that holds the resource's lease (`holder.rs`):
//! it appends each event to the stream with a script that checks its fencing token, so a holder
//! that lost its lease (paused, partitioned) cannot append. Instances with viewers of a
//! resource refresh its `interest` key and take the lease when nobody holds it: when the holder
//! dies, another instance takes over within the lease's TTL. What Redis holds is described in
//! `keys.rs`.
//!
//! When Redis does not answer, the cluster is *degraded*: every open falls back to an upstream
//! call of the instance's own (the behaviour without a cluster), `/readyz` says so, and when
//! Redis answers again those calls end with a transient error that the hub resumes from, now
//! through Redis again: viewers' streams go on.

mod holder;
mod interest;
mod keys;
mod reader;
mod resource;
mod scripts;

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use redis::{
    Client, IntoConnectionInfo as _, RedisError,
    aio::{ConnectionManager, ConnectionManagerConfig},
    streams::StreamRangeReply,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use self::resource::Clustered;
use self::{
    keys::{EntryId, Keys},
    reader::Reader,
    scripts::Scripts,
};
use crate::{hub::HubSettings, metrics::Metrics, upstream::Call, upstream::SharedResource};

/// The cluster's flags of `serve`. Its `Debug` leaves the URL out: it may hold the password.
#[derive(Clone, clap::Args)]
pub struct ClusterConfig {
    /// Redis (or Valkey) that makes the instances one cluster: `redis://host:6379/0`, or
    /// `rediss://` for TLS. A password may be in the URL (`redis://:PASSWORD@host`) or in
    /// `--redis-password-file`. Without it, each instance works alone.
    #[arg(long = "redis", env = "SSE_BFF_REDIS_URL", value_name = "URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// A file whose first line is the Redis password (it overrides one in the URL).
    #[arg(long, env = "SSE_BFF_REDIS_PASSWORD_FILE", value_name = "FILE")]
    pub redis_password_file: Option<PathBuf>,
    /// How long the lease of the instance calling the upstream for a resource lasts unless
    /// renewed: after it dies, another instance takes over within this time. A third of it is
    /// how long a Redis command may take before the instances fall back to calls of their own.
    #[arg(long, env = "SSE_BFF_LEASE_TTL", default_value = "5s", value_parser = parse_lease_ttl)]
    pub lease_ttl: Duration,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("redis_password_file", &self.redis_password_file)
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

fn parse_lease_ttl(text: &str) -> Result<Duration, String> {
    let ttl = crate::flags::parse_duration(text)?;
    if !(Duration::from_millis(300)..=Duration::from_secs(300)).contains(&ttl) {
        return Err("the lease TTL must be between 300ms and 5m".into());
    }
    Ok(ttl)
}

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The URL is not a Redis URL.
    #[error("--redis: {0}")]
    Url(String),
    /// The password file could not be read.
    #[error("--redis-password-file {path}: {source}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// This instance's part of the cluster: its Redis connections, the reader task, the leases it
/// holds and the resources it has viewers of.
#[derive(Debug)]
pub struct Cluster {
    /// The connection for every command but the reader's; replaced when it stops answering
    /// (a half-open connection would otherwise time out every command until the kernel gives
    /// up on it).
    manager: RwLock<ConnectionManager>,
    client: Client,
    /// `<uuid>`: this instance in fencing tokens.
    instance: String,
    lease_ttl: Duration,
    healthy: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    reader: Arc<Reader>,
    /// Resources with viewers on this instance, by their keys' base.
    local: Mutex<HashMap<String, Local>>,
    /// Resources whose lease this instance holds (or is taking), by their keys' base.
    held: Mutex<HashSet<String>>,
    shutdown: CancellationToken,
    scripts: Scripts,
}

/// A resource with viewers on this instance: what a holder needs to call its upstream.
#[derive(Debug)]
struct Local {
    keys: Keys,
    refs: usize,
    resource: SharedResource,
    call: Call,
    settings: HubSettings,
}

/// What a follower gets from [`Cluster::open`].
#[derive(Debug)]
struct Opened {
    /// The entries after the resume point that Redis has.
    backlog: StreamRangeReply,
    /// The id of the newest event trimmed away (0: none): a resume point below it is gone (the
    /// same rule as the hub's log).
    trimmed: u64,
}

impl Cluster {
    /// Connects (lazily: Redis may be down at start, the cluster is then degraded until it
    /// answers) and starts the reader and the upkeep tasks, which end with `shutdown`.
    ///
    /// Errors: a URL that is not `redis://` or `rediss://`, or an unreadable password file.
    pub async fn start(
        config: &ClusterConfig,
        url: &str,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, ClusterError> {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(ClusterError::Url("the URL must start with redis:// or rediss://".into()));
        }
        let mut info = url.into_connection_info().map_err(|e| ClusterError::Url(describe(&e)))?;
        if let Some(path) = &config.redis_password_file {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ClusterError::PasswordFile { path: path.clone(), source })?;
            let password = text.lines().next().unwrap_or_default().to_owned();
            if password.is_empty() {
                let source = std::io::Error::new(std::io::ErrorKind::InvalidData, "the first line is empty");
                return Err(ClusterError::PasswordFile { path: path.clone(), source });
            }
            let redis = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(redis);
        }
        let client = Client::open(info).map_err(|e| ClusterError::Url(describe(&e)))?;
        let ttl = config.lease_ttl;
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_config(ttl))
            .map_err(|e| ClusterError::Url(describe(&e)))?;
        let cluster = Arc::new(Self {
            manager: RwLock::new(manager),
            client: client.clone(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            lease_ttl: ttl,
            healthy: watch::channel(false).0,
            metrics,
            reader: Arc::new(Reader::default()),
            local: Mutex::new(HashMap::new()),
            held: Mutex::new(HashSet::new()),
            shutdown: shutdown.clone(),
            scripts: Scripts::new(),
        });
        cluster.metrics.cluster_degraded(true);
        // The first answer decides how the instance starts.
        if let Err(error) = cluster.check().await {
            tracing::warn!(
                error = %describe(&error),
                "cluster degraded from the start: Redis does not answer or refuses writes; this instance calls the upstream itself until it does"
            );
        }
        let weak = Arc::downgrade(&cluster);
        let trouble = move |error: &RedisError| {
            if let Some(cluster) = weak.upgrade() {
                cluster.trouble(error);
            }
        };
        tokio::spawn(reader::run(Arc::clone(&cluster.reader), client, ttl / 3, trouble, shutdown));
        tokio::spawn(Arc::clone(&cluster).upkeep());
        Ok(cluster)
    }

    /// Whether Redis answers (else the cluster is degraded).
    pub fn is_healthy(&self) -> bool {
        *self.healthy.borrow()
    }

    /// `ok` or `degraded`, as `/readyz` reports it.
    pub fn status(&self) -> &'static str {
        if self.is_healthy() { "ok" } else { "degraded" }
    }

    /// This instance's connection for commands.
    fn redis(&self) -> ConnectionManager {
        self.manager.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Healthy when Redis takes a write (a key of this instance's own, expiring): a Redis that
    /// answers `PING` but refuses writes (out of memory, a read-only replica, loading, no
    /// permission) is no use to the cluster. One log line and the metric per change. A
    /// connection that timed out is replaced.
    async fn check(&self) -> Result<(), RedisError> {
        let mut manager = self.redis();
        let alive = format!("sse-bff:alive:{}", self.instance);
        let ttl = (self.lease_ttl * 2).as_millis() as u64;
        let written: redis::RedisResult<()> =
            redis::cmd("SET").arg(&alive).arg(1).arg("PX").arg(ttl).query_async(&mut manager).await;
        match written {
            Ok(()) => {
                self.set_healthy(true, None);
                Ok(())
            }
            Err(error) => {
                let fresh =
                    || ConnectionManager::new_lazy_with_config(self.client.clone(), manager_config(self.lease_ttl));
                if error.is_timeout()
                    && let Ok(fresh) = fresh()
                {
                    *self.manager.write().unwrap_or_else(PoisonError::into_inner) = fresh;
                }
                self.set_healthy(false, Some(&error));
                Err(error)
            }
        }
    }

    /// A Redis command failed: the cluster is degraded until Redis takes a write again. Every
    /// command the cluster sends is one Redis should take, so any failure counts (a refused
    /// write as much as a lost connection): falling back to the instances' own calls is always
    /// safe, and waiting on a Redis that refuses would leave viewers without events.
    fn trouble(&self, error: &RedisError) {
        self.set_healthy(false, Some(error));
    }

    fn set_healthy(&self, healthy: bool, error: Option<&RedisError>) {
        if self.healthy.send_replace(healthy) == healthy {
            return;
        }
        self.metrics.cluster_degraded(!healthy);
        if !healthy {
            // Followers fall back at once rather than when their reads fail.
            self.reader.fail_all("the cluster is degraded: Redis does not answer");
        }
        match error {
            None => tracing::info!("cluster: Redis takes writes; resources are shared across instances"),
            Some(error) => tracing::warn!(
                error = %describe(error),
                "cluster degraded: Redis does not answer or refuses writes; this instance calls the upstream itself"
            ),
        }
    }

    /// The resources with viewers here: their keys and whether the lease is held here.
    fn locals(&self) -> Vec<(Keys, bool)> {
        let local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        local.values().map(|l| (l.keys.clone(), held.contains(&l.keys.base))).collect()
    }

    /// How long a live stream outlives its last append or renewal: a holder that died and
    /// found no successor leaves nothing behind for longer.
    fn live_ttl(&self, settings: &HubSettings) -> Duration {
        settings.keep_finished.max(settings.linger) + self.lease_ttl * 3
    }

    /// Reads what a follower starting after `after` gets now. For a route `numbered` by the BFF
    /// it also raises the resource's floor to `after` (see `OPEN`), for `floor_ttl`.
    async fn open(
        &self,
        keys: &Keys,
        after: u64,
        replay: usize,
        numbered: bool,
        floor_ttl: Duration,
    ) -> redis::RedisResult<Opened> {
        let mut manager = self.redis();
        let count = (replay + 256).min(20_000);
        let (trimmed, backlog): (String, StreamRangeReply) = self
            .scripts
            .open
            .key(&keys.stream)
            .key(&keys.floor)
            .arg(EntryId(after, 0).to_string())
            .arg(count)
            .arg(after)
            .arg(floor_ttl.as_millis() as u64)
            .arg(if numbered { "1" } else { "0" })
            .invoke_async(&mut manager)
            .await?;
        let trimmed = EntryId::parse(&trimmed).map_or(0, |trimmed| trimmed.0);
        Ok(Opened { backlog, trimmed })
    }
}

/// How the command connection reconnects and how long it waits: about a third of the lease
/// TTL, so that a Redis gone quiet is noticed within the TTL.
fn manager_config(ttl: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(ttl / 3))
        .set_response_timeout(Some(ttl / 3))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(ttl / 5)
}

/// A Redis error as one line, without the URL or anything secret (the crate's messages name
/// the command and the server's answer only).
fn describe(error: &RedisError) -> String {
    error.to_string()
}
