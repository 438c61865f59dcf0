//! Parsing and validating virtio-blk requests (virtio spec 5.2.6), and executing them with the
//! synchronous engine.
//!
//! A request is a descriptor chain: device-readable bytes first (a 16-byte header `{type: le32,
//! reserved: le32, sector: le64}`, then data for OUT), then device-writable bytes (data for IN
//! and GET_ID, then one status byte, the chain's very last byte). Framing is not assumed (spec
//! 2.6.4): the header may be split over descriptors or share one with OUT data, and the status
//! byte may share the last descriptor with IN data.
//!
//! Every descriptor range is checked against guest memory before anything is read or written.
//! A request whose status byte is not a device-writable byte of guest memory cannot be answered:
//! it is returned to the driver with used length 0 and counted. Any other malformed request gets
//! `VIRTIO_BLK_S_IOERR` (or `VIRTIO_BLK_S_UNSUPP` for unknown types).

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::mem::{offset_of, size_of};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile, WriteVolatile};

use crate::GuestMemoryMmap;

use virtio_bindings::virtio_blk::{self as b, virtio_blk_outhdr};

/// Hand-written: the Linux uapi headers `virtio-bindings` is made from do not export the sector
/// size (the spec fixes it at 512 bytes).
pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;

pub use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};

/// The bindings' u32 status values narrowed to the status byte; a value that does not fit
/// fails the build.
const fn status_byte(status: u32) -> u8 {
    assert!(status <= u8::MAX as u32);
    status as u8
}
pub const VIRTIO_BLK_S_OK: u8 = status_byte(b::VIRTIO_BLK_S_OK);
pub const VIRTIO_BLK_S_IOERR: u8 = status_byte(b::VIRTIO_BLK_S_IOERR);
pub const VIRTIO_BLK_S_UNSUPP: u8 = status_byte(b::VIRTIO_BLK_S_UNSUPP);

/// Length of the GET_ID answer.
pub const VIRTIO_BLK_ID_BYTES: usize = b::VIRTIO_BLK_ID_BYTES as usize;
/// Length of the request header (`virtio_blk_outhdr`).
pub const HEADER_LEN: usize = size_of::<virtio_blk_outhdr>();

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("Descriptor chain is empty, loops, is too long or leaves the descriptor table")]
    BrokenChain,
    #[error("Last descriptor is not a device-writable status byte")]
    StatusNotWritable,
    #[error("Status byte lies outside guest memory")]
    StatusOutsideMemory,
    #[error("Descriptor {addr:#x}+{len:#x} lies outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error(
        "Device-readable descriptor after a device-writable one, or data in the wrong direction"
    )]
    WrongDirection,
    #[error("Request header is shorter than 16 bytes")]
    ShortHeader,
    #[error("Data length {0} is zero or not a multiple of 512")]
    BadDataLength(u64),
    #[error("Sectors {sector}+{count} lie beyond the end of the disk")]
    OutOfRange { sector: u64, count: u64 },
    #[error("Write to a read-only drive")]
    ReadOnly,
    #[error("Unsupported request type {0}")]
    Unsupported(u32),
}

impl RequestError {
    /// The status the driver gets for this error.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// A refused request: where its status byte goes, if anywhere.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected {
    pub status_addr: Option<GuestAddress>,
    pub error: RequestError,
}

/// The kind of a valid request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    In,
    Out,
    Flush,
    GetId,
}

/// A guest buffer, already checked to lie in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A validated request.
#[derive(Debug)]
pub struct Request {
    pub kind: RequestKind,
    pub sector: u64,
    /// For IN/OUT: the data buffers, `data_len` bytes in total, a multiple of 512 and inside the
    /// disk. For GET_ID: the answer buffers.
    pub data: Vec<Segment>,
    pub data_len: u64,
    pub status_addr: GuestAddress,
}

impl Request {
    /// Byte offset of the request on the disk.
    pub fn offset(&self) -> u64 {
        self.sector << SECTOR_SHIFT
    }
}

/// Splits `segs` at byte `at`: returns the part after it.
fn skip_bytes(segs: &[Segment], mut at: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    for s in segs {
        if at >= s.len as u64 {
            at -= s.len as u64;
            continue;
        }
        out.push(Segment {
            addr: s.addr.unchecked_add(at),
            len: s.len - at as u32,
        });
        at = 0;
    }
    out
}

fn total_len(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| s.len as u64).sum()
}

