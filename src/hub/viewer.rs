//! One viewer's event stream: the backlog from the log, then live events, conflated to the
//! latest when the viewer falls behind, never without the terminal event.

use std::{pin::Pin, sync::Arc};

use futures_util::Stream;
use tokio::sync::broadcast::{Receiver, error::RecvError};

use super::shared::{End, ViewerGuard};
use crate::{event::StreamEvent, upstream::UpstreamError};

/// What a viewer receives: events, or the error that ended the upstream call.
type Delivery = Result<Arc<StreamEvent>, UpstreamError>;

/// A viewer's events. Dropping it detaches the viewer.
pub type ViewerStream = Pin<Box<dyn Stream<Item = Delivery> + Send>>;

/// The stream of a viewer attached to a shared call, starting after `cursor`.
pub(super) fn shared(
    guard: ViewerGuard,
    backlog: Vec<Arc<StreamEvent>>,
    live: Option<Receiver<Arc<StreamEvent>>>,
    cursor: u64,
) -> ViewerStream {
    Box::pin(async_stream::stream! {
        let shared = guard.shared();
        let mut cursor = cursor;
        for event in backlog {
            cursor = event.id;
            let terminal = event.kind.is_terminal();
            yield Ok(event);
            if terminal {
                return;
            }
        }
        let mut live = live;
        loop {
            let received = match live.as_mut() {
                Some(receiver) => receiver.recv().await,
                None => Err(RecvError::Closed),
            };
            match received {
                Ok(event) if event.id <= cursor => {}
                Ok(event) => {
                    cursor = event.id;
                    let terminal = event.kind.is_terminal();
                    yield Ok(event);
                    if terminal {
                        return;
                    }
                }
                Err(RecvError::Lagged(skipped)) => {
                    // Progress is state: a viewer that fell behind jumps to the latest update
                    // instead of buffering the ones it missed.
                    tracing::debug!(skipped, "slow viewer conflated to the latest update");
                    let (receiver, latest) = shared.catch_up();
                    live = receiver;
                    if let Some(event) = latest.filter(|e| e.id > cursor) {
                        cursor = event.id;
                        let terminal = event.kind.is_terminal();
                        yield Ok(event);
                        if terminal {
                            return;
                        }
                    }
                }
                Err(RecvError::Closed) => {
                    match shared.ending() {
                        (Some(End::Terminal), Some(last)) if last.id > cursor => yield Ok(last),
                        (Some(End::Terminal), _) => {}
                        (Some(End::Failed(error)), _) => yield Err(error),
                        (Some(End::Cancelled) | None, _) => yield Err(UpstreamError::ended_early()),
                    }
                    return;
                }
            }
        }
    })
}
