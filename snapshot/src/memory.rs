//! Guest-memory files: layout, full and diff writes, and the File restore backend.
//!
//! A memory file holds the guest's regions back to back in guest-physical order: region `i`
//! starts at the file offset equal to the sum of the sizes of regions `0..i`. Pages that were
//! all-zero when a full snapshot was written are holes (the file is sparse).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError, NewBitmap};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionCollectionError,
    MmapRegion,
};

use crate::state::temp_path;
use crate::{GuestMemoryMmap, GuestRegionMmap, PAGE_SIZE};

/// Errors from memory-file operations.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// An I/O call on a memory file failed.
    #[error("memory file {path}: {op}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A diff snapshot's base file does not have the guest's memory size.
    #[error("diff base {path} is {actual} bytes, guest memory is {expected} bytes")]
    BaseSizeMismatch {
        /// The file.
        path: PathBuf,
        /// Guest memory size.
        expected: u64,
        /// File size.
        actual: u64,
    },
    /// The memory file is shorter than the guest memory it should back.
    #[error("memory file {path} is {actual} bytes, guest memory needs {expected} bytes")]
    FileTooShort {
        /// The file.
        path: PathBuf,
        /// Guest memory size.
        expected: u64,
        /// File size.
        actual: u64,
    },
    /// The KVM dirty bitmaps do not match the guest's regions.
    #[error("dirty bitmap for region {region}: {reason}")]
    DirtyBitmap {
        /// Region (memory slot) index.
        region: usize,
        /// What is wrong.
        reason: String,
    },
    /// The region list is not usable as a guest layout.
    #[error("invalid memory layout: {0}")]
    Layout(String),
    /// Mapping a region failed.
    #[error("cannot map guest memory region: {0}")]
    Mmap(#[source] MmapRegionError),
    /// The mapped regions do not form a valid guest memory.
    #[error("cannot assemble guest memory: {0}")]
    Collection(#[source] GuestRegionCollectionError),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, MemError>;

/// One guest region and where it lives in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionLayout {
    /// Guest-physical start address.
    pub guest_base: u64,
    /// Size in bytes (a multiple of 4 KiB).
    pub size: u64,
    /// Offset of the region in the memory file.
    pub file_offset: u64,
}

/// The guest's regions in guest-physical order; serializable so the VMM can keep it in the
/// state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryLayout {
    /// The regions, sorted by `guest_base`, packed back to back in the file.
    pub regions: Vec<RegionLayout>,
}

impl MemoryLayout {
    /// Layout of an existing guest memory.
    pub fn of(mem: &GuestMemoryMmap) -> Self {
        let mut off = 0;
        let regions = mem
            .iter()
            .map(|r| {
                let rl = RegionLayout {
                    guest_base: r.start_addr().0,
                    size: r.len(),
                    file_offset: off,
                };
                off += r.len();
                rl
            })
            .collect();
        MemoryLayout { regions }
    }

    /// Layout for `(guest address, size)` ranges, e.g. the VMM's arch layout for a memory size.
    /// Ranges must be sorted, non-overlapping, non-empty and 4 KiB aligned.
    pub fn from_ranges(ranges: &[(GuestAddress, usize)]) -> Result<Self> {
        if ranges.is_empty() {
            return Err(MemError::Layout("no regions".into()));
        }
        let mut off = 0u64;
        let mut prev_end = 0u64;
        let mut regions = Vec::with_capacity(ranges.len());
        for (i, &(base, size)) in ranges.iter().enumerate() {
            let (base, size) = (base.0, size as u64);
            if size == 0 || base % PAGE_SIZE as u64 != 0 || size % PAGE_SIZE as u64 != 0 {
                return Err(MemError::Layout(format!(
                    "region {i} ({base:#x}, {size:#x}) is empty or not 4 KiB aligned"
                )));
            }
            if i > 0 && base < prev_end {
                return Err(MemError::Layout(format!(
                    "region {i} at {base:#x} overlaps or is out of order"
                )));
            }
            prev_end = base
                .checked_add(size)
                .ok_or_else(|| MemError::Layout(format!("region {i} overflows")))?;
            regions.push(RegionLayout {
                guest_base: base,
                size,
                file_offset: off,
            });
            off += size;
        }
        Ok(MemoryLayout { regions })
    }

    /// `(guest address, size)` ranges of this layout.
    pub fn ranges(&self) -> Vec<(GuestAddress, usize)> {
        self.regions
            .iter()
            .map(|r| (GuestAddress(r.guest_base), r.size as usize))
            .collect()
    }

    /// Size the memory file must have: the sum of all region sizes (saturating: a layout
    /// whose sizes overflow fails [`validate`](Self::validate)).
    pub fn file_size(&self) -> u64 {
        self.regions
            .iter()
            .fold(0u64, |sum, r| sum.saturating_add(r.size))
    }

