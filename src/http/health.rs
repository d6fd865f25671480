//! Operations endpoints: `GET /healthz` (the process is alive), `GET /readyz` (the upstream
//! answers its grpc.health.v1 check and the service is not shutting down), `GET /metrics`.

use std::time::Duration;

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use super::{ApiError, AppState};

/// How long the readiness probe waits for the upstream.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The Prometheus exposition (OpenMetrics text).
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(axum::http::header::CONTENT_TYPE, content_type)], state.metrics.render())
}

/// Always 200 while the process runs.
pub async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

/// 200 when the upstream reports SERVING, 503 with the reason otherwise.
pub async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let mut client = state.health.clone();
    let request = HealthCheckRequest { service: state.health_service.to_owned() };
    let answer = tokio::time::timeout(CHECK_TIMEOUT, client.check(request))
        .await
        .map_err(|_| ApiError::NotReady(format!("no health answer within {CHECK_TIMEOUT:?}")))?
        .map_err(|status| ApiError::NotReady(format!("health check failed: {}", status.message())))?;
    match answer.into_inner().status() {
        ServingStatus::Serving => Ok((StatusCode::OK, "ready\n")),
        other => Err(ApiError::NotReady(format!("upstream reports {}", other.as_str_name()))),
    }
}
