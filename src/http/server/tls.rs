//! TLS at the edge: the rustls configuration (ALPN `h2` and `http/1.1`), the handshake of each
//! accepted connection, and the certificate it presents, reloaded when its files change.
//!
//! A TLS connection is served by hyper, HTTP/2 or HTTP/1.1 as ALPN chose, through the same
//! handover (and so the same tower service, stall timeout and header bound) as plain
//! connections that hyper serves. Over HTTP/2 a browser opens every `EventSource` of a page as
//! a stream of one connection, instead of at most six HTTP/1.1 connections per origin.

mod reload;

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::net::TcpStream;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{self, ServerConfig, crypto::CryptoProvider, pki_types::pem},
};
use tokio_util::sync::CancellationToken;

use self::reload::{CertFiles, Current};
use super::{HEAD_TIMEOUT, Server, ServerSettings, handover};

/// The protocols offered in ALPN, most preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why the TLS certificate or key cannot be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Only one of the two files was given.
    #[error("--tls-cert and --tls-key go together: {0} is missing")]
    Incomplete(&'static str),
    /// A file cannot be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate file is not PEM, or holds no certificate.
    #[error("{}: no PEM certificate (-----BEGIN CERTIFICATE-----): {source}", .path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What the PEM parser found.
        source: pem::Error,
    },
    /// The key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[error("{}: no PEM private key (PKCS#8, PKCS#1 or SEC1): {source}", .path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What the PEM parser found.
        source: pem::Error,
    },
    /// The key is not the private key of the certificate.
    #[error("{} is not the private key of the certificate in {}", .key.display(), .cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refuses the key (an unsupported algorithm) or the certificate (not X.509).
    #[error("{}: {source}", .path.display())]
    Unusable {
        /// The file at fault.
        path: PathBuf,
        /// rustls's verdict.
        source: rustls::Error,
    },
}

impl ServerSettings {
    /// The TLS certificate chain and private key from PEM files, both or neither (`Ok(None)`).
    ///
    /// # Errors
    ///
    /// [`TlsError`] when only one file is given, or a file cannot be read, holds no usable
    /// certificate or key, or the key does not fit the certificate; the message names the file.
    pub fn load_tls(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<Tls>, TlsError> {
        match (cert, key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Tls::load(cert, key).map(Some),
            (Some(_), None) => Err(TlsError::Incomplete("--tls-key")),
            (None, Some(_)) => Err(TlsError::Incomplete("--tls-cert")),
        }
    }
}

/// The server's TLS: the acceptor (rustls with the ring provider, TLS 1.2 and 1.3, ALPN `h2`
/// and `http/1.1`) and the certificate files it watches. Cheap to clone.
#[derive(Clone)]
pub struct Tls(Arc<Inner>);

struct Inner {
    acceptor: TlsAcceptor,
    current: Arc<Current>,
    files: CertFiles,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("files", &self.0.files).finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the certificate chain (`cert`, PEM, the server's certificate first) and its
    /// private key (`key`, PEM) and builds the server configuration.
    ///
    /// # Errors
    ///
    /// [`TlsError`] naming the file that cannot be read or used.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let files = CertFiles::new(cert, key);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = Arc::new(Current::new(files.load(&provider)?));
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Unusable { path: cert.to_owned(), source })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as _);
        config.alpn_protocols = ALPN.iter().map(|protocol| protocol.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        Ok(Self(Arc::new(Inner { acceptor, current, files, provider })))
    }

    /// Completes the handshake (within the head timeout) and serves the connection with hyper.
    pub(super) async fn connection(self, server: Arc<Server>, stream: TcpStream) {
        let handshake = tokio::select! {
            () = server.shutdown.cancelled() => return,
            handshake = tokio::time::timeout(HEAD_TIMEOUT, self.0.acceptor.accept(stream)) => handshake,
        };
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(%error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(timeout = ?HEAD_TIMEOUT, "TLS handshake timed out");
                return;
            }
        };
        drop(self);
        let (service, shutdown) = (server.service.clone(), server.shutdown.clone());
        // hyper tells HTTP/2 from HTTP/1.1 by the connection preface, which follows ALPN.
        Box::pin(handover::serve(stream, Vec::new(), service, server.bounds(), shutdown)).await;
    }

    /// Checks the files every few seconds until `shutdown`, and presents their certificate to
    /// new handshakes once they changed and load; open connections keep theirs.
    pub(super) async fn watch(self, shutdown: CancellationToken) {
        let Inner { current, files, provider, .. } = &*self.0;
        reload::watch(files, provider, current, shutdown).await;
    }
}
