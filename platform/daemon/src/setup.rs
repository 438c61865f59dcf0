//! The daemon's security flags (issue #14) and what they build: the API-key store, the OIDC
//! verifier, the mTLS server config, the audit log and its syslog forwarder.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tartarus_audit::{
    AuditLog, ForwardError, Forwarder, ForwarderConfig, LogConfig, TlsConfig, Transport,
};
use tartarus_auth::keystore::KeyStore;
use tartarus_auth::layer::Authenticator;
use tartarus_auth::oidc::{OidcConfig, OidcVerifier};
use tartarus_auth::Role;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("API key store {path}: {source}")]
    Keys {
        path: String,
        #[source]
        source: tartarus_auth::keystore::KeyError,
    },
    #[error("OIDC issuer {issuer}: {source}")]
    Oidc {
        issuer: String,
        #[source]
        source: tartarus_auth::oidc::OidcError,
    },
    #[error("--oidc-issuer and --oidc-audience go together")]
    OidcHalf,
    #[error("--oidc-default-role: {0}")]
    Role(tartarus_auth::identity::IdentityError),
    #[error("--tls-listen needs --tls-cert, --tls-key and --client-ca")]
    TlsHalf,
    #[error("TLS: {0}")]
    Tls(#[from] tartarus_auth::tls::TlsError),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("audit log {path}: {source}")]
    Audit {
        path: String,
        #[source]
        source: tartarus_audit::LogError,
    },
    #[error(
        "--audit-syslog '{0}': use relp://, tcp://, relp+tls:// or tls:// followed by HOST:PORT"
    )]
    SyslogUrl(String),
    #[error("--audit-syslog '{0}' uses TLS: --audit-syslog-ca (the PEM CA that signed the sink's certificate) is required")]
    SyslogNoCa(String),
    #[error("--audit-syslog-ca, --audit-syslog-cert, --audit-syslog-key and --audit-syslog-server-name need a relp+tls:// or tls:// --audit-syslog")]
    SyslogTlsUnused,
    #[error("--audit-syslog-cert and --audit-syslog-key go together")]
    SyslogCertHalf,
    #[error("audit forwarder: {0}")]
    Forwarder(#[from] tartarus_audit::ForwardError),
}

#[derive(clap::Args, Debug, Clone)]
pub struct SecurityArgs {
    /// API keys database (default: <state-dir>/auth.db).
    #[arg(long)]
    pub keys_db: Option<PathBuf>,
    /// Accept bearer JWTs from this OIDC issuer (discovery + JWKS are fetched from it).
    #[arg(long, value_name = "URL")]
    pub oidc_issuer: Option<String>,
    /// The `aud` the JWTs must carry.
    #[arg(long)]
    pub oidc_audience: Option<String>,
    /// JWT claim naming the tenant.
    #[arg(long, default_value = "tenant")]
    pub oidc_tenant_claim: String,
    /// JWT claim naming the role.
    #[arg(long, default_value = "role")]
    pub oidc_role_claim: String,
    /// Role of JWTs without the role claim (default: refuse them).
    #[arg(long)]
    pub oidc_default_role: Option<String>,
    /// Serve the API over mutual TLS on this TCP address: clients need a certificate from
    /// --client-ca (`tartarus ca issue client`).
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Option<std::net::SocketAddr>,
    /// The server certificate (PEM) of --tls-listen; re-read when it changes.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) whose client certificates --tls-listen accepts.
    #[arg(long)]
    pub client_ca: Option<PathBuf>,
    /// The audit log (default: <state-dir>/audit/audit.log).
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// The audit log's ed25519 signing key, created with `<key>.pub` if missing (default:
    /// <state-dir>/audit/audit.key).
    #[arg(long)]
    pub audit_key: Option<PathBuf>,
    /// Forward the audit log to syslog: relp://HOST:PORT (acknowledged) or tcp://HOST:PORT
    /// (RFC 6587 octet counting); relp+tls://HOST:PORT and tls://HOST:PORT (RFC 5425) are
    /// the same over TLS.
    #[arg(long, value_name = "URL")]
    pub audit_syslog: Option<String>,
    /// The CA (PEM) the TLS sink's certificate must chain to (required with relp+tls:// and
    /// tls://; the system's CAs are not used).
    #[arg(long, value_name = "PEM")]
    pub audit_syslog_ca: Option<PathBuf>,
    /// Client certificate (PEM chain) for sinks that require mutual TLS.
    #[arg(long, value_name = "PEM")]
    pub audit_syslog_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "PEM")]
    pub audit_syslog_key: Option<PathBuf>,
    /// The name the sink's certificate must carry (default: the host of --audit-syslog).
    #[arg(long, value_name = "NAME")]
    pub audit_syslog_server_name: Option<String>,
    /// Most audit records forwarded per second (default: unlimited).
    #[arg(long)]
    pub audit_rate: Option<u32>,
}

