//! The HTTP server: accepts connections and answers plain HTTP/1.1 requests itself, handing
//! everything else to hyper.
//!
//! Why not hyper for everything: an open event stream is almost all of this service's memory,
//! and hyper keeps an 8 KiB read buffer and a response-head buffer for the whole life of every
//! HTTP/1 connection, neither configurable below that. Here a connection holds no buffer while
//! it streams: the head is read into a buffer that is freed once parsed, the response head is
//! written and dropped, and each body frame (an event's shared, pre-encoded bytes) is written
//! straight to the socket with its chunk framing in one `writev`. Both paths run the same tower
//! service, so routing, authentication, errors and every layer are the same whoever serves.
//!
//! What is served here: `HTTP/1.0` and `HTTP/1.1` requests without a body, an upgrade or
//! `Expect` (every `GET` an `EventSource`, `curl` or a proxy sends). hyper serves the rest of
//! such a connection: WebSocket upgrades, requests with a body, HTTP/2 and malformed heads (it
//! answers those with its own 400 or 431).
//!
//! With TLS (`tls.rs`) hyper serves every connection, HTTP/2 or HTTP/1.1 as ALPN chose: the
//! loop here writes to the socket itself, which a TLS stream does not allow.

mod config;
mod handover;
mod tls;
mod wire;

/// The request-head parser, for the fuzzers (`http/fuzzing.rs`).
#[cfg(fuzzing)]
pub(super) fn fuzz_parse(bytes: &[u8]) -> bool {
    matches!(wire::parse(bytes), wire::Parsed::Request { .. })
}

use std::{
    io::{self, IoSlice},
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::Poll,
    time::Duration,
};

use axum::{body::Body, response::IntoResponse as _};
use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{Method, Request};
use http_body::{Body as _, Frame};
use http_body_util::BodyExt as _;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt as _;

pub use self::config::ServerConfig;
pub use self::tls::{Tls, TlsError};
use self::wire::{Framing, LAST_CHUNK, Parsed};
use super::{ApiError, HttpService};

/// How long a client may take to send a request head, or keep an idle connection open.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause after an accept error that is not about one connection (out of file
/// descriptors): connections must close before another can be accepted.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Bytes of a request head beyond the header bound allowed for the request line.
const REQUEST_LINE_ALLOWANCE: usize = 8 * 1024;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// A client whose connection accepts no bytes for this long is dropped.
    pub stall_timeout: Duration,
    /// The most bytes of request headers accepted (larger ones are answered 431, by the server
    /// itself when the head is longer than this plus 8 KiB for the request line).
    pub max_header_bytes: usize,
    /// Serve TLS with this certificate (reloaded when its files change) instead of plain TCP;
    /// see [`ServerSettings::load_tls`].
    pub tls: Option<Tls>,
}

/// A listener on `addr` whose kernel queue holds `backlog` connections not yet accepted (tokio's
/// `TcpListener::bind` queues 1,024: a reconnect storm of thousands overflows it while the
/// accept loop waits for a core).
pub fn bind(addr: SocketAddr, backlog: usize) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // As `TcpListener::bind` does: a restarted server binds again despite connections in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(u32::try_from(backlog).unwrap_or(u32::MAX))
}

/// Serves connections from `listener` until `shutdown` is cancelled, then waits for the open
/// ones to end (streams select on the same token and end with a reconnect hint).
pub async fn serve(listener: TcpListener, service: HttpService, settings: ServerSettings, shutdown: CancellationToken) {
    let tls = settings.tls.clone();
    let server = Arc::new(Server { service, settings, shutdown: shutdown.clone() });
    let connections = TaskTracker::new();
    if let Some(tls) = &tls {
        connections.spawn(tls.clone().watch(shutdown.clone()));
    }
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                // Events are small writes that must not wait for Nagle; failing to set the
                // option only costs latency.
                let _ = stream.set_nodelay(true);
                match &tls {
                    None => {
                        connections.spawn(Arc::clone(&server).connection(stream));
                    }
                    Some(tls) => {
                        connections.spawn(tls.clone().connection(Arc::clone(&server), stream));
                    }
                }
            }
            Err(error) if is_connection_error(&error) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot accept connections");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

#[derive(Debug)]
struct Server {
    service: HttpService,
    settings: ServerSettings,
    shutdown: CancellationToken,
}

/// What a connection sent next.
enum Head {
    Request {
        request: Box<Request<Body>>,
        keep_alive: bool,
    },
    /// Something for hyper; the bytes read so far are replayed to it.
    Other,
    /// A head longer than the read limit.
    TooLarge,
    Closed,
}

/// The next body frame, or the client's end of the connection.
enum Step {
    Frame(Option<Result<Frame<Bytes>, axum::Error>>),
    Readable(io::Result<()>),
}

impl Server {
    /// The most unused bytes a connection may hold: one request head.
    fn read_limit(&self) -> usize {
        self.settings.max_header_bytes + REQUEST_LINE_ALLOWANCE
    }

