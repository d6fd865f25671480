//! The `sse-bff` binary: parse the command line, start telemetry, run the chosen command until
//! Ctrl-C or SIGTERM.

use clap::Parser as _;
use sse_bff::{
    App, Sim, auth,
    cli::{Cli, Command},
    demo, routes, telemetry,
};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Token(config) => return print_token(config),
        Command::Routes(args) => return routes(args).await,
        _ => {}
    }
    telemetry::init(cli.log_format);
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match cli.command {
        Command::Serve(config) => App::build(*config, shutdown).await?.run().await,
        Command::UpstreamSim(config) => Sim::build(config).await?.run(shutdown).await?,
        Command::Demo(config) => demo::run(config, shutdown).await?,
        Command::Token(_) | Command::Routes(_) => {}
    }
    Ok(())
}

/// `sse-bff token` exists to print the token, for `$(...)` in a shell; it needs no logging.
#[allow(clippy::print_stdout)]
fn print_token(config: &auth::TokenConfig) -> anyhow::Result<()> {
    println!("{}", auth::mint(config)?);
    Ok(())
}

/// `sse-bff routes check FILE` prints its report on stdout, or every problem on stderr and
/// exits 1; like `token`, it needs no logging.
#[allow(clippy::print_stdout)]
async fn routes(args: &routes::RoutesArgs) -> anyhow::Result<()> {
    match routes::check(&args.command).await {
        Ok(report) => {
            print!("{report}");
            Ok(())
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
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
