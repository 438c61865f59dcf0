//! The device nodes inside the jail, recreated with `mknod` from the host's device numbers.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// One device the VMM may need.
#[derive(Clone, Copy, Debug)]
pub struct DeviceSpec {
    pub path: &'static str,
    pub mode: u32,
    /// Whether the jailer refuses to start without it.
    pub required: bool,
    /// Whether the node belongs to the VMM's uid:gid (otherwise root:root).
    pub owned: bool,
}

/// `/dev/kvm` is required; the others are created when the host has them.
pub const DEVICES: &[DeviceSpec] = &[
    DeviceSpec {
        path: "/dev/kvm",
        mode: 0o600,
        required: true,
        owned: true,
    },
    DeviceSpec {
        path: "/dev/net/tun",
        mode: 0o600,
        required: false,
        owned: true,
    },
    DeviceSpec {
        path: "/dev/userfaultfd",
        mode: 0o600,
        required: false,
        owned: true,
    },
    DeviceSpec {
        path: "/dev/urandom",
        mode: 0o666,
        required: false,
        owned: false,
    },
];

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("The host has no {0} (a character device), which the VMM needs")]
    Missing(&'static str),
    #[error("Cannot create {}", path.display())]
    Mkdir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot create the device node {path} ({major}:{minor})")]
    Mknod {
        path: &'static str,
        major: u32,
        minor: u32,
        #[source]
        source: io::Error,
    },
    #[error("Cannot set owner and mode of {path}")]
    Own {
        path: &'static str,
        #[source]
        source: io::Error,
    },
}

/// A host device found by [`probe_host`].
#[derive(Clone, Copy, Debug)]
pub struct HostDevice {
    pub spec: DeviceSpec,
    pub rdev: libc::dev_t,
}

/// The host devices to recreate in the jail.
#[derive(Clone, Debug, Default)]
pub struct HostDevices(pub Vec<HostDevice>);

/// Finds the host's devices (reads only).
pub fn probe_host() -> Result<HostDevices, DeviceError> {
    let mut out = Vec::new();
    for spec in DEVICES {
        match fs::metadata(spec.path) {
            Ok(m) if m.file_type().is_char_device() => out.push(HostDevice {
                spec: *spec,
                rdev: m.rdev() as libc::dev_t,
            }),
            _ if spec.required => return Err(DeviceError::Missing(spec.path)),
            _ => {}
        }
    }
    Ok(HostDevices(out))
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("device paths have no NUL")
}

impl HostDevices {
    /// Creates the nodes under `root` (normally `/` after pivot_root): /dev and /dev/net are
    /// root-owned 0755; the nodes get their mode and owner (uid:gid where `owned`).
    pub fn create(&self, root: &Path, uid: u32, gid: u32) -> Result<(), DeviceError> {
        for d in &self.0 {
            let path = root.join(d.spec.path.trim_start_matches('/'));
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(|source| DeviceError::Mkdir {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
            let c = cstr(&path);
            let (major, minor) = (libc::major(d.rdev), libc::minor(d.rdev));
            // SAFETY: `c` is a valid NUL-terminated path; mknod does not keep it.
            if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | d.spec.mode, d.rdev) } != 0 {
                return Err(DeviceError::Mknod {
                    path: d.spec.path,
                    major,
                    minor,
                    source: io::Error::last_os_error(),
                });
            }
            let (u, g) = if d.spec.owned { (uid, gid) } else { (0, 0) };
            // SAFETY: as above; chown and chmod (the mode given to mknod is masked by the umask)
            // only read the path.
            let rc = unsafe {
                if libc::chown(c.as_ptr(), u, g) != 0 {
                    -1
                } else {
                    libc::chmod(c.as_ptr(), d.spec.mode)
                }
            };
            if rc != 0 {
                return Err(DeviceError::Own {
                    path: d.spec.path,
                    source: io::Error::last_os_error(),
                });
            }
        }
        Ok(())
    }
}