    /// The bounds of a connection served by hyper.
    fn bounds(&self) -> handover::Bounds {
        handover::Bounds {
            stall_timeout: self.settings.stall_timeout,
            head_timeout: HEAD_TIMEOUT,
            read_limit: self.read_limit(),
        }
    }

    async fn connection(self: Arc<Self>, stream: TcpStream) {
        // Bytes received and not yet used: a head being read, or the next pipelined request.
        let mut read = Vec::new();
        loop {
            let head = tokio::select! {
                () = self.shutdown.cancelled() => return,
                // Boxed, like every timer only some states need: the connection's future stays
                // small for the long life of a stream.
                head = Box::pin(tokio::time::timeout(HEAD_TIMEOUT, self.read_head(&stream, &mut read))) => head,
            };
            let (request, keep_alive) = match head {
                Ok(Ok(Head::Request { request, keep_alive })) => (request, keep_alive),
                Ok(Ok(Head::Other)) => {
                    let (service, shutdown) = (self.service.clone(), self.shutdown.clone());
                    // Boxed: hyper's connection state is large, and only these connections need it.
                    let handover = handover::serve(stream, read, service, self.bounds(), shutdown);
                    return Box::pin(handover).await;
                }
                Ok(Ok(Head::TooLarge)) => {
                    if let Err(error) = self.refuse_head(&stream).await {
                        tracing::debug!(%error, "connection closed while refusing a head");
                    }
                    return;
                }
                Ok(Ok(Head::Closed)) | Ok(Err(_)) | Err(_) => return,
            };
            match self.respond(&stream, *request, keep_alive, &mut read).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    tracing::debug!(%error, "connection closed while responding");
                    return;
                }
            }
        }
    }

    /// Reads until `read` starts with a complete request head, and takes it out.
    async fn read_head(&self, stream: &TcpStream, read: &mut Vec<u8>) -> io::Result<Head> {
        loop {
            if !read.is_empty() {
                match wire::parse(read) {
                    Parsed::Request { request, len, keep_alive } => {
                        // The head's buffer is freed; only pipelined bytes stay.
                        *read = read.split_off(len);
                        return Ok(Head::Request { request, keep_alive });
                    }
                    Parsed::Partial if read.len() < self.read_limit() => {}
                    Parsed::Partial => return Ok(Head::TooLarge),
                    Parsed::Other => return Ok(Head::Other),
                }
            }
            stream.readable().await?;
            if read_available(stream, read)? == Some(0) {
                return Ok(Head::Closed);
            }
        }
    }

    /// Answers a request head longer than the read limit with the problem 431 and closes,
    /// after reading what the client still sends (closing with unread bytes would reset the
    /// connection, and the client might never see the answer); at most one read limit more, for
    /// at most a second.
    async fn refuse_head(&self, stream: &TcpStream) -> io::Result<()> {
        tracing::info!(limit = self.read_limit(), "request head too large");
        let (parts, body) = ApiError::HeadersTooLarge.into_response().into_parts();
        let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
        let head = wire::response_head(&parts, Framing::Length(body.len() as u64), true);
        wire::write_all(stream, &mut [IoSlice::new(&head), IoSlice::new(&body)], self.settings.stall_timeout).await?;
        let drain = async {
            let (mut discarded, mut scratch) = (0, Vec::new());
            while discarded < self.read_limit() {
                stream.readable().await?;
                match read_available(stream, &mut scratch)? {
                    Some(0) => break,
                    Some(n) => discarded += n,
                    None => {}
                }
                scratch.clear();
            }
            io::Result::Ok(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
        Ok(())
    }

    /// Runs the service and writes its response; `Ok(true)` when the connection may carry
    /// another request.
    async fn respond(
        &self,
        stream: &TcpStream,
        request: Request<Body>,
        keep_alive: bool,
        read: &mut Vec<u8>,
    ) -> io::Result<bool> {
        let head_only = request.method() == Method::HEAD;
        let version = request.version();
        let response = match self.service.clone().oneshot(request).await {
            Ok(response) => response,
            Err(infallible) => match infallible {},
        };
        let (parts, body) = response.into_parts();
        let framing = Framing::of(parts.status, body.size_hint().exact(), version);
        let keep_alive = keep_alive && framing != Framing::UntilClose && !self.shutdown.is_cancelled();
        let head = wire::response_head(&parts, framing, !keep_alive);
        drop(parts);
        let stall = self.settings.stall_timeout;
        if head_only || framing == Framing::Empty {
            wire::write_all(stream, &mut [IoSlice::new(&head)], stall).await?;
            return Ok(keep_alive);
        }
        self.write_body(stream, head, body, framing, read).await?;
        Ok(keep_alive && !self.shutdown.is_cancelled())
    }

    /// Writes the head and the body frame by frame as they come. The head goes out with the
    /// first frame when that is ready at once.
    async fn write_body(
        &self,
        stream: &TcpStream,
        head: Vec<u8>,
        mut body: Body,
        framing: Framing,
        read: &mut Vec<u8>,
    ) -> io::Result<()> {
        let stall = self.settings.stall_timeout;
        let mut head = Some(head);
        let mut ready = body.frame().now_or_never();
        loop {
            let frame = match ready.take() {
                Some(frame) => frame,
                None => {
                    if let Some(head) = head.take() {
                        wire::write_all(stream, &mut [IoSlice::new(&head)], stall).await?;
                    }
                    self.next_frame(stream, &mut body, read).await?
                }
            };
            let head_bytes = head.take().unwrap_or_default();
            let data = match frame {
                None => {
                    let end: &[u8] = if framing == Framing::Chunked { LAST_CHUNK } else { b"" };
                    return wire::write_all(stream, &mut [IoSlice::new(&head_bytes), IoSlice::new(end)], stall).await;
                }
                Some(Err(error)) => return Err(io::Error::other(error)),
                // Trailers are not sent.
                Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
            };
            let (size, tail) = wire::frame_around(framing, data.len());
            let mut bufs =
                [IoSlice::new(&head_bytes), IoSlice::new(size.as_bytes()), IoSlice::new(&data), IoSlice::new(tail)];
            wire::write_all(stream, &mut bufs, stall).await?;
        }
    }

    /// Waits for the next body frame while watching the socket: a client that closes its end
    /// drops the body at once (and with it the hub subscription), without waiting for the next
    /// write to fail. Bytes that arrive meanwhile are kept for the next request.
    async fn next_frame(
        &self,
        stream: &TcpStream,
        body: &mut Body,
        read: &mut Vec<u8>,
    ) -> io::Result<Option<Result<Frame<Bytes>, axum::Error>>> {
        loop {
            let step = std::future::poll_fn(|cx| {
                if let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) {
                    return Poll::Ready(Step::Frame(frame));
                }
                stream.poll_read_ready(cx).map(Step::Readable)
            })
            .await;
            match step {
                Step::Frame(frame) => return Ok(frame),
                Step::Readable(ready) => {
                    ready?;
                    match read_available(stream, read)? {
                        Some(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                        _ if read.len() > self.read_limit() => {
                            return Err(io::Error::other("too many bytes sent while streaming"));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Reads what the socket has into `read`: `Some(0)` at the end of the stream, `None` when
/// nothing was there after all. The buffer is on the stack, not in the connection's future.
fn read_available(stream: &TcpStream, read: &mut Vec<u8>) -> io::Result<Option<usize>> {
    let mut chunk = [0; 4096];
    match stream.try_read(&mut chunk) {
        Ok(n) => {
            read.extend_from_slice(&chunk[..n]);
            Ok(Some(n))
        }
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A connection's task lives as long as its stream: its future's size is paid by every open
    /// stream, so an undone optimisation (a buffer or timer kept inline) fails here.
    #[tokio::test]
    async fn a_connection_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let service = tower::util::BoxCloneSyncService::new(tower::service_fn(|_: Request<Body>| async {
            Ok::<_, std::convert::Infallible>(axum::response::Response::new(Body::empty()))
        }));
        let settings =
            ServerSettings { stall_timeout: Duration::from_secs(30), max_header_bytes: 32 * 1024, tls: None };
        let server = Arc::new(Server { service, settings, shutdown: CancellationToken::new() });
        let connection = server.connection(stream);
        let size = std::mem::size_of_val(&connection);
        assert!(size <= CONNECTION_BUDGET, "the connection future is {size} bytes");
    }

    /// A storm of connections that arrive faster than they are accepted all get through the
    /// handshake at once: none waits for a SYN retransmission (a second or more), as it would
    /// past the 1,024 that `TcpListener::bind` queues.
    #[tokio::test]
    async fn the_listen_queue_holds_a_reconnect_storm() {
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(4096);
        let storm = 2000.min(somaxconn.saturating_sub(16));
        if storm <= 1100 {
            return; // the kernel caps the queue below what would tell the two apart
        }
        let listener = bind("127.0.0.1:0".parse().unwrap(), 4096).unwrap();
        let addr = listener.local_addr().unwrap();
        // Nobody accepts: every connection waits in the queue.
        let clients: Vec<_> = (0..storm).map(|_| tokio::spawn(TcpStream::connect(addr))).collect();
        let all = futures_util::future::join_all(clients);
        let connected = tokio::time::timeout(Duration::from_millis(800), all).await;
        let connected = connected.expect("every connection completes its handshake without a retransmission");
        assert!(connected.into_iter().all(|c| c.is_ok_and(|c| c.is_ok())));
        drop(listener);
    }

    /// 1,584 bytes when this was written; hyper's connection state, inline, would be several
    /// kilobytes more.
    const CONNECTION_BUDGET: usize = 2048;
}
