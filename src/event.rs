//! The project's own event type: what the upstream mapping produces and every transport writes.
//!
//! An event is serialised once, when it is mapped from the upstream message: its JSON and its
//! SSE frame are built here and then shared by reference among every viewer that receives it.

use std::time::SystemTime;

use bytes::Bytes;

use crate::sse;

/// An event's name and whether the stream ends after it.
///
/// Names are `&'static str`: the routes' names are made static once when the routes are
/// loaded (see `upstream/dynamic.rs`), a bounded set for the life of the process, so that an
/// event carries no allocation of its own for its name. A name is 1 to 64 bytes of
/// `[A-Za-z0-9_.-]` ([`EventKind::valid_name`]), so it can never break SSE framing or the JSON
/// of a WebSocket frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventKind {
    name: &'static str,
    terminal: bool,
}

impl EventKind {
    /// A non-terminal `progress` event (tests and the load tools use it).
    pub const PROGRESS: Self = Self { name: "progress", terminal: false };
    /// A terminal `completed` event.
    pub const COMPLETED: Self = Self { name: "completed", terminal: true };
    /// The terminal `end` event of a route without terminal names: the upstream ended with OK.
    pub const END: Self = Self { name: "end", terminal: true };
    /// A `reset` event in the middle of a stream (cluster mode): the events before it came from
    /// an upstream call that another instance's call replaced, and what follows starts over.
    pub const RESET: Self = Self { name: "reset", terminal: false };
    /// Not an event but a note for the hub, never written to a viewer: the events up to this
    /// one's id are gone from where the stream comes from (the cluster's Redis stream trimmed
    /// them), so the hub's log must not answer a resume point below it. Its name cannot be a
    /// route's (`~` is not allowed in names).
    pub const TRIMMED: Self = Self { name: "~trimmed", terminal: false };

    /// A kind named `name`; `None` when the name is not 1 to 64 bytes of `[A-Za-z0-9_.-]`.
    pub fn new(name: &'static str, terminal: bool) -> Option<Self> {
        Self::valid_name(name).then_some(Self { name, terminal })
    }

    /// Whether `name` can be an event name: 1 to 64 bytes of `[A-Za-z0-9_.-]`.
    pub fn valid_name(name: &str) -> bool {
        (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    }

    /// The SSE `event:` name.
    pub fn name(self) -> &'static str {
        self.name
    }

    /// Whether the stream ends after an event of this kind.
    pub fn is_terminal(self) -> bool {
        self.terminal
    }

    /// The same name on an event that does not end the stream carrying it: a topic's terminal
    /// event on a multiplexed stream ends that topic only.
    pub fn continuing(self) -> Self {
        Self { terminal: false, ..self }
    }
}

/// One update of a streamed resource, ready to be written by any transport.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    /// The upstream sequence number, used as the SSE `id`.
    pub id: u64,
    /// The event name and whether it ends the stream.
    pub kind: EventKind,
    /// One line of JSON (serde_json escapes every control character, so no newline can occur).
    pub data: Bytes,
    /// When the upstream produced the update, for delivery-lag measurements.
    pub emitted_at: Option<SystemTime>,
    /// The complete SSE frame, encoded once for every viewer.
    pub sse: Bytes,
    /// The SSE id when it is not the number `id`: a multiplexed stream's cursor.
    pub cursor: Option<Box<str>>,
}

impl StreamEvent {
    /// An event with its SSE frame encoded. `data` is then kept as a slice of the frame, so the
    /// JSON is stored once (replay logs hold many events).
    pub fn new(id: u64, kind: EventKind, data: &[u8], emitted_at: Option<SystemTime>) -> Self {
        Self::framed(id, &id.to_string(), None, kind, data, emitted_at)
    }

    /// An event of a multiplexed stream: its SSE id is `cursor`; `id` stays the topic's own.
    pub fn with_cursor(id: u64, cursor: &str, kind: EventKind, data: &[u8], emitted_at: Option<SystemTime>) -> Self {
        Self::framed(id, cursor, Some(cursor.into()), kind, data, emitted_at)
    }

    fn framed(
        id: u64,
        sse_id: &str,
        cursor: Option<Box<str>>,
        kind: EventKind,
        data: &[u8],
        emitted_at: Option<SystemTime>,
    ) -> Self {
        let sse = sse::frame(Some(sse_id), kind.name(), data);
        let start = data_start(sse_id.len(), kind);
        let data = match sse.get(start..start + data.len()) {
            Some(slice) if slice == data => sse.slice(start..start + data.len()),
            _ => Bytes::copy_from_slice(data),
        };
        Self { id, kind, data, emitted_at, sse, cursor }
    }

    /// The SSE id as a client sees it: the cursor of a multiplexed stream, else the number.
    pub fn sse_id(&self) -> std::borrow::Cow<'_, str> {
        match &self.cursor {
            Some(cursor) => std::borrow::Cow::Borrowed(cursor),
            None => std::borrow::Cow::Owned(self.id.to_string()),
        }
    }

    /// `data` followed by `\n`: the NDJSON line. When `data` is a slice of the frame (one-line
    /// data, see [`StreamEvent::new`]) the line is the same slice plus the frame's newline, with
    /// no copy and no comparison of the bytes.
    pub fn line(&self) -> Bytes {
        let id_len = self.cursor.as_ref().map_or_else(|| digits(self.id), |cursor| cursor.len());
        let start = data_start(id_len, self.kind);
        let in_frame = self.sse.get(start..).is_some_and(|rest| std::ptr::eq(rest.as_ptr(), self.data.as_ptr()));
        if in_frame {
            return self.sse.slice(start..=start + self.data.len());
        }
        Bytes::from([&self.data[..], b"\n"].concat())
    }
}

/// Where one-line data starts in a frame: after "id: <id>\nevent: <name>\ndata: ", for an id
/// of `id_len` bytes.
fn data_start(id_len: usize, kind: EventKind) -> usize {
    "id: \nevent: \ndata: ".len() + id_len + kind.name().len()
}

/// The decimal digits of `id`.
fn digits(id: u64) -> usize {
    id.checked_ilog10().map_or(1, |log| log as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replay logs hold many events and every delivery clones an `Arc` of one: a field added
    /// without thought shows up here first.
    #[test]
    fn an_event_stays_small() {
        assert!(std::mem::size_of::<StreamEvent>() <= 128, "{} bytes", std::mem::size_of::<StreamEvent>());
        assert!(std::mem::size_of::<EventKind>() <= 24, "{} bytes", std::mem::size_of::<EventKind>());
    }

    #[test]
    fn events_from_the_upstream_carry_static_names_and_numeric_ids() {
        let update = StreamEvent::new(7, EventKind::COMPLETED, br#"{"message":"a\nb"}"#, None);
        assert_eq!(&update.sse[..], b"id: 7\nevent: completed\ndata: {\"message\":\"a\\nb\"}\n\n");
        assert_eq!(&update.data[..], br#"{"message":"a\nb"}"#, "the data is the frame's own bytes");
        assert_eq!(&update.line()[..], b"{\"message\":\"a\\nb\"}\n", "the NDJSON line too");
        // Data with a raw line break spans two `data:` lines, so it is kept apart from the frame.
        let split = StreamEvent::new(12, EventKind::PROGRESS, b"a\nb", None);
        assert_eq!(&split.sse[..], b"id: 12\nevent: progress\ndata: a\ndata: b\n\n");
        assert_eq!((&split.data[..], &split.line()[..]), (&b"a\nb"[..], &b"a\nb\n"[..]));
    }
}