    /// Checks a layout read from a state file before anything is mapped: at least one region,
    /// each non-empty with base, size and file offset 4 KiB aligned, in guest-address order
    /// without overlap, and no sum (end address, file end, total size) that overflows. Returns
    /// the length the memory file needs (the largest region end in the file).
    pub fn validate(&self) -> Result<u64> {
        if self.regions.is_empty() {
            return Err(MemError::Layout("no regions".into()));
        }
        let page = PAGE_SIZE as u64;
        let mut prev_end = 0u64;
        let mut needed = 0u64;
        let mut total = 0u64;
        for (i, r) in self.regions.iter().enumerate() {
            if r.size == 0 || r.guest_base % page != 0 || r.size % page != 0 {
                return Err(MemError::Layout(format!(
                    "region {i} ({:#x}, {:#x}) is empty or not 4 KiB aligned",
                    r.guest_base, r.size
                )));
            }
            if r.file_offset % page != 0 {
                return Err(MemError::Layout(format!(
                    "region {i}'s file offset {:#x} is not 4 KiB aligned",
                    r.file_offset
                )));
            }
            if i > 0 && r.guest_base < prev_end {
                return Err(MemError::Layout(format!(
                    "region {i} at {:#x} overlaps or is out of order",
                    r.guest_base
                )));
            }
            let overflow =
                |what: &str| MemError::Layout(format!("region {i}: {what} overflows 64 bits"));
            prev_end = r
                .guest_base
                .checked_add(r.size)
                .ok_or_else(|| overflow("its end address"))?;
            let file_end = r
                .file_offset
                .checked_add(r.size)
                .ok_or_else(|| overflow("its end in the memory file"))?;
            needed = needed.max(file_end);
            total = total
                .checked_add(r.size)
                .ok_or_else(|| overflow("the total memory size"))?;
            if usize::try_from(r.size).is_err() {
                return Err(overflow("its size"));
            }
        }
        Ok(needed)
    }
}

/// What a memory write did. Timing is the caller's business.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Guest memory size in bytes.
    pub total_bytes: u64,
    /// Pages written to the file.
    pub pages_written: u64,
    /// Bytes written to the file.
    pub bytes_written: u64,
    /// Contiguous runs written (one `pwrite` each, split only above 1 GiB).
    pub runs: u64,
    /// Full snapshots: all-zero pages left as holes.
    pub zero_pages_skipped: u64,
}

/// Host view of a region as bytes.
///
/// # Safety
/// Nothing may write the region while the slice lives (vCPUs paused, device emulation quiesced).
/// Reading through a userfaultfd-registered mapping is fine as long as its page server runs.
unsafe fn region_bytes(region: &GuestRegionMmap) -> &[u8] {
    let m: &MmapRegion<AtomicBitmap> = region;
    // SAFETY: the mapping is `m.size()` bytes long and lives as long as `region`; the caller
    // promises there are no concurrent writers.
    unsafe { std::slice::from_raw_parts(m.as_ptr(), m.size()) }
}

