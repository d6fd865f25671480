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

/// The comment line sent when nothing else was written for the heartbeat interval. It has no
/// blank line after it: a blank line ends a block, and clients such as httpx-sse dispatch a
/// block that carries no data as an event with empty data once the stream has had an `id:`.
/// A comment inside the next event's block is ignored by every parser (WHATWG: lines that
/// start with a colon are ignored).
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n";

/// The line `retry: <ms>` telling EventSource how long to wait before reconnecting, without
/// the blank line that would end a block: it goes in front of a block that has `data`, or last
/// in a body (see `http/representation.rs`), so that no client ever dispatches a
/// block without data.
pub fn retry_field(after: Duration) -> String {
    format!("retry: {}\n", after.as_millis())
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn strip(s: &str) -> String {
        s.chars().filter(|c| !matches!(c, '\r' | '\n' | '\0')).collect()
    }

    /// What a client sees of `data`: every line ending becomes `\n`.
    fn normalise(data: &str) -> String {
        data.replace("\r\n", "\n").replace('\r', "\n")
    }

    proptest! {
        #[test]
        fn any_frame_decodes_to_exactly_the_event_that_was_encoded(
            id in "(?s).*", name in "(?s).*", data in "(?s).*", cut in 0usize..512,
        ) {
            let encoded = frame(Some(&id), &name, data.as_bytes());
            // Fed in two arbitrary pieces, as the network may deliver it.
            let cut = cut.min(encoded.len());
            let mut decoder = Decoder::new();
            let mut frames = decoder.feed(&encoded[..cut]);
            frames.extend(decoder.feed(&encoded[cut..]));
            let expected_name = strip(&name);
            prop_assert_eq!(frames, vec![Frame::Event {
                id: Some(strip(&id)),
                event: expected_name,
                data: normalise(&data),
            }]);
        }

        #[test]
        fn the_decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut decoder = Decoder::new();
            let _ = decoder.feed(&bytes);
        }
    }
}