/// Validates the chain starting at its head. `nsectors` is the disk size.
pub fn parse(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    nsectors: u64,
    read_only: bool,
) -> Result<Request, Rejected> {
    // The iterator stops after `queue size` descriptors (loops) and at unreadable descriptors;
    // either way the last one it yields still has NEXT set.
    let descs: Vec<Descriptor> = chain.collect();
    let skip = |error| Rejected {
        status_addr: None,
        error,
    };
    let Some(last) = descs.last() else {
        return Err(skip(RequestError::BrokenChain));
    };
    if last.has_next() {
        return Err(skip(RequestError::BrokenChain));
    }
    if !last.is_write_only() || last.len() == 0 {
        return Err(skip(RequestError::StatusNotWritable));
    }
    let status_addr = match last.addr().checked_add(last.len() as u64 - 1) {
        Some(a) if GuestMemoryBackend::check_range(mem, a, 1) => a,
        _ => return Err(skip(RequestError::StatusOutsideMemory)),
    };
    let reject = |error| Rejected {
        status_addr: Some(status_addr),
        error,
    };

    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let n = descs.len();
    for (i, d) in descs.iter().enumerate() {
        let len = if i == n - 1 { d.len() - 1 } else { d.len() };
        if len == 0 {
            continue;
        }
        let end_ok = d.addr().checked_add(len as u64).is_some();
        if !end_ok || !GuestMemoryBackend::check_range(mem, d.addr(), len as usize) {
            return Err(reject(RequestError::OutsideMemory {
                addr: d.addr().raw_value(),
                len,
            }));
        }
        let seg = Segment {
            addr: d.addr(),
            len,
        };
        if d.is_write_only() {
            writable.push(seg);
        } else if writable.is_empty() {
            readable.push(seg);
        } else {
            return Err(reject(RequestError::WrongDirection));
        }
    }

    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    for s in &readable {
        let take = (HEADER_LEN - got).min(s.len as usize);
        if mem
            .read_slice(&mut header[got..got + take], s.addr)
            .is_err()
        {
            return Err(reject(RequestError::OutsideMemory {
                addr: s.addr.raw_value(),
                len: s.len,
            }));
        }
        got += take;
        if got == HEADER_LEN {
            break;
        }
    }
    if got < HEADER_LEN {
        return Err(reject(RequestError::ShortHeader));
    }
    const TYPE_AT: usize = offset_of!(virtio_blk_outhdr, type_);
    const SECTOR_AT: usize = offset_of!(virtio_blk_outhdr, sector);
    let req_type = u32::from_le_bytes(header[TYPE_AT..TYPE_AT + 4].try_into().unwrap_or_default());
    let sector = u64::from_le_bytes(
        header[SECTOR_AT..SECTOR_AT + 8]
            .try_into()
            .unwrap_or_default(),
    );
    let out_data = skip_bytes(&readable, HEADER_LEN as u64);

    let (kind, data) = match req_type {
        VIRTIO_BLK_T_IN if out_data.is_empty() => (RequestKind::In, writable),
        VIRTIO_BLK_T_OUT if writable.is_empty() => (RequestKind::Out, out_data),
        VIRTIO_BLK_T_GET_ID if out_data.is_empty() => (RequestKind::GetId, writable),
        VIRTIO_BLK_T_FLUSH => (RequestKind::Flush, Vec::new()),
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_GET_ID => {
            return Err(reject(RequestError::WrongDirection))
        }
        t => return Err(reject(RequestError::Unsupported(t))),
    };
    let data_len = total_len(&data);
    match kind {
        RequestKind::In | RequestKind::Out => {
            if data_len == 0 || !data_len.is_multiple_of(SECTOR_SIZE) {
                return Err(reject(RequestError::BadDataLength(data_len)));
            }
            let count = data_len >> SECTOR_SHIFT;
            if sector.checked_add(count).is_none_or(|end| end > nsectors) {
                return Err(reject(RequestError::OutOfRange { sector, count }));
            }
            if kind == RequestKind::Out && read_only {
                return Err(reject(RequestError::ReadOnly));
            }
        }
        RequestKind::GetId if data_len == 0 => {
            return Err(reject(RequestError::BadDataLength(0)));
        }
        _ => {}
    }
    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status_addr,
    })
}

/// Writes the GET_ID answer (`id`, zero padded to 20 bytes, truncated to the buffers); returns
/// the bytes written.
pub fn write_id(mem: &GuestMemoryMmap, req: &Request, id: &[u8; VIRTIO_BLK_ID_BYTES]) -> u32 {
    let mut written = 0usize;
    for s in &req.data {
        if written == id.len() {
            break;
        }
        let take = (id.len() - written).min(s.len as usize);
        if mem
            .write_slice(&id[written..written + take], s.addr)
            .is_err()
        {
            break;
        }
        written += take;
    }
    written as u32
}

/// Executes an IN or OUT request on `file` through vm-memory's volatile I/O (which marks the
/// pages it writes dirty). Returns the bytes moved.
pub fn rw_sync(mem: &GuestMemoryMmap, req: &Request, file: &mut File) -> std::io::Result<u64> {
    file.seek(SeekFrom::Start(req.offset()))?;
    for seg in &req.data {
        for slice in GuestMemoryBackend::get_slices(mem, seg.addr, seg.len as usize) {
            let mut slice = slice.map_err(std::io::Error::other)?;
            let res = match req.kind {
                RequestKind::In => file.read_exact_volatile(&mut slice),
                _ => file.write_all_volatile(&slice),
            };
            res.map_err(std::io::Error::other)?;
        }
    }
    Ok(req.data_len)
}
