//! The WebSocket representation: each event as a JSON text frame, pings as heartbeats, a close
//! frame with a code at the end; and how a handshake is recognised before it is taken.

use axum::{
    extract::{
        FromRequestParts,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    },
    http::request::Parts,
    response::Response,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use hyper::upgrade::OnUpgrade;

use super::RESET;
use crate::http::stream::{Ending, Output};

/// The largest message accepted from the client, in bytes: it has nothing to say but close.
const MAX_INBOUND: usize = 4096;

/// A WebSocket: one text frame per event, `{"id":"7","event":"progress","data":{...}}`, pings
/// as heartbeats, and a close frame at the end.
pub fn websocket(upgrade: WebSocketUpgrade, feed: impl Stream<Item = Output> + Send + 'static) -> Response {
    upgrade.max_message_size(MAX_INBOUND).on_upgrade(move |socket| relay(socket, feed))
}

/// Whether the request is a WebSocket handshake that axum accepts, leaving its upgrade in the
/// request for `Negotiated` to take. The origin check and the resume point depend on it, and
/// run before the representation is negotiated.
pub async fn is_handshake<S: Send + Sync>(parts: &mut Parts, state: &S) -> bool {
    // Axum's extractor takes the connection's `OnUpgrade`. A clone is a handle on the same one
    // upgrade, so putting a clone back leaves the request as it was.
    let on_upgrade = parts.extensions.get::<OnUpgrade>().cloned();
    let accepted = WebSocketUpgrade::from_request_parts(parts, state).await.is_ok();
    if let Some(on_upgrade) = on_upgrade {
        parts.extensions.insert(on_upgrade);
    }
    accepted
}

async fn relay(mut socket: WebSocket, feed: impl Stream<Item = Output> + Send + 'static) {
    let mut feed = std::pin::pin!(feed);
    loop {
        tokio::select! {
            output = feed.next() => {
                let Some(output) = output else { break };
                let (messages, last) = messages(output);
                for message in messages {
                    if socket.send(message).await.is_err() {
                        return;
                    }
                }
                if last {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                // Pongs and pings are answered by the library; text from the client is ignored.
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// The frames for one output, and whether they end the socket.
pub(super) fn messages(output: Output) -> (Vec<Message>, bool) {
    let text = |json: String| Message::Text(json.into());
    match output {
        Output::Reset => (vec![text(format!(r#"{{"event":"reset","data":{RESET}}}"#))], false),
        Output::Event(event) => {
            let data = String::from_utf8_lossy(&event.data);
            let id = event.sse_id();
            (vec![text(format!(r#"{{"id":"{id}","event":"{}","data":{data}}}"#, event.kind.name()))], false)
        }
        Output::Heartbeat => (vec![Message::Ping(Bytes::new())], false),
        Output::End(Ending::Terminal) => (vec![close(1000, "done")], true),
        Output::End(Ending::Error(error)) => {
            let data = String::from_utf8_lossy(&error.body()).into_owned();
            // 1013 "try again later" for retryable errors, 1011 "internal error" otherwise.
            let code = if error.retryable() { 1013 } else { 1011 };
            (vec![text(format!(r#"{{"event":"error","data":{data}}}"#)), close(code, error.code())], true)
        }
        // 1012 "service restart": the client reconnects and resumes.
        Output::End(Ending::Reconnect(_)) => (vec![close(1012, "reconnect")], true),
    }
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}
