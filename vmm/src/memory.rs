//! Guest memory: anonymous mappings laid out around the MMIO gap, registered with KVM.

use std::ffi::CStr;

use devices::GuestMemoryMmap;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::layout::ram_ranges;

/// Name the guest-memory mappings carry in /proc/<pid>/smaps (`[anon:tartarus-guest-mem]`), so
/// operators and benchmarks can tell guest pages from the VMM's own.
pub const GUEST_MEM_NAME: &CStr = c"tartarus-guest-mem";

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("Failed to allocate {0} MiB of guest memory")]
    Allocate(u64, #[source] vm_memory::mmap::FromRangesError),
    #[error("Failed to register guest memory slot {0} with KVM")]
    Register(u32, #[source] kvm_ioctls::Error),
}

/// Allocates `mem_mib` MiB of guest RAM.
pub fn create(mem_mib: usize) -> Result<GuestMemoryMmap, MemoryError> {
    let bytes = (mem_mib as u64) << 20;
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(bytes)
        .into_iter()
        .map(|(start, size)| (GuestAddress(start), size as usize))
        .collect();
    let mem =
        GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Allocate(bytes >> 20, e))?;
    for region in mem.iter() {
        name_mapping(region.as_ptr() as usize, region.len() as usize);
    }
    Ok(mem)
}

/// Labels an anonymous mapping; best effort (kernels without CONFIG_ANON_VMA_NAME refuse it).
fn name_mapping(addr: usize, len: usize) {
    // SAFETY: PR_SET_VMA_ANON_NAME only attaches a name to the mapping [addr, addr+len) of this
    // process; the name is a valid NUL-terminated string that the kernel copies.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_VMA,
            libc::PR_SET_VMA_ANON_NAME,
            addr,
            len,
            GUEST_MEM_NAME.as_ptr(),
        )
    };
    if rc != 0 {
        tracing::debug!(
            "could not name the guest memory mapping: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Registers every region with KVM, one slot each, with dirty logging when asked.
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap, track_dirty: bool) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let region_desc = kvm_userspace_memory_region {
            slot,
            flags: if track_dirty {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region's host mapping stays alive as long as `mem`, which the running VM
        // owns for as long as the VM fd exists; the guest range is one KVM does not map yet.
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(|e| MemoryError::Register(slot, e))?;
    }
    Ok(())
}
