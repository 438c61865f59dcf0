//! `connect` (protocol version 2): port forwarding. The agent connects a TCP socket to
//! 127.0.0.1:port in the guest; after the `ok` the agent connection carries raw bytes both ways
//! between the client and that socket, half-closes included, until both directions ended.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::Duration;

/// How long a connect to a guest port may take (a listening port answers at once).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CHUNK: usize = 64 * 1024;

/// Errors of port forwarding.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("connection refused to 127.0.0.1:{0}")]
    Refused(u16),
    #[error("cannot connect to 127.0.0.1:{port}")]
    Connect {
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("Cannot duplicate the agent connection's descriptor")]
    Dup(#[source] io::Error),
    #[error("Cannot start the forwarding thread")]
    Thread(#[source] io::Error),
}

/// Connects to 127.0.0.1:`port`.
pub(crate) fn connect(port: u16) -> Result<TcpStream, ForwardError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(s) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Err(ForwardError::Refused(port)),
        Err(source) => Err(ForwardError::Connect { port, source }),
    }
}

fn shutdown_fd(fd: RawFd, how: libc::c_int) {
    // SAFETY: shutdown(2) on a descriptor we hold open; no memory effects. Errors (not a
    // socket, not connected) only mean there is nothing to shut down.
    unsafe { libc::shutdown(fd, how) };
}

/// Copies `from` into `to` until `from` ends; then half-closes `to`'s writing side. A failed
/// write (the reader went away) stops reading `from` too.
fn copy_half<R: Read, W: Write>(from: &mut R, to: &mut W, from_fd: RawFd, to_fd: RawFd) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if to.write_all(&buf[..n]).and_then(|_| to.flush()).is_err() {
            shutdown_fd(from_fd, libc::SHUT_RD);
            break;
        }
    }
    shutdown_fd(to_fd, libc::SHUT_WR);
}

/// Pipes bytes between the agent connection and `tcp` both ways until both directions ended.
/// The client's side is read on a second thread (through a duplicate of its descriptor), so
/// neither direction can block the other.
pub(crate) fn pipe<C: Read + Write + AsRawFd>(
    conn: &mut C,
    tcp: TcpStream,
) -> Result<(), ForwardError> {
    let conn_fd = conn.as_raw_fd();
    // SAFETY: dup of a descriptor `conn` keeps open; the result is checked.
    let dup = unsafe { libc::dup(conn_fd) };
    if dup < 0 {
        return Err(ForwardError::Dup(io::Error::last_os_error()));
    }
    // SAFETY: `dup` is a fresh descriptor that nothing else owns.
    let mut from_client = unsafe { File::from_raw_fd(dup) };
    let mut to_tcp = tcp.try_clone().map_err(ForwardError::Dup)?;
    let tcp_fd = tcp.as_raw_fd();
    let upstream = std::thread::Builder::new()
        .name("forward-up".into())
        .spawn(move || copy_half(&mut from_client, &mut to_tcp, dup, tcp_fd))
        .map_err(ForwardError::Thread)?;
    let mut from_tcp = &tcp;
    copy_half(&mut from_tcp, conn, tcp_fd, conn_fd);
    let _ = upstream.join();
    let _ = tcp.shutdown(Shutdown::Both);
    Ok(())
}
