//! The JWT path up to signature verification (header, base64, claims JSON, algorithm and key
//! selection) for any bearer token.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::authenticator;

fuzz_target!(|data: &[u8]| {
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_bytes(&[b"Bearer ".as_slice(), data].concat()) {
        headers.insert(http::header::AUTHORIZATION, value);
    }
    let _ = authenticator().authenticate(&headers, None);
});
