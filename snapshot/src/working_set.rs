//! Working sets: which parts of a memory file a restored guest touched first.
//!
//! A [`PageServer`](crate::PageServer) in record mode notes every range it serves because of a
//! fault; [`WorkingSet::from_ranges`] sorts and coalesces them. The file uses the state-file
//! envelope (see [`crate::state`]) with magic `b"TARTWSET"`, version 1.0, and a JSON body
//! `{"page_size": 4096, "mem_size": N, "runs": [[offset, len], ...]}` (memory-file offsets and
//! lengths in bytes, sorted, non-overlapping, non-adjacent).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::{read_envelope, write_envelope, StateError};
use crate::PAGE_SIZE;

/// Magic of working-set files.
pub const WS_MAGIC: [u8; 8] = *b"TARTWSET";
const WS_MAJOR: u16 = 1;
const WS_MINOR: u16 = 0;

/// Errors from working-set files.
#[derive(Debug, thiserror::Error)]
pub enum WorkingSetError {
    /// Reading or writing the envelope failed (same checks as state files).
    #[error("working-set file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: StateError,
    },
    /// The set was recorded against a memory file of another size.
    #[error(
        "working set was recorded for {recorded} bytes of guest memory, this memory has {actual}"
    )]
    SizeMismatch {
        /// Size in the working set.
        recorded: u64,
        /// Size of the memory being restored.
        actual: u64,
    },
    /// The set's page size is not the one used here.
    #[error("working set page size {0} is not {PAGE_SIZE}")]
    PageSize(u64),
}

/// Sorted, coalesced ranges of a memory file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkingSet {
    /// Page size the ranges are aligned to.
    pub page_size: u64,
    /// Size of the memory file the set was recorded against.
    pub mem_size: u64,
    /// `(offset, len)` in bytes, page aligned, sorted, merged.
    pub runs: Vec<(u64, u64)>,
}

impl WorkingSet {
    /// Builds a set from ranges in any order; overlapping or adjacent ranges are merged and
    /// everything is widened to page boundaries.
    pub fn from_ranges(mem_size: u64, ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let page = PAGE_SIZE as u64;
        let mut v: Vec<(u64, u64)> = ranges
            .into_iter()
            .filter(|&(_, len)| len > 0)
            .map(|(off, len)| {
                let start = off / page * page;
                let end = (off + len).div_ceil(page) * page;
                (start, end)
            })
            .collect();
        v.sort_unstable();
        let mut runs: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (start, end) in v {
            match runs.last_mut() {
                Some(last) if start <= last.0 + last.1 => {
                    last.1 = last.1.max(end - last.0);
                }
                _ => runs.push((start, end - start)),
            }
        }
        WorkingSet {
            page_size: page,
            mem_size,
            runs,
        }
    }

    /// Number of pages in the set.
    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|r| r.1).sum::<u64>() / self.page_size.max(1)
    }

    /// Writes the set atomically.
    pub fn write(&self, path: &Path) -> Result<(), WorkingSetError> {
        let ferr = |source| WorkingSetError::File {
            path: path.to_path_buf(),
            source,
        };
        let body = serde_json::to_vec(self).map_err(|e| ferr(StateError::Serialize(e)))?;
        write_envelope(path, WS_MAGIC, WS_MAJOR, WS_MINOR, &body).map_err(ferr)
    }

    /// Reads and checks a set.
    pub fn read(path: &Path) -> Result<Self, WorkingSetError> {
        let ferr = |source| WorkingSetError::File {
            path: path.to_path_buf(),
            source,
        };
        let env = read_envelope(path, WS_MAGIC, "working-set file").map_err(ferr)?;
        env.check(WS_MAJOR).map_err(ferr)?;
        let ws: WorkingSet =
            serde_json::from_slice(env.body()).map_err(|e| ferr(StateError::Parse(e)))?;
        if ws.page_size != PAGE_SIZE as u64 {
            return Err(WorkingSetError::PageSize(ws.page_size));
        }
        Ok(ws)
    }

    /// Checks the set belongs to memory of `mem_size` bytes.
    pub fn check_size(&self, mem_size: u64) -> Result<(), WorkingSetError> {
        if self.mem_size != mem_size {
            return Err(WorkingSetError::SizeMismatch {
                recorded: self.mem_size,
                actual: mem_size,
            });
        }
        Ok(())
    }
}

/// What a prefetch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefetchStats {
    /// Pages installed with UFFDIO_COPY.
    pub pages_copied: u64,
    /// Pages installed with UFFDIO_ZEROPAGE (holes of the memory file).
    pub pages_zeroed: u64,
    /// Pages of the set that were already present.
    pub pages_skipped: u64,
    /// Copy/zeropage calls made.
    pub ioctls: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::tmpdir;

    #[test]
    fn coalesces_and_round_trips() {
        let ws = WorkingSet::from_ranges(
            1 << 20,
            [
                (8192, 4096),
                (0, 4096),
                (4096, 4096),
                (20000, 10),
                (40960, 0),
            ],
        );
        assert_eq!(ws.runs, vec![(0, 12288), (16384, 4096)]);
        assert_eq!(ws.pages(), 4);
        let dir = tmpdir("ws");
        let p = dir.join("ws");
        ws.write(&p).unwrap();
        assert_eq!(WorkingSet::read(&p).unwrap(), ws);
        assert!(ws.check_size(1 << 20).is_ok());
        assert!(matches!(
            ws.check_size(2 << 20),
            Err(WorkingSetError::SizeMismatch { .. })
        ));
        // A snapshot state file is not a working set.
        crate::write_state_file(&p, &1u32).unwrap();
        let e = WorkingSet::read(&p).unwrap_err();
        assert!(
            e.to_string().contains("not a Tartarus working-set file"),
            "{e}"
        );
    }
}
