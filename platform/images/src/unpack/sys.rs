//! Thin, safe wrappers over the `*at()` system calls the unpacker needs. Every call takes a
//! directory file descriptor and a single path component (or a path already resolved inside the
//! root), so no call here walks a path the tar controls.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// `struct open_how` from `linux/openat2.h`; defined here because the `libc` one cannot be built
/// outside its crate (it is `#[non_exhaustive]`).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

pub(crate) fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn check_fd(ret: libc::c_long) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned `fd` as a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat2(dirfd, path, flags, resolve)`: the kernel refuses to leave `dirfd` (with
/// `RESOLVE_IN_ROOT` or `RESOLVE_BENEATH` in `resolve`).
pub(crate) fn openat2(
    dirfd: BorrowedFd<'_>,
    path: &OsStr,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let path = cstr(path)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: `path` is a valid NUL-terminated string and `how` a valid `open_how` of the size
    // we pass; both outlive the call. The returned descriptor is owned by `check_fd`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    check_fd(ret)
}

/// Plain `openat` of one component (callers pass `O_NOFOLLOW`).
pub(crate) fn openat(
    dirfd: BorrowedFd<'_>,
    name: &OsStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let name = cstr(name)?;
    // SAFETY: `name` is NUL-terminated and lives across the call; the result is checked.
    let ret = unsafe {
        libc::openat(
            dirfd.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode,
        )
    };
    check_fd(ret.into())
}

/// `fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)`; `Ok(None)` when the name does not exist.
pub(crate) fn lstatat(dirfd: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<libc::stat>> {
    let name = cstr(name)?;
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `st` is a writable `stat`; both outlive the call.
    let ret = unsafe {
        libc::fstatat(
            dirfd.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    match check(ret) {
        Ok(()) => Ok(Some(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub(crate) fn is_symlink(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

pub(crate) fn readlinkat(dirfd: BorrowedFd<'_>, name: &OsStr) -> io::Result<OsString> {
    let name = cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `buf` is writable for `buf.len()` bytes and `name` is NUL-terminated.
    let ret = unsafe {
        libc::readlinkat(
            dirfd.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(ret as usize);
    Ok(OsString::from_vec(buf))
}

pub(crate) fn mkdirat(dirfd: BorrowedFd<'_>, name: &OsStr, mode: libc::mode_t) -> io::Result<()> {
    let name = cstr(name)?;
    // SAFETY: `name` is NUL-terminated and lives across the call.
    check(unsafe { libc::mkdirat(dirfd.as_raw_fd(), name.as_ptr(), mode) })
}

pub(crate) fn unlinkat(dirfd: BorrowedFd<'_>, name: &OsStr, dir: bool) -> io::Result<()> {
    let name = cstr(name)?;
    let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `name` is NUL-terminated and lives across the call.
    check(unsafe { libc::unlinkat(dirfd.as_raw_fd(), name.as_ptr(), flags) })
}

pub(crate) fn symlinkat(target: &OsStr, dirfd: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let target = cstr(target)?;
    let name = cstr(name)?;
    // SAFETY: both strings are NUL-terminated and live across the call.
    check(unsafe { libc::symlinkat(target.as_ptr(), dirfd.as_raw_fd(), name.as_ptr()) })
}

/// `linkat` without `AT_SYMLINK_FOLLOW`: a symlink target is linked itself, never followed.
pub(crate) fn linkat(
    olddir: BorrowedFd<'_>,
    oldname: &OsStr,
    newdir: BorrowedFd<'_>,
    newname: &OsStr,
) -> io::Result<()> {
    let oldname = cstr(oldname)?;
    let newname = cstr(newname)?;
    // SAFETY: both strings are NUL-terminated and live across the call.
    check(unsafe {
        libc::linkat(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            0,
        )
    })
}

pub(crate) fn mknodat(
    dirfd: BorrowedFd<'_>,
    name: &OsStr,
    mode: libc::mode_t,
    dev: libc::dev_t,
) -> io::Result<()> {
    let name = cstr(name)?;
    // SAFETY: `name` is NUL-terminated and lives across the call.
    check(unsafe { libc::mknodat(dirfd.as_raw_fd(), name.as_ptr(), mode, dev) })
}

/// `fchownat(dirfd, name, AT_SYMLINK_NOFOLLOW)`, or of `dirfd` itself when `name` is `None`.
pub(crate) fn lchownat(
    dirfd: BorrowedFd<'_>,
    name: Option<&OsStr>,
    uid: u32,
    gid: u32,
) -> io::Result<()> {
    let (name, flags) = match name {
        Some(n) => (cstr(n)?, libc::AT_SYMLINK_NOFOLLOW),
        None => (
            CString::default(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH,
        ),
    };
    // SAFETY: `name` is NUL-terminated and lives across the call.
    check(unsafe { libc::fchownat(dirfd.as_raw_fd(), name.as_ptr(), uid, gid, flags) })
}

/// `chmod` of the inode behind `fd` (which may be an `O_PATH` descriptor of a device or FIFO)
/// through its `/proc/self/fd` entry: the inode itself, whatever its name now points at.
pub(crate) fn fchmod_any(fd: BorrowedFd<'_>, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `fchmod` only reads the descriptor; the result is checked.
    let ret = unsafe { libc::fchmod(fd.as_raw_fd(), mode) };
    if ret == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EBADF) {
        return Err(err);
    }
    let path = proc_fd_path(fd, None)?;
    // SAFETY: `path` is NUL-terminated and lives across the call.
    check(unsafe { libc::chmod(path.as_ptr(), mode) })
}

fn proc_fd_path(fd: BorrowedFd<'_>, name: Option<&OsStr>) -> io::Result<CString> {
    let mut p = format!("/proc/self/fd/{}", fd.as_raw_fd()).into_bytes();
    if let Some(name) = name {
        p.push(b'/');
        p.extend_from_slice(name.as_bytes());
    }
    CString::new(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Sets an extended attribute on `dirfd/name` without following `name` if it is a symlink (or on
/// the open file `dirfd` itself when `name` is `None`).
pub(crate) fn set_xattr(
    dirfd: BorrowedFd<'_>,
    name: Option<&OsStr>,
    key: &OsStr,
    value: &[u8],
) -> io::Result<()> {
    let key = cstr(key)?;
    let ret = match name {
        // SAFETY: `key` is NUL-terminated and `value` is readable for its length.
        None => unsafe {
            libc::fsetxattr(
                dirfd.as_raw_fd(),
                key.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        },
        Some(name) => {
            // The parent is reached through its descriptor's /proc entry (a directory already
            // resolved inside the root); `lsetxattr` does not follow the final component.
            let path = proc_fd_path(dirfd, Some(name))?;
            // SAFETY: `path` and `key` are NUL-terminated and `value` is readable for its length.
            unsafe {
                libc::lsetxattr(
                    path.as_ptr(),
                    key.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            }
        }
    };
    check(ret)
}

/// `utimensat(dirfd, name, AT_SYMLINK_NOFOLLOW)` (or `futimens(dirfd)` when `name` is `None`),
/// setting atime and mtime to `(secs, nsecs)`.
pub(crate) fn set_times(
    dirfd: BorrowedFd<'_>,
    name: Option<&OsStr>,
    secs: i64,
    nsecs: i64,
) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nsecs as _,
    };
    let times = [ts, ts];
    let ret = match name {
        // SAFETY: `times` is an array of two valid timespecs that outlives the call.
        None => unsafe { libc::futimens(dirfd.as_raw_fd(), times.as_ptr()) },
        Some(name) => {
            let name = cstr(name)?;
            // SAFETY: `name` is NUL-terminated and `times` holds two timespecs; both outlive it.
            unsafe {
                libc::utimensat(
                    dirfd.as_raw_fd(),
                    name.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            }
        }
    };
    check(ret)
}

/// The names in the directory `dir` (without `.` and `..`).
pub(crate) fn read_dir_names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let own = openat(dir, OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let raw = std::os::fd::IntoRawFd::into_raw_fd(own);
    // SAFETY: `raw` is a directory descriptor we own; on success `fdopendir` takes it over and
    // `closedir` below closes it.
    let dirp = unsafe { libc::fdopendir(raw) };
    if dirp.is_null() {
        let err = io::Error::last_os_error();
        // SAFETY: `fdopendir` failed, so `raw` is still ours to close.
        drop(unsafe { OwnedFd::from_raw_fd(raw) });
        return Err(err);
    }
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; clearing it distinguishes end-of-directory from errors.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `dirp` is a valid open directory stream until `closedir` below.
        let ent = unsafe { libc::readdir64(dirp) };
        if ent.is_null() {
            let err = io::Error::last_os_error();
            break if err.raw_os_error().unwrap_or(0) == 0 {
                Ok(())
            } else {
                Err(err)
            };
        }
        // SAFETY: `ent` points at a valid dirent whose `d_name` is NUL-terminated, valid until
        // the next `readdir64` call; we copy it out at once.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    };
    // SAFETY: `dirp` came from `fdopendir` and is closed exactly once.
    unsafe { libc::closedir(dirp) };
    result.map(|()| names)
}
