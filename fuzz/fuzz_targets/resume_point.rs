//! `Last-Event-ID`, `lastEventId`/`after` query parsing and the multiplexed stream's cursor.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sse_bff::http::fuzzing::resume_point(data));
