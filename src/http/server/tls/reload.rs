//! The certificate presented to new handshakes, and the watch that replaces it when its files
//! change: their modification times and lengths are checked every two seconds, so a renewal
//! (certbot, a Kubernetes secret) takes effect without a restart and without closing a stream.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, SystemTime},
};

use tokio_rustls::rustls::{
    self,
    crypto::CryptoProvider,
    pki_types::{
        CertificateDer, PrivateKeyDer,
        pem::{self, PemObject as _},
    },
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio_util::sync::CancellationToken;

use super::TlsError;

/// How often the files are checked. A change is loaded once the files have stayed the same for
/// one more check, so that a cert and key written one after the other load as a pair.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The certificate chain and key files.
#[derive(Debug)]
pub(super) struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

/// What the files looked like: modification time and length of each, `None` when unreadable.
type Stamp = [Option<(SystemTime, u64)>; 2];

impl CertFiles {
    pub(super) fn new(cert: &Path, key: &Path) -> Self {
        Self { cert: cert.to_owned(), key: key.to_owned() }
    }

    /// Reads both files and checks that the key is the certificate's.
    pub(super) fn load(&self, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
        let read = |path: &Path| fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source });
        let (cert_pem, key_pem) = (read(&self.cert)?, read(&self.key)?);
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .and_then(|chain| if chain.is_empty() { Err(pem::Error::NoItemsFound) } else { Ok(chain) })
            .map_err(|source| TlsError::Certificate { path: self.cert.clone(), source })?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|source| TlsError::Key { path: self.key.clone(), source })?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|source| TlsError::Unusable { path: self.key.clone(), source })?;
        let certified = CertifiedKey::new(chain, signing);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
            Err(rustls::Error::InconsistentKeys(_)) => {
                Err(TlsError::Mismatch { cert: self.cert.clone(), key: self.key.clone() })
            }
            Err(source) => Err(TlsError::Unusable { path: self.cert.clone(), source }),
        }
    }

    fn stamp(&self) -> Stamp {
        [&self.cert, &self.key].map(|path| {
            let meta = fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
    }
}

/// The certificate new handshakes get.
#[derive(Debug)]
pub(super) struct Current(RwLock<Arc<CertifiedKey>>);

impl Current {
    pub(super) fn new(key: CertifiedKey) -> Self {
        Self(RwLock::new(Arc::new(key)))
    }

    fn replace(&self, key: CertifiedKey) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner)))
    }
}

/// Replaces `current` whenever the files change and load, until `shutdown`. Files that fail to
/// load leave the certificate as it is, with one warning until they change again.
pub(super) async fn watch(
    files: &CertFiles,
    provider: &CryptoProvider,
    current: &Current,
    shutdown: CancellationToken,
) {
    let mut loaded = files.stamp();
    let mut seen = loaded;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let now = files.stamp();
        // Still being written: wait until the files stay the same for one check.
        let settled = now == seen;
        seen = now;
        if !settled || now == loaded {
            continue;
        }
        loaded = now;
        match files.load(provider) {
            Ok(key) => {
                current.replace(key);
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded; new connections use it");
            }
            Err(error) => {
                tracing::warn!(%error, "TLS certificate files changed but cannot be used; keeping the current certificate");
            }
        }
    }
}
