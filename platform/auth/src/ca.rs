//! A small certificate authority for mTLS (rcgen): `init_ca` makes the CA, `issue` signs
//! server and client certificates with it.
//!
//! A client certificate carries its identity in the subject:
//! `CN` = principal, `O` = tenant (`*` for the host scope), `OU` = role; its extended key
//! usage is clientAuth. Server certificates carry `CN` = name, the SANs given, serverAuth.
//!
//! Files in the CA directory: `ca.crt` (PEM) and `ca.key` (PEM, PKCS#8, mode 0600).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::identity::{Role, TenantScope};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";

/// Errors of the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0} already exists: refusing to replace a CA")]
    Exists(PathBuf),
    #[error("Cannot read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Certificate generation")]
    Rcgen(#[from] rcgen::Error),
    #[error("Invalid name {0:?} for a certificate")]
    BadName(String),
}

/// What a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertKind {
    /// The daemon's TCP listener.
    Server,
    /// A node, agent or person: the identity goes into the subject.
    Client { tenant: TenantScope, role: Role },
}

/// A freshly signed certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Writes `<stem>.crt` and `<stem>.key` (mode 0600) into `dir`, replacing older ones (so
    /// a running server can [`crate::tls::ReloadingCert::reload`] them).
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), CaError> {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        // Key first, then cert: a reload between the two fails on a key/cert mismatch and
        // keeps the old pair rather than serving a half-written one.
        write_file(&key, self.key_pem.as_bytes(), 0o600, false)?;
        write_file(&cert, self.cert_pem.as_bytes(), 0o644, false)?;
        Ok((cert, key))
    }
}

fn write_file(path: &Path, data: &[u8], mode: u32, create_new: bool) -> Result<(), CaError> {
    let io = |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Write a temporary file and rename it over the target: readers see old or new, never half.
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    if create_new && path.exists() {
        let _ = std::fs::remove_file(&tmp);
        return Err(CaError::Exists(path.to_path_buf()));
    }
    std::fs::rename(&tmp, path).map_err(io)
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Makes a CA in `dir` (created if needed): a P-256 key and a self-signed certificate valid
/// for ten years. Refuses to replace an existing one.
pub fn init_ca(dir: &Path, common_name: &str) -> Result<String, CaError> {
    std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for f in [CA_CERT, CA_KEY] {
        if dir.join(f).exists() {
            return Err(CaError::Exists(dir.join(f)));
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(&[(DnType::CommonName, common_name)]);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, 3650);
    let cert = params.self_signed(&key)?;
    write_file(
        &dir.join(CA_KEY),
        key.serialize_pem().as_bytes(),
        0o600,
        true,
    )?;
    write_file(&dir.join(CA_CERT), cert.pem().as_bytes(), 0o644, true)?;
    Ok(cert.pem())
}

/// Signs a new certificate with the CA in `ca_dir`, valid for `days`.
pub fn issue(
    ca_dir: &Path,
    kind: &CertKind,
    name: &str,
    sans: &[String],
    days: u32,
) -> Result<Issued, CaError> {
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
        return Err(CaError::BadName(name.to_string()));
    }
    let ca_key = KeyPair::from_pem(&read(&ca_dir.join(CA_KEY))?)?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca_dir.join(CA_CERT))?, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans.to_vec())?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    match kind {
        CertKind::Server => {
            params.distinguished_name = dn(&[(DnType::CommonName, name)]);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        CertKind::Client { tenant, role } => {
            params.distinguished_name = dn(&[
                (DnType::CommonName, name),
                (DnType::OrganizationName, tenant.as_str()),
                (DnType::OrganizationalUnitName, role.as_str()),
            ]);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    validity(&mut params, days);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn dn(parts: &[(DnType, &str)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (t, v) in parts {
        dn.push(t.clone(), *v);
    }
    dn
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
}
