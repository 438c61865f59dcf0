//! Path handling inside the root: validating tar names and resolving parent directories with
//! chroot-like semantics (an absolute symlink target is relative to the root), refusing any
//! symlink that climbs above the root. The kernel enforces containment too: every directory
//! descriptor comes from `openat2(root, ..., RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` on a path
//! this module already resolved, with `RESOLVE_NO_SYMLINKS` so a symlink that appeared in the
//! meantime fails instead of being followed.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::sys;

/// The most symlinks followed while resolving one path (as the kernel's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// Splits a tar entry name (or hard link target) into its normal components: a leading `./` and
/// empty or `.` components are dropped; an absolute name or a `..` component is refused.
pub(crate) fn split_name(raw: &[u8]) -> Result<Vec<OsString>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let mut out = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("`..` component"),
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

/// Why a parent directory could not be resolved.
#[derive(Debug)]
pub(crate) enum ResolveError {
    /// The symlink `symlink` (a path inside the root) points above the root.
    Escape {
        symlink: String,
        target: String,
    },
    Loop,
    NotADirectory {
        parent: String,
    },
    Io {
        op: &'static str,
        source: io::Error,
    },
}

/// A directory resolved inside the root: a descriptor and its symlink-free path from the root.
pub(crate) struct Resolved {
    pub dir: OwnedFd,
    pub path: PathBuf,
}

/// The destination directory, held open.
pub(crate) struct Root {
    fd: OwnedFd,
}

fn join(comps: &[OsString]) -> PathBuf {
    comps.iter().collect()
}

fn shown(path: &Path) -> String {
    let s = path.to_string_lossy();
    if s.is_empty() {
        "/".to_owned()
    } else {
        format!("/{s}")
    }
}

impl Root {
    pub(crate) fn open(dest: &Path) -> io::Result<Root> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dest)?;
        Ok(Root {
            fd: OwnedFd::from(file),
        })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the already-resolved (symlink-free) directory `path` below the root.
    pub(crate) fn open_dir(&self, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
        let p = if path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            path
        };
        sys::openat2(
            self.fd(),
            p.as_os_str(),
            flags | libc::O_DIRECTORY,
            libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_SYMLINKS,
        )
    }

    /// Resolves the directory named by `comps` inside the root, following symlinks with
    /// root-scoped semantics. Missing directories are created (mode 0755, reported through
    /// `created`) when `create` is set; otherwise a missing one yields `Ok(None)`.
    pub(crate) fn resolve_dir(
        &self,
        comps: &[OsString],
        create: bool,
        created: &mut dyn FnMut(&Path),
    ) -> Result<Option<Resolved>, ResolveError> {
        let io = |op| move |source| ResolveError::Io { op, source };
        // Components still to walk, each with the symlink (index into `links`) it came from.
        let mut queue: VecDeque<(OsString, Option<usize>)> =
            comps.iter().map(|c| (c.clone(), None)).collect();
        let mut links: Vec<(String, String)> = Vec::new();
        let mut stack: Vec<OsString> = Vec::new();
        let mut cur = self
            .open_dir(Path::new(""), libc::O_PATH)
            .map_err(io("open root"))?;
        while let Some((comp, origin)) = queue.pop_front() {
            if comp.is_empty() || comp == "." {
                continue;
            }
            if comp == ".." {
                if stack.pop().is_none() {
                    let (symlink, target) = origin
                        .map(|i| links[i].clone())
                        .unwrap_or_else(|| ("?".to_owned(), "..".to_owned()));
                    return Err(ResolveError::Escape { symlink, target });
                }
                cur = self
                    .open_dir(&join(&stack), libc::O_PATH)
                    .map_err(io("open directory"))?;
                continue;
            }
            let st = sys::lstatat(cur.as_fd(), &comp).map_err(io("stat"))?;
            match st {
                None if !create => return Ok(None),
                None => {
                    sys::mkdirat(cur.as_fd(), &comp, 0o755).map_err(io("mkdir"))?;
                    stack.push(comp);
                    created(&join(&stack));
                }
                Some(st) if sys::is_dir(&st) => stack.push(comp),
                Some(st) if sys::is_symlink(&st) => {
                    if links.len() >= MAX_SYMLINKS {
                        return Err(ResolveError::Loop);
                    }
                    let target = sys::readlinkat(cur.as_fd(), &comp).map_err(io("readlink"))?;
                    let mut at = stack.clone();
                    at.push(comp);
                    links.push((shown(&join(&at)), target.to_string_lossy().into_owned()));
                    let idx = links.len() - 1;
                    let bytes = target.as_bytes();
                    if bytes.first() == Some(&b'/') {
                        stack.clear();
                    }
                    let parts = bytes
                        .split(|b| *b == b'/')
                        .map(|p| (OsStr::from_bytes(p).to_os_string(), Some(idx)));
                    for part in parts.rev() {
                        queue.push_front(part);
                    }
                    cur = self
                        .open_dir(&join(&stack), libc::O_PATH)
                        .map_err(io("open directory"))?;
                    continue;
                }
                Some(_) => {
                    stack.push(comp);
                    return Err(ResolveError::NotADirectory {
                        parent: shown(&join(&stack)),
                    });
                }
            }
            cur = self
                .open_dir(&join(&stack), libc::O_PATH)
                .map_err(io("open directory"))?;
        }
        Ok(Some(Resolved {
            dir: cur,
            path: join(&stack),
        }))
    }
}
