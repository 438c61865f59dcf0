//! mTLS with real TLS handshakes over 127.0.0.1 TCP (tokio-rustls).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tartarus_auth::ca::{self, CaError, CertKind};
use tartarus_auth::tls::{self, ReloadingCert, TlsError};
use tartarus_auth::{AuthMethod, Identity, Role, TenantScope};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tartarus-auth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn acme() -> TenantScope {
    TenantScope::parse("acme").unwrap()
}

/// A CA in `dir/ca`, a server cert (CN `server_cn`) and a client cert (alice, acme, developer).
fn setup(dir: &Path, server_cn: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_dir = dir.join("ca");
    ca::init_ca(&ca_dir, "Tartarus test CA").unwrap();
    ca::issue(
        &ca_dir,
        &CertKind::Server,
        server_cn,
        &["localhost".into(), "127.0.0.1".into()],
        30,
    )
    .unwrap()
    .write(dir, "server")
    .unwrap();
    let client = CertKind::Client {
        tenant: acme(),
        role: Role::Developer,
    };
    ca::issue(&ca_dir, &client, "alice", &[], 30)
        .unwrap()
        .write(dir, "alice")
        .unwrap();
    (ca_dir, dir.join("server.crt"), dir.join("server.key"))
}

struct Outcome {
    /// What the server made of the client: its identity, or why the handshake failed.
    server: Result<Option<Identity>, String>,
    /// The CN of the certificate the server presented, if the client got that far.
    server_cn: Option<String>,
    /// Whether the client read the server's reply.
    client_ok: bool,
}

async fn handshake(
    server_cfg: Arc<rustls::ServerConfig>,
    client_cfg: Arc<rustls::ClientConfig>,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_cfg);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let id = tls::peer_identity(tls.get_ref().1)
            .transpose()
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.ok();
        Ok::<_, String>(id)
    });
    let connector = TlsConnector::from(client_cfg);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut server_cn = None;
    let mut client_ok = false;
    if let Ok(mut tls) = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    {
        if let Some(c) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            let (_, x) = x509_parser::parse_x509_certificate(c).unwrap();
            server_cn = x
                .subject()
                .iter_common_name()
                .next()
                .map(|cn| cn.as_str().unwrap().to_string());
        }
        let mut buf = Vec::new();
        client_ok = tls.read_to_end(&mut buf).await.is_ok() && buf == b"ok";
    }
    let server = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server task hung")
        .unwrap();
    Outcome {
        server,
        server_cn,
        client_ok,
    }
}

