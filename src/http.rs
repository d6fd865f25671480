//! The HTTP side: routes, shared state and the tower layer stack.

mod caller;
mod error;
mod events;
#[cfg(fuzzing)]
pub mod fuzzing;
mod health;
mod limits;
mod pages;
mod representation;
mod resource;
mod resume;
mod server;
mod stream;

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    http::{HeaderName, HeaderValue, Method, Request, Uri, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tower::{ServiceBuilder, util::BoxCloneSyncService};
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    trace::TraceLayer,
};

pub use error::ApiError;

pub use limits::{LimitsConfig, StreamLimits};
pub use server::{ServerConfig, ServerSettings, TlsError, bind, serve};
pub use stream::{StreamConfig, StreamSettings};

use crate::{auth::Authenticator, hub::Hub, metrics::Metrics};

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Heartbeat and retry timing.
    pub stream: StreamSettings,
    /// Cancelled when the service starts shutting down.
    pub shutdown: CancellationToken,
    /// The upstreams `/readyz` checks.
    pub health: Arc<[HealthCheck]>,
    /// Every route, for `/readyz` to name those that cannot be served yet.
    pub routes: Arc<[Hub]>,
    /// Token verification.
    pub auth: Authenticator,
    /// Open-stream limits.
    pub limits: Arc<StreamLimits>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Origins besides the BFF's own that may open WebSocket streams: the CORS origins.
    pub allowed_origins: Arc<[HeaderValue]>,
    /// `Set-Cookie` for the demo page under `sse-bff demo` (the demo user's token).
    pub demo_cookie: Option<HeaderValue>,
    /// This instance's part of the cluster, with `--redis`.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl AppState {
    /// A permit for one more stream of the caller's: refused while the service shuts down, and
    /// past the limits on open streams.
    fn permit(&self, caller: &caller::Caller) -> Result<limits::StreamPermit, ApiError> {
        if self.shutdown.is_cancelled() {
            return Err(ApiError::ShuttingDown);
        }
        self.limits.acquire(caller.user())
    }
}

/// One upstream's grpc.health.v1 check, for `/readyz`.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// The upstream as reasons name it: its name and URLs.
    pub upstream: String,
    /// The service name asked about (`""`: the server as a whole).
    pub service: String,
    /// A client over the upstream's endpoints.
    pub client: HealthClient<Channel>,
}

/// Edge settings of the layer stack.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// Browser origins allowed to read streams with credentials; none disables CORS.
    pub cors_origins: Vec<HeaderValue>,
    /// The most bytes of request headers accepted.
    pub max_header_bytes: usize,
}

/// A clonable HTTP service, as the server runs it.
pub type HttpService = BoxCloneSyncService<Request<Body>, Response, Infallible>;

/// The routes behind their layer stack.
///
/// The layers wrap the router as a whole, once. (`Router::layer` would wrap every route, and
/// axum clones a route's whole boxed stack for every request: about 8 KB more per open stream.)
pub fn service(state: AppState, edge: &EdgeSettings) -> HttpService {
    let mut routes = Router::new();
    // One route per streamed resource (`AppState::routes`), all served by the same handler,
    // each with its own hub.
    for hub in state.routes.iter() {
        let route = resource::ResourceRoute { app: state.clone(), hub: hub.clone() };
        routes = routes.route(hub.route(), get(resource::stream).with_state(route));
    }
    // One stream for many resources, over the same hubs.
    routes = routes.route(events::ROUTE, get(events::stream));
    let shaped = Arc::clone(&state.routes);
    let routes = routes
        .route("/", get(pages::index))
        .route("/client.js", get(pages::client))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(move |uri: Uri| not_found(uri, Arc::clone(&shaped)))
        .with_state(state);
    let max_header_bytes = edge.max_header_bytes;
    // Listed outermost first. There is deliberately no compression layer: compressing an event
    // stream buffers it.
    let stack = ServiceBuilder::new()
        .map_response(|response: Response<_>| response.map(Body::new))
        // One span per request, carrying only method and path (and, once a stream's caller is
        // let in, its user and request id): the query string may hold a token and is never
        // logged.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    tracing::info_span!(
                        "http",
                        method = %request.method(),
                        path = request.uri().path(),
                        user = tracing::field::Empty,
                        request_id = tracing::field::Empty,
                    )
                })
                .on_request(())
                .on_response(|response: &axum::http::Response<_>, latency: Duration, _span: &tracing::Span| {
                    tracing::info!(status = response.status().as_u16(), ?latency, "response");
                }),
        )
        // Bounds request headers before any handler parses them.
        .layer(middleware::from_fn(move |request: Request<Body>, next: Next| {
            bound_headers(max_header_bytes, request, next)
        }))
        // Answers preflights and adds CORS headers, only for the configured origins, never `*`
        // (credentials are allowed); absent when no origin is configured.
        .option_layer(cors(&edge.cors_origins))
        .service(routes);
    BoxCloneSyncService::new(stack)
}

fn cors(origins: &[HeaderValue]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_credentials(true)
        .allow_methods([Method::GET])
        .allow_headers([
            header::AUTHORIZATION,
            header::ACCEPT,
            header::CACHE_CONTROL,
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([HeaderName::from_static("x-request-id")])
        .max_age(Duration::from_secs(600));
    Some(layer)
}

async fn bound_headers(max: usize, request: Request<Body>, next: Next) -> Response {
    let size: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    if size > max {
        return ApiError::HeadersTooLarge.into_response();
    }
    next.run(request).await
}

/// Unknown paths get a problem body too. A path shaped like a route's template whose
/// parameters the router could not capture (one empty, or with a `/` in it) is a malformed
/// parameter of that route (its first rule's answer), not a missing route.
async fn not_found(uri: Uri, hubs: Arc<[Hub]>) -> ApiError {
    let path = uri.path();
    let shaped_like = |hub: &&Hub| {
        let template = hub.route();
        template.split_once('{').zip(template.rsplit_once('}')).is_some_and(|((prefix, _), (_, suffix))| {
            path.len() >= prefix.len() + suffix.len() && path.starts_with(prefix) && path.ends_with(suffix)
        })
    };
    match hubs.iter().find(shaped_like).map(|hub| hub.resource().check(&[])) {
        Some(Err(rejected)) => ApiError::InvalidParameter(rejected),
        _ => ApiError::NoRoute,
    }
}
