//! The body of the streamed representations (SSE, NDJSON): frames that are ready together go
//! out as one write, under the headers that keep proxies from buffering or caching them.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll, ready},
};

use axum::{
    body::Body,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _};

/// The most frames joined into one write.
const COALESCE: usize = 16;

/// A streamed response of `content_type` whose body is `frames`.
pub(super) fn streaming(frames: impl Stream<Item = Bytes> + Send + 'static, content_type: &'static str) -> Response {
    // Whatever is ready at once goes out as one chunk: under load a viewer that wakes up to
    // several events pays for one write instead of one per event.
    let body = Coalesce { inner: Box::pin(frames), done: false }.map(Ok::<_, Infallible>);
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Joins the frames that are ready at once into one chunk, so a viewer that wakes up to several
/// pays for one write; a lone frame passes through without a copy or an allocation.
struct Coalesce<S> {
    inner: Pin<Box<S>>,
    done: bool,
}

impl<S: Stream<Item = Bytes>> Stream for Coalesce<S> {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.done {
            return Poll::Ready(None);
        }
        let Some(first) = ready!(self.inner.as_mut().poll_next(cx)) else {
            self.done = true;
            return Poll::Ready(None);
        };
        let mut joined: Option<BytesMut> = None;
        for _ in 1..COALESCE {
            match self.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(next)) => joined.get_or_insert_with(|| BytesMut::from(&first[..])).put_slice(&next),
                Poll::Ready(None) => {
                    self.done = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        Poll::Ready(Some(joined.map_or(first, BytesMut::freeze)))
    }
}
