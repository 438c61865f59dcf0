//! Applies image layers, in order, to an empty staging directory with OCI layer semantics
//! (image-spec `layer.md`): whiteouts and opaque directories, hard links, devices, ownership,
//! setuid modes, mtimes and `SCHILY.xattr.*` extended attributes. The directory later becomes an
//! ext4 root file system (`mkfs.ext4 -d`).
//!
//! Layers are hostile input. Entry names that are absolute or contain `..` are refused; parent
//! directories are resolved inside the root with chroot-like semantics (Debian's `/var/run ->
//! /run` works) and a symlink that climbs above the root is refused; the kernel enforces the same
//! with `openat2(RESOLVE_IN_ROOT)`, and every write is an `*at()` call on one name that never
//! follows a symlink (see `unpack/resolve.rs` and `unpack/apply.rs`). Tar's own unpack helpers are
//! not used.

mod apply;
mod resolve;
mod sys;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Guesses from the first bytes of a blob: gzip `1f 8b`, zstd `28 b5 2f fd`, else plain tar.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// One layer blob on disk.
#[derive(Debug, Clone)]
pub struct Layer {
    pub path: PathBuf,
    /// `sha256:<hex>`, for error messages.
    pub digest: String,
    /// From the media type; `None` means "look at the magic bytes".
    pub compression: Option<Compression>,
}

#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// Refuse the image once its unpacked regular-file bytes exceed this.
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries applied (files, directories, links, devices; not whiteouts).
    pub entries: u64,
    /// Regular-file bytes written (the sum `max_bytes` limits).
    pub bytes: u64,
    /// Whiteout and opaque markers applied.
    pub whiteouts: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("Cannot open the unpack destination {path}")]
    Destination {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot read layer {digest} from {path}")]
    ReadLayer {
        digest: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Layer {digest} is corrupt or truncated")]
    Corrupt {
        digest: String,
        #[source]
        source: io::Error,
    },
    #[error("Layer {digest}: entry {entry:?} is refused: {reason}")]
    UnsafePath {
        digest: String,
        entry: String,
        reason: String,
    },
    #[error(
        "Layer {digest}: entry {entry:?} is refused: symlink {symlink} -> {target:?} leaves the root"
    )]
    SymlinkEscape {
        digest: String,
        entry: String,
        symlink: String,
        target: String,
    },
    #[error("Layer {digest}: entry {entry:?}: too many levels of symbolic links")]
    SymlinkLoop { digest: String, entry: String },
    #[error("Layer {digest}: entry {entry:?}: {parent} is not a directory")]
    NotADirectory {
        digest: String,
        entry: String,
        parent: String,
    },
    #[error("Layer {digest}: hard link {entry:?} -> {target:?}: {reason}")]
    BadHardLink {
        digest: String,
        entry: String,
        target: String,
        reason: &'static str,
    },
    #[error("Layer {digest}: entry {entry:?}: {reason}")]
    BadEntry {
        digest: String,
        entry: String,
        reason: String,
    },
    #[error(
        "Image is larger than the limit of {limit} bytes: entry {entry:?} of layer {digest} brings it to {total} bytes"
    )]
    TooLarge {
        limit: u64,
        total: u64,
        digest: String,
        entry: String,
    },
    #[error("Disk full while writing entry {entry:?} of layer {digest}")]
    DiskFull {
        digest: String,
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("Layer {digest}: entry {entry:?}: {op} failed")]
    Io {
        digest: String,
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Counts the compressed bytes read from a layer file.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Chunks the decompressing thread sends ahead (each up to [`CHUNK`]).
const AHEAD: usize = 8;
const CHUNK: usize = 1 << 20;

/// A reader fed by a thread that reads (decompresses) `inner`. The thread ends at the end of
/// the stream, at its first error (passed on), or when this reader is dropped.
struct Pipelined {
    rx: Receiver<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Pipelined {
    fn spawn(mut inner: Box<dyn Read + Send>) -> Pipelined {
        let (tx, rx) = sync_channel(AHEAD);
        std::thread::spawn(move || loop {
            let mut chunk = vec![0u8; CHUNK];
            let mut filled = 0;
            // Fill whole chunks: the decoders hand out small pieces.
            let res = loop {
                match inner.read(&mut chunk[filled..]) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        filled += n;
                        if filled == CHUNK {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            chunk.truncate(filled);
            let last = filled == 0 || res.is_err() || filled < CHUNK;
            if filled > 0 && tx.send(Ok(chunk)).is_err() {
                return;
            }
            if let Err(e) = res {
                let _ = tx.send(Err(e));
                return;
            }
            if last {
                return;
            }
        });
        Pipelined {
            rx,
            buf: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

impl Read for Pipelined {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // The thread finished: the end of the stream.
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Applies `layers` in order to the empty directory `dest`.
///
/// `progress(layer_index, compressed_bytes_read)` is called as each layer is read.
pub fn unpack(
    layers: &[Layer],
    dest: &Path,
    opts: &UnpackOptions,
    progress: &mut dyn FnMut(usize, u64),
) -> Result<UnpackStats, UnpackError> {
    let root = resolve::Root::open(dest).map_err(|source| UnpackError::Destination {
        path: dest.to_path_buf(),
        source,
    })?;
    let mut applier = apply::Applier {
        root,
        max_bytes: opts.max_bytes,
        stats: UnpackStats::default(),
        digest: "",
        written: HashSet::new(),
        dir_times: HashMap::new(),
        parent_cache: None,
    };
    for (index, layer) in layers.iter().enumerate() {
        applier.digest = &layer.digest;
        applier.written.clear();
        applier.parent_cache = None;
        apply_layer(&mut applier, index, layer, progress)?;
    }
    applier.finish_dir_times()?;
    Ok(applier.stats)
}

fn apply_layer(
    applier: &mut apply::Applier<'_>,
    index: usize,
    layer: &Layer,
    progress: &mut dyn FnMut(usize, u64),
) -> Result<(), UnpackError> {
    let digest = &layer.digest;
    let read_err = |source| UnpackError::ReadLayer {
        digest: digest.clone(),
        path: layer.path.clone(),
        source,
    };
    let corrupt = |source| UnpackError::Corrupt {
        digest: digest.clone(),
        source,
    };
    let count = Arc::new(AtomicU64::new(0));
    let file = File::open(&layer.path).map_err(read_err)?;
    let mut buffered = BufReader::with_capacity(
        256 * 1024,
        Counting {
            inner: file,
            count: count.clone(),
        },
    );
    let compression = match layer.compression {
        Some(c) => c,
        None => Compression::detect(buffered.fill_buf().map_err(read_err)?),
    };
    let decoder: Box<dyn Read + Send> = match compression {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(buffered).map_err(corrupt)?)
        }
    };
    // Decompression on a thread of its own, a few MiB ahead of the writes: on two cores the
    // inflate and the file system work overlap.
    let reader = Pipelined::spawn(decoder);
    progress(index, 0);
    let mut archive = tar::Archive::new(reader);
    // Reports only when the count moved (a layer of small files would otherwise call back once
    // per entry with the same number).
    let mut reported = 0;
    let mut tick = || {
        let now = count.load(Ordering::Relaxed);
        if now != reported {
            reported = now;
            progress(index, now);
        }
    };
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        applier.apply(&mut entry, &mut tick)?;
        tick();
    }
    // Read to the end of the stream so a damaged compressed trailer (checksum) is noticed.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(corrupt)?;
    progress(index, count.load(Ordering::Relaxed));
    Ok(())
}
