//! Page bookkeeping and the uffd ioctls behind the page server.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use userfaultfd::Uffd;

use super::{lock, Counters, Result, ServerError};
use crate::uffd::UffdRegion;
use crate::PAGE_SIZE;

const PAGE: u64 = PAGE_SIZE as u64;

/// A read-only private mapping of the memory file, the source of every UFFDIO_COPY.
struct SrcMap {
    addr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and never remapped while `SrcMap` lives; sharing the
// pointer between threads only lets the kernel read from it.
unsafe impl Send for SrcMap {}
// SAFETY: as above.
unsafe impl Sync for SrcMap {}

impl Drop for SrcMap {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` are exactly what mmap returned; nothing uses them after drop.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// What one fill did.
#[derive(Debug, Default)]
pub(crate) struct Fill {
    /// File ranges installed, `(offset, len)`.
    pub ranges: Vec<(u64, u64)>,
    pub copied: u64,
    pub zeroed: u64,
    pub skipped: u64,
    pub ioctls: u64,
}

/// Per-page bitmaps, indexed by memory-file page.
struct Pages {
    /// Installed in the guest mapping.
    present: Vec<u64>,
    /// Known to hold file data (else a hole) — valid where `classified` is set.
    data: Vec<u64>,
    /// Looked up with SEEK_DATA/SEEK_HOLE already (done lazily, so a restore costs no scan).
    classified: Vec<u64>,
}

/// Region table, source mapping and page bitmaps.
pub(crate) struct Core {
    pub uffd: Arc<Uffd>,
    regions: Vec<UffdRegion>,
    file: File,
    src: SrcMap,
    pages: Mutex<Pages>,
    chunk: u64,
    mem_size: u64,
}

fn bit(map: &[u64], i: u64) -> bool {
    map[(i / 64) as usize] & (1 << (i % 64)) != 0
}

fn set_bits(map: &mut [u64], lo: u64, hi: u64, on: bool) {
    for i in lo..hi {
        let (w, b) = ((i / 64) as usize, i % 64);
        if on {
            map[w] |= 1 << b;
        } else {
            map[w] &= !(1 << b);
        }
    }
}

/// Errors meaning the guest memory no longer exists (VMM exited or unmapped it).
pub(crate) fn is_gone(e: &userfaultfd::Error) -> bool {
    let errno = match e {
        userfaultfd::Error::CopyFailed(n) | userfaultfd::Error::ZeropageFailed(n) => *n as i32,
        userfaultfd::Error::SystemError(n) => *n as i32,
        _ => return false,
    };
    errno == libc::ENOENT || errno == libc::ESRCH
}

fn errno_is(e: &userfaultfd::Error, want: i32) -> bool {
    match e {
        userfaultfd::Error::CopyFailed(n) | userfaultfd::Error::ZeropageFailed(n) => {
            *n as i32 == want
        }
        _ => false,
    }
}

/// Marks pages `[lo, hi)` of `file` as data or hole using SEEK_DATA/SEEK_HOLE. A page with
/// any data in it is data. Any lookup failure (e.g. no SEEK_DATA support) means "data", which
/// is always correct, just slower to serve.
fn classify(file: &File, pages: &mut Pages, lo: u64, hi: u64) {
    let Some(first) = (lo..hi).find(|&p| !bit(&pages.classified, p)) else {
        return;
    };
    let fd = file.as_raw_fd();
    let (mut pos, end) = (first * PAGE, hi * PAGE);
    while pos < end {
        // SAFETY: lseek on a valid fd has no memory-safety implications.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        let data = if data >= 0 {
            data as u64
        } else if io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
            u64::MAX // only a hole from here to EOF
        } else {
            set_bits(&mut pages.data, pos / PAGE, hi, true);
            break;
        };
        if data >= end {
            break; // the rest is a hole: bits already clear
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole >= 0 { hole as u64 } else { end };
        let (dlo, dhi) = (data / PAGE, hole.min(end).div_ceil(PAGE));
        set_bits(&mut pages.data, dlo, dhi, true);
        pos = dhi * PAGE;
    }
    set_bits(&mut pages.classified, first, hi, true);
}

impl Core {
    pub fn new(
        uffd: Arc<Uffd>,
        regions: Vec<UffdRegion>,
        path: &Path,
        chunk: usize,
    ) -> Result<Self> {
        let ferr = |source| ServerError::MemFile {
            path: path.to_path_buf(),
            source,
        };
        for r in &regions {
            if r.page_size != PAGE
                || r.size == 0
                || r.size % PAGE != 0
                || r.offset % PAGE != 0
                || r.base_host_virt_addr % PAGE != 0
            {
                return Err(ServerError::Config(format!(
                    "unsupported region {r:?} (needs 4 KiB pages and alignment)"
                )));
            }
        }
        let mut mem_size = 0u64;
        for r in regions.iter() {
            let end = r.offset.checked_add(r.size).ok_or_else(|| {
                ServerError::Config(format!("region {r:?} ends past 2^64 in the file"))
            })?;
            mem_size = mem_size.max(end);
        }
        if mem_size == 0 {
            return Err(ServerError::Config("no regions to serve".into()));
        }
        let file = crate::host_file::open_regular_read_only(path).map_err(ferr)?;
        let actual = file.metadata().map_err(ferr)?.len();
        if actual < mem_size {
            return Err(ServerError::FileTooShort {
                expected: mem_size,
                actual,
            });
        }
        // SAFETY: a fresh read-only private mapping of a file we hold open; no fixed address.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mem_size as usize,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(ferr(io::Error::last_os_error()));
        }
        let words = (mem_size / PAGE).div_ceil(64) as usize;
        Ok(Core {
            uffd,
            regions,
            file,
            src: SrcMap {
                addr: addr as *const u8,
                len: mem_size as usize,
            },
            pages: Mutex::new(Pages {
                present: vec![0; words],
                data: vec![0; words],
                classified: vec![0; words],
            }),
            chunk: chunk as u64,
            mem_size,
        })
    }

    /// Bytes of memory-file space the regions cover.
    pub fn mem_size(&self) -> u64 {
        self.mem_size
    }

    /// The `chunk`-aligned file window around a faulting page, clipped to its region.
    pub fn fault_window(&self, page_addr: u64) -> Option<(u64, u64)> {
        let r = self.regions.iter().find(|r| {
            page_addr >= r.base_host_virt_addr && page_addr < r.base_host_virt_addr + r.size
        })?;
        let off = page_addr - r.base_host_virt_addr;
        let start = off & !(self.chunk - 1);
        let end = (start + self.chunk).min(r.size);
        Some((r.offset + start, end - start))
    }

    /// Host address of a file offset.
    pub fn file_to_host(&self, off: u64) -> Option<u64> {
        self.region_of(off)
            .map(|r| r.base_host_virt_addr + (off - r.offset))
    }

    fn region_index(&self, off: u64) -> Option<usize> {
        self.regions
            .iter()
            .position(|r| off >= r.offset && off < r.offset + r.size)
    }

    fn region_of(&self, off: u64) -> Option<&UffdRegion> {
        self.region_index(off).map(|i| &self.regions[i])
    }

    /// The host range `[start, end)` was discarded (UFFD_EVENT_REMOVE): forget its pages.
    pub fn forget(&self, start: u64, end: u64) {
        let present = &mut lock(&self.pages).present;
        for r in &self.regions {
            let lo = start.max(r.base_host_virt_addr);
            let hi = end.min(r.base_host_virt_addr + r.size);
            if lo < hi {
                let flo = (r.offset + lo - r.base_host_virt_addr).div_ceil(PAGE);
                let fhi = (r.offset + hi - r.base_host_virt_addr) / PAGE;
                set_bits(present, flo, fhi.max(flo), false);
            }
        }
    }

    /// Installs every missing page of file range `[off, off+len)` (which may span regions).
    pub fn fill_file_range(
        &self,
        off: u64,
        len: u64,
        wake: bool,
        counters: &Counters,
    ) -> Result<Fill> {
        let mut fill = Fill::default();
        let mut pages = lock(&self.pages);
        let first = off / PAGE;
        let end = (off + len).div_ceil(PAGE).min(self.mem_size / PAGE);
        classify(&self.file, &mut pages, first, end);
        // Segments of missing pages: (first page, end page, region index, is data).
        let mut segs: Vec<(u64, u64, usize, bool)> = Vec::new();
        for page in first..end {
            if bit(&pages.present, page) {
                fill.skipped += 1;
                continue;
            }
            let Some(ri) = self.region_index(page * PAGE) else {
                continue;
            };
            let data = bit(&pages.data, page);
            match segs.last_mut() {
                Some(l) if l.1 == page && l.2 == ri && l.3 == data => l.1 += 1,
                _ => segs.push((page, page + 1, ri, data)),
            }
        }
        // Holes are always zero-mapped: copying them instead (to save ioctls in mixed windows)
        // measured slower, since reading a hole through the source mapping allocates and
        // faults in a page-cache page per 4 KiB.
        for (lo, hi, ri, data) in segs {
            let r = &self.regions[ri];
            let (foff, flen) = (lo * PAGE, (hi - lo) * PAGE);
            let dst = r.base_host_virt_addr + (foff - r.offset);
            if data {
                fill.ioctls += self.copy(dst, foff, flen, wake, counters)?;
                fill.copied += hi - lo;
            } else {
                fill.ioctls += self.zero(dst, flen, wake, counters)?;
                fill.zeroed += hi - lo;
            }
            set_bits(&mut pages.present, lo, hi, true);
            fill.ranges.push((foff, flen));
        }
        Ok(fill)
    }

    fn ioctl_err(op: &'static str, addr: u64, len: u64, source: userfaultfd::Error) -> ServerError {
        ServerError::Ioctl {
            op,
            addr,
            len,
            source,
        }
    }

    /// UFFDIO_COPY from the file mapping; pages that already exist are skipped.
    fn copy(&self, dst: u64, foff: u64, len: u64, wake: bool, c: &Counters) -> Result<u64> {
        let (mut done, mut ioctls) = (0, 0);
        while done < len {
            ioctls += 1;
            // SAFETY: the source lies inside the file mapping (`foff + len <= mem_size`, checked
            // by the caller's clipping) and the destination inside a registered region; the
            // kernel validates both and never writes outside [dst, dst+len).
            let r = unsafe {
                self.uffd.copy(
                    self.src.addr.add((foff + done) as usize) as *const libc::c_void,
                    (dst + done) as *mut libc::c_void,
                    (len - done) as usize,
                    wake,
                )
            };
            match r {
                Ok(n) if n > 0 => done += n as u64,
                // A partial copy (it stopped at an existing page); the errno-only EAGAIN of a
                // changing mm reports a negative count, which lands in the arm below.
                Err(userfaultfd::Error::PartiallyCopied(n)) if n > 0 && n as u64 <= len - done => {
                    done += n as u64
                }
                Err(e) if errno_is(&e, libc::EEXIST) => {
                    c.eexist.fetch_add(1, Ordering::Relaxed);
                    done += PAGE;
                }
                Ok(_) | Err(userfaultfd::Error::PartiallyCopied(_)) => {
                    return Err(Self::ioctl_err(
                        "UFFDIO_COPY",
                        dst + done,
                        len - done,
                        userfaultfd::Error::PartiallyCopied(0),
                    ))
                }
                Err(e) => return Err(Self::ioctl_err("UFFDIO_COPY", dst + done, len - done, e)),
            }
        }
        Ok(ioctls)
    }

    /// UFFDIO_ZEROPAGE; falls back to single pages when a multi-page call is cut short
    /// (the crate does not report partial progress for zeropage).
    fn zero(&self, dst: u64, len: u64, wake: bool, c: &Counters) -> Result<u64> {
        let (mut done, mut ioctls, mut step) = (0, 0, len);
        while done < len {
            ioctls += 1;
            let n = step.min(len - done);
            // SAFETY: the destination lies inside a registered region.
            let r = unsafe {
                self.uffd
                    .zeropage((dst + done) as *mut libc::c_void, n as usize, wake)
            };
            match r {
                Ok(k) if k > 0 => done += k as u64,
                Err(e) if errno_is(&e, libc::EEXIST) && n == PAGE => {
                    c.eexist.fetch_add(1, Ordering::Relaxed);
                    done += PAGE;
                }
                Err(e)
                    if n > PAGE && (errno_is(&e, libc::EEXIST) || errno_is(&e, libc::EAGAIN)) =>
                {
                    step = PAGE;
                }
                Ok(_) => {
                    return Err(Self::ioctl_err(
                        "UFFDIO_ZEROPAGE",
                        dst + done,
                        n,
                        userfaultfd::Error::PartiallyCopied(0),
                    ))
                }
                Err(e) => return Err(Self::ioctl_err("UFFDIO_ZEROPAGE", dst + done, n, e)),
            }
        }
        Ok(ioctls)
    }
}
