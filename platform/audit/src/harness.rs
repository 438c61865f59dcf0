//! A real rsyslogd for tests and benchmarks (feature `harness`): imtcp and imrelp on free
//! ports of 127.0.0.1, every message written by omfile to `<dir>/received.log` as
//! `MSGID|STRUCTURED-DATA|MSG`, with a direct main queue so that a message is in the file
//! before imrelp acknowledges it. Runs as any user: everything lives in the given directory.
//!
//! With [`SinkTls`] ([`Rsyslog::start_tls`]) it also listens with TLS: imtcp through the
//! GnuTLS stream driver (RFC 5425) and imrelp with `tls="on"`, both presenting the given
//! server certificate. imrelp then always requires a client certificate signed by the CA
//! (`tls.authmode="certvalid"`: librelp has no anonymous mode once it has a certificate);
//! imtcp requires one only with [`SinkTls::require_client_cert`] (`x509/certvalid`,
//! otherwise `anon`).

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Polls `f` every 20 ms until it is true; false after `timeout` (a hang guard).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Debian's rsyslogd.
pub const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// The TLS listeners' certificates (PEM files).
#[derive(Clone, Debug)]
pub struct SinkTls {
    /// The CA client certificates must chain to.
    pub ca: PathBuf,
    /// The server certificate and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// imtcp-TLS requires a client certificate too (imrelp-TLS always does).
    pub require_client_cert: bool,
}

const MODULE_DIRS: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/rsyslog",
    "/usr/lib/aarch64-linux-gnu/rsyslog",
];

fn have_module(name: &str) -> bool {
    MODULE_DIRS.iter().any(|d| Path::new(d).join(name).exists())
}

/// A real rsyslogd writing every message it takes to `out` as `MSGID|SD|MSG`.
pub struct Rsyslog {
    pub dir: PathBuf,
    pub tcp_port: u16,
    pub relp_port: u16,
    /// TLS listeners (0 without [`SinkTls`]).
    pub tls_port: u16,
    pub relp_tls_port: u16,
    pub out: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
}

impl Rsyslog {
    /// Whether rsyslogd and its RELP module are installed; the error says what to do.
    pub fn available() -> Result<(), String> {
        if !Path::new(RSYSLOGD).exists() {
            return Err(format!(
                "{RSYSLOGD} not found: run scripts/setup.sh (installs the Debian packages rsyslog and rsyslog-relp)"
            ));
        }
        if !have_module("imrelp.so") {
            return Err("rsyslog's imrelp module not found: run scripts/setup.sh (installs the Debian package rsyslog-relp)".into());
        }
        Ok(())
    }

    /// Whether rsyslog's GnuTLS stream driver is installed too.
    pub fn tls_available() -> Result<(), String> {
        Rsyslog::available()?;
        if !have_module("lmnsd_gtls.so") {
            return Err("rsyslog's GnuTLS stream driver (lmnsd_gtls.so) not found: run scripts/setup.sh (installs the Debian package rsyslog-gnutls)".into());
        }
        Ok(())
    }

    /// Panics (failing the test, with what to do) when rsyslog is missing.
    pub fn require() {
        if let Err(e) = Rsyslog::available() {
            panic!("{e}");
        }
    }

    /// Writes the configuration into `dir` and starts rsyslogd; panics on failure.
    pub fn start(dir: &Path) -> Rsyslog {
        let mut r = Rsyslog::configure(dir);
        r.spawn();
        r
    }

    /// [`start`](Self::start) with the TLS listeners too; panics on failure.
    pub fn start_tls(dir: &Path, tls: &SinkTls) -> Rsyslog {
        let mut r = Rsyslog::try_configure_with(dir, Some(tls)).unwrap_or_else(|e| panic!("{e}"));
        r.spawn();
        r
    }

