//! Integration-test harness for Tartarus: starts real `tartarus-vmm` processes on `/dev/kvm`,
//! drives them over the API socket and reads the serial output of small test guests.
//!
//! - [`Vmm`] / [`VmmBuilder`]: one VMM process in its own temporary directory.
//! - [`http`]: a minimal HTTP/1.1 client over a Unix socket.
//! - [`guest`]: building the test guests once per process and parsing what they print.
//!
//! Running:
//! ```text
//! cargo build --workspace --bins            # the tests start target/<profile>/tartarus-vmm
//! cargo test -p tartarus-tests -- --test-threads=2
//! ```
//! The test guests are built with make on first use (once per test process).
//!
//! Environment:
//! - `TARTARUS_VMM`: path of the `tartarus-vmm` binary (default: next to the test executable).
//! - `TARTARUS_GUESTS`: directory with prebuilt guests (default: built with make into
//!   `<repo>/build/guests`).
//! - `TARTARUS_KEEP_TMP=1`: keep the temporary directory of a failed test.

pub mod debugfs;
pub mod guest;
pub mod http;
pub mod jail;
pub mod net;
pub mod platform;
pub mod registry;
pub mod stress;
pub mod vmm;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use guest::{guests, GuestReport, Guests};
pub use http::Response;
pub use vmm::{Vmm, VmmBuilder, GUEST_TIMEOUT, SOCKET_TIMEOUT};

/// Name of the VMM binary.
pub const VMM_BIN: &str = "tartarus-vmm";

/// The workspace root (the parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

/// Runs a build script of the repository (e.g. `kernels/build-kernel.sh`) and returns the path
/// it prints as `<key>=<path>` on stdout. Panics with the script's stderr if it fails.
pub fn script_output(script: &str, args: &[&str], key: &str) -> PathBuf {
    let out = std::process::Command::new(repo_root().join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{key}=");
    let path = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{script} printed no {key}= line:\n{stdout}"));
    PathBuf::from(path)
}

/// Builds tests/linux-progs/vecstate.c (static, glibc) as `<dir>/vecstate` and returns its path.
pub fn build_vecstate(dir: &Path) -> PathBuf {
    let src = repo_root().join("tests/linux-progs/vecstate.c");
    let out = dir.join("vecstate");
    let status = std::process::Command::new("cc")
        .args(["-static", "-O2", "-mgeneral-regs-only", "-s", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("cannot run cc: {e}"));
    assert!(status.success(), "cc {} failed", src.display());
    out
}

/// Where the VMM binary would be for an executable in `exe_dir`: the same directory, or its
/// parent if the executable is a test in `target/<profile>/deps`.
pub fn vmm_binary_near(exe_dir: &Path) -> PathBuf {
    let dir = if exe_dir.file_name().is_some_and(|n| n == "deps") {
        exe_dir.parent().unwrap_or(exe_dir)
    } else {
        exe_dir
    };
    dir.join(VMM_BIN)
}

/// The `tartarus-vmm` binary to test: `$TARTARUS_VMM`, or next to the current executable.
/// Panics with a hint if it has not been built.
pub fn vmm_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TARTARUS_VMM") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "TARTARUS_VMM={} is not a file", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let p = vmm_binary_near(exe.parent().expect("executable has a directory"));
    assert!(
        p.is_file(),
        "tartarus-vmm not built: run `cargo build --workspace --bins` first (looked for {})",
        p.display()
    );
    p
}

/// Another workspace binary (e.g. `tartarus-uffd-handler`, `tartarusd`), found where
/// `tartarus-vmm` is (next to `$TARTARUS_VMM`, or next to the current executable). Only the
/// binary asked for has to be built.
pub fn bin_path(name: &str) -> PathBuf {
    let vmm = match std::env::var_os("TARTARUS_VMM") {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            vmm_binary_near(exe.parent().expect("executable has a directory"))
        }
    };
    let p = vmm.with_file_name(name);
    assert!(
        p.is_file(),
        "{name} not built: run `cargo build --workspace --bins` first (looked for {})",
        p.display()
    );
    p
}

/// A fresh directory under `std::env::temp_dir()`, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// Creates `<tmp>/tartarus-<tag>-<pid>-<n>-<nanos>`.
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("tartarus-{tag}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path, keep: false }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Keeps the directory if `TARTARUS_KEEP_TMP` is set (called for failed tests).
    pub fn keep_if_requested(&mut self) {
        if std::env::var_os("TARTARUS_KEEP_TMP").is_some() {
            self.keep = true;
            eprintln!("(kept {})", self.path.display());
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_next_to_deps() {
        assert_eq!(
            vmm_binary_near(Path::new("/t/target/debug/deps")),
            PathBuf::from("/t/target/debug/tartarus-vmm")
        );
        assert_eq!(
            vmm_binary_near(Path::new("/t/target/release")),
            PathBuf::from("/t/target/release/tartarus-vmm")
        );
    }

    #[test]
    fn temp_dirs_are_unique_and_removed() {
        let a = TempDir::new("unit");
        let b = TempDir::new("unit");
        assert_ne!(a.path(), b.path());
        let p = a.path().to_path_buf();
        std::fs::write(a.join("f"), b"x").unwrap();
        drop(a);
        assert!(!p.exists());
    }
}
