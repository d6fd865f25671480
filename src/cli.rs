//! The command line: one typed struct per command, every flag also an `SSE_BFF_*` variable.
//! Values are validated while parsing, so a bad one stops the start with a message naming it.
//!
//! This is the root: it gathers each command's configuration from the component that owns it,
//! and nothing in the library imports it (only `main.rs` does).

use clap::{Parser, Subcommand};

use crate::{
    app::ServeConfig, auth::TokenConfig, demo::DemoConfig, routes::RoutesArgs, sim::SimConfig, telemetry::LogFormat,
};

/// Turns server-streaming gRPC calls into browser-ready Server-Sent Events.
#[derive(Debug, Parser)]
#[command(name = "sse-bff", version, about)]
pub struct Cli {
    /// Log line format.
    #[arg(long, global = true, env = "SSE_BFF_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of the binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the BFF.
    Serve(Box<ServeConfig>),
    /// Run the simulated DocumentProcessor gRPC service.
    UpstreamSim(SimConfig),
    /// Run the simulator and the BFF in one process and print how to try them.
    Demo(DemoConfig),
    /// Print a signed HS256 development token.
    Token(TokenConfig),
    /// Work with routes files: `routes check FILE`.
    Routes(RoutesArgs),
}
