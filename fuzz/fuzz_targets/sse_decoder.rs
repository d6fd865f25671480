//! The WHATWG SSE decoder (what the tests and the load generator read streams with), on any
//! bytes, fed in two pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut decoder = sse_bff::sse::Decoder::new();
    let _ = decoder.feed(&data[..cut]);
    let _ = decoder.feed(&data[cut..]);
});
