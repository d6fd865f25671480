//! Connections the server hands to hyper (WebSocket upgrades, requests with a body, HTTP/2,
//! malformed heads, and every TLS connection): the bytes already read are replayed first, and a
//! write that stays blocked for the stall timeout fails, so that a client that stopped reading
//! is dropped.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::body::Body;
use http::Request;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::http::HttpService;

/// The bounds hyper keeps on a connection it serves.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// A write blocked this long fails.
    pub stall_timeout: Duration,
    /// An HTTP/1 request head (or the wait for the next one) may take this long.
    pub head_timeout: Duration,
    /// hyper's HTTP/1 read buffer, and so the longest request head it parses (a longer one is
    /// answered 431); hyper's own default is about 400 KB.
    pub read_limit: usize,
}

/// Serves the rest of the connection with hyper, HTTP/1 or HTTP/2 (whichever the first bytes
/// are), upgrades included. `stream` is a TCP stream or a TLS stream over one.
pub async fn serve<S>(stream: S, read: Vec<u8>, service: HttpService, bounds: Bounds, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(HandedOver { stream, read, replayed: 0, timeout: bounds.stall_timeout, stalled: None });
    let service = TowerToHyperService::new(service.map_request(|request: Request<Incoming>| request.map(Body::new)));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's head timeout only runs with a timer; its buffer must hold at least 8 KiB.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.head_timeout)
        .max_buf_size(bounds.read_limit.max(8 * 1024));
    // The same header bound over HTTP/2 (hyper's own default is 16 KiB).
    builder.http2().max_header_list_size(u32::try_from(bounds.read_limit).unwrap_or(u32::MAX));
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// A connection whose first bytes were already read, with the stall guard on writes. The timer
/// only exists while a write is blocked, so idle connections pay nothing for it.
#[derive(Debug)]
struct HandedOver<S> {
    stream: S,
    read: Vec<u8>,
    replayed: usize,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> HandedOver<S> {
    fn guard<T>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.stalled = None;
            return result;
        }
        let timeout = self.timeout;
        let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(super::wire::stalled(timeout)))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HandedOver<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(rest) = this.read.get(this.replayed..).filter(|rest| !rest.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replayed += n;
            if this.replayed == this.read.len() {
                this.read = Vec::new();
                this.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HandedOver<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.guard(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.guard(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.stream).poll_flush(cx);
        self.guard(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
