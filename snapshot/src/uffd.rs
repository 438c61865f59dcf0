//! The Uffd restore backend: anonymous guest memory whose missing pages are resolved through
//! userfaultfd.
//!
//! # The uffd setup used
//! ```text
//! UffdBuilder::new()
//!     .close_on_exec(true)
//!     .non_blocking(true)          // the server polls it together with a stop eventfd
//!     .user_mode_only(false)       // KVM touches guest memory from the kernel (GUP);
//!                                  // with UFFD_USER_MODE_ONLY those faults would SIGBUS/EFAULT
//!     .require_features(EVENT_REMOVE)   // balloon / MADV_DONTNEED: forget discarded pages
//!     .create()
//! // then per region: register() (MISSING mode) must report COPY | ZEROPAGE | WAKE
//! // (UFFDIO_API itself only lists API/REGISTER/UNREGISTER)
//! ```
//! The crate opens `/dev/userfaultfd` when it exists (this needs read/write access to the
//! device node, e.g. root or a node created for the jailed user) and otherwise falls back to
//! the `userfaultfd(2)` syscall, which without `UFFD_USER_MODE_ONLY` requires
//! `CAP_SYS_PTRACE` or `vm.unprivileged_userfaultfd = 1`.
//!
//! Guest regions are `MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE` mappings registered in
//! MISSING mode. Keep the returned handle (and with it the uffd) alive as long as the guest
//! memory: if the uffd closes, missing pages silently read as zeros.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use userfaultfd::{FeatureFlags, IoctlFlags, Uffd, UffdBuilder};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::{MmapRegionBuilder, NewBitmap};

use crate::handler::{send_to_handler, HandlerError};
use crate::memory::{region_at, MemError, MemoryLayout};
use crate::server::{PageServer, ServerConfig, ServerError};
use crate::{GuestMemoryMmap, PAGE_SIZE};

/// Errors from setting up Uffd-backed memory.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// Creating the userfaultfd failed.
    #[error("cannot create userfaultfd: {0}")]
    Create(#[source] userfaultfd::Error),
    /// Registering a region failed.
    #[error("cannot register {addr:#x}+{len:#x} with userfaultfd: {source}")]
    Register {
        /// Host address.
        addr: u64,
        /// Length.
        len: u64,
        /// The error.
        source: userfaultfd::Error,
    },
    /// The kernel does not offer an ioctl we need on the registered range.
    #[error("userfaultfd range lacks ioctls: has {0:?}, needs COPY, ZEROPAGE and WAKE")]
    MissingIoctls(IoctlFlags),
    /// Mapping or assembling guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemError),
    /// Starting the in-process page server failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// Handing the uffd to an external handler failed.
    #[error(transparent)]
    Handler(#[from] HandlerError),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, UffdError>;

/// One guest region as described to a page server; also the element of the JSON array sent to
/// an external handler (Firecracker's `GuestRegionUffdMapping`; all values in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UffdRegion {
    /// Host virtual address of the region in the VMM.
    pub base_host_virt_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Offset of the region in the memory file.
    pub offset: u64,
    /// Page size in bytes (4096).
    pub page_size: u64,
}

/// Anonymous guest memory registered with a uffd, not yet served.
#[derive(Debug)]
pub struct UffdMemory {
    /// The guest memory (each region has an `AtomicBitmap`).
    pub mem: GuestMemoryMmap,
    /// The uffd the regions are registered with.
    pub uffd: Uffd,
    /// The regions, for a page server or handler.
    pub regions: Vec<UffdRegion>,
}

/// Uffd-backed memory served by a page-server thread in this process.
#[derive(Debug)]
pub struct InProcessUffd {
    /// The guest memory.
    pub mem: GuestMemoryMmap,
    /// The server (owns the uffd). Use it for prefetch, stats, recording and hydrate.
    pub server: PageServer,
}

/// Uffd-backed memory served by an external handler process.
#[derive(Debug)]
pub struct ExternalUffd {
    /// The guest memory.
    pub mem: GuestMemoryMmap,
    /// Our copy of the uffd: while we hold it a dead handler makes faults hang instead of
    /// silently reading zeros.
    pub uffd: Uffd,
    /// The regions sent to the handler.
    pub regions: Vec<UffdRegion>,
    /// The connection; the handler stops when it closes (i.e. when this VMM exits).
    pub conn: UnixStream,
}

/// Creates a uffd with the setup described in the module docs.
pub fn new_uffd() -> Result<Uffd> {
    UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(false)
        .require_features(FeatureFlags::EVENT_REMOVE)
        .create()
        .map_err(UffdError::Create)
}

/// Maps anonymous regions for `layout` and registers them with a new uffd.
pub fn create_uffd_memory(layout: &MemoryLayout) -> Result<UffdMemory> {
    layout.validate().map_err(UffdError::Memory)?;
    let uffd = new_uffd()?;
    let mut regions = Vec::with_capacity(layout.regions.len());
    let mut infos = Vec::with_capacity(layout.regions.len());
    for rl in &layout.regions {
        let size = rl.size as usize;
        let mapping = MmapRegionBuilder::new_with_bitmap(size, AtomicBitmap::with_len(size))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| UffdError::Memory(MemError::Mmap(e)))?;
        let addr = mapping.as_ptr();
        let ioctls = uffd
            .register(addr.cast(), size)
            .map_err(|source| UffdError::Register {
                addr: addr as u64,
                len: rl.size,
                source,
            })?;
        let needed = IoctlFlags::COPY | IoctlFlags::ZEROPAGE | IoctlFlags::WAKE;
        if !ioctls.contains(needed) {
            return Err(UffdError::MissingIoctls(ioctls));
        }
        infos.push(UffdRegion {
            base_host_virt_addr: addr as u64,
            size: rl.size,
            offset: rl.file_offset,
            page_size: PAGE_SIZE as u64,
        });
        regions.push(region_at(mapping, rl)?);
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(MemError::Collection)?;
    Ok(UffdMemory {
        mem,
        uffd,
        regions: infos,
    })
}

/// Uffd restore served in-process from the memory file `mem_file`. Errors if the file is
/// shorter than the layout. Prefetch through `server` before resuming the vCPUs.
pub fn restore_uffd_in_process(
    layout: &MemoryLayout,
    mem_file: &Path,
    config: ServerConfig,
) -> Result<InProcessUffd> {
    let um = create_uffd_memory(layout)?;
    let server = PageServer::start(Arc::new(um.uffd), um.regions, mem_file, config)?;
    Ok(InProcessUffd {
        mem: um.mem,
        server,
    })
}

/// Uffd restore served by an external handler listening on the Unix socket `socket`
/// (Firecracker's protocol, see [`crate::handler`]).
pub fn restore_uffd_external(layout: &MemoryLayout, socket: &Path) -> Result<ExternalUffd> {
    let um = create_uffd_memory(layout)?;
    let conn = send_to_handler(socket, &um.uffd, &um.regions)?;
    Ok(ExternalUffd {
        mem: um.mem,
        uffd: um.uffd,
        regions: um.regions,
        conn,
    })
}
