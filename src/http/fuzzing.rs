//! Entry points for the coverage-guided fuzzers under `fuzz/` (compiled only with
//! `--cfg fuzzing`, which `cargo fuzz` sets): the parsers that see a client's bytes before
//! anything else does, reached without exporting them from the library.

use axum::http::{HeaderMap, HeaderValue};

/// Parses `bytes` as the start of an HTTP/1.1 request, as the connection loop does.
pub fn request_head(bytes: &[u8]) {
    let _ = super::server::fuzz_parse(bytes);
}

/// Parses a resume point: the first line of `bytes` as a `Last-Event-ID` header (when it is a
/// valid header value), the rest as the query string; and the same text as a multiplexed
/// stream's cursor of 1 to 60 topics.
pub fn resume_point(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let (header, query) = text.split_once('\n').unwrap_or((&text, ""));
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(header) {
        headers.insert("last-event-id", value);
    }
    let _ = super::resume::last_event_id(&headers, Some(query));
    let _ = super::resume::query_number(query, "after");
    let topics = usize::from(bytes.first().copied().unwrap_or(1) % 60) + 1;
    let _ = super::events::parse_cursor(header, topics);
}
