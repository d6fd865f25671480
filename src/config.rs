//! The command line: one typed struct per command, every flag also an `SSE_BFF_*` variable.
//! Values are validated while parsing, so a bad one stops the start with a message naming it.

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{demo::DemoConfig, sim::SimConfig};

/// Turns server-streaming gRPC calls into browser-ready Server-Sent Events.
#[derive(Debug, Parser)]
#[command(name = "sse-bff", version, about)]
pub struct Cli {
    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "SSE_BFF_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of the binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the BFF.
    Serve(ServeConfig),
    /// Run the simulated DocumentProcessor gRPC service.
    UpstreamSim(SimConfig),
    /// Run the simulator and the BFF in one process and print how to try them.
    Demo(DemoConfig),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Configuration of `sse-bff serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// HTTP listen address.
    #[arg(long, env = "SSE_BFF_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// DocumentProcessor endpoint URL (repeatable, or comma-separated in the variable).
    #[arg(long = "upstream", env = "SSE_BFF_UPSTREAM", value_delimiter = ',', required = true, value_parser = parse_upstream_url)]
    pub upstreams: Vec<String>,
    /// Send a `: keep-alive` comment after this long without other output.
    #[arg(long, env = "SSE_BFF_HEARTBEAT", default_value = "15s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// The `retry:` reconnect hint sent at the start of every stream.
    #[arg(long, env = "SSE_BFF_RETRY", default_value = "3s", value_parser = parse_duration)]
    pub retry: Duration,
    /// Timeout for establishing an upstream connection.
    #[arg(long, env = "SSE_BFF_UPSTREAM_CONNECT_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub upstream_connect_timeout: Duration,
    /// HTTP/2 keep-alive PING interval toward the upstream. Servers commonly reject pings more
    /// often than every 5 minutes (grpc-go's default), so the default stays at that limit.
    #[arg(long, env = "SSE_BFF_UPSTREAM_KEEPALIVE", default_value = "5m", value_parser = parse_duration)]
    pub upstream_keepalive: Duration,
    /// How long the BFF waits for the upstream's first message before answering 200, so that an
    /// immediate upstream error still becomes a proper HTTP status.
    #[arg(long, env = "SSE_BFF_FIRST_EVENT_WAIT", default_value = "2s", value_parser = parse_duration)]
    pub first_event_wait: Duration,
    /// On shutdown, how long open streams get to end before the process exits anyway.
    #[arg(long, env = "SSE_BFF_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl ServeConfig {
    /// The defaults of every flag, listening on an ephemeral loopback port, for the given
    /// upstream. Tests and `demo` start from this and change what they need.
    pub fn with_upstream(upstream: impl Into<String>) -> Self {
        let mut config =
            match Cli::try_parse_from(["sse-bff", "serve", "--upstream", "http://127.0.0.1:1"]) {
                Ok(Cli {
                    command: Command::Serve(config),
                    ..
                }) => config,
                // The literal arguments above always parse; this arm only satisfies the compiler.
                _ => unreachable!("default serve arguments parse"),
            };
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.upstreams = vec![upstream.into()];
        config
    }
}

/// Parses a positive human-friendly duration such as `15s`, `500ms` or `2m`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        Ok(_) => Err(format!("{value:?} must be longer than zero")),
        Err(e) => Err(format!(
            "{value:?} is not a duration such as 15s or 500ms ({e})"
        )),
    }
}

fn parse_upstream_url(value: &str) -> Result<String, String> {
    let uri: http::Uri = value
        .parse()
        .map_err(|e| format!("{value:?} is not a URL such as http://127.0.0.1:50051 ({e})"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(value.to_owned()),
        _ => Err(format!(
            "{value:?} must be an http:// or https:// URL with a host, such as http://127.0.0.1:50051"
        )),
    }
}
