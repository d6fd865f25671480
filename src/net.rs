//! Connection-level settings of the HTTP listener: `TCP_NODELAY` (events are small writes that
//! must not wait for Nagle), and dropping a client that stops reading.
//!
//! A viewer that never reads stops hyper from polling its body, so nothing inside the stream
//! can notice it. Here, a write that stays blocked for the stall timeout fails the connection,
//! and hyper closes it: its memory is released and its hub subscription detached.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Sleep,
};

/// A TCP listener whose connections carry the stall guard.
#[derive(Debug)]
pub struct GuardedListener {
    inner: TcpListener,
    stall_timeout: Duration,
}

impl GuardedListener {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener, stall_timeout: Duration) -> Self {
        Self { inner, stall_timeout }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = StallGuard;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        // Failing to set the option only costs latency; the connection is still served.
        let _ = stream.set_nodelay(true);
        (StallGuard { stream, timeout: self.stall_timeout, stalled: None }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection whose writes fail once they have been blocked for the timeout. The timer only
/// exists while a write is blocked, so idle connections pay nothing for it.
#[derive(Debug)]
pub struct StallGuard {
    stream: TcpStream,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl StallGuard {
    fn guard<T>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.stalled = None;
            return result;
        }
        let timeout = self.timeout;
        let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(timer.as_mut().poll(cx));
        tracing::info!(?timeout, "dropping a client that stopped reading");
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading")))
    }
}

impl AsyncRead for StallGuard {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallGuard {
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
