//! Any server-streaming method as a [`Resource`]: one route of the route table. The request is
//! built from the route's fixed fields, the path parameters and the resume point; every
//! response message is decoded as a `DynamicMessage` of the method's output type and mapped to
//! a [`StreamEvent`] by the route's options (`routes/mapping.rs`). Nothing here knows which
//! service it calls.

use std::{
    collections::HashMap,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt as _, future::BoxFuture};
use http::uri::PathAndQuery;
use prost::Message as _;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use tonic::{
    Code, Status,
    client::Grpc,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

use super::{Call, EventStream, Fault, Limited, ParamRejected, Resource, Undecodable, UpstreamError, UpstreamPool};
use crate::{
    event::{EventKind, StreamEvent},
    routes::{Pending, Retention, Route, field_value},
};

/// One route served by calling its upstream.
#[derive(Debug)]
pub struct RouteResource {
    /// The path template, made static once (see [`EventKind`]).
    path: &'static str,
    /// What depends on the descriptors: replaced when server reflection is asked again.
    mapping: RwLock<Arc<Mapping>>,
    /// `invalid_<param>`, the error code of each path parameter, made static once.
    param_codes: HashMap<String, &'static str>,
    retention: Retention,
    replay: usize,
    resumable: bool,
    pool: Arc<UpstreamPool>,
    deadline: Duration,
    max_message_bytes: usize,
    /// For descriptors from server reflection: how to ask again after the connection broke.
    refresh: Option<Refresh>,
}

/// The route with its descriptors, and what is derived from them.
#[derive(Debug)]
struct Mapping {
    route: Route,
    /// Every event name the route can produce, made static once.
    kinds: HashMap<String, EventKind>,
    /// `/package.Service/Method`.
    grpc_path: PathAndQuery,
    /// The response's first top-level Timestamp field, taken as when the upstream produced the
    /// event (for the delivery-lag metric).
    emitted_at: Option<FieldDescriptor>,
}

/// Asks an upstream's server reflection again for a route: after a call of the route broke
/// with the connection (the upstream may come back redeployed with new descriptors), before the
/// next call.
#[derive(Debug)]
pub struct Refresh {
    part: Pending,
    timeout: Duration,
    stale: AtomicBool,
}

impl Refresh {
    /// Refreshes from `part` (the routes file reduced to the upstream), each attempt within
    /// `timeout`.
    pub fn new(part: Pending, timeout: Duration) -> Self {
        Self { part, timeout, stale: AtomicBool::new(false) }
    }
}

/// Why a route cannot be served.
#[derive(Debug, thiserror::Error)]
#[error("route {path}: {message}")]
pub struct RouteResourceError {
    /// The route's path template.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl Mapping {
    fn new(route: Route) -> Result<Self, RouteResourceError> {
        let fail = |message: String| RouteResourceError { path: route.path.clone(), message };
        let mut kinds = HashMap::new();
        for name in route.event_names().into_iter().chain(route.terminal.is_empty().then(|| "end".to_owned())) {
            let terminal = route.terminal.contains(&name) || (route.terminal.is_empty() && name == "end");
            let kind = EventKind::new(leak(&name), terminal).ok_or_else(|| fail(format!("bad event name {name:?}")))?;
            kinds.insert(name, kind);
        }
        let method = &route.method;
        let grpc_path = format!("/{}/{}", method.parent_service().full_name(), method.name());
        let grpc_path = PathAndQuery::try_from(grpc_path).map_err(|e| fail(format!("method path: {e}")))?;
        let emitted_at = method.output().fields().find(|f| is_timestamp(f) && !f.is_list());
        Ok(Self { route, kinds, grpc_path, emitted_at })
    }

    /// The event of one message. `last` is the id of the previous event of this call, for a
    /// route that numbers its events itself.
    fn event(&self, message: &DynamicMessage, last: &mut u64) -> Result<StreamEvent, UpstreamError> {
        // A message the route cannot name or number breaks the service's own contract.
        let mapped = self.route.map(message).map_err(|e| UpstreamError::new(Code::Internal, e.to_string()))?;
        let id = mapped.id.unwrap_or(*last + 1);
        *last = id;
        // Every name a route can produce was made a kind when it loaded.
        let kind = self.kinds.get(mapped.name).copied().ok_or_else(|| {
            UpstreamError::new(Code::Internal, format!("route {} has no event named {}", self.route.path, mapped.name))
        })?;
        let emitted_at = self.emitted_at.as_ref().and_then(|field| {
            let value = message.get_field(field);
            let at = value.as_message()?.transcode_to::<prost_types::Timestamp>().ok()?;
            std::time::SystemTime::try_from(at).ok()
        });
        Ok(StreamEvent::new(id, kind, &mapped.data, emitted_at))
    }
}

impl RouteResource {
    /// Serves `route` by calling through `pool`; each call carries `deadline` as its gRPC
    /// timeout, and a message over `max_message_bytes` ends it as the upstream's fault. With
    /// `refresh`, a call that broke with the connection has the descriptors asked for again
    /// before the next one.
    ///
    /// The path template, event names and parameter codes are leaked into `&'static str` once
    /// here: a bounded set, fixed for the life of the process.
    pub fn new(
        route: Route,
        pool: Arc<UpstreamPool>,
        deadline: Duration,
        max_message_bytes: usize,
        refresh: Option<Refresh>,
    ) -> Result<Self, RouteResourceError> {
        let param_codes = route.params.iter().map(|p| (p.name.clone(), leak(&format!("invalid_{}", p.name)))).collect();
        Ok(Self {
            path: leak(&route.path),
            param_codes,
            retention: route.retention,
            replay: route.replay,
            resumable: route.resume.is_some(),
            mapping: RwLock::new(Arc::new(Mapping::new(route)?)),
            pool,
            deadline,
            max_message_bytes,
            refresh,
        })
    }

    fn mapping(&self) -> Arc<Mapping> {
        Arc::clone(&self.mapping.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Asks the upstream's reflection again when the last call broke with the connection; a
    /// refresh that fails keeps the descriptors the route has.
    async fn refresh(&self) {
        let Some(refresh) = &self.refresh else { return };
        if !refresh.stale.swap(false, Ordering::Relaxed) {
            return;
        }
        let route = match refresh.part.resolve(refresh.timeout).await {
            Ok(table) => table.routes.into_iter().find(|route| route.path == self.path),
            Err(errors) => {
                let reason = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                tracing::warn!(route = self.path, %reason, "descriptors not refreshed; keeping the ones the route has");
                return;
            }
        };
        match route.map(Mapping::new) {
            Some(Ok(mapping)) => {
                *self.mapping.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(mapping);
                tracing::info!(route = self.path, "descriptors refreshed from server reflection");
            }
            Some(Err(error)) => tracing::warn!(%error, "descriptors not refreshed"),
            None => tracing::warn!(route = self.path, "descriptors not refreshed: the route is gone from them"),
        }
    }

    /// The call broke with the connection: refresh before the next one.
    fn broke(&self, error: &UpstreamError) {
        if let (Some(refresh), Fault::Transport) = (&self.refresh, error.fault) {
            refresh.stale.store(true, Ordering::Relaxed);
        }
    }
}

impl Resource for RouteResource {
    fn route(&self) -> &'static str {
        self.path
    }

    fn retention(&self) -> Retention {
        self.retention
    }

    fn replay(&self) -> usize {
        self.replay
    }

    fn resumable(&self) -> bool {
        self.resumable
    }

    fn kind(&self, name: &str) -> Option<EventKind> {
        self.mapping().kinds.get(name).copied()
    }

    fn numbered_by_bff(&self) -> bool {
        self.mapping().route.id.is_none()
    }

    fn check(&self, params: &[(String, String)]) -> Result<(), ParamRejected> {
        let mapping = self.mapping();
        for param in &mapping.route.params {
            let value = params.iter().find(|(name, _)| *name == param.name).map(|(_, v)| v.as_str());
            // A value must also fit its field: an integer field takes only a number it can hold.
            let fits = value.is_some_and(|v| param.pattern.is_match(v) && field_value(&param.field, v).is_some());
            if !fits {
                let code = self.param_codes.get(&param.name).copied().unwrap_or("invalid_parameter");
                return Err(ParamRejected { code, rule: rule_text(&param.name, param.pattern.as_str()) });
            }
        }
        Ok(())
    }

    fn open(self: Arc<Self>, call: Call, resume_after: u64) -> BoxFuture<'static, Result<EventStream, UpstreamError>> {
        Box::pin(async move {
            self.refresh().await;
            let mapping = self.mapping();
            let params: Vec<(&str, &str)> = call.params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            // Only the resume point travels with the stream, not the call.
            let mut last = resume_after;
            let message = mapping
                .route
                .build_request(&params, resume_after)
                .map_err(|e| UpstreamError::new(Code::InvalidArgument, e.to_string()))?;
            let lease = self.pool.lease();
            // The limit bounds the memory one upstream message may take; `Limited` refuses a
            // larger one by its length prefix, as an error of its own type.
            let limit = self.max_message_bytes;
            let mut client = Grpc::new(Limited::new(lease.channel.clone(), limit)).max_decoding_message_size(limit);
            let mut request = tonic::Request::new(message);
            request.set_timeout(self.deadline);
            call.identity.attach(request.metadata_mut());
            client
                .ready()
                .await
                .map_err(|e| UpstreamError::new(Code::Unavailable, format!("upstream not ready: {e}")))?;
            let codec = DynamicCodec { output: mapping.route.method.output() };
            let response =
                client.server_streaming(request, mapping.grpc_path.clone(), codec).await.map_err(|status| {
                    let error = UpstreamError::from(status);
                    self.broke(&error);
                    error
                })?;
            let mut messages = response.into_inner();
            let resource = Arc::clone(&self);
            let events = async_stream::stream! {
                // The lease travels with the stream: the connection counts the call until it ends.
                let _lease = lease;
                while let Some(item) = messages.next().await {
                    let event = item.map_err(UpstreamError::from).and_then(|m| mapping.event(&m, &mut last));
                    if let Err(error) = &event {
                        resource.broke(error);
                    }
                    let failed = event.is_err();
                    yield event;
                    if failed {
                        return;
                    }
                }
                // A route without terminal names ends when the upstream ends with OK.
                if mapping.route.terminal.is_empty() {
                    yield Ok(StreamEvent::new(last + 1, EventKind::END, b"{}", None));
                }
            };
            Ok(Box::pin(events) as EventStream)
        })
    }
}

/// `path parameter <name> must match <rule>`, the rule as the file wrote it (without the
/// anchors validation wrapped it in).
pub(super) fn rule_text(name: &str, anchored: &str) -> String {
    let rule = anchored.strip_prefix("^(?:").and_then(|r| r.strip_suffix(")$")).unwrap_or(anchored);
    format!("path parameter {name} must match {rule}")
}

fn leak(text: &str) -> &'static str {
    Box::leak(text.to_owned().into_boxed_str())
}

