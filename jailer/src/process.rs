//! The process itself: inherited file descriptors, the environment, the session and standard
//! I/O (`--daemonize`), and the final exec.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("Cannot close inherited file descriptors")]
    CloseFds(#[source] io::Error),
    #[error("Cannot open /dev/null")]
    DevNull(#[source] io::Error),
    #[error("Cannot start a new session (setsid)")]
    Setsid(#[source] io::Error),
    #[error("Cannot redirect standard I/O to /dev/null")]
    Redirect(#[source] io::Error),
    #[error("Argument contains a NUL byte: {0:?}")]
    Nul(OsString),
    #[error("Cannot exec {}", .0)]
    Exec(String, #[source] io::Error),
}

/// Closes every file descriptor above 2 (close_range, or /proc/self/fd where it is missing).
pub fn close_inherited_fds() -> Result<(), ProcessError> {
    // SAFETY: close_range only closes descriptors; nothing in this process holds on to any fd
    // above 2 at this point (main has opened nothing yet).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc == 0 {
        return Ok(());
    }
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(ProcessError::CloseFds)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: as above; EBADF for the (already closed) directory fd is harmless.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Clears the environment (the VMM gets an empty one) and sets the umask to 022.
pub fn clear_env() {
    // SAFETY: the jailer is single-threaded, so no other thread reads the environment.
    unsafe {
        libc::clearenv();
        libc::umask(0o022);
    }
}

/// Opens /dev/null, before the jail hides it (for `--daemonize`).
pub fn open_dev_null() -> Result<OwnedFd, ProcessError> {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(ProcessError::DevNull)
}

/// Whether this process leads its process group (then setsid would fail).
pub fn is_group_leader() -> bool {
    // SAFETY: getpgrp and getpid cannot fail.
    unsafe { libc::getpgrp() == libc::getpid() }
}

/// Starts a new session: no controlling terminal.
pub fn setsid() -> Result<(), ProcessError> {
    // SAFETY: no arguments.
    if unsafe { libc::setsid() } < 0 {
        return Err(ProcessError::Setsid(io::Error::last_os_error()));
    }
    Ok(())
}

/// Points stdin, stdout and stderr at `null`.
pub fn redirect_stdio(null: OwnedFd) -> Result<(), ProcessError> {
    for fd in 0..=2 {
        // SAFETY: `null` is an open fd; dup2 replaces the standard descriptor atomically.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(ProcessError::Redirect(io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The VMM's argv: `<exec> --id <id> <args...>`.
pub fn vmm_argv(exec: &Path, id: &str, args: &[OsString]) -> Vec<OsString> {
    let mut argv = vec![exec.as_os_str().to_os_string(), "--id".into(), id.into()];
    argv.extend(args.iter().cloned());
    argv
}

/// Replaces this process with `argv[0]` and an empty environment; returns only on failure.
pub fn exec(argv: &[OsString]) -> ProcessError {
    let mut c = Vec::with_capacity(argv.len());
    for a in argv {
        match CString::new(a.as_bytes()) {
            Ok(s) => c.push(s),
            Err(_) => return ProcessError::Nul(a.clone()),
        }
    }
    let mut ptrs: Vec<*const libc::c_char> = c.iter().map(|s| s.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: `ptrs` and `envp` are NULL-terminated arrays of valid C strings that outlive
    // the call; execve only returns on failure.
    unsafe { libc::execve(ptrs[0], ptrs.as_ptr(), envp.as_ptr()) };
    ProcessError::Exec(
        argv[0].to_string_lossy().into_owned(),
        io::Error::last_os_error(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv() {
        let a = vmm_argv(
            Path::new("/tartarus-vmm"),
            "vm-1",
            &["--api-sock".into(), "/a".into()],
        );
        assert_eq!(a, ["/tartarus-vmm", "--id", "vm-1", "--api-sock", "/a"]);
    }
}