pub struct Paths {
    pub audit_log: PathBuf,
    pub audit_key: PathBuf,
}

impl SecurityArgs {
    pub fn paths(&self, state: &Path) -> Paths {
        let dir = state.join("audit");
        Paths {
            audit_log: self
                .audit_log
                .clone()
                .unwrap_or_else(|| dir.join("audit.log")),
            audit_key: self
                .audit_key
                .clone()
                .unwrap_or_else(|| dir.join("audit.key")),
        }
    }

    pub fn keys(&self, state: &Path) -> Result<Arc<KeyStore>, SetupError> {
        let path = self
            .keys_db
            .clone()
            .unwrap_or_else(|| state.join("auth.db"));
        KeyStore::open(&path)
            .map(Arc::new)
            .map_err(|source| SetupError::Keys {
                path: path.display().to_string(),
                source,
            })
    }

    /// Keys always; OIDC when configured (discovery happens here: a provider that cannot be
    /// reached stops the start with its error).
    pub async fn authenticator(&self, keys: Arc<KeyStore>) -> Result<Authenticator, SetupError> {
        let auth = Authenticator::new().with_keys(keys);
        match (&self.oidc_issuer, &self.oidc_audience) {
            (None, None) => Ok(auth),
            (Some(issuer), Some(aud)) => {
                let mut cfg = OidcConfig::new(issuer, aud);
                cfg.tenant_claim = self.oidc_tenant_claim.clone();
                cfg.role_claim = self.oidc_role_claim.clone();
                cfg.default_role = self
                    .oidc_default_role
                    .as_deref()
                    .map(str::parse::<Role>)
                    .transpose()
                    .map_err(SetupError::Role)?;
                let v = OidcVerifier::discover(cfg)
                    .await
                    .map_err(|source| SetupError::Oidc {
                        issuer: issuer.clone(),
                        source,
                    })?;
                tracing::info!("accepting JWTs from {issuer}");
                Ok(auth.with_oidc(Arc::new(v)))
            }
            _ => Err(SetupError::OidcHalf),
        }
    }

    /// The mTLS listener's rustls config; the server certificate is re-read every 10 s when
    /// its file changed (a rotation needs no restart).
    pub fn tls(&self) -> Result<Option<Arc<rustls::ServerConfig>>, SetupError> {
        let Some(_) = self.tls_listen else {
            return Ok(None);
        };
        let (Some(cert), Some(key), Some(ca)) = (&self.tls_cert, &self.tls_key, &self.client_ca)
        else {
            return Err(SetupError::TlsHalf);
        };
        let rc = tartarus_auth::tls::ReloadingCert::load(cert, key)?;
        rc.watch(Duration::from_secs(10));
        Ok(Some(tartarus_auth::tls::server_config(ca, rc)?))
    }

