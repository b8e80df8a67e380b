//! TLS to Redis with rustls.

use std::sync::Arc;

use crate::error::BusError;

/// A rustls connector trusting `ca_file` (PEM), or the system's roots. Every server —
/// cluster nodes and sentinels included — is verified against the host it is reached by.
pub(super) fn tls_connector(
    ca_file: Option<&std::path::Path>,
) -> Result<fred::types::config::TlsConnector, BusError> {
    use fred::rustls::pki_types::pem::PemObject;
    use fred::rustls::pki_types::CertificateDer;
    use fred::rustls::{ClientConfig, RootCertStore};

    let bad = |what: String| BusError::Config(what);
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                bad(format!(
                    "reading cluster.redis_ca_file {}: {e}",
                    path.display()
                ))
            })?;
            for cert in certs {
                let cert = cert
                    .map_err(|e| bad(format!("cluster.redis_ca_file {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("cluster.redis_ca_file {}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(bad(format!(
                    "cluster.redis_ca_file {} holds no certificate",
                    path.display()
                )));
            }
        }
        None => {
            for cert in fred::rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(fred::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config.into())
}
