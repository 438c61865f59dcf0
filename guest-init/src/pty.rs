//! Pseudo-terminals for tty execs (protocol version 2): a master the agent keeps and a slave
//! that becomes the child's stdin, stdout, stderr and controlling terminal.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Errors of pseudo-terminal set-up.
#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error("{op} failed")]
    Sys {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

fn sys(op: &'static str) -> PtyError {
    PtyError::Sys {
        op,
        source: io::Error::last_os_error(),
    }
}

/// A new pseudo-terminal pair.
pub struct Pty {
    /// The agent's end: reads the child's output, takes its input. Close-on-exec.
    pub master: OwnedFd,
    /// The child's end (close-on-exec too: the child gets it through dup2 onto 0, 1 and 2).
    pub slave: OwnedFd,
    /// The slave's path, e.g. `/dev/pts/3`.
    pub path: String,
}

impl Pty {
    /// Opens a pair with `posix_openpt`, `grantpt`, `unlockpt`; a window size of `rows` x `cols`
    /// when both are non-zero.
    pub fn open(rows: u16, cols: u16) -> Result<Pty, PtyError> {
        // SAFETY: posix_openpt takes flags only; the result is checked below.
        let raw = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(sys("posix_openpt"));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let master = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: grantpt and unlockpt take a master pty descriptor, which `master` is.
        if unsafe { libc::grantpt(master.as_raw_fd()) } < 0 {
            return Err(sys("grantpt"));
        }
        // SAFETY: as above.
        if unsafe { libc::unlockpt(master.as_raw_fd()) } < 0 {
            return Err(sys("unlockpt"));
        }
        let mut name = [0 as libc::c_char; 64];
        // SAFETY: `name` is a writable buffer of the length passed.
        let r = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
        if r != 0 {
            return Err(PtyError::Sys {
                op: "ptsname_r",
                source: io::Error::from_raw_os_error(r),
            });
        }
        // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
        let cpath = unsafe { CStr::from_ptr(name.as_ptr()) };
        let path = cpath.to_string_lossy().into_owned();
        // SAFETY: `cpath` is a valid NUL-terminated path; the result is checked.
        let raw = unsafe {
            libc::open(
                cpath.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(sys("open of the pty slave"));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let slave = unsafe { OwnedFd::from_raw_fd(raw) };
        if rows != 0 && cols != 0 {
            set_window_size(master.as_raw_fd(), rows, cols).map_err(|source| PtyError::Sys {
                op: "TIOCSWINSZ",
                source,
            })?;
        }
        Ok(Pty {
            master,
            slave,
            path,
        })
    }
}

/// TIOCSWINSZ on a pty (master or slave): the foreground process group gets SIGWINCH.
pub fn set_window_size(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the valid pointer it is given.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// For `pre_exec` in the child, after the slave is on fds 0-2: a new session with the slave
/// (fd 0) as its controlling terminal. Only async-signal-safe calls.
pub fn make_controlling_terminal() -> io::Result<()> {
    // SAFETY: setsid and ioctl are async-signal-safe and have no memory effects here.
    unsafe {
        if libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_a_pair_with_its_window_size() {
        let pty = Pty::open(33, 101).unwrap();
        assert!(pty.path.starts_with("/dev/pts/"), "{}", pty.path);
        let mut ws: libc::winsize = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a winsize into the valid pointer.
        let r = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(r, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 101));
        set_window_size(pty.master.as_raw_fd(), 10, 20).unwrap();
        // SAFETY: as above.
        unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!((ws.ws_row, ws.ws_col), (10, 20));
    }
}
