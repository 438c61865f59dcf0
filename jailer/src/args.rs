//! The command line (Firecracker's jailer flags) and its validation.
//!
//! [`Cli::validate`] checks every argument against the host without changing anything, and
//! turns the command line into a [`JailConfig`]: after it succeeds, every later step has what
//! it needs; if it fails, nothing has been created.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use clap::Parser;

use crate::cgroup::{self, CgroupPlan};
use crate::devices::{self, HostDevices};
use crate::elf::{self, ElfError, Linkage};
use crate::namespaces;
use crate::rlimits::{self, ResourceLimit};

/// The default base directory of the jails (Firecracker's).
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
/// The longest accepted `--id`.
pub const MAX_ID_LEN: usize = 64;

/// Starts tartarus-vmm in a jail: its own chroot, mount (and optionally PID and network)
/// namespace, cgroups and resource limits, with no privileges left.
#[derive(Parser, Debug)]
#[command(
    name = "tartarus-jailer",
    version,
    about = "Starts a microVM monitor in a jail: chroot (pivot_root), mount namespace, \
             cgroups, resource limits, optional network and PID namespaces, and no privileges \
             (uid/gid, no capabilities, no_new_privs). Firecracker's jailer flags.",
    after_help = "Everything after `--` is passed to the VMM, after `--id <ID>`.\n\
                  Example:\n  tartarus-jailer --id vm-1 --exec-file /usr/bin/tartarus-vmm \
                  --uid 12345 --gid 12345 --cgroup cpuset.cpus=0 -- --api-sock /api.sock"
)]
pub struct Cli {
    /// Identifier of the microVM: 1-64 characters from [A-Za-z0-9-]; names the jail and cgroup.
    #[arg(long, value_name = "ID")]
    pub id: String,
    /// The VMM binary (a static executable); it is copied into the jail.
    #[arg(long = "exec-file", value_name = "PATH")]
    pub exec_file: PathBuf,
    /// The user id the VMM runs as (numeric, not 0).
    #[arg(long, value_name = "UID")]
    pub uid: String,
    /// The group id the VMM runs as (numeric, not 0).
    #[arg(long, value_name = "GID")]
    pub gid: String,
    /// Where jails are built: <DIR>/<exec-file name>/<id>/root.
    #[arg(long = "chroot-base-dir", value_name = "DIR", default_value = DEFAULT_CHROOT_BASE)]
    pub chroot_base_dir: PathBuf,
    /// Join the network namespace behind this path (e.g. /var/run/netns/NAME).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Start a new session and redirect stdin, stdout and stderr to /dev/null.
    #[arg(long)]
    pub daemonize: bool,
    /// Run the VMM as PID 1 of a new PID namespace; its host pid goes to <root>/<exec name>.pid.
    #[arg(long = "new-pid-ns")]
    pub new_pid_ns: bool,
    /// The cgroup hierarchy for --cgroup: 1 or 2.
    #[arg(long = "cgroup-version", value_name = "1|2", default_value = "1")]
    pub cgroup_version: String,
    /// Write VALUE to the cgroup file FILE (e.g. cpuset.cpus=0); repeatable.
    #[arg(long = "cgroup", value_name = "FILE=VALUE")]
    pub cgroups: Vec<String>,
    /// Parent of the microVM's cgroup, relative to the hierarchy root [default: tartarus].
    #[arg(long = "parent-cgroup", value_name = "PATH")]
    pub parent_cgroup: Option<String>,
    /// fsize=BYTES or no-file=N (default no-file=2048); repeatable.
    #[arg(long = "resource-limit", value_name = "RESOURCE=VALUE")]
    pub resource_limits: Vec<String>,
    /// Arguments for the VMM.
    #[arg(last = true, value_name = "VMM ARGS")]
    pub exec_args: Vec<OsString>,
}

/// A validated command line.
#[derive(Debug)]
pub struct JailConfig {
    pub id: String,
    /// The VMM binary on the host (absolute).
    pub exec_file: PathBuf,
    /// The file name of the VMM binary: its name inside the jail and in the jail path.
    pub exec_name: OsString,
    pub uid: u32,
    pub gid: u32,
    /// `<jail_dir>/root`, the VMM's `/`.
    pub root: PathBuf,
    pub netns: Option<PathBuf>,
    pub daemonize: bool,
    pub new_pid_ns: bool,
    pub cgroups: CgroupPlan,
    pub rlimits: Vec<ResourceLimit>,
    pub devices: HostDevices,
    pub exec_args: Vec<OsString>,
}

impl JailConfig {
    /// The VMM's path inside the jail: `/<exec name>`.
    pub fn exec_in_jail(&self) -> PathBuf {
        Path::new("/").join(&self.exec_name)
    }

    /// The pid file's path inside the jail: `/<exec name>.pid`.
    pub fn pid_file_in_jail(&self) -> PathBuf {
        let mut name = self.exec_name.clone();
        name.push(".pid");
        Path::new("/").join(name)
    }
}

