//! `ca init` + `ca issue` with the real binary, then real TLS handshakes of the CLI's client
//! against a stand-in daemon whose TCP listener uses tartarus-auth's `tls::server_config`
//! (client certificates required): requests, upgrades (port-forward), and refusals.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn run(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tartarus"))
        .args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("TARTARUS_HOST")
        .env_remove("TARTARUS_PROFILE")
        .env_remove("TARTARUS_API_KEY")
        .env_remove("TARTARUS_TLS_CA")
        .env_remove("TARTARUS_TLS_CERT")
        .env_remove("TARTARUS_TLS_KEY")
        .env_remove("TARTARUS_CA_DIR")
        .output()
        .unwrap()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "{}", err(o));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Pki {
    home: std::path::PathBuf,
    ca: std::path::PathBuf,
    other: std::path::PathBuf,
}

/// Two CAs made with the CLI: `ca` (server cert for 127.0.0.1 + a client cert) and `other`
/// (a client certificate claiming the host admin).
fn pki() -> Pki {
    let home = common::temp_dir("tls-home");
    let ca = home.join("ca");
    let other = home.join("other");
    ok(&run(
        &home,
        &["ca", "init", "--dir", s(&ca), "--cn", "Test CA"],
    ));
    // A second init refuses to replace the CA.
    let again = run(&home, &["ca", "init", "--dir", s(&ca)]);
    assert_ne!(again.status.code(), Some(0));
    assert!(err(&again).contains("already exists"), "{}", err(&again));
    ok(&run(
        &home,
        &[
            "ca",
            "issue",
            "server",
            "tartarusd",
            "--san",
            "127.0.0.1",
            "--san",
            "localhost",
            "--dir",
            s(&ca),
        ],
    ));
    let o = run(
        &home,
        &[
            "-o",
            "json",
            "ca",
            "issue",
            "client",
            "alice",
            "--tenant",
            "acme",
            "--role",
            "developer",
            "--days",
            "7",
            "--dir",
            s(&ca),
            "--out",
            s(&home.join("alice")),
        ],
    );
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["tenant"].as_str(), v["role"].as_str(), v["days"].as_u64()),
        (Some("acme"), Some("developer"), Some(7))
    );
    ok(&run(&home, &["ca", "init", "--dir", s(&other)]));
    ok(&run(
        &home,
        &[
            "ca",
            "issue",
            "client",
            "mallory",
            "--tenant",
            "*",
            "--role",
            "admin",
            "--dir",
            s(&other),
        ],
    ));
    // Bad values are usage errors.
    let o = run(
        &home,
        &[
            "ca",
            "issue",
            "client",
            "x",
            "--tenant",
            "acme",
            "--role",
            "root",
            "--dir",
            s(&ca),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    let o = run(
        &home,
        &["ca", "issue", "server", "x", "--dir", s(&home.join("nope"))],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("ca init"), "{}", err(&o));
    Pki { home, ca, other }
}

fn server(p: &Pki) -> common::StandIn {
    let cert = tartarus_auth::tls::ReloadingCert::load(
        &p.ca.join("tartarusd.crt"),
        &p.ca.join("tartarusd.key"),
    )
    .unwrap();
    let cfg = tartarus_auth::tls::server_config(&p.ca.join("ca.crt"), cert).unwrap();
    common::start_tls(cfg)
}

#[test]
fn issued_files_and_modes() {
    use std::os::unix::fs::PermissionsExt;
    let p = pki();
    for f in [
        p.ca.join("ca.key"),
        p.ca.join("tartarusd.key"),
        p.home.join("alice/alice.key"),
    ] {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    // The client certificate carries the identity tartarus-auth reads back.
    let pem = std::fs::read(p.home.join("alice/alice.crt")).unwrap();
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let der = CertificateDer::from_pem_slice(&pem).unwrap();
    let id = tartarus_auth::tls::identity_from_peer_cert(&der).unwrap();
    assert_eq!(
        (id.principal.as_str(), id.tenant.as_str(), id.role.as_str()),
        ("alice", "acme", "developer")
    );
    let _ = std::fs::remove_dir_all(&p.home);
}

#[test]
fn mtls_requests_and_refusals() {
    let p = pki();
    let srv = server(&p);
    let host = srv.https_host();
    let ca = p.ca.join("ca.crt");
    let (alice_crt, alice_key) = (
        p.home.join("alice/alice.crt"),
        p.home.join("alice/alice.key"),
    );
    // The good client certificate: a real handshake, then the request (with the API key too).
    let key = tartarus_auth::apikey::ApiKey::generate().unwrap().expose();
    let o = run(
        &p.home,
        &[
            "--host",
            &host,
            "--tls-ca",
            s(&ca),
            "--tls-cert",
            s(&alice_crt),
            "--tls-key",
            s(&alice_key),
            "--api-key",
            &key,
            "health",
        ],
    );
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("https://{}", srv.tcp)));
    assert_eq!(
        srv.last("GET", "/health").unwrap().authorization,
        Some(format!("Bearer {key}"))
    );

    // The same through the environment and a profile (relative paths beside the config file).
    let cfg_dir = p.home.join(".config/tartarus");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    std::fs::copy(&ca, cfg_dir.join("ca.crt")).unwrap();
    std::fs::write(
        cfg_dir.join("config.toml"),
        format!(
            "[profiles.tls]\nhost = \"{host}\"\ntls_ca = \"ca.crt\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            s(&alice_crt),
            s(&alice_key)
        ),
    )
    .unwrap();
    ok(&run(&p.home, &["--profile", "tls", "template", "ls"]));
    assert!(srv.last("GET", "/templates").is_some());

    // A client certificate of another CA (claiming the host admin) is refused by the server.
    let n = srv.requests().len();
    let o = run(
        &p.home,
        &[
            "--host",
            &host,
            "--tls-ca",
            s(&ca),
            "--tls-cert",
            s(&p.other.join("mallory.crt")),
            "--tls-key",
            s(&p.other.join("mallory.key")),
            "health",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    // No client certificate at all: refused too.
    let o2 = run(&p.home, &["--host", &host, "--tls-ca", s(&ca), "health"]);
    assert_eq!(o2.status.code(), Some(1), "{}", err(&o2));
    assert_eq!(srv.requests().len(), n, "a refused client reached the API");
    assert!(srv.tls_failures().len() >= 2, "{:?}", srv.tls_failures());

    // A server the CA did not sign is refused by the client, with a hint.
    let o = run(
        &p.home,
        &[
            "--host",
            &host,
            "--tls-ca",
            s(&p.other.join("ca.crt")),
            "--tls-cert",
            s(&alice_crt),
            "--tls-key",
            s(&alice_key),
            "health",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let e = err(&o);
    assert!(
        e.contains("TLS handshake") && e.contains("hint: check --tls-ca"),
        "{e}"
    );
    // Half a client pair is a usage error.
    let o = run(
        &p.home,
        &[
            "--host",
            &host,
            "--tls-ca",
            s(&ca),
            "--tls-cert",
            s(&alice_crt),
            "health",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    let _ = std::fs::remove_dir_all(&p.home);
}

#[test]
fn port_forward_upgrade_over_mtls() {
    let p = pki();
    let srv = server(&p);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tartarus"))
        .args(["--host", &srv.https_host(), "port-forward", "sb-1"])
        .arg(format!("{port}:80"))
        .env("XDG_CONFIG_HOME", p.home.join("none"))
        .env("TARTARUS_TLS_CA", p.ca.join("ca.crt"))
        .env("TARTARUS_TLS_CERT", p.home.join("alice/alice.crt"))
        .env("TARTARUS_TLS_KEY", p.home.join("alice/alice.key"))
        .env_remove("TARTARUS_API_KEY")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut conn = None;
    for _ in 0..100 {
        if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            conn = Some(c);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut conn = conn.expect("port-forward did not listen");
    conn.write_all(b"over tls").unwrap();
    let mut buf = [0u8; 8];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"over tls");
    assert!(srv.last("GET", "/sandboxes/sb-1/ports/80").is_some());
    // SAFETY: SIGINT to the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let _ = std::fs::remove_dir_all(&p.home);
}

#[test]
fn interactive_exec_over_mtls() {
    let p = pki();
    let srv = server(&p);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tartarus"))
        .args(["--host", &srv.https_host(), "exec", "-i", "sb-1", "--"])
        .args(["sh", "-c", "cat; exit 3"])
        .env("XDG_CONFIG_HOME", p.home.join("none"))
        .env("TARTARUS_TLS_CA", p.ca.join("ca.crt"))
        .env("TARTARUS_TLS_CERT", p.home.join("alice/alice.crt"))
        .env("TARTARUS_TLS_KEY", p.home.join("alice/alice.key"))
        .env_remove("TARTARUS_API_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through the agent\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    assert_eq!(o.stdout, b"through the agent\n");
    assert!(srv.last("GET", "/sandboxes/sb-1/agent").is_some());
    let _ = std::fs::remove_dir_all(&p.home);
}
