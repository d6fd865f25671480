//! What the simulator saw: calls, their metadata, and how they ended. Tests read this to assert
//! what reached the upstream (or that nothing did).

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;
use tonic::metadata::MetadataMap;

use crate::pb::docproc::v1::ProcessDocumentRequest;

/// Counters and a record of every call.
#[derive(Debug)]
pub struct SimStats {
    calls: AtomicU64,
    active: AtomicU64,
    cancelled: AtomicU64,
    seen: Mutex<Vec<SeenCall>>,
    changed: watch::Sender<()>,
}

/// One call as the simulator received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenCall {
    /// The method, as `package.Service/Method`.
    pub method: String,
    /// The request in proto3 JSON, every field included (`{"project": "web", "buildNumber": "42"}`).
    pub request: serde_json::Value,
    /// The requested document (DocumentProcessor calls only; empty for other methods).
    pub document_id: String,
    /// The requested resume point (DocumentProcessor calls only; 0 for other methods).
    pub resume_after: u64,
    /// `x-user-id` metadata.
    pub user_id: Option<String>,
    /// `x-tenant-id` metadata.
    pub tenant_id: Option<String>,
    /// `x-request-id` metadata.
    pub request_id: Option<String>,
    /// `traceparent` metadata.
    pub traceparent: Option<String>,
}

/// Only so many calls are recorded; the counters go on counting.
const MAX_RECORDED: usize = 10_000;

impl Default for SimStats {
    fn default() -> Self {
        Self {
            calls: AtomicU64::new(0),
            active: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
            changed: watch::channel(()).0,
        }
    }
}

impl SimStats {
    /// Calls received (including rejected ones).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Calls currently streaming.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::SeqCst)
    }

    /// Calls that ended because the caller went away.
    pub fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// The recorded calls, oldest first.
    pub fn seen(&self) -> Vec<SeenCall> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Waits until `condition` holds, for at most `limit`; returns whether it held.
    pub async fn wait_until(&self, limit: Duration, condition: impl Fn(&Self) -> bool) -> bool {
        let mut changes = self.changed.subscribe();
        let wait = async {
            while !condition(self) {
                if changes.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(limit, wait).await.unwrap_or(false)
    }

    pub(super) fn record_call(&self, call: SeenCall) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() < MAX_RECORDED {
            seen.push(call);
        }
        drop(seen);
        self.changed.send_replace(());
    }

    pub(super) fn call_started(&self) {
        self.active.fetch_add(1, Ordering::SeqCst);
        self.changed.send_replace(());
    }

    pub(super) fn call_ended(&self, cancelled: bool) {
        self.active.fetch_sub(1, Ordering::SeqCst);
        if cancelled {
            self.cancelled.fetch_add(1, Ordering::SeqCst);
            tracing::info!("call cancelled by the client");
        }
        self.changed.send_replace(());
    }
}

impl SeenCall {
    /// A DocumentProcessor call.
    pub(super) fn from_request(request: &tonic::Request<ProcessDocumentRequest>) -> Self {
        let body = request.get_ref();
        let json = serde_json::json!({
            "documentId": body.document_id,
            "resumeAfter": body.resume_after.to_string(),
        });
        let mut seen = Self::new("docproc.v1.DocumentProcessor/ProcessDocument", json, request.metadata());
        seen.document_id.clone_from(&body.document_id);
        seen.resume_after = body.resume_after;
        seen
    }

    /// A call of `method` with the request `request` (proto3 JSON) and `metadata`.
    pub(super) fn new(method: &str, request: serde_json::Value, metadata: &MetadataMap) -> Self {
        let meta = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Self {
            method: method.to_owned(),
            request,
            document_id: String::new(),
            resume_after: 0,
            user_id: meta("x-user-id"),
            tenant_id: meta("x-tenant-id"),
            request_id: meta("x-request-id"),
            traceparent: meta("traceparent"),
        }
    }
}
