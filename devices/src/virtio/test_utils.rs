//! Helpers for device tests: guest memory, mock split queues and chains built in it.

use std::sync::Arc;

use virtio_bindings::virtio_ring;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::VirtioInterrupt;
use crate::GuestMemoryMmap;

/// Descriptor flags: `virtio-bindings`' u32 values as the descriptor's u16 flags field.
pub const VRING_DESC_F_NEXT: u16 = virtio_ring::VRING_DESC_F_NEXT as u16;
pub const VRING_DESC_F_WRITE: u16 = virtio_ring::VRING_DESC_F_WRITE as u16;
/// Device-readable.
pub const R: u16 = 0;
/// Device-writable.
pub const W: u16 = VRING_DESC_F_WRITE;

/// Size of the test guest's memory: one region at 0.
pub const MEM_SIZE: u64 = 0x40_0000;
/// Where the mock queue's rings start.
pub const QUEUE_ADDR: u64 = 0x1000;
/// Mock queue size.
pub const QUEUE_LEN: u16 = 16;

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

pub fn mock_queue(mem: &GuestMemoryMmap) -> MockSplitQueue<'_, GuestMemoryMmap> {
    MockSplitQueue::create(mem, GuestAddress(QUEUE_ADDR), QUEUE_LEN)
}

/// Writes a chain `(addr, len, flags)` at descriptor index `first` (NEXT flags and indices
/// are filled in) and makes its head available.
pub fn add_chain(vq: &MockSplitQueue<'_, GuestMemoryMmap>, first: u16, descs: &[(u64, u32, u16)]) {
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let idx = first + i as u16;
            let (flags, next) = if i + 1 < descs.len() {
                (flags | VRING_DESC_F_NEXT, idx + 1)
            } else {
                (flags & !VRING_DESC_F_NEXT, 0)
            };
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        })
        .collect();
    vq.add_desc_chains(&raw, first).unwrap();
}

/// Writes raw descriptors (flags and next taken as given) at index `first` without touching
/// the available ring.
pub fn write_raw_descs(
    vq: &MockSplitQueue<'_, GuestMemoryMmap>,
    first: u16,
    descs: &[(u64, u32, u16, u16)],
) {
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        vq.desc_table().store(first + i as u16, d).unwrap();
    }
}

/// Makes descriptor `head` available.
pub fn make_available(vq: &MockSplitQueue<'_, GuestMemoryMmap>, mem: &GuestMemoryMmap, head: u16) {
    let idx = vq.avail().idx().load();
    let slot = vq.avail_addr().0 + 4 + 2 * (idx % QUEUE_LEN) as u64;
    mem.write_obj(head, GuestAddress(slot)).unwrap();
    vq.avail().idx().store(idx.wrapping_add(1));
}

/// The used ring index.
pub fn used_idx(vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> u16 {
    vq.used().idx().load()
}

/// Used ring entry `i`: (head id, length).
pub fn used_elem(vq: &MockSplitQueue<'_, GuestMemoryMmap>, i: u16) -> (u32, u32) {
    let e = vq.used().ring().ref_at(i as usize).unwrap().load();
    (e.id(), e.len())
}

pub fn interrupt() -> Arc<VirtioInterrupt> {
    Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()))
}

/// Whether the irqfd was signalled since the last call (consumes the signal).
pub fn irq_fired(intr: &VirtioInterrupt) -> bool {
    intr.irq_evt().read().is_ok()
}