fn is_zero(page: &[u8]) -> bool {
    // OR-fold over u128 words vectorizes well; pages are page aligned, so pre/post are empty.
    // SAFETY: any bit pattern is a valid u128.
    let (pre, mid, post) = unsafe { page.align_to::<u128>() };
    pre.iter().all(|&b| b == 0)
        && post.iter().all(|&b| b == 0)
        && mid.iter().fold(0u128, |a, &w| a | w) == 0
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> MemError + 'a {
    move |source| MemError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Writes `data` at `off`, in pieces of at most 1 GiB (Linux caps one write near 2 GiB).
fn write_run(file: &File, data: &[u8], off: u64) -> io::Result<()> {
    const MAX: usize = 1 << 30;
    let mut done = 0;
    while done < data.len() {
        let n = (data.len() - done).min(MAX);
        file.write_all_at(&data[done..done + n], off + done as u64)?;
        done += n;
    }
    Ok(())
}

/// Writes all of guest memory to `path` as a sparse file (all-zero pages become holes).
///
/// The file is built under a temporary name in the same directory, the old `path` is unlinked
/// and the new file renamed into place, so a VM that currently maps an older file at `path`
/// (File backend) keeps its own copy. The data
/// is not fsynced; call [`sync_file`] if it must survive a host crash. Each region's
/// `AtomicBitmap` is cleared, so a following [`write_diff`] holds only later changes; the
/// caller must likewise fetch and discard KVM's dirty log for every slot (`get_dirty_log`).
///
/// Call on a paused VM.
pub fn write_full(mem: &GuestMemoryMmap, path: &Path) -> Result<WriteStats> {
    let layout = MemoryLayout::of(mem);
    let tmp = temp_path(path);
    let res = write_full_inner(mem, &layout, &tmp);
    match res {
        Ok(stats) => {
            // Unlink first: renaming over an existing file makes ext4 (auto_da_alloc) flush
            // the new file's delayed allocations, which costs hundreds of ms for 128 MiB.
            // The state file, written last, is the commit point of a snapshot anyway.
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(io_err(path, "unlink old file")(e));
                }
            }
            fs::rename(&tmp, path).map_err(io_err(path, "rename"))?;
            for region in mem.iter() {
                let m: &MmapRegion<AtomicBitmap> = region;
                m.bitmap().reset();
            }
            Ok(stats)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn write_full_inner(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    tmp: &Path,
) -> Result<WriteStats> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .map_err(io_err(tmp, "create"))?;
    let mut stats = WriteStats {
        total_bytes: layout.file_size(),
        ..Default::default()
    };
    file.set_len(stats.total_bytes)
        .map_err(io_err(tmp, "set_len"))?;
    for (region, rl) in mem.iter().zip(&layout.regions) {
        // SAFETY: the VM is paused while a snapshot is written (documented contract).
        let bytes = unsafe { region_bytes(region) };
        let mut pages = bytes.chunks_exact(PAGE_SIZE).enumerate().peekable();
        while let Some((start, page)) = pages.next() {
            if is_zero(page) {
                stats.zero_pages_skipped += 1;
                continue;
            }
            let mut end = start + 1;
            while pages.next_if(|(_, p)| !is_zero(p)).is_some() {
                end += 1;
            }
            let run = &bytes[start * PAGE_SIZE..end * PAGE_SIZE];
            write_run(&file, run, rl.file_offset + (start * PAGE_SIZE) as u64)
                .map_err(io_err(tmp, "write"))?;
            stats.runs += 1;
            stats.pages_written += (end - start) as u64;
            stats.bytes_written += run.len() as u64;
        }
    }
    Ok(stats)
}

/// Writes the pages dirtied since the last snapshot in place onto `path`, an existing memory
/// file of exactly the guest's size (the base: a full snapshot, possibly with diffs applied).
///
/// A page is written if its bit is set in KVM's dirty log (`kvm_dirty[i]` is the bitmap
/// returned by `VmFd::get_dirty_log` for the slot of region `i`, regions in guest-physical
/// order, one bit per 4 KiB page) or in the region's `AtomicBitmap` (pages the VMM wrote).
/// Pass an empty slice when there is no KVM log. Adjacent dirty pages are written as one run.
/// On success the `AtomicBitmap`s are cleared; on failure their bits are restored.
///
/// Never write a diff onto a file that other running VMs map with the File backend: their
/// clean pages come from the page cache and would change under them. Copy the base first.
///
/// Call on a paused VM.
pub fn write_diff(
    mem: &GuestMemoryMmap,
    kvm_dirty: &[Vec<u64>],
    path: &Path,
) -> Result<WriteStats> {
    let layout = MemoryLayout::of(mem);
    if !kvm_dirty.is_empty() && kvm_dirty.len() != layout.regions.len() {
        return Err(MemError::DirtyBitmap {
            region: kvm_dirty.len().min(layout.regions.len()),
            reason: format!(
                "{} KVM bitmaps for {} regions",
                kvm_dirty.len(),
                layout.regions.len()
            ),
        });
    }
    for (i, rl) in layout.regions.iter().enumerate() {
        let words = (rl.size as usize / PAGE_SIZE).div_ceil(64);
        if let Some(b) = kvm_dirty.get(i) {
            if b.len() < words {
                return Err(MemError::DirtyBitmap {
                    region: i,
                    reason: format!("{} words, region needs {words}", b.len()),
                });
            }
        }
    }
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path, "open diff base"))?;
    let actual = file
        .metadata()
        .map_err(io_err(path, "stat diff base"))?
        .len();
    if actual != layout.file_size() {
        return Err(MemError::BaseSizeMismatch {
            path: path.to_path_buf(),
            expected: layout.file_size(),
            actual,
        });
    }

    // Take the VMM's bits now; give them back if the write fails.
    let vmm_bits: Vec<Vec<u64>> = mem
        .iter()
        .map(|r| {
            let m: &MmapRegion<AtomicBitmap> = r;
            m.bitmap().get_and_reset()
        })
        .collect();
    let res = write_diff_inner(mem, &layout, kvm_dirty, &vmm_bits, &file, path);
    if res.is_err() {
        for (region, bits) in mem.iter().zip(&vmm_bits) {
            let m: &MmapRegion<AtomicBitmap> = region;
            for (w, &word) in bits.iter().enumerate() {
                for_each_run(word, |lo, hi| {
                    for bit in lo..hi {
                        m.bitmap().set_bit(w * 64 + bit);
                    }
                });
            }
        }
    }
    res
}

