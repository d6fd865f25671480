//! `sse-bff upstream-sim`: a realistic DocumentProcessor gRPC service scripted from fixtures,
//! with grpc.health.v1 and server reflection so grpcurl works without proto files.
//!
//! It also counts what it sees ([`SimStats`]), so tests can assert how many upstream calls the
//! BFF made, with which metadata, and when a call was cancelled.

mod job;
mod script;
mod stats;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, transport::Server};

pub use script::{Script, ScriptError};
pub use stats::{SeenCall, SimStats};

use self::job::Job;
use clap::Parser as _;

use crate::config::{Cli, Command};
use crate::pb::{
    self,
    docproc::v1::{
        ProcessDocumentRequest, ProcessingUpdate,
        document_processor_server::{DocumentProcessor, DocumentProcessorServer},
    },
};

/// How the simulator is run.
#[derive(Debug, Clone, clap::Args)]
pub struct SimConfig {
    /// gRPC listen address.
    #[arg(long, env = "SSE_BFF_SIM_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Directories of job scripts (*.json); the built-in scripts when none is given.
    #[arg(long = "fixtures", env = "SSE_BFF_SIM_FIXTURES", value_delimiter = ',')]
    pub fixtures: Vec<PathBuf>,
    /// Time factor: 2 plays every job twice as fast.
    #[arg(long, env = "SSE_BFF_SIM_SPEED", default_value_t = 1.0, value_parser = parse_speed)]
    pub speed: f64,
    /// How many updates per job are kept for resuming calls; older resume points get OUT_OF_RANGE.
    #[arg(long, env = "SSE_BFF_SIM_RETAIN", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub retain: u64,
    /// Concurrent streams the simulator allows per HTTP/2 connection (unbounded when unset).
    #[arg(long, env = "SSE_BFF_SIM_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// Adds the endless `steady` job with this many updates per second (0: none), for load tests.
    #[arg(long, env = "SSE_BFF_SIM_STEADY_RATE", default_value_t = 0.0)]
    pub steady_rate: f64,
    /// Message size of the `steady` job's updates, in bytes.
    #[arg(long, env = "SSE_BFF_SIM_STEADY_MESSAGE_BYTES", default_value_t = 64)]
    pub steady_message_bytes: usize,
}

impl SimConfig {
    /// A simulator on an ephemeral loopback port playing the given fixture directories (the
    /// built-in ones when empty), with the defaults of every other flag.
    pub fn new(fixtures: Vec<PathBuf>, speed: f64) -> Self {
        let mut config = match Cli::try_parse_from(["sse-bff", "upstream-sim"]) {
            Ok(Cli { command: Command::UpstreamSim(config), .. }) => config,
            // The literal arguments above always parse; this arm only satisfies the compiler.
            _ => unreachable!("default upstream-sim arguments parse"),
        };
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.fixtures = fixtures;
        config.speed = speed;
        config
    }
}

/// A positive, finite time factor.
pub fn parse_speed(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(speed) if speed.is_finite() && speed > 0.0 => Ok(speed),
        _ => Err(format!("expected a positive number such as 1 or 2.5, got {value:?}")),
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scripts did not load.
    #[error(transparent)]
    Script(#[from] ScriptError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The reflection service could not read the descriptor set.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The simulator, bound and ready to run.
#[derive(Debug)]
pub struct Sim {
    listener: TcpListener,
    service: SimService,
    max_concurrent_streams: Option<u32>,
}

impl Sim {
    /// Loads the scripts and binds the listen address.
    pub async fn build(config: SimConfig) -> Result<Self, SimError> {
        let mut scripts = script::load(&config.fixtures)?;
        if config.steady_rate > 0.0 {
            scripts.insert("steady".to_owned(), Script::steady(config.steady_rate, config.steady_message_bytes));
        }
        let listener =
            TcpListener::bind(config.listen).await.map_err(|source| SimError::Bind { addr: config.listen, source })?;
        let service = SimService {
            inner: Arc::new(Inner {
                scripts,
                jobs: Mutex::new(HashMap::new()),
                speed: config.speed,
                retain: usize::try_from(config.retain).unwrap_or(usize::MAX),
                stats: Arc::new(SimStats::default()),
                shutdown: CancellationToken::new(),
            }),
        };
        Ok(Self { listener, service, max_concurrent_streams: config.max_concurrent_streams })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// What the simulator has seen so far; stays valid after `run` has taken the simulator.
    pub fn stats(&self) -> Arc<SimStats> {
        Arc::clone(&self.service.inner.stats)
    }

    /// Serves until `shutdown` is cancelled; running jobs stop with it.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SimError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<DocumentProcessorServer<SimService>>().await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1()?;
        // grpcurl 1.8 still speaks the v1alpha reflection protocol.
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let jobs_shutdown = self.service.inner.shutdown.clone();
        let addr = self.local_addr();
        tracing::info!(%addr, "upstream simulator listening");
        // Updates are small writes: without TCP_NODELAY, Nagle holds one back until the previous
        // is acknowledged, and a delayed ACK makes that 40 ms.
        let incoming = TcpListenerStream::new(self.listener).map(|stream| {
            let stream = stream?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        });
        let result = Server::builder()
            .max_concurrent_streams(self.max_concurrent_streams)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(DocumentProcessorServer::new(self.service))
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.cancelled().await;
                // Open streams would hold a graceful shutdown forever; end them first.
                jobs_shutdown.cancel();
            })
            .await;
        Ok(result?)
    }
}

#[derive(Debug, Clone)]
struct SimService {
    inner: Arc<Inner>,
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
