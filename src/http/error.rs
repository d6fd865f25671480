//! The one place that turns errors into what a client sees: an `application/problem+json`
//! response (RFC 9457) before a stream starts, or an `event: error` frame inside one.
//! It does not log; the trace layer and the stream's span do.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use serde::Serialize;
use tonic::Code;

use crate::{
    sse,
    upstream::{Fault, ParamRejected, UpstreamError},
};

/// Seconds a client is asked to wait after a 429 or 503.
const RETRY_AFTER_SECS: u64 = 5;

/// Everything that can go wrong in a request, as the client is told about it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A path parameter does not match its route's rule (for `document_id`: 1 to 128
    /// characters of `[A-Za-z0-9._-]`); the code is `invalid_<param>`.
    #[error("{0}")]
    InvalidParameter(ParamRejected),
    /// `Last-Event-ID` (or `lastEventId`) is not 1 to 20 digits.
    #[error("Last-Event-ID must be a decimal sequence number of at most 20 digits")]
    InvalidLastEventId,
    /// A multiplexed stream's cursor (`Last-Event-ID`, `lastEventId` or `after`) does not fit
    /// its topics.
    #[error("Last-Event-ID is not a cursor of these topics: {0}")]
    InvalidCursor(crate::http::events::CursorError),
    /// A `topic` of `/events` is missing, malformed, repeated or one too many.
    #[error("{0}")]
    InvalidTopic(String),
    /// The long-poll `wait` is not a number of seconds.
    #[error("wait must be a number of seconds (at most 60)")]
    InvalidWait,
    /// No valid token; the reason stays in the log.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// The token expired while the stream was open.
    #[error("the access token expired; reconnect with a fresh token")]
    TokenExpired,
    /// A connection limit is reached.
    #[error("too many open streams{0}; try again later")]
    TooManyStreams(&'static str),
    /// The request headers are larger than allowed.
    #[error("request headers are too large")]
    HeadersTooLarge,
    /// A WebSocket upgrade from an origin that is neither the BFF's own nor an allowed one.
    #[error("WebSocket streams may only be opened from this service's own origin or an allowed CORS origin")]
    ForbiddenOrigin,
    /// No route matches the path.
    #[error("no such resource")]
    NoRoute,
    /// The client accepts none of the representations offered.
    #[error("this resource is available as text/event-stream, application/x-ndjson or application/json")]
    NotAcceptable,
    /// The upstream failed.
    #[error("{}", .0.message)]
    Upstream(UpstreamError),
    /// The service is shutting down.
    #[error("the service is shutting down")]
    ShuttingDown,
    /// The upstream health check failed.
    #[error("upstream not ready: {0}")]
    NotReady(String),
}

/// The error's data as streams carry it (`event: error`, NDJSON, WebSocket): exactly the
/// contract's fields.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorData<'a> {
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_status: Option<i32>,
    http_status: u16,
    message: &'a str,
    retryable: bool,
}

/// An `application/problem+json` body (RFC 9457) with the same data as its extension members.
#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    detail: &'a str,
    #[serde(flatten)]
    data: ErrorData<'a>,
}

impl ApiError {
    /// The HTTP status, following grpc-gateway's mapping for upstream codes.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidParameter(_) => StatusCode::BAD_REQUEST,
            Self::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            Self::ForbiddenOrigin => StatusCode::FORBIDDEN,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::InvalidLastEventId | Self::InvalidWait | Self::InvalidCursor(_) | Self::InvalidTopic(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::Unauthorized | Self::TokenExpired => StatusCode::UNAUTHORIZED,
            Self::TooManyStreams(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Upstream(e) if e.fault == Fault::BadMessage => StatusCode::BAD_GATEWAY,
            Self::Upstream(e) => http_status_of(e.code),
            Self::ShuttingDown | Self::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable machine-readable code: the gRPC code name in snake case for upstream errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidParameter(rejected) => rejected.code,
            Self::NotAcceptable => "not_acceptable",
            Self::ForbiddenOrigin => "forbidden_origin",
            Self::NoRoute => "no_route",
            Self::InvalidLastEventId | Self::InvalidCursor(_) => "invalid_last_event_id",
            Self::InvalidTopic(_) => "invalid_topic",
            Self::InvalidWait => "invalid_wait",
            Self::Unauthorized => "unauthorized",
            Self::TokenExpired => "token_expired",
            Self::TooManyStreams(_) => "too_many_streams",
            Self::HeadersTooLarge => "headers_too_large",
            Self::Upstream(e) if e.fault == Fault::BadMessage => "bad_gateway",
            Self::Upstream(e) => e.code_name(),
            Self::ShuttingDown => "shutting_down",
            Self::NotReady(_) => "not_ready",
        }
    }

    /// Whether trying again later may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Upstream(e) if e.fault == Fault::BadMessage => false,
            Self::Upstream(e) => {
                matches!(e.code, Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted)
            }
            Self::ShuttingDown | Self::NotReady(_) | Self::TokenExpired | Self::TooManyStreams(_) => true,
            Self::InvalidParameter(_)
            | Self::NotAcceptable
            | Self::ForbiddenOrigin
            | Self::NoRoute
            | Self::InvalidLastEventId
            | Self::InvalidCursor(_)
            | Self::InvalidTopic(_)
            | Self::InvalidWait
            | Self::Unauthorized
            | Self::HeadersTooLarge => false,
        }
    }

    fn grpc_status(&self) -> Option<i32> {
        match self {
            // The upstream sent no status for a message it should not have sent.
            Self::Upstream(e) if e.fault == Fault::BadMessage => None,
            Self::Upstream(e) => Some(e.code as i32),
            _ => None,
        }
    }

    /// The error's data as streams carry it: `code`, `grpcStatus` (upstream errors),
    /// `httpStatus`, `message`, `retryable`.
    pub fn body(&self) -> Vec<u8> {
        let message = self.to_string();
        to_json(&self.data(&message))
    }

    fn data<'a>(&self, message: &'a str) -> ErrorData<'a> {
        ErrorData {
            code: self.code(),
            grpc_status: self.grpc_status(),
            http_status: self.status().as_u16(),
            message,
            retryable: self.retryable(),
        }
    }

    fn problem(&self) -> Vec<u8> {
        let status = self.status();
        let message = self.to_string();
        to_json(&Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: &message,
            data: self.data(&message),
        })
    }

    /// The `event: error` frame that ends a stream that already answered 200.
    pub fn to_sse(&self) -> Bytes {
        sse::frame(None, "error", &self.body())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response =
            (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"))], self.problem())
                .into_response();
        let headers = response.headers_mut();
        if matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer error="invalid_token""#));
        }
        response
    }
}

/// Serialising plain strings and numbers cannot fail; an empty object is a safe fallback.
fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

fn http_status_of(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        // 499 Client Closed Request, as grpc-gateway uses it.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
