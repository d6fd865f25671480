//! Upstream gRPC services: the generic seam between a streamed resource and the transports.
//!
//! A [`Resource`] knows how to open one server-streaming call and map its messages to
//! [`StreamEvent`]s. Every route is one [`RouteResource`] (`dynamic.rs`), built from the route
//! table: adding a streamed resource means a routes-file entry, not code.

mod channel;
mod deferred;
mod dynamic;
mod limit;

use std::{fmt, pin::Pin, sync::Arc};

use futures_util::{Stream, future::BoxFuture};
use tonic::{Code, metadata::MetadataValue};

pub use channel::{ChannelError, UpstreamChannel, UpstreamConfig, UpstreamPool};
pub use deferred::{Deferred, Waiting};
#[cfg(test)]
pub(crate) use dynamic::{DocumentUpdate, document_event};
pub use dynamic::{Refresh, RouteResource, RouteResourceError};
pub use limit::{Limited, MessageTooLarge};

use crate::{
    event::{EventKind, StreamEvent},
    routes::Retention,
};

/// The events of one upstream call, or the error that ended it.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, UpstreamError>> + Send>>;

/// A streamed resource backed by one server-streaming gRPC method.
pub trait Resource: Send + Sync + fmt::Debug + 'static {
    /// The route template the resource is served under, used in logs, metrics and sharing
    /// keys.
    fn route(&self) -> &'static str;

    /// What a slow viewer gets: the latest event (`state`) or every event (`log`).
    fn retention(&self) -> Retention;

    /// Events kept per shared call for resuming viewers (at least one).
    fn replay(&self) -> usize;

    /// Whether the upstream can continue after an id (the route has a resume field). Without
    /// it, a resume point older than the BFF's log gets `reset`, not an upstream call.
    fn resumable(&self) -> bool;

    /// Checks the path parameters against the route's rules, before any upstream call: every
    /// parameter must be present (a path that did not decode has none) and match its rule.
    fn check(&self, params: &[(String, String)]) -> Result<(), ParamRejected>;

    /// Whether the route can be served now; an error (UNAVAILABLE: its upstream's descriptors
    /// have not arrived) is the answer to every request, without a shared call.
    fn available(&self) -> Result<(), UpstreamError> {
        Ok(())
    }

    /// The event kind named `name`, when the route can produce it: how events stored by name
    /// (in cluster mode, in Redis) get their static kind back. `None` for an unknown name.
    fn kind(&self, name: &str) -> Option<EventKind> {
        let _ = name;
        None
    }

    /// Whether the BFF numbers the route's events (the route has no `id` field): then a call
    /// that starts over cannot be told apart from new events by their ids.
    fn numbered_by_bff(&self) -> bool {
        false
    }

    /// Whether [`Resource::open`] calls the upstream, so that the hub counts each open as an
    /// upstream call in its metrics. A resource reading events from elsewhere (the cluster's
    /// Redis stream) counts its own upstream calls.
    fn calls_upstream(&self) -> bool {
        true
    }

    /// Opens the upstream call, asking for the events after `resume_after` (0: from the first)
    /// where the route can. Resolves when the upstream has answered with headers (or an
    /// error); the returned stream yields the mapped events.
    fn open(self: Arc<Self>, call: Call, resume_after: u64) -> BoxFuture<'static, Result<EventStream, UpstreamError>>;
}

/// A path parameter that its route's rule refuses (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rule}")]
pub struct ParamRejected {
    /// `invalid_<param>`, such as `invalid_document_id`.
    pub code: &'static str,
    /// The rule, for the client: `path parameter document_id must match ^...$`.
    pub rule: String,
}

/// A shared handle to a resource, as the router and the hub hold it.
pub type SharedResource = Arc<dyn Resource>;

/// What one upstream call asks for and on whose behalf.
#[derive(Debug, Clone)]
pub struct Call {
    /// The validated path parameters, by name, as the route's template names them: with the
    /// route, tenant and user they are the sharing key.
    /// Shared, so that the call, its sharing key and its driver hold one copy.
    pub params: Arc<[(String, String)]>,
    /// Only events with a sequence above this are wanted; 0 means from the first.

