//! The decode limit on upstream messages, enforced where the bytes arrive so that a message too
//! large is refused by its 5-byte gRPC frame header, before it is buffered, and reported as an
//! error of its own type ([`MessageTooLarge`]) that tonic keeps in the `Status` source chain.
//! tonic's own limit reports the same case as a plain OUT_OF_RANGE, indistinguishable from the
//! upstream's own OUT_OF_RANGE; this one says whose fault it is.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf as _, Bytes};
use futures_util::{TryFutureExt as _, future::MapOk};
use http_body::{Body, Frame, SizeHint};
use tonic::transport::Channel;

/// An upstream message whose gRPC length prefix is above the decode limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the upstream sent a message of {len} bytes, more than the limit of {limit} bytes (--max-upstream-message-bytes)"
)]
pub struct MessageTooLarge {
    /// The message's length prefix, in bytes.
    pub len: usize,
    /// The limit, in bytes.
    pub limit: usize,
}

/// A channel whose response bodies fail with [`MessageTooLarge`] at the first gRPC message
/// whose length prefix is above `limit` bytes.
#[derive(Debug, Clone)]
pub struct Limited {
    inner: Channel,
    limit: usize,
}

impl Limited {
    /// Wraps `inner`, allowing messages of at most `limit` bytes.
    pub fn new(inner: Channel, limit: usize) -> Self {
        Self { inner, limit }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Request<tonic::body::Body>> for Limited {
    type Response = http::Response<LimitedBody>;
    type Error = tonic::transport::Error;
    type Future = MapOk<
        <Channel as tower::Service<http::Request<tonic::body::Body>>>::Future,
        Box<dyn FnOnce(http::Response<tonic::body::Body>) -> http::Response<LimitedBody> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let limit = self.limit;
        self.inner.call(request).map_ok(Box::new(move |response| {
            response.map(|inner| LimitedBody { inner, limit, header: [0; 5], have: 0, skip: 0 })
        }))
    }
}

/// A gRPC response body that checks every message's length prefix as it passes.
#[derive(Debug)]
pub struct LimitedBody {
    inner: tonic::body::Body,
    limit: usize,
    /// The frame header being read, `have` bytes of it so far.
    header: [u8; 5],
    have: usize,
    /// Bytes of the current message still to pass before the next header.
    skip: usize,
}

impl LimitedBody {
    /// Follows the message framing over `data`; the first message over the limit is an error.
    fn check(&mut self, mut data: &[u8]) -> Result<(), MessageTooLarge> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                self.have = 0;
                let len = (&self.header[1..]).get_u32() as usize;
                if len > self.limit {
                    return Err(MessageTooLarge { len, limit: self.limit });
                }
                self.skip = len;
            }
        }
        Ok(())
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(status)) => return Poll::Ready(Some(Err(Box::new(status)))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref()
            && let Err(too_large) = self.check(data)
        {
            return Poll::Ready(Some(Err(Box::new(too_large))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(limit: usize) -> LimitedBody {
        LimitedBody { inner: tonic::body::Body::empty(), limit, header: [0; 5], have: 0, skip: 0 }
    }

    fn message(len: u32) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&len.to_be_bytes());
        out.resize(5 + len as usize, b'x');
        out
    }

    #[test]
    fn messages_up_to_the_limit_pass_in_any_chunking_and_the_first_above_it_fails() {
        let stream: Vec<u8> = [message(10), message(16), message(0), message(17)].concat();
        for cut in 1..stream.len() {
            let mut limited = body(16);
            let verdict = stream.chunks(cut).try_for_each(|chunk| limited.check(chunk));
            assert_eq!(verdict, Err(MessageTooLarge { len: 17, limit: 16 }), "chunks of {cut}");
        }
        let mut limited = body(17);
        assert_eq!(limited.check(&stream), Ok(()));
    }
}
