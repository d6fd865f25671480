//! `GET` on a streamed resource (any route: `/documents/{document_id}/progress`, say). The
//! extractors let the caller in and check the path, the resume point and the representation;
//! the handler takes a permit, subscribes through the route's hub and answers. Nothing here is
//! specific to a route.

use axum::{
    extract::{FromRef, FromRequestParts, Path, State},
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
};

use super::{
    ApiError, AppState,
    caller::Caller,
    representation::{LastId, Negotiated, Poll, long_poll_finished},
    resume::ResumePoint,
    stream::Viewer,
};
use crate::{
    hub::{Hub, Subscription},
    upstream::Call,
};

/// The state of one resource's route: the app's, and the hub of the route's resource.
#[derive(Debug, Clone)]
pub struct ResourceRoute {
    /// What every handler can reach.
    pub app: AppState,
    /// The route's hub.
    pub hub: Hub,
}

impl FromRef<ResourceRoute> for AppState {
    fn from_ref(route: &ResourceRoute) -> Self {
        route.app.clone()
    }
}

/// The resource a request names: its route's hub, and the path parameters, which passed the
/// route's rules (else a 400 `invalid_<param>`, before any upstream call).
#[derive(Debug)]
pub struct Target {
    /// The route's hub.
    pub hub: Hub,
    /// The parameters, by name.
    pub params: Vec<(String, String)>,
}

impl FromRequestParts<ResourceRoute> for Target {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, route: &ResourceRoute) -> Result<Self, ApiError> {
        let params = match Path::<Vec<(String, String)>>::from_request_parts(parts, route).await {
            Ok(Path(params)) => params,
            // A parameter that is not valid UTF-8 once decoded: no parameter at all, which the
            // check refuses with the first parameter's code.
            Err(_) => Vec::new(),
        };
        route.hub.resource().check(&params).map_err(ApiError::InvalidParameter)?;
        Ok(Self { hub: route.hub.clone(), params })
    }
}

/// Streams a resource's events in the representation the client asked for. The extractors run
/// in the order of their answers: 403 or 401, a bad parameter, 406, a bad resume point, a bad
/// `wait`.
#[tracing::instrument(skip_all, fields(route = target.hub.route()))]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    target: Target,
    ResumePoint(resume): ResumePoint,
    negotiated: Negotiated,
) -> Result<Response, ApiError> {
    let permit = state.permit(&caller)?;
    let Target { hub, params } = target;
    let identity = caller.identity();
    let call = Call { params: params.into(), identity };
    let subscription = hub.subscribe(call, resume).await.map_err(ApiError::Upstream)?;
    let (reset, events) = match subscription {
        Subscription::Finished { last } if negotiated.long_poll() => return Ok(long_poll_finished(LastId::Id(last))),
        // The viewer already has the terminal event: 204 tells EventSource to stop reconnecting.
        Subscription::Finished { .. } => return Ok(StatusCode::NO_CONTENT.into_response()),
        Subscription::Live { reset, events } => (reset, events),
    };
    let metrics = state.metrics.stream_opened(hub.route(), negotiated.transport());
    let viewer = Viewer { permit, expires_at: caller.expires_at(), metrics, started: caller.arrived };
    let poll = Poll { after: LastId::Id(resume.unwrap_or(0)), latest: resume.is_none() };
    Ok(caller.tag(negotiated.respond(&state, events, reset, poll, viewer).await))
}
