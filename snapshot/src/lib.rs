//! Tartarus snapshots: everything that is not KVM plumbing.
//!
//! * [`state`]: the checksummed, versioned state file ([`write_state_file`],
//!   [`read_state_file`], [`describe`]) and the [`Persist`] trait for components.
//! * [`memory`]: the guest-memory file ([`write_full`], [`write_diff`]) and the File restore
//!   backend ([`restore_file`]).
//! * [`uffd`]: the Uffd restore backend: anonymous guest memory registered with userfaultfd,
//!   served by an in-process [`PageServer`] or handed to an external handler over a Unix
//!   socket (Firecracker's protocol, see [`handler`]).
//! * [`server`] / [`working_set`]: the page server, working-set recording and prefetch.
//!
//! The VMM captures and applies vCPU, VM and device state itself; this crate only stores that
//! state and moves guest memory between files and mappings.
//!
//! # Create (on a paused VM)
//! ```text
//! let layout = MemoryLayout::of(&mem);          // store it in your state struct
//! write_state_file(&snapshot_path, &state)?;    // atomic, fsynced
//! Full: write_full(&mem, &mem_file_path)?;      // then discard KVM's dirty log for every slot
//! Diff: let logs = slots.map(|s| vm.get_dirty_log(s, size))?;
//!       write_diff(&mem, &logs, &mem_file_path)?;   // in place onto the base
//! ```
//! # Load
//! ```text
//! let state: MyState = read_state_file(&snapshot_path)?;
//! File:           let mem = restore_file(&mem_file, &state.layout)?;
//! Uffd (own):     let r = restore_uffd_in_process(&state.layout, &mem_file, ServerConfig::default())?;
//!                 r.server.prefetch_file(&ws_path)?;   // optional, before resuming vCPUs
//! Uffd (handler): let r = restore_uffd_external(&state.layout, &socket_path)?;
//! ```
//! Keep the returned handle alive as long as the guest memory (see [`uffd`]).

#![deny(missing_docs)]

pub mod crc64;
pub mod handler;
pub mod host_file;
pub mod memory;
pub mod server;
pub mod state;
pub mod uffd;
pub mod working_set;

#[cfg(test)]
pub(crate) mod test_util;

/// Guest memory as the rest of Tartarus uses it (identical to `devices::GuestMemoryMmap`).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
/// One region of [`GuestMemoryMmap`].
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<vm_memory::bitmap::AtomicBitmap>;

/// Page granularity of memory files, dirty logs and page serving (x86-64 base pages).
pub const PAGE_SIZE: usize = 4096;

pub use handler::{receive_from_vmm, send_to_handler, HandlerError};
pub use memory::{
    restore_file, sync_file, write_diff, write_full, MemError, MemoryLayout, RegionLayout,
    WriteStats,
};
pub use server::{PageServer, RecordConfig, ServerConfig, ServerError, ServerStats};
pub use state::{
    describe, read_state_file, write_state_file, Persist, StateError, Summary, FORMAT_MAJOR,
    FORMAT_MINOR,
};
pub use uffd::{
    create_uffd_memory, restore_uffd_external, restore_uffd_in_process, ExternalUffd,
    InProcessUffd, UffdError, UffdMemory, UffdRegion,
};
pub use working_set::{PrefetchStats, WorkingSet, WorkingSetError};
