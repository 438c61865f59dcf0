//! Test helpers: temporary directories, events, and a real rsyslogd (imtcp + imrelp →
//! omfile) on 127.0.0.1.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tartarus_audit::{AuditEvent, Outcome};

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "tartarus-audit-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Event number `i`, for tenant `tenant`.
pub fn event(i: u64, tenant: &str) -> AuditEvent {
    let result = match i % 3 {
        0 => Outcome::Ok,
        1 => Outcome::Denied,
        _ => Outcome::Error(format!("exec failed\nline two of {i}")),
    };
    AuditEvent::now(
        format!("req-{i}"),
        tenant,
        format!("user-{}", i % 7),
        "sandbox.create",
        format!("sandbox/sb-{i}"),
        result,
        "127.0.0.1:40000",
    )
}

/// Polls `f` every 20 ms until it is true; false after `timeout` (a hang guard, not a
/// performance assertion).
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

pub const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real rsyslogd writing every message it takes to `out` as `MSGID|SD|MSG`.
pub struct Rsyslog {
    pub dir: PathBuf,
    pub tcp_port: u16,
    pub relp_port: u16,
    pub out: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
}

impl Rsyslog {
    /// Fails the test (with what to do) when rsyslog or its RELP module is missing.
    pub fn require() {
        assert!(
            Path::new(RSYSLOGD).exists(),
            "{RSYSLOGD} not found: run scripts/setup.sh (installs the Debian packages rsyslog and rsyslog-relp)"
        );
        let relp = [
            "/usr/lib/x86_64-linux-gnu/rsyslog/imrelp.so",
            "/usr/lib/aarch64-linux-gnu/rsyslog/imrelp.so",
        ];
        assert!(
            relp.iter().any(|p| Path::new(p).exists()),
            "rsyslog's imrelp module not found: run scripts/setup.sh (installs the Debian package rsyslog-relp)"
        );
    }

    /// Writes the configuration into `dir` and starts rsyslogd.
    pub fn start(dir: &Path) -> Rsyslog {
        let mut r = Rsyslog::configure(dir);
        r.spawn();
        r
    }

    /// Writes the configuration into `dir` (ports chosen now) without starting rsyslogd.
    pub fn configure(dir: &Path) -> Rsyslog {
        Rsyslog::require();
        let work = dir.join("rsyslog-work");
        std::fs::create_dir_all(&work).unwrap();
        let (tcp_port, relp_port) = (free_port(), free_port());
        let out = dir.join("received.log");
        let conf = dir.join("rsyslog.conf");
        // A direct main queue: a message is written to the file before imrelp acknowledges
        // it, so a `kill -9` loses nothing rsyslog acknowledged.
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{work}" maxMessageSize="64k")
main_queue(queue.type="Direct")
module(load="imtcp")
module(load="imrelp")
input(type="imtcp" port="{tcp_port}" address="127.0.0.1")
input(type="imrelp" port="{relp_port}" address="127.0.0.1")
template(name="audit" type="string" string="%msgid%|%structured-data%|%msg%\n")
action(type="omfile" file="{out}" template="audit")
"#,
                work = work.display(),
                out = out.display(),
            ),
        )
        .unwrap();
        Rsyslog {
            dir: dir.to_path_buf(),
            tcp_port,
            relp_port,
            out,
            conf,
            child: None,
        }
    }

    /// Starts rsyslogd and waits until both ports accept connections.
    pub fn spawn(&mut self) {
        let pid = self.dir.join("rsyslogd.pid");
        let _ = std::fs::remove_file(&pid);
        let log = std::fs::File::create(self.dir.join("rsyslogd.stderr")).unwrap();
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(&pid)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start rsyslogd");
        self.child = Some(child);
        let ports = [self.tcp_port, self.relp_port];
        let up = wait_until(Duration::from_secs(20), || {
            ports
                .iter()
                .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
        });
        assert!(up, "rsyslogd did not listen: {}", self.stderr());
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

    /// SIGKILL, no shutdown of any kind.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and files.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
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
