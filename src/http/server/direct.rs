//! A streaming response's connection, lent to others while the response waits for its body.
//!
//! The hub writes a caught-up viewer's events itself (`hub/direct.rs`), through this handle.
//! Only while the connection's own task has written everything and waits for the next body
//! frame are such writes accepted; the task closes the handle before it polls the body, so a
//! frame of its own never overtakes or interleaves with one written here. A write that goes
//! out only in part leaves the rest here, and the task writes it before anything else.

use std::{
    io::{self, IoSlice},
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
};

use tokio::net::TcpStream;

use super::wire::{self, Framing};
use crate::hub::{MAX_BATCH, Offer};

/// The most slices of one write: a batch of NDJSON lines (two each) and the chunk framing.
const MAX_PARTS: usize = 2 * MAX_BATCH + 2;

/// A handle on one response's connection, given to the service as a request extension.
#[derive(Debug, Clone)]
pub struct DirectWrite(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Weak: the handle never keeps a closed connection's socket open.
    stream: Weak<TcpStream>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The connection's task waits for its body with nothing left to write.
    accepting: bool,
    /// How the body is delimited; only streamed bodies (chunked, or until the connection
    /// closes) take direct writes.
    framing: Option<Framing>,
    /// What a partial write left; the task writes it first.
    held: Vec<u8>,
}

impl DirectWrite {
    pub(super) fn new(stream: &Arc<TcpStream>) -> Self {
        Self(Arc::new(Inner { stream: Arc::downgrade(stream), state: Mutex::default() }))
    }

    /// Writes `parts` as one body chunk now, without waiting, if the connection's task is
    /// waiting for its body.
    pub fn try_write(&self, parts: &[&[u8]]) -> Offer {
        let mut state = self.lock();
        if !state.accepting || parts.len() + 2 > MAX_PARTS {
            return Offer::Refused;
        }
        let Some(stream) = self.0.stream.upgrade() else {
            state.accepting = false;
            return Offer::Refused;
        };
        let len: usize = parts.iter().map(|part| part.len()).sum();
        let (size, tail) = wire::frame_around(state.framing.unwrap_or(Framing::UntilClose), len);
        let head = size.as_bytes();
        let all = || std::iter::once(head).chain(parts.iter().copied()).chain(std::iter::once(tail));
        let mut slices = [IoSlice::new(&[]); MAX_PARTS];
        let count = slices.iter_mut().zip(all()).map(|(slice, part)| *slice = IoSlice::new(part)).count();
        let slices = &slices[..count];
        let total = len + head.len() + tail.len();
        let written = match stream.try_write_vectored(slices) {
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                // The task finds the connection broken on its own next write or read.
                state.accepting = false;
                return Offer::Refused;
            }
        };
        if written == total {
            return Offer::Written;
        }
        let mut skip = written;
        for part in all() {
            let from = skip.min(part.len());
            state.held.extend_from_slice(&part[from..]);
            skip -= from;
        }
        state.accepting = false;
        Offer::Held
    }

    /// The task is about to poll its body or write: nobody else may write. Returns what an
    /// earlier partial write left, to be written first.
    pub(super) fn close(&self) -> Vec<u8> {
        let mut state = self.lock();
        state.accepting = false;
        std::mem::take(&mut state.held)
    }

    /// The response's body is delimited so.
    pub(super) fn set_framing(&self, framing: Framing) {
        self.lock().framing = Some(framing);
    }

    /// The task has written everything and waits for its body: others may write, if the body
    /// is a stream.
    pub(super) fn open(&self) {
        let mut state = self.lock();
        state.accepting = matches!(state.framing, Some(Framing::Chunked | Framing::UntilClose));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
