//! The HTTP side: routes, shared state and the tower layer stack.

mod error;
mod health;
mod progress;
mod stream;

use std::time::Duration;

use axum::{
    Router,
    http::{Request, Uri},
    routing::get,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

pub use progress::valid_document_id;
pub use stream::StreamSettings;

use crate::hub::Hub;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Document progress streams.
    pub progress: Hub,
    /// Heartbeat and retry timing.
    pub stream: StreamSettings,
    /// Cancelled when the service starts shutting down.
    pub shutdown: CancellationToken,
    /// grpc.health.v1 client toward the upstream, for `/readyz`.
    pub health: HealthClient<Channel>,
    /// The service name checked by `/readyz`.
    pub health_service: &'static str,
}

/// The router with its layer stack.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route(
            crate::upstream::DocumentProgress::ROUTE,
            get(progress::progress),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(not_found)
        .with_state(state);
    // Layers listed here run outer to inner for requests. There is deliberately no compression
    // layer: compressing an event stream buffers it.
    routes.layer(
        // One span per request, carrying only method and path: the query string may hold a
        // token and is never logged.
        TraceLayer::new_for_http()
            .make_span_with(|request: &Request<_>| {
                tracing::info_span!("http", method = %request.method(), path = request.uri().path())
            })
            .on_request(())
            .on_response(|response: &axum::http::Response<_>, latency: Duration, _span: &tracing::Span| {
                tracing::info!(status = response.status().as_u16(), ?latency, "response");
            }),
    )
}

/// Unknown paths get a problem body too. A path shaped like a progress stream whose id the
/// router could not capture (empty, or with a `/` in it) is a malformed id, not a missing route.
async fn not_found(uri: Uri) -> ApiError {
    let path = uri.path();
    if path.starts_with("/documents/") && path.ends_with("/progress") {
        ApiError::InvalidDocumentId
    } else {
        ApiError::NoRoute
    }
}
