//! Handing a uffd to an external page-fault handler (Firecracker's protocol).
//!
//! The VMM connects to the handler's Unix stream socket and sends one message: the UTF-8 JSON
//! array of [`UffdRegion`]s (`[{"base_host_virt_addr", "size", "offset", "page_size"}]`, all in
//! bytes) as data, with the uffd attached as `SCM_RIGHTS` ancillary data. The VMM keeps the
//! connection open for its lifetime; the handler treats its closing as "VM gone".
//!
//! `tartarus-uffd-handler` (this crate's binary) is a ready handler built on
//! [`receive_from_vmm`] and [`PageServer::start_for_peer`](crate::PageServer::start_for_peer).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use userfaultfd::Uffd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::uffd::UffdRegion;

/// Largest message accepted from a VMM.
const MAX_MSG: usize = 64 << 10;

/// Errors of the handler protocol.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Connecting to the handler's socket failed.
    #[error("cannot connect to uffd handler at {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Sending the message failed.
    #[error("cannot send uffd to handler: {0}")]
    Send(#[source] io::Error),
    /// Receiving the message failed or the peer closed early.
    #[error("cannot receive uffd from VMM: {0}")]
    Recv(#[source] io::Error),
    /// The message came without a file descriptor.
    #[error("uffd handler message carried no file descriptor")]
    NoFd,
    /// The descriptor received is not a userfaultfd.
    #[error("received descriptor is not a userfaultfd ({0})")]
    NotUffd(String),
    /// The region list does not parse.
    #[error("bad region list from VMM: {0}")]
    Parse(#[source] serde_json::Error),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, HandlerError>;

/// Sends `regions` and `uffd` over an already connected stream.
pub fn send_regions(stream: &UnixStream, uffd: &Uffd, regions: &[UffdRegion]) -> Result<()> {
    let body = serde_json::to_vec(regions).map_err(|e| HandlerError::Send(e.into()))?;
    let sent = stream
        .send_with_fd(&body[..], uffd.as_raw_fd())
        .map_err(|e| HandlerError::Send(io::Error::from_raw_os_error(e.errno())))?;
    if sent < body.len() {
        // The descriptor went with the first bytes; the rest is plain data.
        let mut s = stream;
        io::Write::write_all(&mut s, &body[sent..]).map_err(HandlerError::Send)?;
    }
    Ok(())
}

/// Connects to the handler at `socket` and sends `regions` and `uffd`. Keep the returned
/// stream open as long as the VM runs.
pub fn send_to_handler(socket: &Path, uffd: &Uffd, regions: &[UffdRegion]) -> Result<UnixStream> {
    let stream = UnixStream::connect(socket).map_err(|source| HandlerError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    send_regions(&stream, uffd, regions)?;
    Ok(stream)
}

/// Handler side: receives the uffd and region list from a VMM connection.
pub fn receive_from_vmm(stream: &UnixStream) -> Result<(Uffd, Vec<UffdRegion>)> {
    let mut buf = vec![0u8; 4096];
    let (n, file) = stream
        .recv_with_fd(&mut buf)
        .map_err(|e| HandlerError::Recv(io::Error::from_raw_os_error(e.errno())))?;
    let file = file.ok_or(HandlerError::NoFd)?;
    check_is_uffd(&file)?;
    // SAFETY: we own `file`'s descriptor (moved out of it) and checked it is a userfaultfd.
    let uffd = unsafe { Uffd::from_raw_fd(file.into_raw_fd()) };
    let mut msg = buf[..n].to_vec();
    loop {
        match serde_json::from_slice::<Vec<UffdRegion>>(&msg) {
            Ok(regions) => return Ok((uffd, regions)),
            Err(e) if e.is_eof() && msg.len() < MAX_MSG => {
                let mut s = stream;
                let k = s.read(&mut buf).map_err(HandlerError::Recv)?;
                if k == 0 {
                    return Err(HandlerError::Recv(io::ErrorKind::UnexpectedEof.into()));
                }
                msg.extend_from_slice(&buf[..k]);
            }
            Err(e) => return Err(HandlerError::Parse(e)),
        }
    }
}

fn check_is_uffd(file: &File) -> Result<()> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unknown (no /proc) is accepted; a known other kind is refused.
    if link.is_empty() || link.contains("userfaultfd") {
        Ok(())
    } else {
        Err(HandlerError::NotUffd(link))
    }
}
