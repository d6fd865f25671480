//! One call of a method played from scripts: decode the request, find its script, check the
//! tenant, then send the script's messages on its clock and end with its status.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use prost_reflect::{DynamicMessage, MethodDescriptor, SerializeOptions};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, server::Grpc};

use super::{DynamicCodec, DynamicScript};
use crate::sim::{SeenCall, SimStats};

/// What every call needs besides its script: the clock's speed, the stats and the shutdown.
#[derive(Debug, Clone)]
pub(in crate::sim) struct Player {
    /// Time factor: 2 plays every script twice as fast.
    pub speed: f64,
    /// Where every call is counted.
    pub stats: Arc<SimStats>,
    /// Ends every running call.
    pub shutdown: CancellationToken,
}

type Messages = ReceiverStream<Result<DynamicMessage, Status>>;

/// One served method, as the tower service axum routes its gRPC path to.
#[derive(Debug, Clone)]
pub(super) struct MethodService {
    method: MethodDescriptor,
    name: Arc<str>,
    scripts: Arc<[Arc<DynamicScript>]>,
    player: Player,
}

impl MethodService {
    /// The handler of `method` (named `package.Service/Method`), playing `scripts`.
    pub(super) fn new(
        method: MethodDescriptor,
        name: String,
        scripts: Vec<Arc<DynamicScript>>,
        player: Player,
    ) -> Self {
        Self { method, name: name.into(), scripts: scripts.into(), player }
    }

    /// Counts the call, finds its script and starts playing it.
    fn start(&self, call: Request<DynamicMessage>) -> Result<Response<Messages>, Status> {
        // Every field, defaults included, so tests can assert any of them.
        let options = SerializeOptions::new().skip_default_fields(false);
        let json = call.get_ref().serialize_with_options(serde_json::value::Serializer, &options);
        let seen = SeenCall::new(&self.name, json.unwrap_or_default(), call.metadata());
        let tenant = seen.tenant_id.clone();
        let Player { speed, stats, shutdown } = self.player.clone();
        stats.record_call(seen);
        let script = self.authorize(call.get_ref(), tenant.as_deref())?;
        let (tx, rx) = mpsc::channel(16);
        stats.call_started();
        tokio::spawn(async move {
            let cancelled = tokio::select! {
                cancelled = play(&script, speed, &tx) => cancelled,
                () = shutdown.cancelled() => false,
            };
            stats.call_ended(cancelled);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    /// The first script for this request that the caller's tenant may watch. A call without a
    /// tenant (a BFF running without auth) may watch any, as with the DocumentProcessor.
    fn authorize(&self, request: &DynamicMessage, tenant: Option<&str>) -> Result<Arc<DynamicScript>, Status> {
        let mut matching = self.scripts.iter().filter(|script| script.matches(request)).peekable();
        if matching.peek().is_none() {
            return Err(Status::not_found(format!("{}: nothing is scripted for this request", self.name)));
        }
        matching
            .find(|script| match (&script.tenant, tenant) {
                (Some(owner), Some(tenant)) => owner == tenant,
                _ => true,
            })
            .cloned()
            .ok_or_else(|| Status::permission_denied("the stream is not accessible to this tenant"))
    }
}

impl tower::Service<http::Request<axum::body::Body>> for MethodService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<axum::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let mut grpc = Grpc::new(DynamicCodec::new(this.method.input()));
            let handler = tower::service_fn(move |call| std::future::ready(this.start(call)));
            Ok(grpc.server_streaming(handler, request).await)
        })
    }
}

/// Sends the script's messages to `tx` on its clock, then its status. Returns `true` when the
/// caller went away first (the call was cancelled).
async fn play(script: &DynamicScript, speed: f64, tx: &mpsc::Sender<Result<DynamicMessage, Status>>) -> bool {
    // Deadlines from the start, not sleeps after each message, keep the script's timing exact.
    let mut next = tokio::time::Instant::now();
    for scripted in &script.messages {
        next += scripted.delay(speed);
        // A tonic server stream only learns of a cancel when a send fails, so watch for the
        // receiver to close while waiting: the cancel is seen at once.
        tokio::select! {
            () = tx.closed() => return true,
            () = tokio::time::sleep_until(next) => {}
        }
        if tx.send(Ok(scripted.message.clone())).await.is_err() {
            return true;
        }
    }
    match &script.status {
        Some(status) => tx.send(Err(status.to_status())).await.is_err(),
        None => false,
    }
}
