//! Opening host files named by untrusted configuration (API bodies, snapshot state files)
//! without blocking: `open` of a FIFO waits for a writer, so the VMM thread would hang.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Opens `path` with `O_NONBLOCK`, checks that it is a regular file (or, with
/// `allow_block_device`, a block device), then clears `O_NONBLOCK`. FIFOs, sockets, character
/// devices and directories are refused with `InvalidInput`, naming what they are.
pub fn open_regular(path: &Path, write: bool, allow_block_device: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let ft = file.metadata()?.file_type();
    let what = if ft.is_file() || (allow_block_device && ft.is_block_device()) {
        None
    } else if ft.is_fifo() {
        Some("a FIFO")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_char_device() {
        Some("a character device")
    } else if ft.is_dir() {
        Some("a directory")
    } else {
        Some("not a regular file")
    };
    if let Some(what) = what {
        let expected = if allow_block_device {
            "a regular file or a block device"
        } else {
            "a regular file"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is {what}, not {expected}"),
        ));
    }
    // SAFETY: F_GETFL on an fd this function owns; no memory is passed.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL with an integer argument on an fd this function owns.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_and_directories_are_refused_without_blocking() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let fifo = dir.as_path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open_regular(&fifo, false, true).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        let e = open_regular(dir.as_path(), false, true).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        let e = open_regular(Path::new("/dev/null"), false, true).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let file = dir.as_path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let f = open_regular(&file, true, false).unwrap();
        // SAFETY: F_GETFL on an open fd.
        let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
    }
}
