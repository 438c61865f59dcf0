//! The jail's file system: `<base>/<exec name>/<id>/root` with the VMM binary copied in, then
//! a private mount namespace whose root is that directory (pivot_root, old root detached).

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::cleanup::Undo;

#[derive(Debug, thiserror::Error)]
pub enum ChrootError {
    #[error("Cannot create the jail directory {}", path.display())]
    Mkdir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot copy {} to {}", from.display(), to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("The jail {} is already in use: {} exists", jail.display(), existing.display())]
    InUse { jail: PathBuf, existing: PathBuf },
    #[error("Cannot {what}")]
    Sys {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("Cannot write the pid file {}", path.display())]
    PidFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn sys(what: impl Into<String>) -> ChrootError {
    ChrootError::Sys {
        what: what.into(),
        source: io::Error::last_os_error(),
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("paths from the OS have no NUL")
}

/// Creates `root` and its missing ancestors (mode 0755, recorded in `undo`).
pub fn create_dirs(root: &Path, undo: &mut Undo) -> Result<(), ChrootError> {
    let mut cur = PathBuf::new();
    for c in root.components() {
        cur.push(c);
        if !matches!(c, Component::Normal(_)) {
            continue;
        }
        match fs::DirBuilder::new().mode(0o755).create(&cur) {
            Ok(()) => undo.dir(cur.clone()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && cur.is_dir() => {}
            Err(source) => return Err(ChrootError::Mkdir { path: cur, source }),
        }
    }
    Ok(())
}

/// Copies the VMM binary to `<root>/<name>` (root-owned, 0755). Refuses to overwrite: an
/// existing binary means the jail is in use. A copy rather than a hard link, which could not
/// cross file systems and would share the inode with the host's binary.
pub fn copy_exec(
    from: &Path,
    root: &Path,
    name: &std::ffi::OsStr,
    undo: &mut Undo,
) -> Result<(), ChrootError> {
    let to = root.join(name);
    let err = |source: io::Error| ChrootError::Copy {
        from: from.to_path_buf(),
        to: to.clone(),
        source,
    };
    let mut src = File::open(from).map_err(err)?;
    let mut dst = match File::options()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&to)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(ChrootError::InUse {
                jail: root.to_path_buf(),
                existing: to,
            })
        }
        Err(e) => return Err(err(e)),
    };
    undo.file(to.clone());
    io::copy(&mut src, &mut dst).map_err(err)?;
    dst.set_permissions(fs::Permissions::from_mode(0o755))
        .map_err(err)?;
    Ok(())
}

/// Gives `root` (the VMM's `/`) to `uid:gid`, so the VMM can create its API socket and files.
pub fn chown_root(root: &Path, uid: u32, gid: u32) -> Result<(), ChrootError> {
    let c = cstr(root);
    // SAFETY: `c` is a valid NUL-terminated path that chown only reads.
    if unsafe { libc::chown(c.as_ptr(), uid, gid) } != 0 {
        return Err(sys(format!("chown {} to {uid}:{gid}", root.display())));
    }
    Ok(())
}

/// Enters the jail: a new mount namespace with private propagation, `root` bind-mounted on
/// itself (nosuid; device nodes allowed), pivot_root into it and the old root detached. On
/// success the process's `/` and working directory are the jail root and no host path is
/// reachable any more.
pub fn enter(root: &Path) -> Result<(), ChrootError> {
    let root_c = cstr(root);
    let slash = cstr(Path::new("/"));
    let dot = cstr(Path::new("."));
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: each call below gets valid NUL-terminated strings (or NULL where the syscall
    // accepts it) that live across the call; none of them keeps a pointer.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(sys("create a mount namespace (unshare CLONE_NEWNS)"));
        }
        // Nothing done below may propagate back to the host's mounts.
        if libc::mount(
            null,
            slash.as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(sys("make / private (MS_REC|MS_PRIVATE)"));
        }
        // pivot_root needs the new root to be a mount point.
        if libc::mount(
            root_c.as_ptr(),
            root_c.as_ptr(),
            null,
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ) != 0
        {
            return Err(sys(format!("bind-mount {} on itself", root.display())));
        }
        // Exactly these flags on the jail's mount: nosuid, and not nodev (the device nodes
        // must work even if the base directory's file system is mounted nodev).
        if libc::mount(
            null,
            root_c.as_ptr(),
            null,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID,
            std::ptr::null(),
        ) != 0
        {
            return Err(sys(format!("remount {} nosuid", root.display())));
        }
        if libc::chdir(root_c.as_ptr()) != 0 {
            return Err(sys(format!("chdir to {}", root.display())));
        }
        // pivot_root(".", "."): the old root ends up mounted on top of the new one, at "/";
        // detaching "." then removes it, with no old_root directory left in the jail.
        if libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) != 0 {
            return Err(sys(format!("pivot_root into {}", root.display())));
        }
        if libc::umount2(dot.as_ptr(), libc::MNT_DETACH) != 0 {
            return Err(sys("detach the old root (umount2 MNT_DETACH)"));
        }
        if libc::chdir(slash.as_ptr()) != 0 {
            return Err(sys("chdir to / in the jail"));
        }
        // For good measure (as Firecracker does): the process root is the jail either way.
        if libc::chroot(dot.as_ptr()) != 0 {
            return Err(sys("chroot to the jail"));
        }
    }
    Ok(())
}

/// Writes `pid` to `path` (inside the jail), root-owned 0644.
pub fn write_pid_file(path: &Path, pid: libc::pid_t) -> Result<(), ChrootError> {
    let err = |source| ChrootError::PidFile {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .map_err(err)?;
    io::Write::write_all(&mut f, format!("{pid}\n").as_bytes()).map_err(err)
}
