//! `ServeConfig`, the configuration of `sse-bff serve`: the flags of the app itself, and each
//! component's flag group (`#[command(flatten)]`), declared beside the component it configures.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use axum::http::HeaderValue;

use crate::{
    auth::AuthConfig,
    cluster::ClusterConfig,
    flags::parse_duration,
    http::{LimitsConfig, ServerConfig, StreamConfig},
    hub::HubConfig,
    upstream::UpstreamConfig,
};

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
    /// On shutdown, how long open streams get to end before the process exits anyway.
    #[arg(long, env = "SSE_BFF_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Browser origin allowed to open streams with credentials (repeatable); `*` is refused.
    #[arg(long = "cors-origin", env = "SSE_BFF_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<HeaderValue>,
    /// Stream timing.
    #[command(flatten)]
    pub stream: StreamConfig,
    /// Open-stream limits.
    #[command(flatten)]
    pub limits: LimitsConfig,
    /// Sharing, replay and resumption of upstream calls.
    #[command(flatten)]
    pub hub: HubConfig,
    /// Upstream connections and calls.
    #[command(flatten)]
    pub upstream: UpstreamConfig,
    /// Connections of clients.
    #[command(flatten)]
    pub server: ServerConfig,
    /// Token verification.
    #[command(flatten)]
    pub auth: AuthConfig,
    /// Cluster mode on Redis Streams.
    #[command(flatten)]
    pub cluster: ClusterConfig,
    /// Set by `demo` only: the demo user's token, handed to the demo page as a cookie.
    #[arg(skip)]
    pub demo_token: Option<String>,
}

impl ServeConfig {
    /// The defaults of every flag, listening on an ephemeral loopback port, for the given
    /// upstream, without authentication. Tests and `demo` start from this and set what they need.
    pub fn with_upstream(upstream: impl Into<String>) -> Self {
        /// `serve`'s flags alone, to read their defaults (and `SSE_BFF_*`).
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            config: ServeConfig,
        }
        let args = ["serve", "--upstream", "http://127.0.0.1:1", "--insecure-no-auth"];
        let Ok(Defaults { mut config }) = <Defaults as clap::Parser>::try_parse_from(args) else {
            // The literal arguments above always parse; this arm only satisfies the compiler.
            unreachable!("default serve arguments parse")
        };
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.upstreams = vec![upstream.into()];
        config
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
