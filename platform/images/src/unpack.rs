//! Applies image layers, in order, to a directory with OCI semantics (placeholder: being written).

use std::path::{Path, PathBuf};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
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
    pub entries: u64,
    pub bytes: u64,
    pub whiteouts: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("unpacking is not written yet")]
    Todo,
}

/// Applies `layers` in order to the empty directory `dest`.
pub fn unpack(
    _layers: &[Layer],
    _dest: &Path,
    _opts: &UnpackOptions,
    _progress: &mut dyn FnMut(usize, u64),
) -> Result<UnpackStats, UnpackError> {
    Err(UnpackError::Todo)
}
