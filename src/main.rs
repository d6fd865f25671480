//! The `sse-bff` binary: parse the command line, start telemetry, run the chosen command until
//! Ctrl-C or SIGTERM.

use clap::Parser as _;
use sse_bff::{
    App, Sim, auth,
    config::{Cli, Command},
    demo, telemetry,
};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Token(config) = &cli.command {
        return print_token(config);
    }
    telemetry::init(cli.log_format);
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match cli.command {
        Command::Serve(config) => App::build(*config, shutdown).await?.run().await,
        Command::UpstreamSim(config) => Sim::build(config).await?.run(shutdown).await?,
        Command::Demo(config) => demo::run(config, shutdown).await?,
        Command::Token(_) => {}
    }
    Ok(())
}

/// `sse-bff token` exists to print the token, for `$(...)` in a shell; it needs no logging.
#[allow(clippy::print_stdout)]
fn print_token(config: &auth::TokenConfig) -> anyhow::Result<()> {
    println!("{}", auth::mint(config)?);
    Ok(())
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received; draining");
    shutdown.cancel();
}
