//! The Server-Sent Events wire format: an encoder that cannot break framing, and a decoder for
//! clients (tests, the load generator) that follows the WHATWG parsing rules.
//!
//! axum's `Event` panics when an id or event name contains CR, LF or NUL; this encoder never
//! receives upstream text in those positions (ids are numbers, names are static) and still
//! refuses such bytes defensively instead of panicking.

mod decode;

use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};

pub use decode::{Decoder, Frame};

use crate::event::StreamEvent;

/// The comment line sent when nothing else was written for the heartbeat interval.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// `retry: <ms>`, telling EventSource how long to wait before reconnecting.
pub fn retry(after: Duration) -> Bytes {
    Bytes::from(format!("retry: {}\n\n", after.as_millis()))
}

/// One event of the stream: `id`, `event` and a one-line JSON `data`.
pub fn event(event: &StreamEvent) -> Bytes {
    frame(Some(&event.id.to_string()), event.kind.name(), &event.data)
}

/// A generic frame. Any CR, LF or NUL in `id` or `name` is dropped (they cannot be represented
/// in those fields), and `data` is split on every line break into several `data:` lines, which a
/// client joins back with `\n`. The result is always exactly one event.
pub fn frame(id: Option<&str>, name: &str, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + name.len() + 32);
    if let Some(id) = id {
        out.put_slice(b"id: ");
        put_field(&mut out, id.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_slice(b"event: ");
    put_field(&mut out, name.as_bytes());
    out.put_u8(b'\n');
    for line in split_lines(data) {
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

fn put_field(out: &mut BytesMut, value: &[u8]) {
    out.extend(value.iter().copied().filter(|b| !matches!(b, b'\r' | b'\n' | 0)));
}

/// Splits on `\r\n`, `\r` and `\n`, the three line endings an SSE parser recognises.
fn split_lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.iter().position(|b| matches!(b, b'\r' | b'\n')) {
            None => {
                rest = None;
                Some(current)
            }
            Some(pos) => {
                let skip = if current[pos] == b'\r' && current.get(pos + 1) == Some(&b'\n') { 2 } else { 1 };
                rest = Some(&current[pos + skip..]);
                Some(&current[..pos])
            }
        }
    })
}
