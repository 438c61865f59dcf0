//! Opening snapshot files named in API requests without blocking: `open` of a FIFO waits for a
//! writer, which would hang `/snapshot/load` on the VMM thread.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Opens `path` read-only with `O_NONBLOCK`, refuses anything but a regular file
/// (`InvalidInput`), then clears `O_NONBLOCK`.
pub fn open_regular_read_only(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, socket, device or directory)",
        ));
    }
    // SAFETY: F_GETFL on an fd this function owns; no memory is passed.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        // SAFETY: F_SETFL with an integer argument on an fd this function owns.
        || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}