/// Calls `f(lo, hi)` for each run of set bits `[lo, hi)` in `word`.
fn for_each_run(mut word: u64, mut f: impl FnMut(usize, usize)) {
    let mut base = 0;
    while word != 0 {
        let lo = word.trailing_zeros() as usize;
        let len = (!(word >> lo)).trailing_zeros() as usize;
        f(base + lo, base + lo + len);
        if lo + len >= 64 {
            break;
        }
        word >>= lo + len;
        base += lo + len;
    }
}

/// Page runs `[lo, hi)` dirty in `kvm` OR `vmm`, adjacent runs merged, limited to `npages`.
fn dirty_runs(npages: usize, kvm: Option<&[u64]>, vmm: &[u64]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for w in 0..npages.div_ceil(64) {
        let mut word = kvm.map_or(0, |b| b[w]) | vmm.get(w).copied().unwrap_or(0);
        if w == npages / 64 {
            word &= (1u64 << (npages % 64)) - 1;
        }
        for_each_run(word, |lo, hi| {
            let (lo, hi) = (w * 64 + lo, w * 64 + hi);
            match runs.last_mut() {
                Some(last) if last.1 == lo => last.1 = hi,
                _ => runs.push((lo, hi)),
            }
        });
    }
    runs
}

fn write_diff_inner(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    kvm_dirty: &[Vec<u64>],
    vmm_bits: &[Vec<u64>],
    file: &File,
    path: &Path,
) -> Result<WriteStats> {
    let mut stats = WriteStats {
        total_bytes: layout.file_size(),
        ..Default::default()
    };
    for (i, (region, rl)) in mem.iter().zip(&layout.regions).enumerate() {
        // SAFETY: the VM is paused while a snapshot is written (documented contract).
        let bytes = unsafe { region_bytes(region) };
        let kvm = kvm_dirty.get(i).map(Vec::as_slice);
        for (lo, hi) in dirty_runs(bytes.len() / PAGE_SIZE, kvm, &vmm_bits[i]) {
            let data = &bytes[lo * PAGE_SIZE..hi * PAGE_SIZE];
            write_run(file, data, rl.file_offset + (lo * PAGE_SIZE) as u64)
                .map_err(io_err(path, "write"))?;
            stats.runs += 1;
            stats.pages_written += (hi - lo) as u64;
            stats.bytes_written += data.len() as u64;
        }
    }
    Ok(stats)
}

/// Fsyncs a memory file (the writers above do not).
pub fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path, "fsync"))
}

/// Opens `path` and checks it can back `layout`; returns the file and its length.
pub(crate) fn open_mem_file(path: &Path, layout: &MemoryLayout) -> Result<(File, u64)> {
    let needed = layout.validate()?;
    let file = crate::host_file::open_regular_read_only(path).map_err(io_err(path, "open"))?;
    let len = file.metadata().map_err(io_err(path, "stat"))?.len();
    if len < needed {
        return Err(MemError::FileTooShort {
            path: path.to_path_buf(),
            expected: needed,
            actual: len,
        });
    }
    Ok((file, len))
}

/// File backend: maps each region of `path` `MAP_PRIVATE | MAP_NORESERVE` at its file offset.
///
/// Clean pages are shared through the page cache by every VM restored from the same file;
/// a guest write copies the page privately. The file is opened read-only. Errors if the file is
/// shorter than the layout.
pub fn restore_file(path: &Path, layout: &MemoryLayout) -> Result<GuestMemoryMmap> {
    let (file, _) = open_mem_file(path, layout)?;
    let file = Arc::new(file);
    let mut regions = Vec::with_capacity(layout.regions.len());
    for rl in &layout.regions {
        let size = rl.size as usize;
        let mapping = MmapRegionBuilder::new_with_bitmap(size, AtomicBitmap::with_len(size))
            .with_file_offset(FileOffset::from_arc(file.clone(), rl.file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(MemError::Mmap)?;
        regions.push(region_at(mapping, rl)?);
    }
    GuestMemoryMmap::from_regions(regions).map_err(MemError::Collection)
}

pub(crate) fn region_at(
    mapping: MmapRegion<AtomicBitmap>,
    rl: &RegionLayout,
) -> Result<GuestRegionMmap> {
    GuestRegionMmap::new(mapping, GuestAddress(rl.guest_base))
        .ok_or_else(|| MemError::Layout(format!("region at {:#x} overflows", rl.guest_base)))
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
