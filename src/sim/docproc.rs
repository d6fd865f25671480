//! The built-in DocumentProcessor of the simulator: one job per document id, shared by every
//! call for it (attach to a running job, resume after a sequence), with tenancy.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{SeenCall, SimStats, job::Job, script::Script};
use crate::pb::docproc::v1::{ProcessDocumentRequest, ProcessingUpdate, document_processor_server::DocumentProcessor};

/// The DocumentProcessor service, played from the job scripts.
#[derive(Debug, Clone)]
pub(super) struct SimService {
    inner: Arc<Inner>,
}

impl SimService {
    /// A service playing `scripts` at `speed`, keeping `retain` updates per job.
    pub(super) fn new(
        scripts: HashMap<String, Script>,
        speed: f64,
        retain: usize,
        stats: Arc<SimStats>,
        shutdown: CancellationToken,
    ) -> Self {
        let inner = Inner { scripts, jobs: Mutex::new(HashMap::new()), speed, retain, stats, shutdown };
        Self { inner: Arc::new(inner) }
    }
}

#[derive(Debug)]
struct Inner {
    scripts: HashMap<String, Script>,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    speed: f64,
    retain: usize,
    stats: Arc<SimStats>,
    shutdown: CancellationToken,
}

impl Inner {
    /// The script of a document the caller may see. With a tenant (an authenticated caller), a
    /// document of another tenant and an unknown one get the same PERMISSION_DENIED, so callers
    /// cannot probe which ids exist (AIP-193). Without one (a BFF running without auth), any
    /// document is visible and unknown ones are NOT_FOUND.
    fn authorize(&self, document_id: &str, tenant: Option<&str>) -> Result<&Script, Status> {
        let script = self.script_for(document_id);
        match (script, tenant) {
            (Some(script), Some(tenant)) if script.tenant.as_deref().is_none_or(|owner| owner == tenant) => Ok(script),
            (_, Some(_)) => {
                Err(Status::permission_denied("the document does not exist or is not accessible to this tenant"))
            }
            (Some(script), None) => Ok(script),
            (None, None) => Err(Status::not_found(format!("document {document_id:?} not found"))),
        }
    }

    /// The script of a document: the one named exactly so, else the one named by the part
    /// before the first `.` (`doc-1.a7f3` plays `doc-1` as a job of its own), so demos and load
    /// tests can start as many fresh jobs as they like.
    fn script_for(&self, document_id: &str) -> Option<&Script> {
        self.scripts.get(document_id).or_else(|| {
            let (base, _) = document_id.split_once('.')?;
            self.scripts.get(base)
        })
    }

    /// The running (or finished) job of a document, started on the first call.
    fn job(&self, document_id: &str, script: &Script) -> Arc<Job> {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let job = jobs.entry(document_id.to_owned()).or_insert_with(|| {
            Job::start(document_id.to_owned(), script.clone(), self.speed, self.retain, self.shutdown.child_token())
        });
        Arc::clone(job)
    }
}

#[tonic::async_trait]
impl DocumentProcessor for SimService {
    type ProcessDocumentStream = ReceiverStream<Result<ProcessingUpdate, Status>>;

    async fn process_document(
        &self,
        request: Request<ProcessDocumentRequest>,
    ) -> Result<Response<Self::ProcessDocumentStream>, Status> {
        let seen = SeenCall::from_request(&request);
        let tenant = seen.tenant_id.clone();
        let request = request.into_inner();
        let inner = &self.inner;
        inner.stats.record_call(seen);
        let script = inner.authorize(&request.document_id, tenant.as_deref())?;
        if let Some(reject) = &script.reject {
            return Err(reject.to_status());
        }
        let job = inner.job(&request.document_id, script);
        if !job.can_resume_after(request.resume_after) {
            return Err(Status::out_of_range(format!(
                "resume_after {} is older than the updates still kept",
                request.resume_after
            )));
        }
        let (tx, rx) = mpsc::channel(16);
        let stats = Arc::clone(&inner.stats);
        let shutdown = inner.shutdown.clone();
        stats.call_started();
        tokio::spawn(async move {
            let cancelled = tokio::select! {
                cancelled = job.forward(request.resume_after, tx) => cancelled,
                () = shutdown.cancelled() => false,
            };
            stats.call_ended(cancelled);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
