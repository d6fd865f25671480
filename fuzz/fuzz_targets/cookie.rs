//! The token's way out of a `Cookie` header (any bytes), then the JWT path.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::authenticator;

fuzz_target!(|data: &[u8]| {
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        headers.insert(http::header::COOKIE, value);
    }
    let _ = authenticator().authenticate(&headers, Some("access_token=x"));
});
