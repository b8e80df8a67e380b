//! A test CA and server certificates (rcgen), as PEM files.

use std::path::{Path, PathBuf};

/// A test CA and a server certificate for 127.0.0.1 / localhost, as PEM files.
pub struct Certs {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
}

impl Certs {
    /// `redis-server` arguments serving these (clients are not asked for certificates).
    pub fn server_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (flag, path) in [
            ("--tls-cert-file", &self.cert),
            ("--tls-key-file", &self.key),
            ("--tls-ca-cert-file", &self.ca),
        ] {
            args.push(flag.to_owned());
            args.push(path.to_str().unwrap().to_owned());
        }
        args.extend(["--tls-auth-clients".to_owned(), "no".to_owned()]);
        args
    }
}

/// Makes a CA and a server certificate for localhost and 127.0.0.1 in `dir`.
pub fn make_certs(dir: &Path) -> Certs {
    make_certs_named(dir, "localhost", Some("127.0.0.1".parse().unwrap()))
}

/// Makes a CA and a server certificate for `dns` (and `ip`, when given) in `dir`.
pub fn make_certs_named(dir: &Path, dns: &str, ip: Option<std::net::IpAddr>) -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL (redis-cli) takes a leaf whose issuer equals its subject for a
    // self-signed certificate.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wsgate test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![dns.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, dns);
    if let Some(ip) = ip {
        params.subject_alt_names.push(SanType::IpAddress(ip));
    }
    let cert = params.signed_by(&key, &issuer).unwrap();
    let write = |name: &str, body: String| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    Certs {
        ca: write("ca.pem", ca_cert.pem()),
        cert: write("server.pem", cert.pem()),
        key: write("server.key", key.serialize_pem()),
    }
}
