//! The forwarder over TLS against a real rsyslogd: imtcp with the GnuTLS stream driver
//! (`tls://`, RFC 5425) and imrelp with `tls="on"` (`relp+tls://`), certificates from CAs
//! made here with tartarus-auth's `ca` module.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{check_received, event, fwd_config, open_log, wait, TempDir};
use tartarus_audit::harness::{Rsyslog, SinkTls};
use tartarus_audit::*;
use tartarus_auth::ca::{self, CertKind};
use tartarus_auth::{Role, TenantScope};

/// A CA in `<dir>/<name>` with a server certificate for `sans` and a client certificate.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(parent: &Path, name: &str, sans: &[&str]) -> Pki {
        let dir = parent.join(name);
        ca::init_ca(&dir, &format!("{name} CA")).unwrap();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        ca::issue(&dir, &CertKind::Server, "syslog sink", &sans, 2)
            .unwrap()
            .write(&dir, "server")
            .unwrap();
        let client = CertKind::Client {
            tenant: TenantScope::All,
            role: Role::Admin,
        };
        ca::issue(&dir, &client, "tartarusd", &[], 2)
            .unwrap()
            .write(&dir, "client")
            .unwrap();
        Pki { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join(ca::CA_CERT)
    }

    /// rsyslog's listeners with this CA's server certificate, trusting its client certificates.
    fn sink(&self, require_client_cert: bool) -> SinkTls {
        SinkTls {
            ca: self.ca(),
            cert: self.dir.join("server.crt"),
            key: self.dir.join("server.key"),
            require_client_cert,
        }
    }

    /// Trusts this CA, presents no certificate.
    fn trust(&self) -> TlsConfig {
        TlsConfig::new(self.ca())
    }

    /// Trusts this CA and presents its client certificate.
    fn mutual(&self) -> TlsConfig {
        self.trust()
            .with_client_cert(self.dir.join("client.crt"), self.dir.join("client.key"))
    }
}

async fn drain(fwd: Forwarder, n: u64) -> Health {
    let fwd = Arc::new(fwd);
    let f = fwd.clone();
    assert!(
        wait(move || f.health().cursor == n).await,
        "stuck at {:?}",
        fwd.health()
    );
    Arc::into_inner(fwd).unwrap().stop().await.unwrap()
}

