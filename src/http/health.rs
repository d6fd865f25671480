//! Operations endpoints: `GET /healthz` (the process is alive), `GET /readyz` (the upstream
//! answers its grpc.health.v1 check, or has none, and the service is not shutting down),
//! `GET /metrics`.

use std::time::Duration;

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use super::{ApiError, AppState, HealthCheck};

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

/// 200 when every checked upstream reports SERVING, or answers that it has no health service
/// at all (UNIMPLEMENTED: it is reachable and answers gRPC), with a JSON body
/// `{"status":"ready","checks":["ready: upstream ..."],"cluster":"off"|"ok"|"degraded"}`: a
/// degraded cluster (Redis does not answer, each instance calls its upstreams itself) still
/// serves, so it is ready. 503 otherwise (a problem document), with a reason that names each
/// failing upstream and what failed: NOT_SERVING, an unknown service name, no answer in time, a
/// refused connection.
pub async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let answers = futures_util::future::join_all(state.health.iter().map(check)).await;
    let (ready, failed): (Vec<_>, Vec<_>) = answers.into_iter().partition(Result::is_ok);
    // A route whose upstream's descriptors have not arrived answers 503: so does readiness.
    let waiting: std::collections::BTreeSet<String> =
        state.routes.iter().filter_map(|hub| hub.resource().available().err().map(|e| e.message)).collect();
    let reasons: Vec<String> = failed.into_iter().filter_map(Result::err).chain(waiting).collect();
    if !reasons.is_empty() {
        return Err(ApiError::NotReady(reasons.join("; ")));
    }
    let checks: Vec<String> = ready.into_iter().filter_map(Result::ok).collect();
    let cluster = state.cluster.as_ref().map_or("off", |cluster| cluster.status());
    let body = serde_json::json!({ "status": "ready", "checks": checks, "cluster": cluster });
    Ok((StatusCode::OK, axum::Json(body)))
}

/// One upstream's check: `Ok` with a line for the body, `Err` with the reason.
async fn check(health: &HealthCheck) -> Result<String, String> {
    let upstream = &health.upstream;
    let service = &health.service;
    let mut client = health.client.clone();
    let request = HealthCheckRequest { service: service.clone() };
    let answer = match tokio::time::timeout(CHECK_TIMEOUT, client.check(request)).await {
        Err(_) => return Err(format!("upstream {upstream}: no health answer within {CHECK_TIMEOUT:?}")),
        Ok(Err(status)) if status.code() == Code::Unimplemented => {
            return Ok(format!("ready: upstream {upstream} answers gRPC and has no grpc.health.v1 service"));
        }
        Ok(Err(status)) if status.code() == Code::NotFound => {
            return Err(format!("upstream {upstream} does not know the health service {service:?}"));
        }
        Ok(Err(status)) => return Err(format!("upstream {upstream}: health check failed: {}", describe(&status))),
        Ok(Ok(answer)) => answer.into_inner(),
    };
    match answer.status() {
        ServingStatus::Serving => Ok(format!("ready: upstream {upstream} serves {service:?}")),
        other => Err(format!("upstream {upstream} reports {} for {service:?}", other.as_str_name())),
    }
}

/// A status as `CODE: message`, with the innermost cause when tonic left the message empty (a
/// refused connection says only "transport error" or nothing at all).
fn describe(status: &tonic::Status) -> String {
    let mut cause = String::new();
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        cause = error.to_string();
        source = error.source();
    }
    match (status.message(), cause.as_str()) {
        ("", "") => format!("{:?}", status.code()),
        ("", cause) => format!("{:?}: {cause}", status.code()),
        (message, "") => format!("{:?}: {message}", status.code()),
        (message, cause) if message.contains(cause) => format!("{:?}: {message}", status.code()),
        (message, cause) => format!("{:?}: {message} ({cause})", status.code()),
    }
}
