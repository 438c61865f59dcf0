//! File helpers: sparse copies, links into jails, sizes on disk, random ids.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FsError + 'a {
    move |source| FsError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// Copies `src` to `dst` keeping holes: only the data extents (SEEK_DATA/SEEK_HOLE) are read
/// and written, so a sparse disk image of 1 GiB with 5 MiB in use costs 5 MiB of I/O.
pub fn sparse_copy(src: &Path, dst: &Path) -> Result<u64, FsError> {
    let mut input = File::open(src).map_err(io("open", src))?;
    let len = input.metadata().map_err(io("stat", src))?.len();
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(io("create", dst))?;
    out.set_len(len).map_err(io("truncate", dst))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&input);
    let mut pos: i64 = 0;
    let mut copied = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while (pos as u64) < len {
        // SAFETY: lseek on a valid fd; no memory involved.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: no data after pos
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { len as i64 } else { hole };
        input
            .seek(SeekFrom::Start(data as u64))
            .map_err(io("seek", src))?;
        out.seek(SeekFrom::Start(data as u64))
            .map_err(io("seek", dst))?;
        let mut left = (end - data) as u64;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            input.read_exact(&mut buf[..n]).map_err(io("read", src))?;
            out.write_all(&buf[..n]).map_err(io("write", dst))?;
            left -= n as u64;
            copied += n as u64;
        }
        pos = end;
    }
    Ok(copied)
}

/// Hard-links `src` to `dst`, copying (sparse) when they are on different file systems.
pub fn link_or_copy(src: &Path, dst: &Path) -> Result<(), FsError> {
    match std::fs::hard_link(src, dst) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => sparse_copy(src, dst).map(|_| ()),
        Err(e) => Err(io("link", dst)(e)),
    }
}

/// Moves `src` to `dst` (rename, or copy + remove across file systems).
pub fn move_file(src: &Path, dst: &Path) -> Result<(), FsError> {
    match std::fs::rename(src, dst) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            sparse_copy(src, dst)?;
            std::fs::remove_file(src).map_err(io("remove", src))
        }
        Err(e) => Err(io("rename", dst)(e)),
    }
}

/// Makes a file readable by every jail's uid and writable by none but root.
pub fn make_shared_readonly(path: &Path) -> Result<(), FsError> {
    std::os::unix::fs::chown(path, Some(0), Some(0)).map_err(io("chown", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(io("chmod", path))
}

/// Gives a file to one uid alone.
pub fn give_to(path: &Path, uid: u32) -> Result<(), FsError> {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).map_err(io("chown", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("chmod", path))
}

/// Bytes allocated on disk by the files of a directory (not recursive).
pub fn allocated_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        // SAFETY: getrandom writes at most `n - filled` bytes into the buffer's tail.
        let r = unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), n - filled, 0) };
        if r > 0 {
            filled += r as usize;
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Removes a directory tree; a missing one is fine.
pub fn remove_tree(path: &Path) -> Result<(), FsError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_copy_keeps_holes_and_data() {
        let dir = std::env::temp_dir().join(format!("tartarusd-fs-{}", random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("a");
        let mut f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(32 << 20)).unwrap();
        f.write_all(b"middle").unwrap();
        f.seek(SeekFrom::Start((64 << 20) - 3)).unwrap();
        f.write_all(b"end").unwrap();
        drop(f);
        let dst = dir.join("b");
        let copied = sparse_copy(&src, &dst).unwrap();
        assert!(copied < 1 << 20, "copied {copied} bytes");
        let a = std::fs::read(&src).unwrap();
        let b = std::fs::read(&dst).unwrap();
        assert!(a == b);
        assert!(std::fs::metadata(&dst).unwrap().blocks() * 512 < 1 << 20);
        assert!(sparse_copy(&src, &dst).is_err(), "never overwrites");
        remove_tree(&dir).unwrap();
        assert_eq!(random_hex(6).len(), 12);
    }
}
