//! `sse-bff demo`: the simulator and the BFF in one process, with the lines to paste.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use crate::{
    app::App,
    config::ServeConfig,
    sim::{Sim, SimConfig},
};

/// Configuration of `sse-bff demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoConfig {
    /// HTTP listen address of the BFF.
    #[arg(long, env = "SSE_BFF_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// gRPC listen address of the simulator.
    #[arg(long, env = "SSE_BFF_SIM_LISTEN", default_value = "127.0.0.1:50051")]
    pub sim_listen: SocketAddr,
    /// Time factor of the simulated jobs.
    #[arg(long, env = "SSE_BFF_SIM_SPEED", default_value_t = 1.0)]
    pub speed: f64,
}

/// Runs both until `shutdown` is cancelled.
pub async fn run(config: DemoConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let sim = Sim::build(SimConfig {
        listen: config.sim_listen,
        fixtures: Vec::new(),
        speed: config.speed,
        retain: 1000,
    })
    .await?;
    let sim_addr = sim.local_addr();
    let mut serve = ServeConfig::with_upstream(format!("http://{sim_addr}"));
    serve.listen = config.listen;
    let app = App::build(serve, shutdown.clone()).await?;
    print_banner(app.local_addr(), sim_addr);
    let sim_task = tokio::spawn(sim.run(shutdown.clone()));
    app.run().await?;
    shutdown.cancel();
    sim_task.await??;
    Ok(())
}

/// The demo's whole point is what it prints for the person who started it.
#[allow(clippy::print_stdout)]
fn print_banner(http: SocketAddr, grpc: SocketAddr) {
    println!(
        "\nsse-bff demo is running.\n\n\
         Watch a document being processed (Ctrl-C to stop):\n\n  \
         curl -N http://{http}/documents/doc-1/progress\n\n\
         Call the simulated upstream directly:\n\n  \
         grpcurl -plaintext -d '{{\"document_id\":\"doc-2\"}}' {grpc} docproc.v1.DocumentProcessor/ProcessDocument\n\n\
         Other documents: doc-2, doc-3 (fails), scan-42, report-q3; anything else is 404.\n"
    );
}