#[tokio::test]
async fn good_client_cert_gives_identity() {
    let d = tmpdir("good");
    let (ca_dir, crt, key) = setup(&d, "tartarusd-1");
    let srv = tls::server_config(
        &ca_dir.join("ca.crt"),
        ReloadingCert::load(&crt, &key).unwrap(),
    )
    .unwrap();
    let cli = tls::client_config(
        &ca_dir.join("ca.crt"),
        &d.join("alice.crt"),
        &d.join("alice.key"),
    )
    .unwrap();
    let out = handshake(srv, cli).await;
    let id = out.server.unwrap().expect("a client identity");
    assert_eq!(id.principal, "alice");
    assert_eq!(id.tenant, acme());
    assert_eq!(id.role, Role::Developer);
    assert_eq!(id.method, AuthMethod::Mtls);
    assert!(out.client_ok);
    assert_eq!(out.server_cn.as_deref(), Some("tartarusd-1"));
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() {
    let d = tmpdir("otherca");
    let (ca_dir, crt, key) = setup(&d, "tartarusd-1");
    // An attacker's own CA issues a cert claiming the same identity (and even host scope).
    let evil = d.join("evil");
    ca::init_ca(&evil, "Tartarus test CA").unwrap();
    let kind = CertKind::Client {
        tenant: TenantScope::All,
        role: Role::Admin,
    };
    ca::issue(&evil, &kind, "alice", &[], 30)
        .unwrap()
        .write(&d, "mallory")
        .unwrap();
    let srv = tls::server_config(
        &ca_dir.join("ca.crt"),
        ReloadingCert::load(&crt, &key).unwrap(),
    )
    .unwrap();
    // The client trusts the real server (so the refusal is the server's doing).
    let cli = tls::client_config(
        &ca_dir.join("ca.crt"),
        &d.join("mallory.crt"),
        &d.join("mallory.key"),
    )
    .unwrap();
    let out = handshake(srv, cli).await;
    assert!(
        out.server.is_err(),
        "server accepted a foreign client cert: {:?}",
        out.server
    );
    assert!(!out.client_ok);
}

#[tokio::test]
async fn no_client_cert_is_refused() {
    let d = tmpdir("nocert");
    let (ca_dir, crt, key) = setup(&d, "tartarusd-1");
    let srv = tls::server_config(
        &ca_dir.join("ca.crt"),
        ReloadingCert::load(&crt, &key).unwrap(),
    )
    .unwrap();
    let cli = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(tls::root_store(&ca_dir.join("ca.crt")).unwrap())
    .with_no_client_auth();
    let out = handshake(srv, Arc::new(cli)).await;
    assert!(out.server.is_err(), "{:?}", out.server);
    assert!(!out.client_ok);
}

#[tokio::test]
async fn server_cert_rotates_without_restart() {
    let d = tmpdir("rotate");
    let (ca_dir, crt, key) = setup(&d, "tartarusd-old");
    let cert = ReloadingCert::load(&crt, &key).unwrap();
    let srv = tls::server_config(&ca_dir.join("ca.crt"), cert.clone()).unwrap();
    // A fresh client config per handshake: a shared one would resume its TLS session, and a
    // resumed session does not send the server certificate again.
    let cli = || {
        tls::client_config(
            &ca_dir.join("ca.crt"),
            &d.join("alice.crt"),
            &d.join("alice.key"),
        )
        .unwrap()
    };
    let before = handshake(srv.clone(), cli()).await;
    assert_eq!(before.server_cn.as_deref(), Some("tartarusd-old"));

    // New files on disk: not served until reload.
    ca::issue(
        &ca_dir,
        &CertKind::Server,
        "tartarusd-new",
        &["localhost".into()],
        30,
    )
    .unwrap()
    .write(&d, "server")
    .unwrap();
    let still = handshake(srv.clone(), cli()).await;
    assert_eq!(still.server_cn.as_deref(), Some("tartarusd-old"));

    cert.reload().unwrap();
    let after = handshake(srv.clone(), cli()).await;
    assert_eq!(after.server_cn.as_deref(), Some("tartarusd-new"));
    assert!(after.server.unwrap().is_some());

    // A broken replacement is refused and the current cert stays.
    std::fs::write(&crt, "not a certificate").unwrap();
    assert!(cert.reload().is_err());
    let kept = handshake(srv, cli()).await;
    assert_eq!(kept.server_cn.as_deref(), Some("tartarusd-new"));
}

#[tokio::test]
async fn watcher_picks_up_a_new_cert() {
    let d = tmpdir("watch");
    let (ca_dir, crt, key) = setup(&d, "watch-old");
    let cert = ReloadingCert::load(&crt, &key).unwrap();
    let task = cert.watch(Duration::from_millis(50));
    let srv = tls::server_config(&ca_dir.join("ca.crt"), cert.clone()).unwrap();
    let cli = || {
        tls::client_config(
            &ca_dir.join("ca.crt"),
            &d.join("alice.crt"),
            &d.join("alice.key"),
        )
        .unwrap()
    };
    // mtime granularity: make sure the new files get a later stamp.
    tokio::time::sleep(Duration::from_millis(20)).await;
    ca::issue(
        &ca_dir,
        &CertKind::Server,
        "watch-new",
        &["localhost".into()],
        30,
    )
    .unwrap()
    .write(&d, "server")
    .unwrap();
    let mut cn = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        cn = handshake(srv.clone(), cli()).await.server_cn;
        if cn.as_deref() == Some("watch-new") {
            break;
        }
    }
    task.abort();
    assert_eq!(cn.as_deref(), Some("watch-new"));
}

#[test]
fn ca_files_and_refusals() {
    let d = tmpdir("cafiles");
    let ca_dir = d.join("ca");
    ca::init_ca(&ca_dir, "CA").unwrap();
    let mode = std::fs::metadata(ca_dir.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(matches!(
        ca::init_ca(&ca_dir, "CA"),
        Err(CaError::Exists(_))
    ));
    let issued = ca::issue(&ca_dir, &CertKind::Server, "s", &[], 1).unwrap();
    let (_, k) = issued.write(&d, "s").unwrap();
    assert_eq!(
        std::fs::metadata(k).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(matches!(
        ca::issue(&ca_dir, &CertKind::Server, "", &[], 1),
        Err(CaError::BadName(_))
    ));
    // A server certificate is not a client identity (no O / OU).
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer<'static>| c)
        .unwrap();
    assert!(matches!(
        tls::identity_from_peer_cert(&der),
        Err(TlsError::MissingField("O"))
    ));
    assert!(matches!(
        tls::identity_from_peer_cert(b"garbage"),
        Err(TlsError::BadCert)
    ));
    // Host-scope node certificates map to TenantScope::All.
    let node = CertKind::Client {
        tenant: TenantScope::All,
        role: Role::Operator,
    };
    let pem = ca::issue(&ca_dir, &node, "node-7", &[], 1)
        .unwrap()
        .cert_pem;
    let der: rustls::pki_types::CertificateDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).unwrap();
    let id = tls::identity_from_peer_cert(&der).unwrap();
    assert_eq!(
        (id.tenant, id.role, id.principal.as_str()),
        (TenantScope::All, Role::Operator, "node-7")
    );
}