    /// Identity and tracing metadata passed on to the upstream.
    pub identity: Identity,
}

/// Who is asking, passed to the upstream as gRPC metadata.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// `x-user-id`: the token's subject.
    pub user_id: Option<String>,
    /// `x-tenant-id`: the token's tenant claim.
    pub tenant_id: Option<String>,
    /// `x-request-id`: always set.
    pub request_id: String,
    /// The W3C `traceparent` of the inbound request, when it had a valid one.
    pub traceparent: Option<String>,
}

impl Identity {
    /// Copies the identity into gRPC metadata. Values were validated at the HTTP edge; one
    /// that still does not fit ASCII metadata is left out rather than failing the call.
    pub fn attach(&self, metadata: &mut tonic::metadata::MetadataMap) {
        let pairs = [
            ("x-user-id", self.user_id.as_deref()),
            ("x-tenant-id", self.tenant_id.as_deref()),
            ("x-request-id", Some(self.request_id.as_str())),
            ("traceparent", self.traceparent.as_deref()),
        ];
        for (key, value) in pairs {
            if let Some(value) = value.and_then(|v| MetadataValue::try_from(v).ok()) {
                metadata.insert(key, value);
            }
        }
    }
}

/// An upstream failure, reduced to what the HTTP layer needs: the gRPC code, its message, and
/// whose fault it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream {code:?}: {message}")]
pub struct UpstreamError {
    /// The gRPC status code.
    pub code: Code,
    /// The upstream's message, bounded in length.
    pub message: String,
    /// Where the failure came from, decided once from the error's type where it was made.
    pub fault: Fault,
}

/// Where an upstream failure came from. Decided by the type of the error (tonic keeps the
/// cause in the `Status` source chain), never by the words of its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The upstream answered with this status.
    Status,
    /// The connection to the upstream broke or could not be made (hyper, h2 or I/O errors):
    /// worth resuming.
    Transport,
    /// The upstream sent a message the BFF cannot take: larger than the decode limit, or not
    /// decodable. The upstream side's fault (HTTP 502), and repeating the call would not help.
    BadMessage,
}

/// The upstream sent bytes that do not decode as the method's response message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the upstream sent a message that does not decode: {0}")]
pub struct Undecodable(pub String);

/// The longest upstream error message passed on to clients; longer ones are cut.
const MAX_ERROR_MESSAGE: usize = 512;

impl UpstreamError {
    /// Builds an error, cutting the message at a character boundary if it is too long.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE {
            let mut end = MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Self { code, message, fault: Fault::Status }
    }

    /// Whether resuming the call may help: the upstream is unavailable, or the connection
    /// broke.
    pub fn is_transient(&self) -> bool {
        self.code == Code::Unavailable || self.fault == Fault::Transport
    }

    /// The gRPC code in snake case (`unavailable`, `not_found`, ...), as clients and metrics see it.
    pub fn code_name(&self) -> &'static str {
        match self.code {
            Code::Ok => "ok",
            Code::Cancelled => "cancelled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// How metrics label the end of a call that failed this way: the gRPC code name, or
    /// `bad_message` for a message the BFF refused (the upstream sent no status for it).
    pub fn metric_label(&self) -> &'static str {
        match self.fault {
            Fault::BadMessage => "bad_message",
            Fault::Status | Fault::Transport => self.code_name(),
        }
    }

    /// The upstream ended its stream with OK before sending a terminal update.
    pub fn ended_early() -> Self {
        Self::new(Code::Unavailable, "upstream ended the stream before the job finished")
    }
}

impl From<tonic::Status> for UpstreamError {
    fn from(status: tonic::Status) -> Self {
        let fault = fault_of(&status);
        Self { fault, ..Self::new(status.code(), status.message()) }
    }
}

/// Walks the status's source chain for the errors our own client raises.
fn fault_of(status: &tonic::Status) -> Fault {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<MessageTooLarge>() || error.is::<Undecodable>() {
            return Fault::BadMessage;
        }
        if error.is::<hyper::Error>()
            || error.is::<h2::Error>()
            || error.is::<std::io::Error>()
            || error.is::<tonic::transport::Error>()
        {
            return Fault::Transport;
        }
        source = error.source();
    }
    Fault::Status
}
