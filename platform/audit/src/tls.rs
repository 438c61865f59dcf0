//! TLS to the syslog sink (RFC 5425 for octet-counted syslog, and RELP over TLS), over
//! rustls: the sink's certificate must chain to the configured CA file and name the host
//! we connected to (or the configured override); a client certificate is presented when
//! configured, for sinks that require mutual authentication.
//!
//! The files are read once, when the forwarder starts: a bad file is a startup error, not
//! a stream of connect failures.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("Cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what} {path} holds no certificate")]
    NoCert { what: &'static str, path: PathBuf },
    #[error("CA certificate in {path} rejected")]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("A client certificate needs its key, and a key its certificate")]
    CertKeyHalf,
    #[error("Client certificate {cert} and key {key} rejected")]
    BadClientCert {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS configuration")]
    Rustls(#[from] rustls::Error),
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("Cannot tell the host in {0:?} (want HOST:PORT)")]
    Addr(String),
    #[error("TCP connection to {addr} failed")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Connection to {0} timed out")]
    ConnectTimeout(String),
    #[error("TLS handshake with {addr} failed")]
    Handshake {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} ended the TLS session right after the handshake (does it refuse our client certificate, or want one?)")]
    Dropped {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// What the forwarder needs to speak TLS to a sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file of the CA (or CAs) the sink's certificate must chain to. Only these are
    /// trusted: the system store is not consulted.
    pub ca: PathBuf,
    /// PEM certificate chain and PEM private key to present to sinks requiring mutual TLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the sink's certificate must carry, when not the host of the address (for
    /// instance when connecting by IP to a sink whose certificate names its DNS name).
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// Trusts the CAs in `ca`, no client certificate, the server name from the address.
    pub fn new(ca: impl Into<PathBuf>) -> TlsConfig {
        TlsConfig {
            ca: ca.into(),
            cert: None,
            key: None,
            server_name: None,
        }
    }

    /// Presents `cert` (PEM chain) with `key` (PEM private key).
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert = Some(cert.into());
        self.key = Some(key.into());
        self
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The host part of `host:port` (`[v6]:port` too).
pub fn host_of(addr: &str) -> Result<&str, TlsError> {
    let bad = || TlsError::Addr(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if port.parse::<u16>().is_err() {
        return Err(bad());
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad());
    }
    Ok(host)
}

/// A ready client side: the rustls config and the name to verify.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Reads the files of `config` and checks the name for a sink at `addr`.
    pub fn new(config: &TlsConfig, addr: &str) -> Result<TlsClient, TlsError> {
        if config.cert.is_some() != config.key.is_some() {
            return Err(TlsError::CertKeyHalf);
        }
        let mut roots = RootCertStore::empty();
        for c in read_certs("CA file", &config.ca)? {
            roots.add(c).map_err(|source| TlsError::BadCa {
                path: config.ca.clone(),
                source,
            })?;
        }
        let client_cert = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs("client certificate", cert)?;
                let k = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Read {
                    what: "client key",
                    path: key.clone(),
                    source,
                })?;
                Some((cert, key, chain, k))
            }
            // (None, None); a half pair was refused above.
            _ => None,
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let cfg = match client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key, chain, k)) => {
                builder.with_client_auth_cert(chain, k).map_err(|source| {
                    TlsError::BadClientCert {
                        cert: cert.clone(),
                        key: key.clone(),
                        source,
                    }
                })?
            }
        };
        let name = match &config.server_name {
            Some(n) => n.as_str(),
            None => host_of(addr)?,
        };
        let name = ServerName::try_from(name.to_string())
            .map_err(|_| TlsError::ServerName(name.to_string()))?;
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(cfg)),
            name,
        })
    }

    /// Connects to `addr` and completes the handshake, all within `timeout`.
    pub async fn connect(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, TlsError> {
        let work = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|source| TlsError::Connect {
                    addr: addr.to_string(),
                    source,
                })?;
            tcp.set_nodelay(true).map_err(|source| TlsError::Connect {
                addr: addr.to_string(),
                source,
            })?;
            self.connector
                .connect(self.name.clone(), tcp)
                .await
                .map_err(|source| TlsError::Handshake {
                    addr: addr.to_string(),
                    source,
                })
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| TlsError::ConnectTimeout(addr.to_string()))?
    }

    /// Waits up to `settle` for the sink to drop a fresh session; an error if it did.
    ///
    /// A sink may judge our client certificate (or its absence) only after the handshake,
    /// as rsyslog does, or, in TLS 1.3, after the client already considers the handshake
    /// done. Either way the refusal comes right after the handshake. Over a transport
    /// without acknowledgements (`tls://`) records written before it would count as sent,
    /// and a misconfigured certificate would drain the log into a sink that drops it: so
    /// the forwarder gives the sink this moment to say no before it writes.
    pub async fn settle(
        stream: &mut TlsStream<TcpStream>,
        addr: &str,
        settle: Duration,
    ) -> Result<(), TlsError> {
        let mut b = [0u8; 1];
        // Cancel-safe: an interrupted read leaves what arrived in the TLS session.
        match tokio::time::timeout(settle, stream.read(&mut b)).await {
            // Quiet: the sink kept the session.
            Err(_) => Ok(()),
            // A syslog sink does not talk; a byte is odd but not a refusal.
            Ok(Ok(n)) if n > 0 => Ok(()),
            Ok(Ok(_)) => Err(TlsError::Dropped {
                addr: addr.to_string(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            }),
            Ok(Err(source)) => Err(TlsError::Dropped {
                addr: addr.to_string(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("127.0.0.1:6514").unwrap(), "127.0.0.1");
        assert_eq!(host_of("logs.example:6514").unwrap(), "logs.example");
        assert_eq!(host_of("[::1]:6514").unwrap(), "::1");
        for bad in ["logs.example", ":6514", "host:port", "host:99999"] {
            assert!(matches!(host_of(bad), Err(TlsError::Addr(_))), "{bad}");
        }
    }

    #[test]
    fn missing_files_and_half_pairs_are_named() {
        let err = TlsClient::new(&TlsConfig::new("/nonexistent/ca.pem"), "h:1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("CA file /nonexistent/ca.pem"), "{err}");
        let dir = std::env::temp_dir().join(format!("tartarus-audit-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = TlsClient::new(&TlsConfig::new(&empty), "h:1").unwrap_err();
        assert!(matches!(err, TlsError::NoCert { .. }), "{err}");
        let mut half = TlsConfig::new(&empty);
        half.cert = Some(empty.clone());
        let err = TlsClient::new(&half, "h:1").unwrap_err();
        assert!(matches!(err, TlsError::CertKeyHalf), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
