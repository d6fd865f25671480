//! The command line: one typed struct per command, every flag also an `SSE_BFF_*` variable.
//! Values are validated while parsing, so a bad one stops the start with a message naming it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

use std::sync::Arc;

use axum::http::HeaderValue;

use crate::{
    auth::{AuthConfig, TokenConfig},
    demo::DemoConfig,
    hub::{HubSettings, ShareScope},
    metrics::Metrics,
    routes::RoutesArgs,
    sim::SimConfig,
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
    /// DocumentProcessor endpoint URL of the built-in document route (repeatable, or
    /// comma-separated in the variable); not used with `--routes`.
    #[arg(long = "upstream", env = "SSE_BFF_UPSTREAM", value_delimiter = ',', required_unless_present = "routes", value_parser = parse_upstream_url)]
    pub upstreams: Vec<String>,
    /// A routes file (TOML, see README "Stream your own service"): every route it declares is
    /// served instead of the built-in document route.
    #[arg(long, env = "SSE_BFF_ROUTES")]
    pub routes: Option<PathBuf>,
    /// How long server reflection may take per upstream, for routes files whose descriptors
    /// come from reflection.
    #[arg(long, env = "SSE_BFF_REFLECTION_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub reflection_timeout: Duration,
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
    /// The longest a stream stays open before the client is asked to reconnect, whatever the
    /// token's lifetime.
    #[arg(long, env = "SSE_BFF_MAX_STREAM_LIFETIME", default_value = "1h", value_parser = parse_duration)]
    pub max_stream_lifetime: Duration,
    /// Open streams allowed in total (429 beyond).
    #[arg(long, env = "SSE_BFF_MAX_STREAMS", default_value_t = 10_000, value_parser = count(10_000_000))]
    pub max_streams: usize,
    /// Open streams allowed per user (429 beyond).
    #[arg(long, env = "SSE_BFF_MAX_STREAMS_PER_USER", default_value_t = 32, value_parser = count(10_000_000))]
    pub max_streams_per_user: usize,
    /// Browser origin allowed to open streams with credentials (repeatable); `*` is refused.
    #[arg(long = "cors-origin", env = "SSE_BFF_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<HeaderValue>,
    /// The most topics of one multiplexed stream (`/events?topic=...`).
    #[arg(long, env = "SSE_BFF_MAX_TOPICS", default_value_t = 50, value_parser = count(1000))]
    pub max_topics: usize,
    /// The most bytes of request headers accepted (431 beyond).
    #[arg(long, env = "SSE_BFF_MAX_HEADER_BYTES", default_value_t = 32 * 1024, value_parser = count(1024 * 1024))]
    pub max_header_bytes: usize,
    /// Who shares one upstream call: the same user only, or everyone of the tenant.
    #[arg(long, env = "SSE_BFF_SHARE_SCOPE", default_value = "user")]
    pub share_scope: ShareScope,
    /// How long an upstream call outlives its last viewer, for reloads and reconnects.
    #[arg(long, env = "SSE_BFF_LINGER", default_value = "10s", value_parser = parse_duration)]
    pub linger: Duration,
    /// How long a finished job's events answer late reconnects without calling the upstream.
    #[arg(long, env = "SSE_BFF_KEEP_FINISHED", default_value = "60s", value_parser = parse_duration)]
    pub keep_finished: Duration,
    /// Events kept per shared call for resuming viewers. A resume point older than the log is
    /// still served without loss, by an upstream call of its own that resumes there: the log
    /// only saves those calls, and it is most of the memory of a watched document.
    #[arg(long, env = "SSE_BFF_REPLAY_LOG", default_value_t = 8, value_parser = count(100_000))]
    pub replay_log: usize,
    /// Events a viewer may fall behind before it skips to the latest update.
    #[arg(long, env = "SSE_BFF_VIEWER_LAG", default_value_t = 16, value_parser = count(100_000))]
    pub viewer_lag: usize,
    /// Concurrent calls per upstream HTTP/2 connection before another connection is opened
    /// (servers commonly allow 100 to 200 and queue the rest).
    #[arg(long, env = "SSE_BFF_UPSTREAM_STREAMS_PER_CONNECTION", default_value_t = 100, value_parser = count(10_000))]
    pub upstream_streams_per_connection: usize,
    /// The most upstream connections (over all endpoints).
    #[arg(long, env = "SSE_BFF_UPSTREAM_MAX_CONNECTIONS", default_value_t = 256, value_parser = count(10_000))]
    pub upstream_max_connections: usize,
    /// The gRPC deadline of each upstream call; a call that reaches it after delivering
    /// updates is resumed, one that delivered nothing answers 504.
    #[arg(long, env = "SSE_BFF_UPSTREAM_DEADLINE", default_value = "1h", value_parser = parse_duration)]
    pub upstream_deadline: Duration,
    /// The largest upstream message accepted, in bytes. A larger one ends the call as the
    /// upstream's fault: 502 `bad_gateway`, not retryable.
    #[arg(long, env = "SSE_BFF_MAX_UPSTREAM_MESSAGE_BYTES", default_value_t = 4 << 20, value_parser = count(1 << 30))]
    pub max_upstream_message_bytes: usize,
    /// An upstream call that sends nothing for this long counts as broken and is resumed.
    #[arg(long, env = "SSE_BFF_UPSTREAM_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub upstream_idle_timeout: Duration,
    /// How long transient upstream failures are retried (resuming) before viewers see an error.
    #[arg(long, env = "SSE_BFF_RETRY_BUDGET", default_value = "30s", value_parser = parse_duration)]
    pub retry_budget: Duration,
    /// A client whose connection accepts no bytes for this long is dropped.
    #[arg(long, env = "SSE_BFF_STALL_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub stall_timeout: Duration,
    /// Serve HTTPS (ALPN `h2` and `http/1.1`) with this PEM certificate chain, the server's
    /// certificate first; needs `--tls-key`. Reloaded when the file changes.
    #[arg(long, env = "SSE_BFF_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`. Reloaded with it.
    #[arg(long, env = "SSE_BFF_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Token verification.
    #[command(flatten)]
    pub auth: AuthConfig,
    /// Set by `demo` only: the demo user's token, handed to the demo page as a cookie.
    #[arg(skip)]
    pub demo_token: Option<String>,
}

