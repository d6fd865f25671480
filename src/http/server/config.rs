//! The server's flags of `serve`: how long a stalled client is kept, how large a request head
//! may be, the listen backlog, and the TLS certificate.

use std::{path::PathBuf, time::Duration};

use super::{ServerSettings, TlsError};
use crate::flags::{count, parse_duration};

/// The server's flags of `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerConfig {
    /// The most bytes of request headers accepted (431 beyond).
    #[arg(long, env = "SSE_BFF_MAX_HEADER_BYTES", default_value_t = 32 * 1024, value_parser = count(1024 * 1024))]
    pub max_header_bytes: usize,
    /// A client whose connection accepts no bytes for this long is dropped.
    #[arg(long, env = "SSE_BFF_STALL_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub stall_timeout: Duration,
    /// Connections the kernel queues for the server before it accepts them (capped by
    /// `net.core.somaxconn`). When an instance stops, its viewers all reconnect to the others
    /// within a few seconds: a queue that overflows makes clients wait a second or more for a SYN
    /// retransmission.
    #[arg(long, env = "SSE_BFF_LISTEN_BACKLOG", default_value_t = 4096, value_parser = count(65_535))]
    pub listen_backlog: usize,
    /// Serve HTTPS (ALPN `h2` and `http/1.1`) with this PEM certificate chain, the server's
    /// certificate first; needs `--tls-key`. Reloaded when the file changes.
    #[arg(long, env = "SSE_BFF_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`. Reloaded with it.
    #[arg(long, env = "SSE_BFF_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ServerConfig {
    /// The server's settings, with the TLS certificate and key loaded when given.
    ///
    /// # Errors
    ///
    /// [`TlsError`] when a TLS file is unusable (see [`ServerSettings::load_tls`]).
    pub fn settings(&self) -> Result<ServerSettings, TlsError> {
        Ok(ServerSettings {
            stall_timeout: self.stall_timeout,
            max_header_bytes: self.max_header_bytes,
            tls: ServerSettings::load_tls(self.tls_cert.as_deref(), self.tls_key.as_deref())?,
        })
    }
}