/// Errors of argument validation. Nothing has been created when one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("Invalid --id {0:?}: use 1-{MAX_ID_LEN} characters from [A-Za-z0-9-]")]
    Id(String),
    #[error(
        "Invalid --{flag} {value:?}: must be a number from 1 to 4294967294 (0, root, is refused)"
    )]
    Ident { flag: &'static str, value: String },
    #[error("Invalid --exec-file {}", path.display())]
    ExecFileMissing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Invalid --exec-file {}: not a regular file", .0.display())]
    ExecFileNotRegular(PathBuf),
    #[error(
        "--exec-file {}: dynamically linked (needs {interp}); build it static \
         (scripts/build-static.sh)",
        path.display()
    )]
    ExecFileDynamic { path: PathBuf, interp: String },
    #[error("--exec-file {}: not a static ELF executable", path.display())]
    ExecFileNotElf {
        path: PathBuf,
        #[source]
        source: ElfError,
    },
    #[error("Invalid --exec-file {}: no file name", .0.display())]
    ExecFileName(PathBuf),
    #[error("Invalid --chroot-base-dir {}: {reason}", path.display())]
    ChrootBase { path: PathBuf, reason: String },
    #[error(
        "The jail {} is already in use ({} exists): pick another --id or remove the old jail",
        jail.display(),
        existing.display()
    )]
    JailExists { jail: PathBuf, existing: PathBuf },
    #[error("Invalid --cgroup-version {0:?}: must be 1 or 2")]
    CgroupVersion(String),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    ResourceLimit(#[from] rlimits::RlimitError),
    #[error(transparent)]
    Netns(#[from] namespaces::NamespaceError),
    #[error(transparent)]
    Device(#[from] devices::DeviceError),
    #[error("Do not pass --id after `--`: the jailer passes --id {0} to the VMM itself")]
    DuplicateId(String),
}

/// Whether `id` is a valid jail id: 1..=64 characters from `[A-Za-z0-9-]`.
pub fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Parses a numeric uid/gid; 0 (root) and -1 (the "unchanged" marker) are refused.
pub fn parse_ident(flag: &'static str, value: &str) -> Result<u32, ArgsError> {
    let err = || ArgsError::Ident {
        flag,
        value: value.to_string(),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    match value.parse::<u32>() {
        Ok(n) if n != 0 && n != u32::MAX => Ok(n),
        _ => Err(err()),
    }
}

/// Checks that `base` is a directory, or could be created as one: its nearest existing
/// ancestor must be a directory. Returns the absolute path.
pub fn check_chroot_base(base: &Path) -> Result<PathBuf, ArgsError> {
    let err = |reason: String| ArgsError::ChrootBase {
        path: base.to_path_buf(),
        reason,
    };
    if base.as_os_str().is_empty() {
        return Err(err("empty path".into()));
    }
    let abs = std::path::absolute(base).map_err(|e| err(e.to_string()))?;
    if abs.components().any(|c| c == Component::ParentDir) {
        return Err(err("must not contain `..`".into()));
    }
    let mut probe: &Path = &abs;
    loop {
        match fs::metadata(probe) {
            Ok(m) if m.is_dir() => return Ok(abs),
            Ok(_) if probe == abs => return Err(err("exists and is not a directory".into())),
            Ok(_) => {
                return Err(err(format!(
                    "cannot be created: {} is not a directory",
                    probe.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(err("cannot be created: part of the path is a file".into()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match probe.parent() {
                Some(p) => probe = p,
                None => return Err(err("no existing ancestor".into())),
            },
            Err(e) => return Err(err(format!("{}: {e}", probe.display()))),
        }
    }
}

impl Cli {
    /// Validates every argument against the host, changing nothing.
    pub fn validate(self) -> Result<JailConfig, ArgsError> {
        if !valid_id(&self.id) {
            return Err(ArgsError::Id(self.id));
        }
        let uid = parse_ident("uid", &self.uid)?;
        let gid = parse_ident("gid", &self.gid)?;

        let meta = fs::metadata(&self.exec_file).map_err(|source| ArgsError::ExecFileMissing {
            path: self.exec_file.clone(),
            source,
        })?;
        if !meta.file_type().is_file() {
            return Err(ArgsError::ExecFileNotRegular(self.exec_file));
        }
        // The jail has no loader and no libraries: only a static executable can run there.
        match elf::file_linkage(&self.exec_file) {
            Err(source) => {
                return Err(ArgsError::ExecFileMissing {
                    path: self.exec_file,
                    source,
                })
            }
            Ok(Err(source)) => {
                return Err(ArgsError::ExecFileNotElf {
                    path: self.exec_file,
                    source,
                })
            }
            Ok(Ok(Linkage::Dynamic { interp })) => {
                return Err(ArgsError::ExecFileDynamic {
                    path: self.exec_file,
                    interp,
                })
            }
            Ok(Ok(Linkage::Static)) => {}
        }
        let exec_name = match self.exec_file.file_name() {
            Some(n) if !n.as_bytes().contains(&b'\n') => n.to_os_string(),
            _ => return Err(ArgsError::ExecFileName(self.exec_file)),
        };
        let exec_file =
            std::path::absolute(&self.exec_file).map_err(|source| ArgsError::ExecFileMissing {
                path: self.exec_file.clone(),
                source,
            })?;

        let base = check_chroot_base(&self.chroot_base_dir)?;
        let jail_dir = base.join(&exec_name).join(&self.id);
        let root = jail_dir.join("root");
        // A jail whose root already holds the VMM binary belongs to a running (or dead but not
        // cleaned up) VMM. A root holding only other files was prepared by the caller (kernel,
        // drives): that is allowed.
        let existing = root.join(&exec_name);
        if fs::symlink_metadata(&existing).is_ok() {
            return Err(ArgsError::JailExists {
                jail: jail_dir,
                existing,
            });
        }
        if let Ok(m) = fs::symlink_metadata(&root) {
            if !m.is_dir() {
                return Err(ArgsError::ChrootBase {
                    path: self.chroot_base_dir,
                    reason: format!("{} exists and is not a directory", root.display()),
                });
            }
        }

        let version = match self.cgroup_version.as_str() {
            "1" => cgroup::Version::V1,
            "2" => cgroup::Version::V2,
            _ => return Err(ArgsError::CgroupVersion(self.cgroup_version)),
        };
        let parent = self
            .parent_cgroup
            .as_deref()
            .unwrap_or(cgroup::DEFAULT_PARENT);
        let cgroups = CgroupPlan::new(version, &self.cgroups, parent, &self.id)?;

        let rlimits = rlimits::parse_all(&self.resource_limits)?;
        rlimits::check_allowed(&rlimits)?;

        if let Some(ns) = &self.netns {
            namespaces::check_netns(ns)?;
        }
        let devices = devices::probe_host()?;

        if self.exec_args.iter().any(|a| is_id_flag(a)) {
            return Err(ArgsError::DuplicateId(self.id));
        }

        Ok(JailConfig {
            id: self.id,
            exec_file,
            exec_name,
            uid,
            gid,
            root,
            netns: self.netns,
            daemonize: self.daemonize,
            new_pid_ns: self.new_pid_ns,
            cgroups,
            rlimits,
            devices,
            exec_args: self.exec_args,
        })
    }
}

fn is_id_flag(a: &OsStr) -> bool {
    let b = a.as_bytes();
    b == b"--id" || b.starts_with(b"--id=")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("vm-1"));
        assert!(valid_id(&"a".repeat(64)));
        assert!(!valid_id(&"a".repeat(65)));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id("a_b"));
        assert!(!valid_id(".."));
        assert!(!valid_id("é"));
    }

    #[test]
    fn idents() {
        assert_eq!(parse_ident("uid", "12345").unwrap(), 12345);
        for bad in [
            "",
            "0",
            "-1",
            "abc",
            "12a",
            "+5",
            " 5",
            "4294967295",
            "99999999999",
        ] {
            assert!(parse_ident("uid", bad).is_err(), "{bad:?}");
        }
        let msg = parse_ident("gid", "x").unwrap_err().to_string();
        assert!(msg.contains("--gid") && msg.contains("number"), "{msg}");
    }

    #[test]
    fn chroot_base() {
        let dir = std::env::temp_dir().join(format!("jailer-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        fs::write(&file, b"x").unwrap();
        assert!(check_chroot_base(&dir).is_ok());
        assert!(check_chroot_base(&dir.join("new/deeper")).is_ok());
        let e = check_chroot_base(&file).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        assert!(check_chroot_base(&file.join("sub")).is_err());
        assert!(check_chroot_base(Path::new("")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flags_have_firecracker_spelling() {
        let cli = Cli::try_parse_from([
            "tartarus-jailer",
            "--id",
            "a",
            "--exec-file",
            "/bin/true",
            "--uid",
            "1",
            "--gid",
            "2",
            "--chroot-base-dir",
            "/tmp/x",
            "--netns",
            "/var/run/netns/n",
            "--daemonize",
            "--new-pid-ns",
            "--cgroup-version",
            "2",
            "--cgroup",
            "cpuset.cpus=0",
            "--cgroup",
            "pids.max=5",
            "--parent-cgroup",
            "a/b",
            "--resource-limit",
            "fsize=10",
            "--resource-limit",
            "no-file=20",
            "--",
            "--api-sock",
            "/api.sock",
        ])
        .unwrap();
        assert_eq!(cli.cgroups, ["cpuset.cpus=0", "pids.max=5"]);
        assert_eq!(cli.resource_limits, ["fsize=10", "no-file=20"]);
        assert_eq!(cli.exec_args, ["--api-sock", "/api.sock"]);
        assert!(cli.daemonize && cli.new_pid_ns);
        assert!(Cli::try_parse_from(["tartarus-jailer", "--bogus"]).is_err());
    }

    #[test]
    fn id_after_double_dash() {
        assert!(is_id_flag(OsStr::new("--id")));
        assert!(is_id_flag(OsStr::new("--id=x")));
        assert!(!is_id_flag(OsStr::new("--idx")));
    }
}