impl ServeConfig {
    /// The hub's part of the configuration, reporting to `metrics`.
    pub fn hub_settings(&self, metrics: Arc<Metrics>) -> HubSettings {
        HubSettings {
            first_event_wait: self.first_event_wait,
            linger: self.linger,
            keep_finished: self.keep_finished,
            replay: self.replay_log,
            retention: crate::routes::Retention::State,
            viewer_lag: self.viewer_lag,
            retry_budget: self.retry_budget,
            idle_timeout: self.upstream_idle_timeout,
            share_scope: self.share_scope,
            metrics,
        }
    }

    /// The defaults of every flag, listening on an ephemeral loopback port, for the given
    /// upstream, without authentication. Tests and `demo` start from this and set what they need.
    pub fn with_upstream(upstream: impl Into<String>) -> Self {
        let args = ["sse-bff", "serve", "--upstream", "http://127.0.0.1:1", "--insecure-no-auth"];
        let mut config = match Cli::try_parse_from(args) {
            Ok(Cli { command: Command::Serve(config), .. }) => config,
            // The literal arguments above always parse; this arm only satisfies the compiler.
            _ => unreachable!("default serve arguments parse"),
        };
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.upstreams = vec![upstream.into()];
        *config
    }
}

/// A count from one to `max`: zero would refuse everything, or configure nothing.
fn count(max: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=max)
}

/// Parses a positive human-friendly duration such as `15s`, `500ms` or `2m`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        Ok(_) => Err(format!("{value:?} must be longer than zero")),
        Err(e) => Err(format!("{value:?} is not a duration such as 15s or 500ms ({e})")),
    }
}

fn parse_upstream_url(value: &str) -> Result<String, String> {
    let uri: http::Uri =
        value.parse().map_err(|e| format!("{value:?} is not a URL such as http://127.0.0.1:50051 ({e})"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(value.to_owned()),
        _ => Err(format!("{value:?} must be an http:// or https:// URL with a host, such as http://127.0.0.1:50051")),
    }
}

fn parse_origin(value: &str) -> Result<HeaderValue, String> {
    let uri: http::Uri =
        value.parse().map_err(|e| format!("{value:?} is not an origin such as https://portal.example.com ({e})"))?;
    match (uri.scheme_str(), uri.authority(), uri.path()) {
        (Some("http" | "https"), Some(_), "" | "/") => {
            HeaderValue::from_str(value.trim_end_matches('/')).map_err(|e| format!("{value:?}: {e}"))
        }
        _ => Err(format!(
            "{value:?} must be an origin such as https://portal.example.com (\"*\" is not allowed with credentials)"
        )),
    }
}