    /// Opens (and if a crash left a torn tail, repairs) the audit log.
    pub fn audit(&self, state: &Path) -> Result<Arc<AuditLog>, SetupError> {
        let p = self.paths(state);
        for f in [&p.audit_log, &p.audit_key] {
            if let Some(dir) = f.parent() {
                std::fs::create_dir_all(dir).map_err(|source| SetupError::Dir {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
        }
        let (log, report) =
            AuditLog::open(LogConfig::new(&p.audit_log, &p.audit_key)).map_err(|source| {
                SetupError::Audit {
                    path: p.audit_log.display().to_string(),
                    source,
                }
            })?;
        for r in &report.repairs {
            tracing::warn!("audit log {}: {r}", p.audit_log.display());
        }
        if report.key_created {
            tracing::info!(
                "audit log: new signing key {} (public key {})",
                p.audit_key.display(),
                tartarus_audit::public_key_path(&p.audit_key).display()
            );
        }
        tracing::info!(
            "audit log {}: {} records",
            p.audit_log.display(),
            report.records
        );
        Ok(Arc::new(log))
    }

    /// Starts the syslog forwarder when configured; its cursor is `<audit log>.cursor`.
    pub fn forwarder(&self, state: &Path, log: &AuditLog) -> Result<Option<Forwarder>, SetupError> {
        let Some(url) = &self.audit_syslog else {
            return match self.syslog_tls()? {
                Some(_) => Err(SetupError::SyslogTlsUnused),
                None => Ok(None),
            };
        };
        let transport = Transport::from_url(url, self.syslog_tls()?).map_err(|e| match e {
            ForwardError::NoCa(u) => SetupError::SyslogNoCa(u),
            ForwardError::TlsUnused(_) => SetupError::SyslogTlsUnused,
            _ => SetupError::SyslogUrl(url.clone()),
        })?;
        let p = self.paths(state);
        let mut cursor = p.audit_log.clone().into_os_string();
        cursor.push(".cursor");
        let mut cfg = ForwarderConfig::new(&p.audit_log, PathBuf::from(cursor), transport);
        if let Some(r) = self.audit_rate.filter(|r| *r > 0) {
            cfg.rate_limit = Some((r as f64, r.max(1)));
        }
        let f = Forwarder::start(cfg, Some(log.subscribe()))?;
        tracing::info!("forwarding the audit log to {url}");
        Ok(Some(f))
    }

    /// The TLS settings of the forwarder, when any flag gives one (the CA is checked against
    /// the URL's scheme by [`Transport::from_url`]).
    fn syslog_tls(&self) -> Result<Option<TlsConfig>, SetupError> {
        let (ca, cert, key, name) = (
            &self.audit_syslog_ca,
            &self.audit_syslog_cert,
            &self.audit_syslog_key,
            &self.audit_syslog_server_name,
        );
        if cert.is_some() != key.is_some() {
            return Err(SetupError::SyslogCertHalf);
        }
        let Some(ca) = ca else {
            return match (cert, name) {
                (None, None) => Ok(None),
                // A certificate or a name without a CA: not a plain URL's business either.
                _ if self.syslog_url_is_tls() => Err(SetupError::SyslogNoCa(
                    self.audit_syslog.clone().unwrap_or_default(),
                )),
                _ => Err(SetupError::SyslogTlsUnused),
            };
        };
        Ok(Some(TlsConfig {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
            server_name: name.clone(),
        }))
    }

    fn syslog_url_is_tls(&self) -> bool {
        self.audit_syslog
            .as_deref()
            .is_some_and(|u| u.starts_with("tls://") || u.starts_with("relp+tls://"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sec: SecurityArgs,
    }

    fn forwarder_of(args: &[&str]) -> Result<Option<Forwarder>, SetupError> {
        let sec = Cli::try_parse_from(std::iter::once("tartarusd").chain(args.iter().copied()))
            .unwrap()
            .sec;
        let dir = std::env::temp_dir().join(format!(
            "tartarusd-setup-{}-{}",
            std::process::id(),
            args.join("_").replace('/', "_")
        ));
        let log = sec.audit(&dir).unwrap();
        let r = sec.forwarder(&dir, &log);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[tokio::test]
    async fn syslog_tls_flags_are_checked_against_the_url() {
        let err = |args: &[&str]| forwarder_of(args).err().expect("refused").to_string();
        let e = err(&["--audit-syslog", "relp+tls://127.0.0.1:1"]);
        assert!(e.contains("--audit-syslog-ca"), "{e}");
        let e = err(&[
            "--audit-syslog",
            "tls://127.0.0.1:1",
            "--audit-syslog-cert",
            "c.pem",
        ]);
        assert!(e.contains("go together"), "{e}");
        let e = err(&[
            "--audit-syslog",
            "relp://127.0.0.1:1",
            "--audit-syslog-ca",
            "ca.pem",
        ]);
        assert!(e.contains("need a relp+tls:// or tls://"), "{e}");
        let e = err(&["--audit-syslog-ca", "ca.pem"]);
        assert!(e.contains("need a relp+tls:// or tls://"), "{e}");
        let e = err(&["--audit-syslog", "udp://127.0.0.1:1"]);
        assert!(e.contains("use relp://"), "{e}");
        let e = err(&[
            "--audit-syslog",
            "tls://127.0.0.1:1",
            "--audit-syslog-ca",
            "/nonexistent/ca.pem",
        ]);
        assert!(e.contains("CA file /nonexistent/ca.pem"), "{e}");
        assert!(forwarder_of(&[]).unwrap().is_none());
    }
}