async fn wait_lines(rs: &Rsyslog, n: usize) {
    let out = rs.out.clone();
    assert!(
        wait(move || std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .count()
            >= n)
        .await,
        "rsyslog wrote {} of {n} lines",
        rs.lines().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_octet_counting_delivers_every_record_in_order() {
    let dir = TempDir::new("tls");
    let pki = Pki::new(dir.path(), "pki", &["localhost", "127.0.0.1"]);
    let rs = Rsyslog::start_tls(dir.path(), &pki.sink(false));
    let log = open_log(&dir);
    let n = 1000u64;
    for i in 0..n / 2 {
        log.append(event(i, "acme")).await.unwrap();
    }
    let transport = Transport::from_url(&format!("tls://{}", rs.tls_addr()), Some(pki.trust()));
    let fwd = Forwarder::start(fwd_config(&dir, transport.unwrap()), Some(log.subscribe()));
    let fwd = fwd.unwrap();
    // Half backlog, half live.
    for i in n / 2..n {
        log.append(event(i, "acme")).await.unwrap();
    }
    let h = drain(fwd, n).await;
    assert_eq!((h.sent, h.lag, h.errors), (n, 0, 0), "{h:?}");
    wait_lines(&rs, n as usize).await;
    assert_eq!(check_received(&rs, &dir, n), 0);
    // Nothing went to the plain listeners' file by another path: every line is TLS's.
    assert_eq!(rs.lines().len() as u64, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relp_tls_loses_nothing_across_kill_9_of_rsyslog() {
    let dir = TempDir::new("relp-tls-kill");
    let pki = Pki::new(dir.path(), "pki", &["localhost", "127.0.0.1"]);
    let mut rs = Rsyslog::start_tls(dir.path(), &pki.sink(true));
    let log = open_log(&dir);
    let n = 3000u64;
    for i in 0..n {
        log.append(event(i, "acme")).await.unwrap();
    }
    let url = format!("relp+tls://{}", rs.relp_tls_addr());
    let mut config = fwd_config(&dir, Transport::from_url(&url, Some(pki.mutual())).unwrap());
    // Slow enough that the kill lands mid-stream.
    config.rate_limit = Some((1000.0, 50));
    let fwd = Arc::new(Forwarder::start(config, Some(log.subscribe())).unwrap());

    let f = fwd.clone();
    assert!(wait(move || f.health().cursor >= 500).await);
    let at_kill = fwd.health();
    assert!(at_kill.connected && at_kill.cursor < n, "{at_kill:?}");
    rs.kill9();
    let f = fwd.clone();
    assert!(
        wait(move || f.health().errors >= 1).await,
        "the outage went unnoticed"
    );
    let during = fwd.health();
    assert!(!during.connected && during.lag > 0, "{during:?}");
    rs.restart();

    let h = drain(Arc::into_inner(fwd).unwrap(), n).await;
    assert!(h.reconnects >= 1, "{h:?}");
    // imrelp acknowledged each message only once it was in the file: nothing is missing,
    // and first copies are in order (re-sent ones are duplicates with the same MSGID).
    let dups = check_received(&rs, &dir, n);
    println!("relp+tls: {n} records, {dups} duplicates after the kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_with_a_certificate_from_another_ca_is_refused_and_nothing_is_sent() {
    let dir = TempDir::new("tls-wrong-ca");
    let ours = Pki::new(dir.path(), "ours", &["localhost", "127.0.0.1"]);
    let theirs = Pki::new(dir.path(), "theirs", &["localhost", "127.0.0.1"]);
    let rs = Rsyslog::start_tls(dir.path(), &theirs.sink(false));
    let log = open_log(&dir);
    let n = 50u64;
    for i in 0..n {
        log.append(event(i, "acme")).await.unwrap();
    }
    let cursor_file = dir.path().join("audit.cursor");
    for url in [
        format!("relp+tls://{}", rs.relp_tls_addr()),
        format!("tls://{}", rs.tls_addr()),
    ] {
        // Trusting our CA only (and presenting theirs-signed client certificate, so that
        // only the server's certificate is at fault).
        let mut tls = theirs.mutual();
        tls.ca = ours.ca();
        let config = fwd_config(&dir, Transport::from_url(&url, Some(tls)).unwrap());
        let fwd = Arc::new(Forwarder::start(config, Some(log.subscribe())).unwrap());
        let f = fwd.clone();
        assert!(wait(move || f.health().errors >= 2).await);
        let h = Arc::into_inner(fwd).unwrap().stop().await.unwrap();
        assert_eq!(
            (h.connected, h.cursor, h.sent, h.lag, h.reconnects),
            (false, 0, 0, n, 0),
            "{url}: {h:?}"
        );
        let err = h.last_error.unwrap();
        assert!(
            err.contains("TLS handshake with 127.0.0.1") && err.contains("UnknownIssuer"),
            "{url}: {err}"
        );
        assert!(h.backlog_bytes > 0);
        assert!(!cursor_file.exists(), "{url}: the cursor moved");
    }
    assert!(rs.lines().is_empty(), "{:?}", rs.lines());

    // The backlog is intact: trusting the right CA, everything goes out.
    let url = format!("relp+tls://{}", rs.relp_tls_addr());
    let config = fwd_config(
        &dir,
        Transport::from_url(&url, Some(theirs.mutual())).unwrap(),
    );
    let h = drain(Forwarder::start(config, Some(log.subscribe())).unwrap(), n).await;
    assert_eq!((h.sent, h.errors), (n, 0));
    assert_eq!(check_received(&rs, &dir, n), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sink_refusing_our_client_certificate_gets_nothing_counted_as_sent() {
    let dir = TempDir::new("tls-client-cert");
    let ours = Pki::new(dir.path(), "ours", &["localhost"]);
    let other = Pki::new(dir.path(), "other", &["localhost"]);
    // Requires client certificates from `ours`; its certificate names only `localhost`.
    let rs = Rsyslog::start_tls(dir.path(), &ours.sink(true));
    let log = open_log(&dir);
    let n = 30u64;
    for i in 0..n {
        log.append(event(i, "acme")).await.unwrap();
    }
    let url = format!("tls://{}", rs.tls_addr());

    // By IP, the sink's certificate does not match the name.
    let config = fwd_config(
        &dir,
        Transport::from_url(&url, Some(ours.mutual())).unwrap(),
    );
    let fwd = Arc::new(Forwarder::start(config, Some(log.subscribe())).unwrap());
    let f = fwd.clone();
    assert!(wait(move || f.health().errors >= 1).await);
    let h = Arc::into_inner(fwd).unwrap().stop().await.unwrap();
    let err = h.last_error.clone().unwrap();
    assert!(err.contains("not valid for name \"127.0.0.1\""), "{err}");
    assert_eq!((h.sent, h.cursor), (0, 0));

    // The right name, but a client certificate the sink does not trust: rsyslog drops the
    // session right after the handshake, before the forwarder writes (nothing would tell
    // it that written records were thrown away).
    let mut tls = other.mutual();
    tls.ca = ours.ca();
    tls.server_name = Some("localhost".into());
    let config = fwd_config(&dir, Transport::from_url(&url, Some(tls)).unwrap());
    let fwd = Arc::new(Forwarder::start(config, Some(log.subscribe())).unwrap());
    let f = fwd.clone();
    assert!(wait(move || f.health().errors >= 2).await);
    let h = Arc::into_inner(fwd).unwrap().stop().await.unwrap();
    assert_eq!((h.sent, h.cursor, h.lag), (0, 0, n), "{h:?}");
    assert!(
        h.last_error
            .as_deref()
            .unwrap()
            .contains("ended the TLS session right after the handshake"),
        "{h:?}"
    );
    assert!(!dir.path().join("audit.cursor").exists());

    // Our own client certificate and the name override: mutual TLS delivers.
    let mut tls = ours.mutual();
    tls.server_name = Some("localhost".into());
    let config = fwd_config(&dir, Transport::from_url(&url, Some(tls)).unwrap());
    let h = drain(Forwarder::start(config, Some(log.subscribe())).unwrap(), n).await;
    assert_eq!(h.sent, n);
    wait_lines(&rs, n as usize).await;
    assert_eq!(check_received(&rs, &dir, n), 0);
}

#[test]
fn urls_and_settings_are_checked_at_start() {
    let tls = || Some(TlsConfig::new("/nonexistent/ca.pem"));
    for (url, want) in [
        ("tls://127.0.0.1:6514", "ok"),
        ("relp+tls://logs.example:2514/", "ok"),
        ("tls://127.0.0.1", "url"),
        ("tls://", "url"),
        ("udp://127.0.0.1:514", "url"),
        ("relp+tls://h:1/path", "url"),
    ] {
        let got = match Transport::from_url(url, tls()) {
            Ok(_) => "ok",
            Err(ForwardError::Url(_)) => "url",
            Err(e) => panic!("{url}: {e}"),
        };
        assert_eq!(got, want, "{url}");
    }
    assert!(matches!(
        Transport::from_url("relp+tls://h:1", None),
        Err(ForwardError::NoCa(_))
    ));
    assert!(matches!(
        Transport::from_url("relp://h:1", tls()),
        Err(ForwardError::TlsUnused(_))
    ));
    assert_eq!(
        Transport::from_url("relp://h:1/", None).unwrap(),
        Transport::Relp("h:1".into())
    );
    // A CA file that cannot be read stops the forwarder at start, naming the file.
    let dir = TempDir::new("tls-bad-ca");
    let _log = open_log(&dir);
    let t = Transport::from_url("tls://127.0.0.1:6514", tls()).unwrap();
    let err = Forwarder::start(fwd_config(&dir, t), None).err().unwrap();
    assert!(matches!(err, ForwardError::Tls(_)), "{err}");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}
