//! `sse-bff upstream-sim`: a realistic DocumentProcessor gRPC service scripted from fixtures,
//! plus any server-streaming service played from its descriptors and JSON scripts (by default the
//! CI build-log example), with grpc.health.v1 and server reflection so grpcurl works without proto
//! files.
//!
//! It also counts what it sees ([`SimStats`]), so tests can assert how many upstream calls the
//! BFF made, with which metadata, and when a call was cancelled.

mod docproc;
pub mod dynamic;
mod job;
mod script;
mod stats;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService as _, service::Routes, transport::Server};
use tonic_health::ServingStatus;

pub use dynamic::{DescriptorSetError, DynamicServices};
pub use script::{Script, ScriptError};
pub use stats::{SeenCall, SimStats};

use self::{docproc::SimService, dynamic::Player};
use crate::pb::{self, docproc::v1::document_processor_server::DocumentProcessorServer};

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
    /// FileDescriptorSet files whose server-streaming methods are played from scripts; the
    /// built-in CI build-log example when none is given.
    #[arg(long = "descriptor-set", env = "SSE_BFF_SIM_DESCRIPTOR_SETS", value_delimiter = ',')]
    pub descriptor_sets: Vec<PathBuf>,
    /// Directories of service scripts (*.json) for those methods; the built-in build scripts
    /// when none is given (and no descriptor set either).
    #[arg(long = "scripts", env = "SSE_BFF_SIM_SCRIPTS", value_delimiter = ',')]
    pub scripts: Vec<PathBuf>,
}

impl SimConfig {
    /// A simulator on an ephemeral loopback port playing the given fixture directories (the
    /// built-in ones when empty), with the defaults of every other flag.
    pub fn new(fixtures: Vec<PathBuf>, speed: f64) -> Self {
        /// The simulator's flags alone, to read their defaults (and `SSE_BFF_SIM_*`).
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            config: SimConfig,
        }
        let Ok(Defaults { mut config }) = <Defaults as clap::Parser>::try_parse_from(["upstream-sim"]) else {
            // No argument is given, and every flag has a default or is optional.
            unreachable!("the simulator's defaults parse")
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
    /// A descriptor set could not be used.
    #[error(transparent)]
    DescriptorSet(#[from] DescriptorSetError),
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
    docproc: SimService,
    dynamic: DynamicServices,
    player: Player,
    max_concurrent_streams: Option<u32>,
}

impl Sim {
    /// Loads and checks every script and descriptor set, then binds the listen address.
    pub async fn build(config: SimConfig) -> Result<Self, SimError> {
        let mut scripts = script::load(&config.fixtures)?;
        if config.steady_rate > 0.0 {
            scripts.insert("steady".to_owned(), Script::steady(config.steady_rate, config.steady_message_bytes));
        }
        let dynamic = DynamicServices::load(&config.descriptor_sets, &config.scripts)?;
        let listener =
            TcpListener::bind(config.listen).await.map_err(|source| SimError::Bind { addr: config.listen, source })?;
        let player =
            Player { speed: config.speed, stats: Arc::new(SimStats::default()), shutdown: CancellationToken::new() };
        let retain = usize::try_from(config.retain).unwrap_or(usize::MAX);
        let docproc =
            SimService::new(scripts, config.speed, retain, Arc::clone(&player.stats), player.shutdown.clone());
        Ok(Self { listener, docproc, dynamic, player, max_concurrent_streams: config.max_concurrent_streams })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// What the simulator has seen so far, over every service; stays valid after `run` has taken
    /// the simulator.
    pub fn stats(&self) -> Arc<SimStats> {
        Arc::clone(&self.player.stats)
    }

    /// Serves until `shutdown` is cancelled; running jobs and calls stop with it.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SimError> {
        let routes = self.routes().await?;
        let calls_shutdown = self.player.shutdown.clone();
        let addr = self.local_addr();
        tracing::info!(%addr, services = ?self.dynamic.service_names().collect::<Vec<_>>(), "upstream simulator listening");
        // Updates are small writes: without TCP_NODELAY, Nagle holds one back until the previous
        // is acknowledged, and a delayed ACK makes that 40 ms.
        let incoming = TcpListenerStream::new(self.listener).map(|stream| {
            let stream = stream?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        });
        let result = Server::builder()
            .max_concurrent_streams(self.max_concurrent_streams)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.cancelled().await;
                // Open streams would hold a graceful shutdown forever; end them first.
                calls_shutdown.cancel();
            })
            .await;
        Ok(result?)
    }

    /// Every service: health and reflection naming all the others, the built-in
    /// DocumentProcessor, and one route per method played from scripts.
    async fn routes(&self) -> Result<Routes, SimError> {
        let docproc = DocumentProcessorServer::<SimService>::NAME;
        let (health, health_service) = tonic_health::server::health_reporter();
        let served: Vec<&str> = std::iter::once(docproc).chain(self.dynamic.service_names()).collect();
        for name in &served {
            health.set_service_status(name, ServingStatus::Serving).await;
        }
        let reflection = |own: &str| {
            // The first file of a name wins, so the built-in services' own files go first.
            let builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
            let builder = self
                .dynamic
                .encoded_sets()
                .fold(builder, |builder, set| builder.register_encoded_file_descriptor_set(set));
            // Named one by one, so a descriptor set's unserved services are not advertised.
            [own, "grpc.health.v1.Health"]
                .into_iter()
                .chain(served.iter().copied())
                .fold(builder, |b, name| b.with_service_name(name))
        };
        let reflection_v1 = reflection("grpc.reflection.v1.ServerReflection").build_v1()?;
        // grpcurl 1.8 still speaks the v1alpha reflection protocol.
        let reflection_v1alpha = reflection("grpc.reflection.v1alpha.ServerReflection").build_v1alpha()?;
        let routes = Routes::new(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(DocumentProcessorServer::new(self.docproc.clone()));
        Ok(Routes::from(self.dynamic.route(routes.into_axum_router(), &self.player)))
    }
}
