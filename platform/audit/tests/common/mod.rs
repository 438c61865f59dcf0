//! Test helpers: temporary directories, events; the real rsyslogd is the crate's `harness`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[allow(unused_imports)]
pub use tartarus_audit::harness::{wait_until, Rsyslog};
use tartarus_audit::{
    query, AuditEvent, AuditLog, Filter, ForwarderConfig, LogConfig, Outcome, Transport,
};

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

pub const HANG_GUARD: Duration = Duration::from_secs(180);

pub fn open_log(dir: &TempDir) -> AuditLog {
    let (log, _) = AuditLog::open(LogConfig::new(
        dir.path().join("audit.log"),
        dir.path().join("audit.key"),
    ))
    .unwrap();
    log
}

pub fn fwd_config(dir: &TempDir, transport: Transport) -> ForwarderConfig {
    let mut c = ForwarderConfig::new(
        dir.path().join("audit.log"),
        dir.path().join("audit.cursor"),
        transport,
    );
    c.backoff_min = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(500);
    c.timeout = Duration::from_secs(10);
    c.syslog.hostname = "testhost".into();
    c
}

/// Waits (off the runtime's worker) until `f` holds.
pub async fn wait(f: impl FnMut() -> bool + Send + 'static) -> bool {
    tokio::task::spawn_blocking(move || wait_until(HANG_GUARD, f))
        .await
        .unwrap()
}

/// Every record of the log: seq → its MSGID.
pub fn msgids(dir: &TempDir) -> BTreeMap<u64, String> {
    query(&dir.path().join("audit.log"), Filter::default())
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (r.seq, format!("{}-{}", r.seq, &r.hash[..10]))
        })
        .collect()
}

/// Checks that rsyslog's file holds every record, first copies in order, every copy with
/// the record's own MSGID; returns the number of duplicates.
pub fn check_received(rs: &Rsyslog, dir: &TempDir, n: u64) -> u64 {
    let ids = msgids(dir);
    assert_eq!(ids.len() as u64, n);
    let mut seen = BTreeMap::new();
    let mut last_first = 0;
    for line in rs.lines() {
        let msgid = line.split('|').next().unwrap();
        let seq: u64 = msgid.split('-').next().unwrap().parse().unwrap();
        assert_eq!(
            Some(&msgid.to_string()),
            ids.get(&seq),
            "a copy of {seq} with another MSGID"
        );
        let count = seen.entry(seq).or_insert(0u64);
        if *count == 0 {
            assert!(
                seq > last_first,
                "record {seq} first arrived after {last_first}"
            );
            last_first = seq;
        }
        *count += 1;
    }
    let missing: Vec<u64> = (1..=n).filter(|s| !seen.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "{} records never arrived, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    seen.values().map(|c| c - 1).sum()
}
