//! The host side of hybrid vsock: the Unix listener at `uds_path` where host processes connect
//! and send `CONNECT <port>\n`, their handshakes, and non-blocking connections to
//! `<uds_path>_<port>` for guest-initiated connections.

use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Longest `CONNECT <port>\n` line accepted.
pub const MAX_CONNECT_LINE: usize = 32;

/// Errors of the Unix side.
#[derive(Debug, thiserror::Error)]
pub enum UnixError {
    #[error("Cannot bind the vsock socket {0}")]
    Bind(PathBuf, #[source] io::Error),
    #[error("Cannot make the vsock socket {0} non-blocking")]
    NonBlocking(PathBuf, #[source] io::Error),
    #[error("Socket path {0} is too long for a Unix socket")]
    PathTooLong(PathBuf),
    #[error("Cannot connect to {0}")]
    Connect(PathBuf, #[source] io::Error),
}

/// The listener at `uds_path`; the socket file is removed when it is dropped.
pub struct HostListener {
    pub listener: UnixListener,
    path: PathBuf,
}

impl HostListener {
    pub fn bind(path: &Path) -> Result<Self, UnixError> {
        let listener = UnixListener::bind(path).map_err(|e| UnixError::Bind(path.to_owned(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| UnixError::NonBlocking(path.to_owned(), e))?;
        Ok(HostListener {
            listener,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for HostListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An accepted host stream waiting for its `CONNECT <port>\n` line.
pub struct Pending {
    pub stream: UnixStream,
    pub token: u32,
    pub line: Vec<u8>,
    pub deadline: Instant,
}

/// What reading a pending stream gave.
#[derive(Debug, PartialEq, Eq)]
pub enum LineResult {
    /// No full line yet.
    Incomplete,
    /// `CONNECT <port>`.
    Connect(u32),
    /// A bad line, an over-long one, or the stream ended or failed.
    Invalid,
}

impl Pending {
    /// Reads the handshake line a byte at a time, so that nothing after the newline (data that
    /// belongs to the guest) is consumed.
    pub fn read_line(&mut self) -> LineResult {
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return LineResult::Invalid,
                Ok(_) if byte[0] == b'\n' => return parse_connect(&self.line),
                Ok(_) => {
                    self.line.push(byte[0]);
                    if self.line.len() > MAX_CONNECT_LINE {
                        return LineResult::Invalid;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return LineResult::Incomplete,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return LineResult::Invalid,
            }
        }
    }
}

/// Parses `CONNECT <port>` (a trailing `\r` is tolerated).
pub fn parse_connect(line: &[u8]) -> LineResult {
    let Ok(text) = std::str::from_utf8(line) else {
        return LineResult::Invalid;
    };
    match text
        .trim_end_matches('\r')
        .strip_prefix("CONNECT ")
        .map(|p| p.trim().parse::<u32>())
    {
        Some(Ok(port)) => LineResult::Connect(port),
        _ => LineResult::Invalid,
    }
}

/// The host socket a guest connection to `port` reaches: `<uds_path>_<port>`.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = uds_path.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connects to `path` without blocking: a listener whose backlog is full refuses rather than
/// stalling the VMM thread. The stream is returned non-blocking.
pub fn connect_nonblocking(path: &Path) -> Result<UnixStream, UnixError> {
    let err = |e| UnixError::Connect(path.to_owned(), e);
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(UnixError::PathTooLong(path.to_owned()));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket() takes no pointers; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: fd is a new socket we own; OwnedFd closes it on every path.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un that outlives the call and len does not exceed it.
    let rc = unsafe {
        libc::connect(
            fd,
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        // For Unix sockets EINPROGRESS does not happen; EAGAIN means the backlog is full.
        return Err(err(e));
    }
    Ok(UnixStream::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), LineResult::Connect(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), LineResult::Connect(52));
        assert_eq!(parse_connect(b"CONNECT"), LineResult::Invalid);
        assert_eq!(parse_connect(b"CONNECT x"), LineResult::Invalid);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), LineResult::Invalid);
        assert_eq!(parse_connect(b"connect 5"), LineResult::Invalid);
        assert_eq!(parse_connect(&[0xff, 0xfe]), LineResult::Invalid);
    }

    #[test]
    fn port_paths_and_connect_errors() {
        assert_eq!(
            port_path(Path::new("/tmp/v.sock"), 52),
            PathBuf::from("/tmp/v.sock_52")
        );
        let dir = std::env::temp_dir().join(format!("vsock-unix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("nobody");
        assert!(matches!(
            connect_nonblocking(&p),
            Err(UnixError::Connect(..))
        ));
        let long = PathBuf::from("/".to_string() + &"x".repeat(200));
        assert!(matches!(
            connect_nonblocking(&long),
            Err(UnixError::PathTooLong(_))
        ));
        let l = UnixListener::bind(dir.join("l")).unwrap();
        let s = connect_nonblocking(&dir.join("l")).unwrap();
        let (_a, _) = l.accept().unwrap();
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn handshake_line_keeps_what_follows() {
        use std::io::Write;
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut p = Pending {
            stream: a,
            token: 1,
            line: Vec::new(),
            deadline: Instant::now(),
        };
        b.write_all(b"CONN").unwrap();
        assert_eq!(p.read_line(), LineResult::Incomplete);
        b.write_all(b"ECT 7\nrest").unwrap();
        assert_eq!(p.read_line(), LineResult::Connect(7));
        let mut rest = [0u8; 4];
        p.stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"rest");
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut p = Pending {
            stream: a,
            token: 1,
            line: Vec::new(),
            deadline: Instant::now(),
        };
        b.write_all(&[b'x'; 40]).unwrap();
        assert_eq!(p.read_line(), LineResult::Invalid);
    }
}
