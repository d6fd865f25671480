//! An incremental SSE parser after the WHATWG "event stream interpretation" rules, for clients
//! of the service: the integration tests, the load generator and the encoder's property tests.

/// One dispatched event, or a comment line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An event with its last-event-id (if the stream set one), name and joined data.
    Event {
        /// The `id` field, if present in this event.
        id: Option<String>,
        /// The `event` field, `message` when absent.
        event: String,
        /// The `data` lines joined with `\n`.
        data: String,
    },
    /// A `retry:` field with a valid number of milliseconds.
    Retry(u64),
    /// A comment line (starting with `:`), without the colon and one leading space.
    Comment(String),
}

/// Feeds bytes in any chunking and takes out complete frames.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    /// A `\r` ended the previous chunk, so a leading `\n` in the next one belongs to it.
    pending_cr: bool,
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a chunk and returns every frame it completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Frame> {
        let mut chunk = chunk;
        if self.pending_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.pending_cr = false;
        self.buf.extend_from_slice(chunk);
        let mut frames = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < self.buf.len() {
            let b = self.buf[i];
            if b == b'\n' || b == b'\r' {
                let line = String::from_utf8_lossy(&self.buf[start..i]).into_owned();
                let mut next = i + 1;
                if b == b'\r' {
                    match self.buf.get(next) {
                        Some(b'\n') => next += 1,
                        None => self.pending_cr = true,
                        Some(_) => {}
                    }
                }
                self.line(&line, &mut frames);
                start = next;
                i = next;
            } else {
                i += 1;
            }
        }
        self.buf.drain(..start);
        frames
    }

    fn line(&mut self, line: &str, frames: &mut Vec<Frame>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                frames.push(Frame::Event {
                    id: self.id.take(),
                    event: self.event.take().unwrap_or_else(|| "message".to_owned()),
                    data,
                });
            }
            self.id = None;
            self.event = None;
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            frames.push(Frame::Comment(comment.strip_prefix(' ').unwrap_or(comment).to_owned()));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "retry" => {
                if let Ok(ms) = value.parse() {
                    frames.push(Frame::Retry(ms));
                }
            }
            _ => {}
        }
    }
}
