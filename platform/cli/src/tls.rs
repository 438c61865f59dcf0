//! The TLS client of `https://` daemon addresses (rustls with aws-lc-rs, TLS 1.2/1.3): the
//! daemon's certificate must chain to `--tls-ca` (else to the system's trust store), and with
//! `--tls-cert` + `--tls-key` the CLI presents a client certificate (mTLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use crate::config::TlsFiles;

/// Where the system's CA bundle usually is (Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE).
const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0} holds no PEM certificate")]
    NoCert(PathBuf),
    #[error("{path}: certificate not usable as a trust anchor: {source}")]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("no CA to trust for https: give --tls-ca FILE (or TARTARUS_TLS_CA, or the profile's tls_ca); no system CA bundle was found either")]
    NoTrust,
    #[error("--tls-cert needs --tls-key too (and the other way round)")]
    HalfPair,
    #[error("the client certificate {cert} and key {key} are not usable: {source}")]
    BadPair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("'{0}' is not a valid TLS server name (a DNS name or an IP address)")]
    BadServerName(String),
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_err = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(path.to_path_buf()));
    }
    Ok(certs)
}

fn roots(ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match ca {
        Some(path) => {
            for c in read_certs(path)? {
                store.add(c).map_err(|source| TlsError::BadCa {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
        }
        None => {
            let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
            let bundle = env
                .into_iter()
                .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
                .find(|p| p.is_file())
                .ok_or(TlsError::NoTrust)?;
            // A system bundle may hold a few certificates rustls cannot use: skip those.
            let (added, _ignored) = store.add_parsable_certificates(read_certs(&bundle)?);
            if added == 0 {
                return Err(TlsError::NoTrust);
            }
        }
    }
    Ok(store)
}

/// The rustls client configuration for `files`.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    if files.cert.is_some() != files.key.is_some() {
        return Err(TlsError::HalfPair);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(files.ca.as_deref())?);
    let mut cfg = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let pk = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Read {
                path: key.clone(),
                source,
            })?;
            builder
                .with_client_auth_cert(chain, pk)
                .map_err(|source| TlsError::BadPair {
                    cert: cert.clone(),
                    key: key.clone(),
                    source,
                })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::HalfPair),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The name the daemon's certificate must carry: the host part of `host:port` (an IPv6
/// address in brackets loses them).
pub fn server_name(authority: &str) -> Result<ServerName<'static>, TlsError> {
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => authority,
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_string()).map_err(|_| TlsError::BadServerName(host.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert_eq!(
            server_name("tartarus.example.com:7443").unwrap(),
            ServerName::try_from("tartarus.example.com").unwrap()
        );
        assert!(matches!(
            server_name("127.0.0.1:7443").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:7443").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(server_name("bad name:1").is_err());
    }

    #[test]
    fn half_a_client_pair_is_refused() {
        let files = TlsFiles {
            ca: None,
            cert: Some("/nonexistent.crt".into()),
            key: None,
        };
        assert!(matches!(client_config(&files), Err(TlsError::HalfPair)));
    }
}
