//! The terminal side of `exec -t`: raw mode through termios, the window size, and the pieces
//! that need agent protocol v2 (tty execs and `resize {rows, cols}`).

use std::io::{Read, Write};
use std::os::fd::RawFd;

use guest_init::client::ExecStream;
use guest_init::protocol::ExecSpec;

/// The agent protocol version that brings tty execs and `resize`.
pub const TTY_PROTOCOL_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum TtyError {
    #[error("-t needs a terminal on stdin")]
    NotATerminal,
    #[error("cannot set the terminal's mode: {0}")]
    Termios(#[source] std::io::Error),
    #[error(
        "the sandbox's agent speaks protocol v{0}; a terminal (-t) needs v{TTY_PROTOCOL_VERSION} \
         (use -i without -t for streamed stdin)"
    )]
    Unsupported(u32),
}

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// The terminal in raw mode until dropped (the saved mode is restored then).
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    pub fn enter(fd: RawFd) -> Result<Self, TtyError> {
        if !is_terminal(fd) {
            return Err(TtyError::NotATerminal);
        }
        // SAFETY: termios is plain data, valid when all zero.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr fills the struct for a terminal fd.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(TtyError::Termios(std::io::Error::last_os_error()));
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the struct in place.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: tcsetattr reads the struct and applies it to fd.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(TtyError::Termios(std::io::Error::last_os_error()));
        }
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the mode saved from the same fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// The terminal's size as (rows, cols).
pub fn window_size(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data, valid when all zero.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills the winsize struct it is given.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Fails unless the agent's negotiated protocol version has tty execs.
pub fn check_support(version: u32) -> Result<(), TtyError> {
    if version >= TTY_PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(TtyError::Unsupported(version))
    }
}

/// The exec spec of a tty exec of `spec` at `size` (rows, cols).
pub fn tty_spec(spec: ExecSpec, size: Option<(u16, u16)>) -> ExecSpec {
    let (rows, cols) = size.unwrap_or((24, 80));
    spec.with_tty(rows, cols)
}

/// Tells the guest the terminal's new size (on SIGWINCH).
pub fn send_resize<S: Read + Write>(
    exec: &mut ExecStream<'_, S>,
    rows: u16,
    cols: u16,
) -> Result<(), guest_init::client::ClientError> {
    exec.resize(rows, cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tty_needs_v2() {
        let e = check_support(1).unwrap_err();
        assert!(e.to_string().contains("protocol v1"), "{e}");
        assert!(check_support(TTY_PROTOCOL_VERSION).is_ok());
    }
}
