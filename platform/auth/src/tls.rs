//! mTLS on the daemon's TCP listener: a rustls `ServerConfig` that requires client
//! certificates from our CA, a server certificate that can be reloaded without a restart,
//! and the mapping from a verified client certificate to an [`Identity`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use crate::identity::{AuthMethod, Identity, Role, TenantScope};

/// Errors of the TLS setup and of certificate identities.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("Cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0} holds no certificate")]
    NoCert(PathBuf),
    #[error("TLS configuration")]
    Rustls(#[from] rustls::Error),
    #[error("Client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("Unparsable client certificate")]
    BadCert,
    #[error("Client certificate lacks {0} in its subject")]
    MissingField(&'static str),
    #[error("Client certificate subject: {0}")]
    BadField(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(path.to_path_buf()));
    }
    Ok(certs)
}

/// A server certificate read from two files, re-read by [`ReloadingCert::reload`] (or by
/// the poller of [`ReloadingCert::watch`]): new handshakes get the new certificate, live
/// connections keep theirs. A failed reload keeps the old certificate.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingCert {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<ReloadingCert>, TlsError> {
        let ck = load_certified(cert_path, key_path)?;
        Ok(Arc::new(ReloadingCert {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: RwLock::new(ck),
        }))
    }

    /// Reads the files again and serves them from the next handshake on.
    pub fn reload(&self) -> Result<(), TlsError> {
        let ck = load_certified(&self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = ck;
        Ok(())
    }

    /// The certificate chain served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Polls the files' modification times every `every` and reloads when they change
    /// (needs a tokio runtime). Drop or abort the handle to stop.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let mut seen: (Option<SystemTime>, Option<SystemTime>) =
                (stamp(&me.cert_path), stamp(&me.key_path));
            loop {
                tokio::time::sleep(every).await;
                let now = (stamp(&me.cert_path), stamp(&me.key_path));
                if now != seen {
                    match me.reload() {
                        Ok(()) => {
                            tracing::info!("reloaded TLS certificate {}", me.cert_path.display());
                            seen = now;
                        }
                        // Probably half-way through a replacement: try again next tick.
                        Err(e) => tracing::warn!("TLS certificate reload: {e}"),
                    }
                }
            }
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn load_certified(cert_path: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_certs(cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|source| TlsError::Read {
        path: key_path.to_path_buf(),
        source,
    })?;
    let ck = CertifiedKey::from_der(chain, key, &provider())?;
    Ok(Arc::new(ck))
}

/// The root store of our CA (or CAs: every certificate in the file).
pub fn root_store(ca_cert_path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(ca_cert_path)? {
        roots.add(c)?;
    }
    Ok(roots)
}

/// The TCP listener's config: TLS 1.2/1.3, a client certificate signed by the CA in
/// `client_ca` is REQUIRED (no anonymous path: API-key and JWT callers over TCP use a
/// listener without mTLS), the server certificate comes from `cert`.
pub fn server_config(
    client_ca: &Path,
    cert: Arc<ReloadingCert>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(root_store(client_ca)?),
        provider.clone(),
    )
    .build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client config for the CLI and tests: trusts the CA in `ca`, presents `cert` + `key`.
pub fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let chain = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Read {
        path: key.to_path_buf(),
        source,
    })?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(ca)?)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(cfg))
}

/// The identity of a client certificate: CN = principal, O = tenant (`*` = host scope),
/// OU = role. Only call it on a certificate rustls has verified against our CA (the first
/// of `ServerConnection::peer_certificates()`): the subject is trusted as is.
pub fn identity_from_peer_cert(der: &[u8]) -> Result<Identity, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| TlsError::BadCert)?;
    let subject = cert.subject();
    let one = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>,
               what: &'static str|
     -> Result<String, TlsError> {
        let first = it.next().ok_or(TlsError::MissingField(what))?;
        if it.next().is_some() {
            return Err(TlsError::BadField(format!("more than one {what}")));
        }
        first
            .as_str()
            .map(str::to_string)
            .map_err(|_| TlsError::BadField(format!("{what} is not a string")))
    };
    let principal = one(&mut subject.iter_common_name(), "CN")?;
    let tenant = one(&mut subject.iter_organization(), "O")?;
    let role = one(&mut subject.iter_organizational_unit(), "OU")?;
    if principal.is_empty() {
        return Err(TlsError::BadField("empty CN".into()));
    }
    Ok(Identity {
        tenant: TenantScope::parse(&tenant).map_err(|e| TlsError::BadField(e.to_string()))?,
        principal,
        role: role
            .parse::<Role>()
            .map_err(|e| TlsError::BadField(e.to_string()))?,
        method: AuthMethod::Mtls,
    })
}

/// The identity of a finished server-side handshake's client certificate, if any.
pub fn peer_identity(conn: &rustls::ServerConnection) -> Option<Result<Identity, TlsError>> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| identity_from_peer_cert(c))
}
