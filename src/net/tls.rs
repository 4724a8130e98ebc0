//! STUN and TURN over TLS (RFC 8656 §3.1, TLS 1.2 and 1.3): a TLS handshake in front of
//! the TCP connection handling of `tcp`. The certificate and key are read from PEM
//! files at start and again on SIGHUP; a reload swaps what new handshakes use, and
//! leaves open connections (and their allocations) alone.

use crate::net::tcp::{self, StreamContext};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{ServerConfig, version};

/// A client that has not finished its handshake in this time is dropped, so that
/// half-open handshakes cannot hold the connection permits.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The node's certificate: where it is read from and what handshakes use now.
pub struct TlsCerts {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    resolver: Arc<Resolver>,
    config: Arc<ServerConfig>,
}

impl TlsCerts {
    /// Reads the certificate chain and key; the error names the configuration key
    /// and the file, as a start-up error should.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<TlsCerts, String> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let key = read_certified_key(cert_path, key_path, &provider)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(key)),
        });
        let config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        Ok(TlsCerts {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            resolver,
            config: Arc::new(config),
        })
    }

    /// Reads the files again. On success new handshakes use the new certificate; on
    /// failure the old one stays and the error says why.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let key = read_certified_key(&self.cert_path, &self.key_path, &self.provider)?;
        match self.resolver.current.write() {
            Ok(mut current) => *current = Arc::new(key),
            // A writer never panics while holding the lock, but if one did, the value
            // is still a whole `Arc`: replace it all the same.
            Err(poisoned) => *poisoned.into_inner() = Arc::new(key),
        }
        Ok(())
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }
}

/// Hands every handshake the current certificate.
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = match self.current.read() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        Some(current.clone())
    }
}

fn read_certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let cert_file = |e: &dyn fmt::Display| format!("turn.tls_cert: {}: {e}", cert_path.display());
    let key_file = |e: &dyn fmt::Display| format!("turn.tls_key: {}: {e}", key_path.display());
    let pem = std::fs::read(cert_path)
        .map_err(|e| format!("turn.tls_cert: cannot read {}: {e}", cert_path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_file(&format_args!("not a PEM certificate chain ({e})")))?;
    if chain.is_empty() {
        return Err(cert_file(&"no CERTIFICATE in the file"));
    }
    let pem = std::fs::read(key_path)
        .map_err(|e| format!("turn.tls_key: cannot read {}: {e}", key_path.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| key_file(&format_args!("no PEM private key ({e})")))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        key_file(&format_args!(
            "unusable private key, or not the key of turn.tls_cert ({e})"
        ))
    })
}

/// Accepts TLS connections on `listener` until the task is dropped. Connections share
/// the permits of `ctx.limit` with TCP; the permit is taken before the handshake.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<StreamContext>, acceptor: TlsAcceptor) {
    loop {
        let Some((stream, peer, permit)) = tcp::accept(&listener, &ctx).await else {
            continue;
        };
        let ctx = ctx.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            ctx.metrics.tcp_connections.inc();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    if let Err(e) = tcp::handle_connection(stream, peer, &ctx).await {
                        tracing::debug!("TLS connection ended: {e}");
                    }
                }
                Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
            ctx.metrics.tcp_connections.dec();
            drop(permit);
        });
    }
}
