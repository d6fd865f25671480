//! The HTTP/1.1 request-head parser of the server's own connection loop, on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sse_bff::http::fuzzing::request_head(data));
