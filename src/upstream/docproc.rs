//! `DocumentProcessor.ProcessDocument`: the document-progress resource and its mapping from
//! prost messages to [`StreamEvent`]s.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::{StreamExt as _, future::BoxFuture};
use http::uri::PathAndQuery;
use serde::Serialize;
use tonic::{
    Code, Status,
    client::Grpc,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
    metadata::MetadataValue,
};
use tonic_prost::ProstCodec;

use super::{Call, EventStream, Identity, Limited, Resource, Undecodable, UpstreamError, UpstreamPool};
use crate::{
    event::{EventKind, StreamEvent},
    pb::docproc::v1::{ProcessDocumentRequest, ProcessingStatus, ProcessingUpdate},
};

/// Document processing progress, served at `/documents/{document_id}/progress`.
#[derive(Debug, Clone)]
pub struct DocumentProgress {
    pool: Arc<UpstreamPool>,
    deadline: Duration,
    max_message_bytes: usize,
}

impl DocumentProgress {
    /// The route this resource is served under.
    pub const ROUTE: &'static str = "/documents/{document_id}/progress";

    /// Calls the DocumentProcessor service through `pool`; each call carries `deadline` as its
    /// gRPC timeout, and a message larger than `max_message_bytes` ends it as the upstream's
    /// fault ([`Fault::BadMessage`](super::Fault::BadMessage)).
    pub fn new(pool: Arc<UpstreamPool>, deadline: Duration, max_message_bytes: usize) -> Self {
        Self { pool, deadline, max_message_bytes }
    }
}

impl Resource for DocumentProgress {
    fn route(&self) -> &'static str {
        Self::ROUTE
    }

    fn open(&self, call: Call) -> BoxFuture<'static, Result<EventStream, UpstreamError>> {
        let lease = self.pool.lease();
        // Messages can carry long human-readable text; the limit bounds the memory one upstream
        // message may take. `Limited` refuses a larger one by its length prefix, as an error of
        // its own type; tonic's equal limit behind it is never reached.
        let limit = self.max_message_bytes;
        let mut client = Grpc::new(Limited::new(lease.channel.clone(), limit)).max_decoding_message_size(limit);
        let deadline = self.deadline;
        Box::pin(async move {
            let mut request =
                tonic::Request::new(ProcessDocumentRequest { document_id: call.id, resume_after: call.resume_after });
            request.set_timeout(deadline);
            attach_identity(request.metadata_mut(), &call.identity);
            client
                .ready()
                .await
                .map_err(|e| UpstreamError::new(Code::Unavailable, format!("upstream not ready: {e}")))?;
            let response =
                client.server_streaming(request, PathAndQuery::from_static(PROCESS_DOCUMENT), SmallBuffers).await?;
            // The lease travels with the stream: the connection counts the call until it ends.
            let events = response.into_inner().map(move |item| {
                let _ = &lease;
                item.map_err(UpstreamError::from).and_then(map_update)
            });
            Ok(Box::pin(events) as EventStream)
        })
    }
}

/// The method's path, as the generated client would call it.
const PROCESS_DOCUMENT: &str = "/docproc.v1.DocumentProcessor/ProcessDocument";

/// prost encoding with a small initial decode buffer. Updates are a few hundred bytes, and the
/// default 8 KiB buffer would be held by every open upstream call for its whole life; the buffer
/// still grows for larger messages (up to the 4 MiB bound).
#[derive(Debug, Clone, Copy)]
struct SmallBuffers;

impl Codec for SmallBuffers {
    type Encode = ProcessDocumentRequest;
    type Decode = ProcessingUpdate;
    type Encoder = <ProstCodec<ProcessDocumentRequest, ProcessingUpdate> as Codec>::Encoder;
    type Decoder = Checked<<ProstCodec<ProcessDocumentRequest, ProcessingUpdate> as Codec>::Decoder>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<ProcessDocumentRequest, ProcessingUpdate>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Checked(ProstCodec::<ProcessDocumentRequest, ProcessingUpdate>::raw_decoder(BufferSettings::new(
            512,
            32 * 1024,
        )))
    }
}

/// A decoder whose failures carry [`Undecodable`] in their source chain, so that a malformed
/// message is classified as the upstream's fault by type.
#[derive(Debug)]
struct Checked<D>(D);

impl<D: Decoder<Error = Status>> Decoder for Checked<D> {
    type Item = D::Item;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<D::Item>, Status> {
        self.0.decode(buf).map_err(|status| Status::from_error(Box::new(Undecodable(status.message().to_owned()))))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// Copies the caller's identity into gRPC metadata. Values were validated at the HTTP edge;
/// one that still does not fit ASCII metadata is left out rather than failing the call.
fn attach_identity(metadata: &mut tonic::metadata::MetadataMap, identity: &Identity) {
    let pairs = [
        ("x-user-id", identity.user_id.as_deref()),
        ("x-tenant-id", identity.tenant_id.as_deref()),
        ("x-request-id", Some(identity.request_id.as_str())),
        ("traceparent", identity.traceparent.as_deref()),
    ];
    for (key, value) in pairs {
        if let Some(value) = value.and_then(|v| MetadataValue::try_from(v).ok()) {
            metadata.insert(key, value);
        }
    }
}

/// The JSON `data` of a progress event, exactly as the contract lists its fields.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProgressData<'a> {
    document_id: &'a str,
    sequence: u64,
    status: &'static str,
    percent: u32,
    stage: &'a str,
    message: &'a str,
    emitted_at: Option<String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    error_code: &'a str,
}

/// Maps one upstream message to an event, rejecting messages that break the contract.
pub(crate) fn map_update(update: ProcessingUpdate) -> Result<StreamEvent, UpstreamError> {
    let (kind, status) = match ProcessingStatus::try_from(update.status) {
        Ok(ProcessingStatus::Queued) => (EventKind::Progress, "queued"),
        Ok(ProcessingStatus::Running) => (EventKind::Progress, "running"),
        Ok(ProcessingStatus::Completed) => (EventKind::Completed, "completed"),
        Ok(ProcessingStatus::Failed) => (EventKind::Failed, "failed"),
        Ok(ProcessingStatus::Unspecified) | Err(_) => {
            return Err(UpstreamError::new(
                Code::Internal,
                format!("upstream sent update {} with invalid status {}", update.sequence, update.status),
            ));
        }
    };
    if update.sequence == 0 {
        return Err(UpstreamError::new(Code::Internal, "upstream sent an update with sequence 0"));
    }
    let emitted_at = update.emitted_at.and_then(|at| SystemTime::try_from(at).ok());
    let data = ProgressData {
        document_id: &update.document_id,
        sequence: update.sequence,
        status,
        // A bar past 100 % is never what the service meant; the proto bounds it to 0..=100.
        percent: update.progress_percent.min(100),
        stage: &update.stage,
        message: &update.message,
        emitted_at: update.emitted_at.map(rfc3339_nanos),
        error_code: &update.error_code,
    };
    let json = serde_json::to_vec(&data)
        .map_err(|e| UpstreamError::new(Code::Internal, format!("cannot encode update: {e}")))?;
    Ok(StreamEvent::new(update.sequence, kind, &json, emitted_at))
}

/// RFC 3339 in UTC with all nine fractional digits, so clients never lose precision and every
/// value has the same shape.
pub fn rfc3339_nanos(mut ts: prost_types::Timestamp) -> String {
    ts.normalize();
    let nanos = ts.nanos;
    ts.nanos = 0;
    let whole = ts.to_string();
    let seconds = whole.strip_suffix('Z').unwrap_or(&whole);
    format!("{seconds}.{nanos:09}Z")
}