fn is_timestamp(field: &FieldDescriptor) -> bool {
    matches!(field.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp")
}

/// Encodes the request and decodes responses as `DynamicMessage`s of the method's output type,
/// with a small initial decode buffer (messages are a few hundred bytes, and a buffer is held by
/// every open call; it grows up to the decode limit).
#[derive(Debug, Clone)]
struct DynamicCodec {
    output: MessageDescriptor,
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder { output: self.output.clone() }
    }
}

#[derive(Debug)]
struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(format!("cannot encode the request: {e}")))
    }
}

#[derive(Debug)]
struct DynamicDecoder {
    output: MessageDescriptor,
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.output.clone(), src)
            .map(Some)
            .map_err(|e| Status::from_error(Box::new(Undecodable(e.to_string()))))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(512, 32 * 1024)
    }
}

/// An update of the built-in document route, as text: what the representations' property tests
/// feed through the real mapping (they see no prost type).
#[cfg(test)]
#[derive(Debug, Clone)]
pub(crate) struct DocumentUpdate {
    pub sequence: u64,
    pub terminal: bool,
    pub document_id: String,
    pub stage: String,
    pub message: String,
    pub error_code: String,
}

/// The event a call of the built-in document route makes of `update`: encoded as protobuf,
/// decoded as the route's output type and mapped, exactly as each upstream message is.
#[cfg(test)]
pub(crate) fn document_event(update: &DocumentUpdate) -> StreamEvent {
    use crate::pb::docproc::v1::{ProcessingStatus, ProcessingUpdate};
    static MAPPING: std::sync::OnceLock<Mapping> = std::sync::OnceLock::new();
    let mapping = MAPPING.get_or_init(|| {
        let table = crate::routes::RouteTable::built_in(&["http://127.0.0.1:1".to_owned()]);
        let route = table.ok().and_then(|t| t.routes.into_iter().next());
        route.and_then(|route| Mapping::new(route).ok()).unwrap_or_else(|| unreachable!("the built-in route maps"))
    });
    let status = if update.terminal { ProcessingStatus::Completed } else { ProcessingStatus::Running };
    let message = ProcessingUpdate {
        document_id: update.document_id.clone(),
        sequence: update.sequence,
        status: status.into(),
        progress_percent: 40,
        stage: update.stage.clone(),
        message: update.message.clone(),
        emitted_at: Some(prost_types::Timestamp { seconds: 1_795_428_000, nanos: 123_456_789 }),
        error_code: update.error_code.clone(),
    };
    let decoded = DynamicMessage::decode(mapping.route.method.output(), message.encode_to_vec().as_slice());
    let decoded = decoded.unwrap_or_else(|error| unreachable!("an update decodes: {error}"));
    mapping.event(&decoded, &mut 0).unwrap_or_else(|error| unreachable!("an update maps: {error}"))
}
