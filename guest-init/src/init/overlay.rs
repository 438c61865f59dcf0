//! `tartarus.overlay=/dev/vdX`: a writable overlay over the read-only root file system.
//!
//! Many sandboxes share one read-only root image; each gets its own small ext4 disk for its
//! changes. Before anything else uses the root, PID 1:
//!
//! 1. mounts a tmpfs on `/run` (the read-only root cannot get new directories) and creates
//!    `/run/tartarus/overlay/{disk,root}` on it;
//! 2. mounts the device as ext4 on `disk` (`noinit_itable` when the kernel takes it: no
//!    background inode-table zeroing on a guest kernel that runs emulated) and creates `upper`
//!    and `work` on it when missing;
//! 3. mounts overlayfs `lowerdir=/,upperdir=disk/upper,workdir=disk/work` on `root`;
//! 4. switches into it like `switch_root`: `chdir(root)`, `mount(".", "/", MS_MOVE)`,
//!    `chroot(".")`, `chdir("/")`. The old root, its `/run` and the upper disk stay mounted
//!    underneath, out of reach, and `sync` at power-off still reaches them.
//!
//! The usual mounts (`/proc`, `/sys`, `/dev`, ...) follow inside the new root. Any failure is
//! logged as `tartarus-init: overlay: ...`, what was mounted is undone, and PID 1 goes on with
//! the read-only root.

use std::ffi::CString;
use std::io;
use std::path::Path;

use super::{error_chain, log};
use crate::cmdline::overlay_device;

/// Errors of the overlay set-up.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("cannot read the kernel command line")]
    Cmdline(#[source] io::Error),
    #[error("{op} {path} failed")]
    Sys {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// The upper disk's mount point (before the switch).
pub const DISK: &str = "/run/tartarus/overlay/disk";
/// The overlay's mount point (before the switch).
pub const ROOT: &str = "/run/tartarus/overlay/root";
/// The upper layer and the work directory, on the upper disk.
pub const UPPER_DIR: &str = "upper";
pub const WORK_DIR: &str = "work";

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in overlay paths")
}

fn sys_err(op: &'static str, path: &str) -> OverlayError {
    OverlayError::Sys {
        op,
        path: path.into(),
        source: io::Error::last_os_error(),
    }
}

fn mount(
    src: &str,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), OverlayError> {
    let (s, t, d) = (cstr(src), cstr(target), cstr(data));
    let f = fstype.map(cstr);
    // SAFETY: every pointer is a valid NUL-terminated string (or null for the type of a move)
    // that outlives the call.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            d.as_ptr().cast(),
        )
    };
    if r < 0 {
        return Err(sys_err("mount", target));
    }
    Ok(())
}

fn umount(target: &str, flags: libc::c_int) {
    let t = cstr(target);
    // SAFETY: a valid NUL-terminated path; failure leaves things as they are.
    unsafe { libc::umount2(t.as_ptr(), flags) };
}

fn mkdirs(path: &str) -> Result<(), OverlayError> {
    std::fs::create_dir_all(path).map_err(|source| OverlayError::Sys {
        op: "mkdir",
        path: path.into(),
        source,
    })
}

/// `tartarus.overlay=` from /proc/cmdline, mounting /proc for the moment when it is not yet.
fn requested_device() -> Result<Option<String>, OverlayError> {
    let mounted_here = !Path::new("/proc/self").exists();
    if mounted_here {
        mount("proc", "/proc", Some("proc"), 0, "")?;
    }
    let line = std::fs::read_to_string("/proc/cmdline");
    if mounted_here {
        umount("/proc", 0);
    }
    Ok(overlay_device(&line.map_err(OverlayError::Cmdline)?))
}

/// Mounts the overlay and switches PID 1 into it when the command line asks for one. Returns
/// whether it did; on failure it logs why and leaves the read-only root in place. Call it once,
/// before any other mount (the re-executed PID 1 must not).
pub fn setup() -> bool {
    let device = match requested_device() {
        Ok(Some(d)) => d,
        Ok(None) => return false,
        Err(e) => {
            log(&format!("overlay: {}", error_chain(&e)));
            return false;
        }
    };
    let mut mounted = Vec::new();
    match switch(&device, &mut mounted) {
        Ok(()) => {
            log(&format!(
                "overlay: / is now the read-only root with {device} as its writable layer"
            ));
            true
        }
        Err(e) => {
            log(&format!(
                "overlay: {}; going on with the read-only root",
                error_chain(&e)
            ));
            for target in mounted.iter().rev() {
                umount(target, libc::MNT_DETACH);
            }
            false
        }
    }
}

fn switch(device: &str, mounted: &mut Vec<&'static str>) -> Result<(), OverlayError> {
    if !Path::new(device).exists() {
        return Err(OverlayError::Sys {
            op: "open",
            path: device.into(),
            source: io::ErrorKind::NotFound.into(),
        });
    }
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    mount("tmpfs", "/run", Some("tmpfs"), nosuid_nodev, "mode=0755")?;
    mounted.push("/run");
    mkdirs(DISK)?;
    mkdirs(ROOT)?;
    // noinit_itable: no lazy inode-table zeroing thread on a freshly made disk. An older
    // kernel that does not know the option gets a plain mount.
    if let Err(e) = mount(device, DISK, Some("ext4"), 0, "noinit_itable") {
        match e {
            OverlayError::Sys { ref source, .. } if source.raw_os_error() == Some(libc::EINVAL) => {
                mount(device, DISK, Some("ext4"), 0, "")?
            }
            e => return Err(e),
        }
    }
    mounted.push(DISK);
    let upper = format!("{DISK}/{UPPER_DIR}");
    let work = format!("{DISK}/{WORK_DIR}");
    mkdirs(&upper)?;
    mkdirs(&work)?;
    let opts = format!("lowerdir=/,upperdir={upper},workdir={work}");
    mount("overlay", ROOT, Some("overlay"), 0, &opts)?;
    mounted.push(ROOT);
    let root = cstr(ROOT);
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::chdir(root.as_ptr()) } < 0 {
        return Err(sys_err("chdir", ROOT));
    }
    if let Err(e) = mount(".", "/", None, libc::MS_MOVE, "") {
        let slash = cstr("/");
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::chdir(slash.as_ptr()) };
        return Err(e);
    }
    // From here the overlay covers "/" for good: there is no going back, only on.
    mounted.clear();
    let dot = cstr(".");
    // SAFETY: a valid NUL-terminated path; the cwd is the moved overlay.
    if unsafe { libc::chroot(dot.as_ptr()) } < 0 {
        return Err(sys_err("chroot", "."));
    }
    let slash = cstr("/");
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::chdir(slash.as_ptr()) } < 0 {
        return Err(sys_err("chdir", "/"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_fails_before_anything_is_mounted() {
        let mut mounted = Vec::new();
        let e = switch("/dev/tartarus-no-such-disk", &mut mounted).unwrap_err();
        assert!(mounted.is_empty());
        assert_eq!(
            error_chain(&e),
            "open /dev/tartarus-no-such-disk failed: entity not found"
        );
    }
}
