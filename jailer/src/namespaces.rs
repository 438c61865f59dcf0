//! Namespaces: joining a network namespace (`--netns`) and creating a PID namespace
//! (`--new-pid-ns`). The mount namespace is set up with the jail, in `chroot`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// `NSFS_MAGIC`: the filesystem type of namespace files (/proc/<pid>/ns/*, bind mounts of them).
const NSFS_MAGIC: i64 = 0x6e73_6673;

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("Invalid --netns {}", path.display())]
    NetnsOpen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Invalid --netns {}: not a namespace file (expected e.g. /var/run/netns/NAME)", .0.display())]
    NotNamespace(PathBuf),
    #[error("Invalid --netns {}: not a network namespace", .0.display())]
    NotNet(PathBuf),
    #[error("Cannot join the network namespace {}", path.display())]
    Setns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot create a PID namespace")]
    UnsharePid(#[source] io::Error),
    #[error("Cannot fork")]
    Fork(#[source] io::Error),
}

/// An open network namespace, to be joined after the jail is entered.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    fd: OwnedFd,
}

/// Opens `path` and checks that it is a network namespace file.
pub fn open_netns(path: &Path) -> Result<Netns, NamespaceError> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| NamespaceError::NetnsOpen {
            path: path.to_path_buf(),
            source,
        })?;
    // SAFETY: `st` is a valid, writable statfs for the kernel to fill; the fd is open.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 || st.f_type as i64 != NSFS_MAGIC {
        return Err(NamespaceError::NotNamespace(path.to_path_buf()));
    }
    // NS_GET_NSTYPE = _IO(0xb7, 0x3): the namespace's CLONE_NEW* type.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: NS_GET_NSTYPE takes no argument and returns an int.
    let t = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if t != libc::CLONE_NEWNET {
        return Err(NamespaceError::NotNet(path.to_path_buf()));
    }
    Ok(Netns {
        path: path.to_path_buf(),
        fd: file.into(),
    })
}

/// The validation of `--netns` (opens and closes the file; changes nothing).
pub fn check_netns(path: &Path) -> Result<(), NamespaceError> {
    open_netns(path).map(drop)
}

impl Netns {
    /// Joins this network namespace (needs CAP_SYS_ADMIN); the fd is closed afterwards.
    pub fn join(self) -> Result<(), NamespaceError> {
        // SAFETY: the fd is an open network namespace file owned by `self`.
        if unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(NamespaceError::Setns {
                path: self.path,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// Which side of a fork this process is on.
pub enum Forked {
    Parent { child: libc::pid_t },
    Child,
}

/// Forks; the caller must be single-threaded (the jailer never starts threads).
pub fn fork() -> Result<Forked, NamespaceError> {
    // SAFETY: the jailer is single-threaded, so the child may run arbitrary code after fork.
    match unsafe { libc::fork() } {
        -1 => Err(NamespaceError::Fork(io::Error::last_os_error())),
        0 => Ok(Forked::Child),
        child => Ok(Forked::Parent { child }),
    }
}

/// Creates a PID namespace and forks into it: the child is its PID 1.
pub fn new_pid_namespace() -> Result<Forked, NamespaceError> {
    // SAFETY: unshare with a flag only; it affects children created afterwards.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(NamespaceError::UnsharePid(io::Error::last_os_error()));
    }
    fork()
}
