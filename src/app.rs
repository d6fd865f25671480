//! `App`: builds the BFF from its config, binds the listener itself, and runs until shutdown.

mod config;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use axum::http::HeaderValue;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_client::HealthClient;

use crate::{
    auth::{Authenticator, KeyError},
    cluster::{Cluster, ClusterError, Clustered},
    http::HealthCheck,
    http::{self, AppState, EdgeSettings, ServerSettings, StreamLimits, TlsError},
    hub::Hub,
    metrics::Metrics,
    routes::{self, LoadError, RouteTable, Serving},
    upstream::{ChannelError, Deferred, Refresh, RouteResource, RouteResourceError, SharedResource, Waiting},
};

pub use self::config::ServeConfig;

/// Why the BFF could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The upstream endpoints are unusable.
    #[error(transparent)]
    Upstream(#[from] ChannelError),
    /// The routes file (or the built-in route) is unusable.
    #[error(transparent)]
    Routes(#[from] LoadError),
    /// A route cannot be served.
    #[error(transparent)]
    Route(#[from] RouteResourceError),
    /// A route names an upstream the table does not have (validation prevents this).
    #[error("route {0}: no such upstream")]
    NoUpstream(String),
    /// The token verification keys are unusable.
    #[error(transparent)]
    Auth(#[from] KeyError),
    /// The TLS certificate or key is unusable (the message names the file).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Cluster mode could not start.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The BFF, bound and ready to serve.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    service: http::HttpService,
    shutdown: CancellationToken,
    grace: Duration,
    server: ServerSettings,
}

impl App {
    /// Loads the routes (the routes file, with descriptors from files or server reflection, or
    /// the built-in document route), connects (lazily) to the upstreams and binds the listen
    /// address. `shutdown` ends the
    /// server and every open stream when cancelled.
    pub async fn build(config: ServeConfig, shutdown: CancellationToken) -> Result<Self, BuildError> {
        let Serving { table, pending, reflected } = match &config.routes {
            Some(path) => routes::load_for_serving(path, config.reflection_timeout).await?,
            None => {
                let mut table = RouteTable::built_in(&config.upstreams)?;
                // The built-in route's log size is the one flag of its own.
                table.routes.iter_mut().for_each(|route| route.replay = config.hub.replay_log);
                Serving { table, pending: Vec::new(), reflected: BTreeMap::new() }
            }
        };
        let metrics = Arc::new(Metrics::default());
        let cluster = match &config.cluster.redis_url {
            Some(url) => Some(Cluster::start(&config.cluster, url, Arc::clone(&metrics), shutdown.clone()).await?),
            None => None,
        };
        // In cluster mode every route's resource is shared through Redis.
        let shared = |resource: SharedResource| -> SharedResource {
            match &cluster {
                Some(cluster) => {
                    let settings = config.hub.settings(Arc::clone(&metrics));
                    Arc::new(Clustered::new(resource, Arc::clone(cluster), settings))
                }
                None => resource,
            }
        };
        let mut pools = HashMap::new();
        let mut health = Vec::new();
        for upstream in &table.upstreams {
            let channel = config.upstream.channel(upstream.urls.clone());
            pools.insert(upstream.name.clone(), Arc::new(channel.pool()?));
            if let Some(service) = &upstream.health {
                health.push(HealthCheck {
                    upstream: format!("{} ({})", upstream.name, upstream.urls.join(", ")),
                    service: service.clone(),
                    client: HealthClient::new(channel.health_channel()?),
                });
            }
        }
        // One hub per route; a route is its entry in the table, served by the generic resource.
        let mut hubs = Vec::new();
        for route in table.routes {
            let pool = pools.get(&route.upstream).cloned().ok_or_else(|| BuildError::NoUpstream(route.path.clone()))?;
            // Descriptors from reflection are asked for again after a call broke with the
            // connection: the upstream may come back redeployed.
            let refresh =
                reflected.get(&route.upstream).map(|part| Refresh::new(part.clone(), config.reflection_timeout));
            let resource = RouteResource::new(
                route,
                pool,
                config.upstream.upstream_deadline,
                config.upstream.max_upstream_message_bytes,
                refresh,
            )?;
            let settings = config.hub.settings(Arc::clone(&metrics));
            hubs.push(Hub::new(shared(Arc::new(resource)), settings, shutdown.clone()));
        }
        // Routes of upstreams whose reflection did not answer: served with 503 until it does.
        for pending in pending {
            let pool = pools
                .get(pending.upstream())
                .cloned()
                .ok_or_else(|| BuildError::NoUpstream(pending.upstream().into()))?;
            let routes: Vec<Arc<Deferred>> =
                pending.file.routes.iter().map(|spec| Arc::new(Deferred::new(spec, pending.reason.clone()))).collect();
            for route in &routes {
                let settings = config.hub.settings(Arc::clone(&metrics));
                hubs.push(Hub::new(shared(Arc::clone(route) as SharedResource), settings, shutdown.clone()));
            }
            let waiting = Waiting {
                pending,
                routes,
                pool,
                deadline: config.upstream.upstream_deadline,
                max_message_bytes: config.upstream.max_upstream_message_bytes,
                reflection_timeout: config.reflection_timeout,
            };
            tokio::spawn(waiting.run(shutdown.clone()));
        }
        let auth = Authenticator::from_config(&config.auth)?;
        if matches!(auth, Authenticator::Disabled) {
            tracing::warn!(
                "AUTHENTICATION IS DISABLED (--insecure-no-auth): every stream is anonymous; never run this way in production"
            );
        }
        let state = AppState {
            stream: config.stream.settings(),
            shutdown: shutdown.clone(),
            health: health.into(),
            routes: hubs.into(),
            auth,
            limits: StreamLimits::from_config(&config.limits),
            metrics,
            allowed_origins: config.cors_origins.iter().cloned().collect(),
            cluster,
            demo_cookie: config.demo_token.as_deref().and_then(|token| {
                let cookie = &config.auth.auth_cookie;
                HeaderValue::from_str(&format!("{cookie}={token}; Path=/; HttpOnly; SameSite=Strict")).ok()
            }),
        };
        let edge = EdgeSettings {
            cors_origins: config.cors_origins.clone(),
            max_header_bytes: config.server.max_header_bytes,
        };
        let server = config.server.settings()?;
        let listener = http::bind(config.listen, config.server.listen_backlog)
            .map_err(|source| BuildError::Bind { addr: config.listen, source })?;
        Ok(Self { listener, service: http::service(state, &edge), shutdown, grace: config.shutdown_grace, server })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves until the shutdown token is cancelled, then lets open streams end (they select
    /// on the same token) for at most the grace period.
    pub async fn run(self) {
        let addr = self.local_addr();
        let scheme = if self.server.tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, scheme, "sse-bff listening");
        let server = http::serve(self.listener, self.service, self.server, self.shutdown.clone());
        let stopped = self.shutdown.clone();
        let grace = self.grace;
        tokio::select! {
            () = server => {}
            () = async move {
                stopped.cancelled().await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(?grace, "connections still open after the grace period; exiting anyway");
            }
        }
    }
}
