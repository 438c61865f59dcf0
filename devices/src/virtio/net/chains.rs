//! Turning guest descriptor chains into checked buffer lists, and copying frames between them
//! and device-side buffers.
//!
//! Every descriptor is checked to lie inside guest memory (no wrap-around, one memory region)
//! and to point the right way (RX: device-writable only; TX: device-readable only) before a
//! single byte is copied, so a hostile chain is refused whole and nothing outside guest memory,
//! or outside the chain's own buffers, is ever written.

use std::mem::{offset_of, size_of};
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_ring::{vring_used, vring_used_elem};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::GuestMemoryMmap;

/// Why a chain was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("Descriptor chain loops, is too long or leaves the descriptor table")]
    Broken,
    #[error("Descriptor {addr:#x}+{len:#x} lies outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("Descriptor points the wrong way (device-writable on TX or device-readable on RX)")]
    WrongDirection,
    #[error("Chain holds {0} bytes, more than the device accepts")]
    TooLong(u64),
    #[error("Chain holds {0} bytes, less than a frame needs")]
    TooShort(u64),
}

/// One guest buffer, already checked to lie inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A checked chain: its head index, its buffers and their total length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub segs: Vec<Segment>,
    pub len: u64,
}

/// Checks `chain`: every descriptor `writable` (RX) or readable (TX), inside guest memory, at
/// most `max_len` bytes in all.
pub fn check(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
    max_len: u64,
) -> Result<Chain, ChainError> {
    let head = chain.head_index();
    // The iterator stops after `queue size` descriptors (a loop) and at descriptors it cannot
    // read; in both cases the last one it yields still has NEXT set.
    let descs: Vec<Descriptor> = chain.collect();
    match descs.last() {
        Some(d) if !d.has_next() => {}
        _ => return Err(ChainError::Broken),
    }
    let mut segs = Vec::with_capacity(descs.len());
    let mut len = 0u64;
    for d in &descs {
        if d.is_write_only() != writable {
            return Err(ChainError::WrongDirection);
        }
        if d.len() == 0 {
            continue;
        }
        let outside = ChainError::OutsideMemory {
            addr: d.addr().raw_value(),
            len: d.len(),
        };
        if d.addr().checked_add(u64::from(d.len())).is_none()
            || !GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize)
        {
            return Err(outside);
        }
        len += u64::from(d.len());
        if len > max_len {
            return Err(ChainError::TooLong(len));
        }
        segs.push(Segment {
            addr: d.addr(),
            len: d.len(),
        });
    }
    Ok(Chain { head, segs, len })
}

/// Copies the chain's bytes into `buf` (which must hold `chain.len` bytes); returns the count.
pub fn read_chain(mem: &GuestMemoryMmap, chain: &Chain, buf: &mut [u8]) -> Option<usize> {
    let mut at = 0usize;
    for s in &chain.segs {
        let end = at.checked_add(s.len as usize)?;
        mem.read_slice(buf.get_mut(at..end)?, s.addr).ok()?;
        at = end;
    }
    Some(at)
}

/// Writes `data` from the start of the chain's buffers; returns the bytes written (at most the
/// chain's length).
pub fn write_chain(mem: &GuestMemoryMmap, chain: &Chain, data: &[u8]) -> u32 {
    let mut at = 0usize;
    for s in &chain.segs {
        if at == data.len() {
            break;
        }
        let take = (data.len() - at).min(s.len as usize);
        if mem.write_slice(&data[at..at + take], s.addr).is_err() {
            break;
        }
        at += take;
    }
    at as u32
}

/// Offset of the first element of the used ring (after `flags` and `idx`).
const USED_RING_HEADER: u64 = offset_of!(vring_used, ring) as u64;
/// Size of one used ring element (`id`, `len`).
const USED_ELEM_SIZE: u64 = size_of::<vring_used_elem>() as u64;

/// Returns several chains to the driver and publishes them with one used-index update, so a
/// driver never sees part of a merged frame. Returns false if the used ring cannot be written
/// (then nothing was published beyond what `add_used` managed).
pub fn add_used_batch(queue: &mut Queue, mem: &GuestMemoryMmap, used: &[(u16, u32)]) -> bool {
    let Some((&(last_head, last_len), rest)) = used.split_last() else {
        return true;
    };
    let size = queue.size();
    if size == 0 {
        return false;
    }
    let start = queue.next_used();
    for (i, &(head, len)) in rest.iter().enumerate() {
        if head >= size {
            return false;
        }
        let slot = u64::from(start.wrapping_add(i as u16) % size);
        let Some(addr) =
            GuestAddress(queue.used_ring()).checked_add(USED_RING_HEADER + slot * USED_ELEM_SIZE)
        else {
            return false;
        };
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        if mem.write_slice(&elem, addr).is_err() {
            return false;
        }
    }
    // Make the elements visible before the index that publishes them.
    std::sync::atomic::fence(Ordering::Release);
    queue.set_next_used(start.wrapping_add(rest.len() as u16));
    if queue.add_used(mem, last_head, last_len).is_err() {
        queue.set_next_used(start);
        return false;
    }
    true
}
