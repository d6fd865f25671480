//! `sse-bff demo`: the simulator and the BFF in one process, with the lines to paste.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use crate::{
    app::{App, ServeConfig},
    auth::{TokenConfig, mint},
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
    #[arg(long, env = "SSE_BFF_SIM_SPEED", default_value_t = 1.0, value_parser = crate::sim::parse_speed)]
    pub speed: f64,
}

/// Runs both until `shutdown` is cancelled.
pub async fn run(config: DemoConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut sim_config = SimConfig::new(Vec::new(), config.speed);
    sim_config.listen = config.sim_listen;
    let sim = Sim::build(sim_config).await?;
    let sim_addr = sim.local_addr();
    // A fresh key per run: tokens printed by one demo never work against another.
    let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let mut serve = ServeConfig::with_upstream(format!("http://{sim_addr}"));
    serve.listen = config.listen;
    serve.auth.insecure_no_auth = false;
    serve.auth.jwt_secret = Some(secret.clone());
    let token = mint(&TokenConfig {
        secret,
        sub: "alice".to_owned(),
        tenant: Some("acme".to_owned()),
        ttl: std::time::Duration::from_secs(8 * 3600),
        tenant_claim: serve.auth.tenant_claim.clone(),
        issuer: None,
        audience: None,
    })?;
    serve.demo_token = Some(token.clone());
    let app = App::build(serve, shutdown.clone()).await?;
    print_banner(app.local_addr(), sim_addr, &token);
    let sim_task = tokio::spawn(sim.run(shutdown.clone()));
    app.run().await;
    shutdown.cancel();
    sim_task.await??;
    Ok(())
}

/// The demo's whole point is what it prints for the person who started it.
#[allow(clippy::print_stdout)]
fn print_banner(http: SocketAddr, grpc: SocketAddr, token: &str) {
    println!(
        "\nsse-bff demo is running (user alice, tenant acme; token valid 8 h).\n\n\
         Open the admin-portal demo page: http://{http}/\n\n\
         Watch a document being processed (Ctrl-C to stop):\n\n  \
         curl -N -H 'Authorization: Bearer {token}' http://{http}/documents/doc-1/progress\n\n\
         Call the simulated upstream directly:\n\n  \
         grpcurl -plaintext -H 'x-tenant-id: acme' -d '{{\"document_id\":\"doc-2\"}}' {grpc} docproc.v1.DocumentProcessor/ProcessDocument\n\n\
         Other documents of acme: doc-2, doc-3 (fails), scan-42; report-q3 belongs to tenant globex (403).\n"
    );
}
