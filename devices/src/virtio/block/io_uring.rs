//! The asynchronous block engine on io_uring.
//!
//! Each IN/OUT request becomes one READV/WRITEV whose iovecs point straight at the request's
//! validated guest buffers (and nothing else); FLUSH becomes an FSYNC(DATASYNC). `user_data` is
//! the slot of the pending request. The ring signals completions through an eventfd that the
//! event loop watches. Short transfers are resubmitted for the rest; errors and unexpected EOF
//! complete the request with IOERR. At most [`MAX_IN_FLIGHT`] requests are pending; the device
//! stops popping its queue while the engine is full and resumes on completions.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};

use io_uring::{opcode, types, IoUring, Probe};
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::request::{Request, RequestKind, Segment, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use crate::GuestMemoryMmap;

/// Most requests the engine keeps in flight.
pub const MAX_IN_FLIGHT: usize = 128;
const RING_ENTRIES: u32 = 256;
/// Resubmissions allowed after EAGAIN/EINTR before the request fails.
const MAX_RETRIES: u32 = 8;

/// Errors of the io_uring engine.
#[derive(Debug, thiserror::Error)]
pub enum IoUringError {
    #[error(
        "Cannot create an io_uring (kernel too old, or io_uring disabled by sysctl or seccomp)"
    )]
    Create(#[source] io::Error),
    #[error("Cannot probe io_uring opcodes")]
    Probe(#[source] io::Error),
    #[error("The kernel's io_uring lacks READV, WRITEV or FSYNC")]
    MissingOpcode,
    #[error("Cannot create or register the io_uring completion eventfd")]
    EventFd(#[source] io::Error),
    #[error("Request buffers cannot be mapped")]
    Buffers,
    #[error("The io_uring submission queue is full")]
    QueueFull,
    #[error("Cannot submit to the io_uring")]
    Submit(#[source] io::Error),
}

/// Host iovecs pointing into guest memory.
struct IoVecs(Vec<libc::iovec>);

// SAFETY: the raw pointers address guest memory mappings kept alive by the `GuestMemoryMmap`
// stored next to them in the same `Pending`; they are never dereferenced in Rust, only handed to
// the kernel, so moving them to another thread creates no aliasing.
unsafe impl Send for IoVecs {}

/// A request handed to the kernel.
struct Pending {
    head: u16,
    kind: RequestKind,
    status_addr: GuestAddress,
    segs: Vec<Segment>,
    /// Keeps the mappings the iovecs point into alive until the kernel is done.
    mem: GuestMemoryMmap,
    iovecs: IoVecs,
    /// The iovecs of the current (re)submission.
    current: IoVecs,
    fd: RawFd,
    offset: u64,
    total: u64,
    done: u64,
    retries: u32,
}

/// A finished request, ready for its status byte and used-ring entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Completion {
    pub head: u16,
    pub kind: RequestKind,
    pub status_addr: GuestAddress,
    pub status: u8,
    /// Bytes transferred (0 on error).
    pub bytes: u64,
}

/// The io_uring engine of one block device.
pub struct AsyncEngine {
    ring: IoUring,
    completion_evt: EventFd,
    slots: Vec<Option<Pending>>,
    free: Vec<usize>,
}

/// Checks that io_uring works here with the opcodes the engine needs.
pub fn check_support() -> Result<(), IoUringError> {
    AsyncEngine::new().map(|_| ())
}

impl AsyncEngine {
    pub fn new() -> Result<Self, IoUringError> {
        let ring = IoUring::new(RING_ENTRIES).map_err(IoUringError::Create)?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(IoUringError::Probe)?;
        let needed = [
            opcode::Readv::CODE,
            opcode::Writev::CODE,
            opcode::Fsync::CODE,
        ];
        if !needed.iter().all(|&op| probe.is_supported(op)) {
            return Err(IoUringError::MissingOpcode);
        }
        let completion_evt = EventFd::new(EFD_NONBLOCK).map_err(IoUringError::EventFd)?;
        ring.submitter()
            .register_eventfd(completion_evt.as_raw_fd())
            .map_err(IoUringError::EventFd)?;
        Ok(AsyncEngine {
            ring,
            completion_evt,
            slots: (0..MAX_IN_FLIGHT).map(|_| None).collect(),
            free: (0..MAX_IN_FLIGHT).rev().collect(),
        })
    }

    /// The eventfd signalled when completions arrive.
    pub fn completion_fd(&self) -> RawFd {
        self.completion_evt.as_raw_fd()
    }

    /// Signals the completion eventfd without a completion, so the device looks at its queue
    /// again (after a [`drain`](Self::drain) emptied a full engine).
    pub fn wake(&self) {
        if let Err(e) = self.completion_evt.write(1) {
            tracing::warn!("virtio-blk: cannot signal the completion eventfd: {e}");
        }
    }

    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    pub fn in_flight(&self) -> usize {
        MAX_IN_FLIGHT - self.free.len()
    }

    /// Queues `req` (IN, OUT or FLUSH) on `fd`; call [`submit`](Self::submit) after a batch.
    pub fn push(
        &mut self,
        mem: &GuestMemoryMmap,
        fd: RawFd,
        head: u16,
        req: Request,
    ) -> Result<(), IoUringError> {
        let mut iov = Vec::with_capacity(req.data.len());
        for seg in &req.data {
            for slice in GuestMemoryBackend::get_slices(mem, seg.addr, seg.len as usize) {
                let slice = slice.map_err(|_| IoUringError::Buffers)?;
                iov.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
        }
        let slot = self.free.pop().ok_or(IoUringError::QueueFull)?;
        let offset = req.offset();
        let pending = Pending {
            head,
            kind: req.kind,
            status_addr: req.status_addr,
            segs: req.data,
            mem: mem.clone(),
            current: IoVecs(iov.clone()),
            iovecs: IoVecs(iov),
            fd,
            offset,
            total: req.data_len,
            done: 0,
            retries: 0,
        };
        if let Err(e) = self.queue_entry(slot, &pending) {
            self.free.push(slot);
            return Err(e);
        }
        self.slots[slot] = Some(pending);
        Ok(())
    }

    fn queue_entry(&mut self, slot: usize, p: &Pending) -> Result<(), IoUringError> {
        let fd = types::Fd(p.fd);
        let iov = &p.current.0;
        let offset = p.offset + p.done;
        let entry = match p.kind {
            RequestKind::In => opcode::Readv::new(fd, iov.as_ptr(), iov.len() as u32)
                .offset(offset)
                .build(),
            RequestKind::Out => opcode::Writev::new(fd, iov.as_ptr(), iov.len() as u32)
                .offset(offset)
                .build(),
            _ => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(slot as u64);
        // SAFETY: the entry points at `p.current`'s iovec array and, through it, at guest buffers
        // validated by the request parser. Both live in the slot's `Pending` (which also holds a
        // clone of the guest memory, keeping the mappings alive) until the kernel reports the
        // completion; the engine drains all entries before it is dropped.
        unsafe { self.ring.submission().push(&entry) }.map_err(|_| IoUringError::QueueFull)
    }

    /// Hands queued entries to the kernel.
    pub fn submit(&mut self) -> Result<(), IoUringError> {
        self.ring.submit().map(|_| ()).map_err(IoUringError::Submit)
    }

    /// Collects finished requests, resubmitting short or interrupted transfers.
    pub fn reap(&mut self) -> Vec<Completion> {
        let _ = self.completion_evt.read();
        let mut done = Vec::new();
        loop {
            let cqes: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            if cqes.is_empty() {
                break;
            }
            for (user_data, res) in cqes {
                if let Some(c) = self.complete_one(user_data as usize, res) {
                    done.push(c);
                }
            }
        }
        if let Err(e) = self.submit() {
            tracing::error!("virtio-blk: io_uring resubmission failed: {e}");
        }
        done
    }

    fn complete_one(&mut self, slot: usize, res: i32) -> Option<Completion> {
        let mut p = self.slots.get_mut(slot)?.take()?;
        let outcome = if res < 0 {
            let errno = -res;
            if (errno == libc::EAGAIN || errno == libc::EINTR) && p.retries < MAX_RETRIES {
                p.retries += 1;
                None
            } else {
                tracing::warn!(
                    "virtio-blk: {:?} failed: {}",
                    p.kind,
                    io::Error::from_raw_os_error(errno)
                );
                Some(VIRTIO_BLK_S_IOERR)
            }
        } else if p.kind == RequestKind::Flush {
            Some(VIRTIO_BLK_S_OK)
        } else {
            p.done += res as u64;
            if p.done >= p.total {
                Some(VIRTIO_BLK_S_OK)
            } else if res == 0 {
                tracing::warn!(
                    "virtio-blk: unexpected end of file at {}",
                    p.offset + p.done
                );
                Some(VIRTIO_BLK_S_IOERR)
            } else {
                p.current = IoVecs(trim(&p.iovecs.0, p.done));
                None
            }
        };
        let Some(status) = outcome else {
            // Resubmit the rest.
            if let Err(e) = self.queue_entry(slot, &p) {
                tracing::warn!("virtio-blk: cannot resubmit: {e}");
                return Some(self.finish(slot, p, VIRTIO_BLK_S_IOERR));
            }
            self.slots[slot] = Some(p);
            return None;
        };
        Some(self.finish(slot, p, status))
    }

    fn finish(&mut self, slot: usize, p: Pending, status: u8) -> Completion {
        self.free.push(slot);
        if p.kind == RequestKind::In {
            // The kernel wrote these pages behind vm-memory's back: mark them for diff snapshots.
            for seg in &p.segs {
                for slice in
                    GuestMemoryBackend::get_slices(&p.mem, seg.addr, seg.len as usize).flatten()
                {
                    slice.bitmap().mark_dirty(0, slice.len());
                }
            }
        }
        Completion {
            head: p.head,
            kind: p.kind,
            status_addr: p.status_addr,
            status,
            bytes: if status == VIRTIO_BLK_S_OK {
                p.total
            } else {
                0
            },
        }
    }

    /// Waits until nothing is in flight; returns what completed meanwhile.
    pub fn drain(&mut self) -> Vec<Completion> {
        let mut all = Vec::new();
        while self.in_flight() > 0 {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("virtio-blk: io_uring wait failed: {e}");
                break;
            }
            all.extend(self.reap());
        }
        all
    }
}

impl Drop for AsyncEngine {
    fn drop(&mut self) {
        // The kernel must not write into guest memory after we forgot the requests.
        self.drain();
    }
}

/// The iovecs left after the first `done` bytes.
fn trim(iov: &[libc::iovec], mut done: u64) -> Vec<libc::iovec> {
    let mut out = Vec::new();
    for v in iov {
        let len = v.iov_len as u64;
        if done >= len {
            done -= len;
            continue;
        }
        out.push(libc::iovec {
            // The offset stays inside the same guest buffer; wrapping_add never dereferences.
            iov_base: v.iov_base.cast::<u8>().wrapping_add(done as usize).cast(),
            iov_len: (len - done) as usize,
        });
        done = 0;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_skips_and_splits() {
        let mut buf = [0u8; 64];
        let base = buf.as_mut_ptr();
        let iov = vec![
            libc::iovec {
                iov_base: base.cast(),
                iov_len: 16,
            },
            libc::iovec {
                iov_base: base.wrapping_add(16).cast(),
                iov_len: 48,
            },
        ];
        let t = trim(&iov, 20);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].iov_len, 44);
        assert_eq!(t[0].iov_base.cast::<u8>(), base.wrapping_add(20));
        assert_eq!(trim(&iov, 16).len(), 1);
        assert!(trim(&iov, 64).is_empty());
    }

    #[test]
    fn io_uring_available_on_this_host() {
        check_support().expect("io_uring must work on the host kernel");
    }
}