    /// Writes the configuration into `dir` (ports chosen now) without starting rsyslogd;
    /// panics on failure.
    pub fn configure(dir: &Path) -> Rsyslog {
        Rsyslog::try_configure(dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`configure`](Self::configure) returning errors (for the benchmark, which must not panic).
    pub fn try_configure(dir: &Path) -> Result<Rsyslog, String> {
        Rsyslog::try_configure_with(dir, None)
    }

    /// [`try_configure`](Self::try_configure), with TLS listeners when `tls` is given.
    pub fn try_configure_with(dir: &Path, tls: Option<&SinkTls>) -> Result<Rsyslog, String> {
        match tls {
            Some(_) => Rsyslog::tls_available()?,
            None => Rsyslog::available()?,
        }
        let work = dir.join("rsyslog-work");
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        let (tcp_port, relp_port) = (free_port()?, free_port()?);
        let out = dir.join("received.log");
        let conf = dir.join("rsyslog.conf");
        let (mut global_tls, mut inputs_tls, mut tls_port, mut relp_tls_port) =
            (String::new(), String::new(), 0, 0);
        if let Some(t) = tls {
            (tls_port, relp_tls_port) = (free_port()?, free_port()?);
            let (ca, cert, key) = (t.ca.display(), t.cert.display(), t.key.display());
            global_tls = format!(
                r#" DefaultNetstreamDriverCAFile="{ca}" DefaultNetstreamDriverCertFile="{cert}" DefaultNetstreamDriverKeyFile="{key}""#
            );
            let auth = if t.require_client_cert {
                "x509/certvalid"
            } else {
                "anon"
            };
            inputs_tls = format!(
                r#"input(type="imtcp" port="{tls_port}" address="127.0.0.1" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="{auth}")
input(type="imrelp" port="{relp_tls_port}" address="127.0.0.1" tls="on" tls.cacert="{ca}" tls.mycert="{cert}" tls.myprivkey="{key}" tls.authmode="certvalid")
"#
            );
        }
        // A direct main queue: a message is written to the file before imrelp acknowledges
        // it, so a `kill -9` loses nothing rsyslog acknowledged.
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{work}" maxMessageSize="64k"{global_tls})
main_queue(queue.type="Direct")
module(load="imtcp")
module(load="imrelp")
input(type="imtcp" port="{tcp_port}" address="127.0.0.1")
input(type="imrelp" port="{relp_port}" address="127.0.0.1")
{inputs_tls}template(name="audit" type="string" string="%msgid%|%structured-data%|%msg%\n")
action(type="omfile" file="{out}" template="audit")
"#,
                work = work.display(),
                out = out.display(),
            ),
        )
        .map_err(|e| format!("{}: {e}", conf.display()))?;
        Ok(Rsyslog {
            dir: dir.to_path_buf(),
            tcp_port,
            relp_port,
            tls_port,
            relp_tls_port,
            out,
            conf,
            child: None,
        })
    }

    /// Starts rsyslogd and waits until both ports accept connections; panics on failure.
    pub fn spawn(&mut self) {
        self.try_spawn().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`spawn`](Self::spawn) returning errors.
    pub fn try_spawn(&mut self) -> Result<(), String> {
        let pid = self.dir.join("rsyslogd.pid");
        let _ = std::fs::remove_file(&pid);
        let stderr = self.dir.join("rsyslogd.stderr");
        let log =
            std::fs::File::create(&stderr).map_err(|e| format!("{}: {e}", stderr.display()))?;
        let out = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(&pid)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {RSYSLOGD}: {e}"))?;
        self.child = Some(child);
        let ports = [
            self.tcp_port,
            self.relp_port,
            self.tls_port,
            self.relp_tls_port,
        ];
        let up = wait_until(Duration::from_secs(20), || {
            ports
                .iter()
                .filter(|p| **p != 0)
                .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
        });
        if up {
            Ok(())
        } else {
            Err(format!("rsyslogd did not listen: {}", self.stderr()))
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("rsyslogd.stderr")).unwrap_or_default()
    }

    pub fn relp_addr(&self) -> String {
        format!("127.0.0.1:{}", self.relp_port)
    }

    pub fn tcp_addr(&self) -> String {
        format!("127.0.0.1:{}", self.tcp_port)
    }

    /// imtcp over TLS (RFC 5425); panics without [`SinkTls`].
    pub fn tls_addr(&self) -> String {
        assert_ne!(self.tls_port, 0, "rsyslog was started without TLS");
        format!("127.0.0.1:{}", self.tls_port)
    }

    /// imrelp over TLS; panics without [`SinkTls`].
    pub fn relp_tls_addr(&self) -> String {
        assert_ne!(self.relp_tls_port, 0, "rsyslog was started without TLS");
        format!("127.0.0.1:{}", self.relp_tls_port)
    }

    /// SIGKILL, no shutdown of any kind.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and files; panics on failure.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// [`restart`](Self::restart) returning errors.
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.kill9();
        self.try_spawn()
    }

    /// The lines written so far.
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// seq (from the MSGID `<seq>-<hash10>`) → number of times received.
    pub fn seq_counts(&self) -> BTreeMap<u64, u64> {
        let mut m = BTreeMap::new();
        for l in self.lines() {
            if let Some(seq) = l.split(['-', '|']).next().and_then(|s| s.parse().ok()) {
                *m.entry(seq).or_insert(0) += 1;
            }
        }
        m
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.kill9();
    }
}
