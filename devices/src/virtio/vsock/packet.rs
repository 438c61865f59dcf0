//! virtio-vsock packets (virtio spec 5.10.6) on guest memory.
//!
//! A packet is the 44-byte little-endian header `virtio_vsock_hdr` followed by `len` payload
//! bytes. Framing is not assumed: on TX the header may be split over several device-readable
//! descriptors and the payload may share a descriptor with it (Linux) or follow in its own
//! (the test guest); on RX the driver posts device-writable buffers, either one descriptor for
//! header and payload (Linux 6.x) or separate ones.
//!
//! Every descriptor range is checked against guest memory before it is read or written, and a
//! chain with a descriptor in the wrong direction is refused as a whole.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::GuestMemoryMmap;

// The vsock constants are hand-written (virtio spec 5.10.6, Linux's
// `include/uapi/linux/virtio_vsock.h`): `virtio-bindings` 0.2 has no vsock module.

/// Size of `virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// Largest payload accepted from or sent to the guest in one packet.
pub const MAX_PAYLOAD: usize = 64 * 1024;

pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Errors of packet parsing and delivery.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("Descriptor chain is empty, loops, is too long or leaves the descriptor table")]
    BrokenChain,
    #[error("Descriptor {addr:#x}+{len:#x} lies outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("Descriptor in the wrong direction for this queue")]
    WrongDirection,
    #[error("Packet header is shorter than 44 bytes")]
    ShortHeader,
    #[error("Payload length {0} exceeds the limit or the buffers")]
    BadLength(u32),
    #[error("Receive buffer too small for a packet header")]
    SmallBuffer,
}

/// `virtio_vsock_hdr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap_or_default());
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

/// A guest buffer already checked to lie in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    addr: GuestAddress,
    len: u32,
}

/// Collects a chain's descriptors, all in direction `writable`, checked against guest memory.
fn segments(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
) -> Result<Vec<Segment>, PacketError> {
    // The iterator stops after `queue size` descriptors (a loop) and at a descriptor outside
    // the table; either way the last one it yields still has NEXT set.
    let descs: Vec<Descriptor> = chain.collect();
    match descs.last() {
        None => return Err(PacketError::BrokenChain),
        Some(d) if d.has_next() => return Err(PacketError::BrokenChain),
        _ => {}
    }
    let mut out = Vec::with_capacity(descs.len());
    for d in descs {
        if d.is_write_only() != writable {
            return Err(PacketError::WrongDirection);
        }
        if d.len() == 0 {
            continue;
        }
        let ok = d.addr().checked_add(u64::from(d.len())).is_some()
            && GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize);
        if !ok {
            return Err(PacketError::OutsideMemory {
                addr: d.addr().raw_value(),
                len: d.len(),
            });
        }
        out.push(Segment {
            addr: d.addr(),
            len: d.len(),
        });
    }
    Ok(out)
}

/// Copies bytes from the segments, starting `skip` bytes in, into `buf`; returns how many.
fn gather(mem: &GuestMemoryMmap, segs: &[Segment], mut skip: usize, buf: &mut [u8]) -> usize {
    let mut got = 0;
    for s in segs {
        if got == buf.len() {
            break;
        }
        let len = s.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let take = (len - skip).min(buf.len() - got);
        let addr = s.addr.unchecked_add(skip as u64);
        if mem.read_slice(&mut buf[got..got + take], addr).is_err() {
            break;
        }
        got += take;
        skip = 0;
    }
    got
}

/// Copies `data` into the segments starting `skip` bytes in; returns how many bytes fit.
fn scatter(mem: &GuestMemoryMmap, segs: &[Segment], mut skip: usize, data: &[u8]) -> usize {
    let mut put = 0;
    for s in segs {
        if put == data.len() {
            break;
        }
        let len = s.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let take = (len - skip).min(data.len() - put);
        let addr = s.addr.unchecked_add(skip as u64);
        if mem.write_slice(&data[put..put + take], addr).is_err() {
            break;
        }
        put += take;
        skip = 0;
    }
    put
}

/// A packet the guest transmitted: its header and its payload, copied out of guest memory.
#[derive(Debug, PartialEq, Eq)]
pub struct TxPacket {
    pub hdr: Header,
    pub payload: Vec<u8>,
}

/// Reads a TX chain: device-readable descriptors holding the header and `len` payload bytes.
pub fn read_tx(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<TxPacket, PacketError> {
    let segs = segments(mem, chain, false)?;
    let mut raw = [0u8; HDR_LEN];
    if gather(mem, &segs, 0, &mut raw) < HDR_LEN {
        return Err(PacketError::ShortHeader);
    }
    let hdr = Header::from_bytes(&raw);
    let len = hdr.len as usize;
    let total: usize = segs.iter().map(|s| s.len as usize).sum();
    if len > MAX_PAYLOAD || len > total - HDR_LEN {
        return Err(PacketError::BadLength(hdr.len));
    }
    // Only RW carries data; other ops with a length are read as if it were zero.
    let mut payload = Vec::new();
    if hdr.op == OP_RW && len > 0 {
        payload = vec![0u8; len];
        if gather(mem, &segs, HDR_LEN, &mut payload) < len {
            return Err(PacketError::BadLength(hdr.len));
        }
    }
    Ok(TxPacket { hdr, payload })
}

/// A receive buffer the driver posted: device-writable descriptors.
#[derive(Debug)]
pub struct RxBuffer {
    segs: Vec<Segment>,
    capacity: usize,
}

impl RxBuffer {
    /// Checks an RX chain. It must hold at least a header.
    pub fn new(
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<RxBuffer, PacketError> {
        let segs = segments(mem, chain, true)?;
        let capacity: usize = segs.iter().map(|s| s.len as usize).sum();
        if capacity < HDR_LEN {
            return Err(PacketError::SmallBuffer);
        }
        Ok(RxBuffer { segs, capacity })
    }

    /// Payload bytes the buffer can take after the header.
    pub fn payload_room(&self) -> usize {
        (self.capacity - HDR_LEN).min(MAX_PAYLOAD)
    }

    /// Writes the header (with `len` set to the payload's length) and the payload; returns the
    /// bytes written (the used length). The payload must fit [`payload_room`](Self::payload_room).
    pub fn write(&self, mem: &GuestMemoryMmap, hdr: &Header, payload: &[u8]) -> u32 {
        let payload = &payload[..payload.len().min(self.payload_room())];
        let mut h = *hdr;
        h.len = payload.len() as u32;
        let n = scatter(mem, &self.segs, 0, &h.to_bytes());
        let m = if n == HDR_LEN {
            scatter(mem, &self.segs, HDR_LEN, payload)
        } else {
            0
        };
        (n + m) as u32
    }
}

/// Writes `virtio_vsock_event {id: le32}` into an event-queue chain; returns the bytes written.
pub fn write_event(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    id: u32,
) -> Result<u32, PacketError> {
    let segs = segments(mem, chain, true)?;
    let capacity: usize = segs.iter().map(|s| s.len as usize).sum();
    if capacity < 4 {
        return Err(PacketError::SmallBuffer);
    }
    Ok(scatter(mem, &segs, 0, &id.to_le_bytes()) as u32)
}
