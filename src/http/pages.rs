//! The browser side served by the BFF itself: the demo page at `/` and the client module at
//! `/client.js`, both compiled into the binary.

use axum::{
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};

use super::AppState;

const INDEX: &str = include_str!("../../static/index.html");
const CLIENT: &str = include_str!("../../static/client.js");

/// The demo page. Under `sse-bff demo` it also sets the demo user's token as an HttpOnly
/// cookie, because EventSource cannot send an Authorization header.
pub async fn index(State(state): State<AppState>) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
        // Under `demo` the response carries a token cookie: never cache it.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    let mut response = (headers, INDEX).into_response();
    if let Some(cookie) = &state.demo_cookie {
        response.headers_mut().insert(header::SET_COOKIE, cookie.clone());
    }
    response
}

/// The `watchProgress` ES module.
pub async fn client() -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        CLIENT,
    )
        .into_response()
}
