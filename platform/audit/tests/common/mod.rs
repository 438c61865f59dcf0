//! Test helpers: temporary directories, events; the real rsyslogd is the crate's `harness`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[allow(unused_imports)]
pub use tartarus_audit::harness::{wait_until, Rsyslog};
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
