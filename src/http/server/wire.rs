//! HTTP/1.1 on the wire, for the requests the server answers itself: parsing a request head,
//! writing a response head, chunk framing, and writes that give up on a client that stopped
//! reading.

use std::{
    io::{self, IoSlice},
    time::{Duration, SystemTime},
};

use axum::body::Body;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version, header, response::Parts};
use tokio::net::TcpStream;

/// The most request headers parsed; a request with more is handed to hyper, which refuses it.
const MAX_HEADERS: usize = 100;

/// What the bytes read so far hold.
#[derive(Debug)]
pub enum Parsed {
    /// A complete head of `len` bytes, for a request without a body or an upgrade.
    Request {
        /// The request, with an empty body.
        request: Box<Request<Body>>,
        /// The length of the head in the buffer.
        len: usize,
        /// Whether the client lets the connection carry another request after this one.
        keep_alive: bool,
    },
    /// The head is not complete yet.
    Partial,
    /// Anything else: a body, an upgrade, `Expect`, HTTP/2, or bytes that are not a valid head.
    /// hyper serves those (and answers malformed ones with its own 400 or 431).
    Other,
}

/// Parses a request head at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let len = match head.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(path), Some(minor)) = (head.method, head.path, head.version) else {
        return Parsed::Other;
    };
    let (Ok(method), Ok(uri)) = (Method::from_bytes(method.as_bytes()), Uri::try_from(path)) else {
        return Parsed::Other;
    };
    let mut map = HeaderMap::with_capacity(head.headers.len());
    // HTTP/1.0 connections close after the response; HTTP/1.1 ones stay open unless asked.
    let mut keep_alive = minor == 1;
    for field in head.headers.iter() {
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(field.name.as_bytes()), HeaderValue::from_bytes(field.value))
        else {
            return Parsed::Other;
        };
        let needs_hyper = (name == header::CONTENT_LENGTH && value != "0")
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::EXPECT;
        if needs_hyper {
            return Parsed::Other;
        }
        if name == header::CONNECTION && has_token(&value, "close") {
            keep_alive = false;
        }
        map.append(name, value);
    }
    let mut request = Request::new(Body::empty());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if minor == 1 { Version::HTTP_11 } else { Version::HTTP_10 };
    *request.headers_mut() = map;
    Parsed::Request { request: Box::new(request), len, keep_alive }
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all (204, 304).
    Empty,
    /// `content-length`.
    Length(u64),
    /// `transfer-encoding: chunked`, for streams on HTTP/1.1.
    Chunked,
    /// The body ends when the connection closes, for streams on HTTP/1.0.
    UntilClose,
}

impl Framing {
    /// The framing of a response with this status, body size and request version.
    pub fn of(status: StatusCode, exact: Option<u64>, version: Version) -> Self {
        match (status, exact) {
            (StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED, _) => Self::Empty,
            _ if status.is_informational() => Self::Empty,
            (_, Some(len)) => Self::Length(len),
            (_, None) if version == Version::HTTP_11 => Self::Chunked,
            (_, None) => Self::UntilClose,
        }
    }
}

/// The status line and headers of a response. The framing headers and `connection` come from
/// the server, never from the handler.
pub fn response_head(parts: &Parts, framing: Framing, close: bool) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\ndate: ");
    head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::CONNECTION].contains(name) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(len) => head.extend_from_slice(format!("content-length: {len}\r\n").as_bytes()),
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::UntilClose => {}
    }
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// The line that opens a chunk of `len` bytes: hex digits and CRLF, on the stack.
#[derive(Debug)]
pub struct ChunkSize {
    bytes: [u8; 18],
    len: usize,
}

impl ChunkSize {
    /// No size line: the body is not chunked.
    pub const NONE: Self = Self { bytes: [0; 18], len: 0 };

    /// The size line for `len` bytes.
    pub fn new(len: usize) -> Self {
        let mut bytes = [0; 18];
        let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
        for (i, byte) in bytes[..digits].iter_mut().enumerate() {
            let nibble = (len >> (4 * (digits - 1 - i))) & 0xf;
            *byte = b"0123456789abcdef"[nibble];
        }
        bytes[digits..digits + 2].copy_from_slice(b"\r\n");
        Self { bytes, len: digits + 2 }
    }

    /// The line's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The failure of a write blocked for `stall`: the client stopped reading.
pub fn stalled(stall: Duration) -> io::Error {
    tracing::info!(?stall, "dropping a client that stopped reading");
    io::Error::new(io::ErrorKind::TimedOut, "client stopped reading")
}

/// What goes around `len` bytes of body: the chunk size line and CRLF when chunked (nothing
/// around no bytes: an empty chunk would end the body).
pub fn frame_around(framing: Framing, len: usize) -> (ChunkSize, &'static [u8]) {
    match framing {
        Framing::Chunked if len > 0 => (ChunkSize::new(len), b"\r\n"),
        _ => (ChunkSize::NONE, b""),
    }
}

/// The chunk that ends a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Writes every byte of `bufs`, in as few system calls as the socket allows. A write that stays
/// blocked for `stall` fails: the client stopped reading, and its connection is dropped (its
/// memory released and its hub subscription detached) instead of waiting for it forever.
pub async fn write_all(stream: &TcpStream, mut bufs: &mut [IoSlice<'_>], stall: Duration) -> io::Result<()> {
    // Drops leading empty slices: a write of nothing must succeed, not fail with `WriteZero`.
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match stream.try_write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut bufs, written),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                // Boxed: the timer is only needed while blocked, and an open stream's future
                // should not carry it.
                if Box::pin(tokio::time::timeout(stall, stream.writable())).await.is_err() {
                    return Err(stalled(stall));
                }
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        for (len, line) in [(0, "0\r\n"), (9, "9\r\n"), (10, "a\r\n"), (255, "ff\r\n"), (4096, "1000\r\n")] {
            assert_eq!(ChunkSize::new(len).as_bytes(), line.as_bytes());
        }
        assert_eq!(ChunkSize::new(usize::MAX).as_bytes().len(), usize::BITS as usize / 4 + 2);
    }

    #[test]
    fn requests_with_bodies_or_upgrades_go_to_hyper() {
        let parsed = |head: &str| parse(head.as_bytes());
        assert!(matches!(parsed("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Parsed::Request { keep_alive: true, .. }));
        assert!(matches!(
            parsed("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"),
            Parsed::Request { keep_alive: false, .. }
        ));
        assert!(matches!(parsed("GET / HTTP/1.0\r\n\r\n"), Parsed::Request { keep_alive: false, .. }));
        assert!(matches!(parsed("GET / HTTP/1.1\r\nHost: x\r\n"), Parsed::Partial));
        assert!(
            matches!(parsed("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), Parsed::Request { .. }),
            "an empty body is no body"
        );
        for other in [
            "POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nLast-Event-ID: 7\rX: y\r\n\r\n",
        ] {
            assert!(matches!(parsed(other), Parsed::Other), "{other:?}");
        }
    }
}
