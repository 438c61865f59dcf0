//! The purpose-built test guests: building them once per process, and reading what they print.

use std::fs::{self, File};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::repo_root;

const MIB: u64 = 1024 * 1024;

/// Paths of the built test guests.
#[derive(Clone, Debug)]
pub struct Guests {
    pub dir: PathBuf,
    /// The hello guest as an ELF (PVH/64-bit entry) image.
    pub hello_elf: PathBuf,
    /// The hello guest as a bzImage.
    pub hello_bzimage: PathBuf,
}

impl Guests {
    /// Any built guest by file name, e.g. `virtio_blk.elf`.
    pub fn get(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn in_dir(dir: PathBuf) -> Guests {
        Guests {
            hello_elf: dir.join("hello.elf"),
            hello_bzimage: dir.join("hello.bzImage"),
            dir,
        }
    }
}

/// The default output directory of the guest build: `<repo>/build/guests`.
pub fn default_guest_dir() -> PathBuf {
    repo_root().join("build").join("guests")
}

/// Builds the test guests into `out` with `make -s -C <repo>/tests/guests OUT=<out>`.
///
/// Concurrent builds (several test binaries, a benchmark) are serialised with a lock file.
pub fn build_guests(out: &Path) -> Result<Guests, String> {
    let src = repo_root().join("tests").join("guests");
    if !src.join("Makefile").exists()
        && !src.join("makefile").exists()
        && !src.join("GNUmakefile").exists()
    {
        return Err(format!(
            "no Makefile in {}: the test guests are not written yet",
            src.display()
        ));
    }
    fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let lock_path = out.join(".build.lock");
    let lock = File::create(&lock_path)
        .map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    // SAFETY: flock on a file descriptor we own; it is released when `lock` is closed.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    if rc != 0 {
        return Err(format!(
            "flock {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        ));
    }
    let output = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(&src)
        .arg(format!("OUT={}", out.display()))
        .output()
        .map_err(|e| format!("cannot run make: {e}"))?;
    drop(lock);
    if !output.status.success() {
        return Err(format!(
            "`make -s -C {} OUT={}` failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            src.display(),
            out.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let guests = Guests::in_dir(out.to_path_buf());
    for p in [&guests.hello_elf, &guests.hello_bzimage] {
        if !p.is_file() {
            return Err(format!(
                "guest build succeeded but {} is missing",
                p.display()
            ));
        }
    }
    Ok(guests)
}

/// The test guests, built on first use (once per process) into [`default_guest_dir`].
///
/// `TARTARUS_GUESTS=<dir>` uses prebuilt guests from `<dir>` instead. Panics if the build fails.
pub fn guests() -> &'static Guests {
    static GUESTS: OnceLock<Result<Guests, String>> = OnceLock::new();
    let r = GUESTS.get_or_init(|| match std::env::var_os("TARTARUS_GUESTS") {
        Some(dir) => Ok(Guests::in_dir(PathBuf::from(dir))),
        None => build_guests(&default_guest_dir()),
    });
    match r {
        Ok(g) => g,
        Err(e) => panic!("test guests unavailable: {e}"),
    }
}

/// What a hello guest reported on its serial console.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestReport {
    pub hello: bool,
    pub boot_args: Option<String>,
    pub e820_entries: Option<u32>,
    pub ram_bytes: Option<u64>,
    pub cpus: Option<u32>,
    pub waiting_for_cad: bool,
    pub cad_received: bool,
    pub resetting: bool,
}

impl GuestReport {
    /// Parses the serial output of a hello guest (unknown lines are ignored).
    pub fn parse(output: &str) -> GuestReport {
        let mut r = GuestReport::default();
        for line in output.lines() {
            let line = line.trim_end_matches('\r');
            if line == "tartarus-guest: hello" {
                r.hello = true;
            } else if let Some(args) = line.strip_prefix("boot_args:") {
                r.boot_args = Some(args.trim().to_string());
            } else if let Some(rest) = line.strip_prefix("e820:") {
                for kv in rest.split_whitespace() {
                    match kv.split_once('=') {
                        Some(("entries", v)) => r.e820_entries = v.parse().ok(),
                        Some(("ram_bytes", v)) => r.ram_bytes = v.parse().ok(),
                        _ => {}
                    }
                }
            } else if let Some(rest) = line.strip_prefix("mptable:") {
                if let Some(v) = rest.trim().strip_prefix("cpus=") {
                    r.cpus = v.trim().parse().ok();
                }
            } else if line == "waiting for ctrl-alt-del" {
                r.waiting_for_cad = true;
            } else if line == "ctrl-alt-del received" {
                r.cad_received = true;
            } else if line == "resetting" {
                r.resetting = true;
            }
        }
        r
    }

    /// Checks a complete hello run: the greeting, that the kernel command line contains
    /// `boot_args`, that the RAM is within `mem_mib - 1 MiB ..= mem_mib`, the CPU count and the
    /// final reset. Returns a description of every mismatch.
    pub fn check(&self, boot_args: &str, mem_mib: u64, vcpus: u32) -> Result<(), String> {
        let mut errors = Vec::new();
        if !self.hello {
            errors.push("no `tartarus-guest: hello` line".to_string());
        }
        match &self.boot_args {
            None => errors.push("no `boot_args:` line".to_string()),
            Some(a) if !a.contains(boot_args) => {
                errors.push(format!("boot_args {a:?} does not contain {boot_args:?}"))
            }
            Some(_) => {}
        }
        let mem = mem_mib * MIB;
        match self.ram_bytes {
            None => errors.push("no parsable `e820: ... ram_bytes=` line".to_string()),
            Some(b) if b > mem || b < mem.saturating_sub(MIB) => errors.push(format!(
                "ram_bytes={b} not within {}..={mem} ({mem_mib} MiB minus at most 1 MiB)",
                mem.saturating_sub(MIB)
            )),
            Some(_) => {}
        }
        match self.e820_entries {
            None => errors.push("no `e820: entries=` value".to_string()),
            Some(0) => errors.push("e820 entries=0".to_string()),
            Some(_) => {}
        }
        match self.cpus {
            None => errors.push("no parsable `mptable: cpus=` line".to_string()),
            Some(c) if c != vcpus => errors.push(format!("mptable cpus={c}, expected {vcpus}")),
            Some(_) => {}
        }
        if !self.resetting {
            errors.push("no `resetting` line".to_string());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str =
        "tartarus-guest: hello\r\nboot_args: foo=bar console=ttyS0 reboot=k panic=1\r\n\
e820: entries=3 ram_bytes=133562368\r\nmptable: cpus=2\r\nresetting\r\n";

    #[test]
    fn parse_and_check() {
        let r = GuestReport::parse(SAMPLE);
        assert!(r.hello && r.resetting && !r.waiting_for_cad);
        assert_eq!(
            r.boot_args.as_deref(),
            Some("foo=bar console=ttyS0 reboot=k panic=1")
        );
        assert_eq!(r.e820_entries, Some(3));
        assert_eq!(r.ram_bytes, Some(133562368));
        assert_eq!(r.cpus, Some(2));
        r.check("foo=bar", 128, 2).unwrap();
        assert!(r.check("foo=bar", 128, 1).unwrap_err().contains("cpus=2"));
        assert!(r.check("x=y", 128, 2).unwrap_err().contains("x=y"));
        assert!(r
            .check("foo=bar", 256, 2)
            .unwrap_err()
            .contains("ram_bytes"));
    }
}
