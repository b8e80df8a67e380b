//! The client listener's TLS (SPEC section 3, `server.tls_cert_file` and `tls_key_file`):
//! rustls with the ring provider, and a certificate that reloads in place (SIGHUP) so that a
//! renewed certificate needs no restart and drops no connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// The certificate and key in force, swapped whole on reload.
#[derive(Debug)]
pub struct ReloadableCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl ReloadableCert {
    /// Loads the pair; fails naming the file that is wrong.
    pub fn load(cert_file: &Path, key_file: &Path) -> anyhow::Result<ReloadableCert> {
        Ok(ReloadableCert {
            current: ArcSwap::from_pointee(certified_key(cert_file, key_file)?),
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
        })
    }

    /// Reads the files again; on any error the certificate in force stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = certified_key(&self.cert_file, &self.key_file)?;
        self.current.store(Arc::new(fresh));
        Ok(())
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn certified_key(cert_file: &Path, key_file: &Path) -> anyhow::Result<CertifiedKey> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .with_context(|| format!("reading server.tls_cert_file {}", cert_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("server.tls_cert_file {}", cert_file.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "server.tls_cert_file {} holds no certificate",
        cert_file.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("reading server.tls_key_file {}", key_file.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .with_context(|| format!("server.tls_key_file {}", key_file.display()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .context("server.tls_cert_file and server.tls_key_file do not match")?;
    Ok(certified)
}

/// The acceptor of the client listener, and the certificate it serves.
#[derive(Clone)]
pub struct Tls {
    /// Completes the TLS handshake of an accepted connection.
    pub acceptor: TlsAcceptor,
    /// The certificate, for reloads.
    pub cert: Arc<ReloadableCert>,
}

impl Tls {
    /// TLS 1.2 and 1.3 with the certificate and key files; HTTP/1.1 only (the upgrade).
    pub fn new(cert_file: &Path, key_file: &Path) -> anyhow::Result<Tls> {
        let cert = Arc::new(ReloadableCert::load(cert_file, key_file)?);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(cert.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert,
        })
    }
}
