//! Helpers shared by the unit tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MmapRegion};

use crate::GuestMemoryMmap;

/// A temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty directory under the system temp dir.
pub fn tmpdir(tag: &str) -> TempDir {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "tartarus-snapshot-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// Anonymous guest memory with the given regions.
pub fn anon_mem(ranges: &[(u64, usize)]) -> GuestMemoryMmap {
    let r: Vec<_> = ranges.iter().map(|&(a, s)| (GuestAddress(a), s)).collect();
    GuestMemoryMmap::from_ranges(&r).unwrap()
}

/// Host pointer of the byte at `gpa`.
pub fn host_ptr(mem: &GuestMemoryMmap, gpa: u64) -> *mut u8 {
    let r = mem.find_region(GuestAddress(gpa)).unwrap();
    let m: &MmapRegion<_> = r;
    // SAFETY: `gpa` lies inside region `r`, so the offset stays inside its mapping.
    unsafe { m.as_ptr().add((gpa - r.start_addr().0) as usize) }
}

/// A recognisable byte for page `n` (never zero).
pub fn pattern(n: u64) -> u8 {
    (n % 251 + 1) as u8
}
