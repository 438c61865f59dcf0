//! virtio-blk: a disk backed by a host file, with a synchronous engine (volatile reads/writes
//! through vm-memory) and an asynchronous one (io_uring).
//!
//! One request queue of [`QUEUE_SIZE`] entries. Features offered: VERSION_1, RING_EVENT_IDX,
//! SEG_MAX, BLK_SIZE, FLUSH (cache type Writeback only), RO (read-only drives).
//!
//! Construct with [`Block::new`] from a [`BlockConfig`] (the VMM maps the `PUT /drives` body onto
//! it; `is_root_device` and `partuuid` only affect the kernel command line and stay in the VMM).
//! For `PATCH /drives`, call [`Block::update_backing_file`] and/or [`Block::update_rate_limiter`]
//! on the VMM thread; both are valid before and after activation.

mod io_uring;
pub mod request;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_hostile;

use std::fs::File;
use std::io;
use std::mem::offset_of;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_blk::virtio_blk_config;
use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT};
use vm_memory::{Bytes, GuestAddress};

pub use self::io_uring::{check_support as check_io_uring_support, IoUringError, MAX_IN_FLIGHT};
use self::io_uring::{AsyncEngine, Completion};
use self::request::{
    parse, rw_sync, Request, RequestKind, SECTOR_SHIFT, SECTOR_SIZE, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
};
use super::{
    read_config_bytes, ActivateError, Features, InterruptKind, VirtioDevice, VirtioInterrupt,
    TYPE_BLOCK,
};
use crate::rate_limiter::{
    BucketUpdate, RateLimiter, RateLimiterConfig, RateLimiterError, TokenType,
};
use crate::GuestMemoryMmap;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments per request (queue size minus header and status).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

pub use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};

/// The part of `virtio_blk_config` the device fills in: capacity, size_max (0: not offered),
/// seg_max, geometry (0: not offered) and blk_size. Fields after blk_size belong to features
/// not offered and read as zero.
const CONFIG_LEN: usize = offset_of!(virtio_blk_config, physical_block_exp);

/// Index of the rate limiter's timer in [`VirtioDevice::aux_event_fds`].
pub const AUX_RATE_LIMITER: usize = 0;
/// Index of the io_uring completion eventfd in [`VirtioDevice::aux_event_fds`] (Async only).
pub const AUX_IO_URING: usize = 1;

/// Errors of virtio-blk set-up and updates.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("Cannot open backing file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot read the size of backing file {path}")]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot create the rate limiter")]
    RateLimiter(#[source] RateLimiterError),
    #[error("io_engine Async is not available on this host")]
    IoUring(#[source] IoUringError),
}

/// Host cache behaviour (Firecracker's `cache_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheType {
    /// FLUSH is not offered; writes stay in the host page cache.
    #[default]
    Unsafe,
    /// FLUSH is offered and calls fdatasync.
    Writeback,
}

/// How requests are executed (Firecracker's `io_engine`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoEngine {
    #[default]
    Sync,
    Async,
}

/// Everything needed to create a block device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockConfig {
    /// The drive id; its first 20 bytes answer GET_ID.
    pub drive_id: String,
    pub path_on_host: PathBuf,
    pub is_read_only: bool,
    pub cache_type: CacheType,
    pub io_engine: IoEngine,
    pub rate_limiter: RateLimiterConfig,
}

crate::counters! {
    /// Per-device counters for the metrics.
    pub struct BlockMetrics {
        pub queue_events,
        pub read_count,
        pub write_count,
        pub flush_count,
        pub get_id_count,
        pub read_bytes,
        pub write_bytes,
        /// Requests that failed on the host side (I/O errors).
        pub io_errors,
        /// Malformed requests (answered with an error status, or skipped).
        pub invalid_requests,
        /// Malformed requests whose status byte could not be written.
        pub skipped_requests,
        pub unsupported_requests,
        pub rate_limited_events,
        pub activate_count,
        pub update_count,
    }
}

fn inc(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// The backing file.
#[derive(Debug)]
struct Disk {
    file: File,
    path: PathBuf,
    nsectors: u64,
}

impl Disk {
    fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        // A FIFO would block the VMM thread in open(): refused, like sockets and char devices.
        let file = crate::host_file::open_regular(path, !read_only, true).map_err(|source| {
            BlockError::Open {
                path: path.to_owned(),
                source,
            }
        })?;
        let len = file
            .metadata()
            .map_err(|source| BlockError::Size {
                path: path.to_owned(),
                source,
            })?
            .len();
        if len % SECTOR_SIZE != 0 {
            tracing::warn!(
                "virtio-blk: {} is not a multiple of 512 bytes; the tail is not visible",
                path.display()
            );
        }
        Ok(Disk {
            file,
            path: path.to_owned(),
            nsectors: len >> SECTOR_SHIFT,
        })
    }
}

enum Engine {
    Sync,
    Async(Box<AsyncEngine>),
}

/// State that exists only while the device is active.
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// Why queue processing stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stall {
    None,
    RateLimited,
    EngineFull,
    /// The avail ring cannot be read; wait for a reset.
    Broken,
}

/// A virtio-blk device.
pub struct Block {
    // Declared (and so dropped) before `disk`: dropping the engine waits for in-flight I/O.
    engine: Engine,
    id: [u8; VIRTIO_BLK_ID_BYTES],
    disk: Disk,
    read_only: bool,
    cache_type: CacheType,
    features: Features,
    queue_sizes: [u16; 1],
    rate_limiter: RateLimiter,
    metrics: Arc<BlockMetrics>,
    active: Option<Active>,
    stall: Stall,
}

impl Block {
    /// Opens the backing file and creates the engine. Fails with [`BlockError::IoUring`] when
    /// `io_engine` is Async and io_uring does not work here.
    pub fn new(cfg: BlockConfig) -> Result<Self, BlockError> {
        let disk = Disk::open(&cfg.path_on_host, cfg.is_read_only)?;
        let engine = match cfg.io_engine {
            IoEngine::Sync => Engine::Sync,
            IoEngine::Async => {
                Engine::Async(Box::new(AsyncEngine::new().map_err(BlockError::IoUring)?))
            }
        };
        let features = Features::new(&[VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE])
            .offer_if(VIRTIO_BLK_F_FLUSH, cfg.cache_type == CacheType::Writeback)
            .offer_if(VIRTIO_BLK_F_RO, cfg.is_read_only);
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
        let n = cfg.drive_id.len().min(VIRTIO_BLK_ID_BYTES);
        id[..n].copy_from_slice(&cfg.drive_id.as_bytes()[..n]);
        Ok(Block {
            id,
            disk,
            read_only: cfg.is_read_only,
            cache_type: cfg.cache_type,
            features,
            queue_sizes: [QUEUE_SIZE],
            rate_limiter: RateLimiter::new(cfg.rate_limiter).map_err(BlockError::RateLimiter)?,
            engine,
            metrics: Arc::new(BlockMetrics::default()),
            active: None,
            stall: Stall::None,
        })
    }

    /// The counters, shared with the metrics writer.
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.nsectors
    }

    pub fn path(&self) -> &Path {
        &self.disk.path
    }

    pub fn acked_features(&self) -> u64 {
        self.features.acked()
    }

    /// PATCH `path_on_host`: switches to a new backing file (same read-only mode). In-flight
    /// requests finish on the old file first; an active driver gets a config-change interrupt.
    pub fn update_backing_file(&mut self, path: &Path) -> Result<(), BlockError> {
        let disk = Disk::open(path, self.read_only)?;
        self.complete_in_flight();
        self.disk = disk;
        inc(&self.metrics.update_count, 1);
        if let Some(active) = &self.active {
            if let Err(e) = active.interrupt.notify_config_change() {
                tracing::warn!("virtio-blk: cannot signal config change: {e}");
            }
        }
        Ok(())
    }

    /// PATCH `rate_limiter`.
    pub fn update_rate_limiter(&mut self, bandwidth: BucketUpdate, ops: BucketUpdate) {
        self.rate_limiter.update_buckets(bandwidth, ops);
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        fn put(c: &mut [u8], offset: usize, bytes: &[u8]) {
            c[offset..offset + bytes.len()].copy_from_slice(bytes);
        }
        let mut c = [0u8; CONFIG_LEN];
        let capacity = offset_of!(virtio_blk_config, capacity);
        put(&mut c, capacity, &self.disk.nsectors.to_le_bytes());
        let seg_max = offset_of!(virtio_blk_config, seg_max);
        put(&mut c, seg_max, &SEG_MAX.to_le_bytes());
        let blk_size = offset_of!(virtio_blk_config, blk_size);
        put(&mut c, blk_size, &(SECTOR_SIZE as u32).to_le_bytes());
        c
    }

    /// Finishes everything the io_uring engine holds, posting the results to the guest.
    fn complete_in_flight(&mut self) {
        let Engine::Async(engine) = &mut self.engine else {
            return;
        };
        let done = engine.drain();
        if let Some(active) = &mut self.active {
            let any = !done.is_empty();
            for c in done {
                post_completion(active, &self.metrics, c);
            }
            if any {
                notify_if_needed(active);
            }
        }
    }

    fn process_queue_inner(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        self.stall = Stall::None;
        let mut used = false;
        loop {
            if let Err(e) = active.queue.disable_notification(&active.mem) {
                tracing::warn!("virtio-blk: {e}");
            }
            self.stall = drain_queue(
                active,
                &mut self.disk,
                &mut self.engine,
                &mut self.rate_limiter,
                &self.metrics,
                &self.id,
                self.cache_type,
                self.read_only,
                &mut used,
            );
            if self.stall != Stall::None {
                break;
            }
            match active.queue.enable_notification(&active.mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!("virtio-blk: {e}");
                    break;
                }
            }
        }
        if let Engine::Async(engine) = &mut self.engine {
            if let Err(e) = engine.submit() {
                tracing::error!("virtio-blk: {e}");
            }
        }
        if used {
            notify_if_needed(active);
        }
    }

    fn process_completions(&mut self) {
        let Engine::Async(engine) = &mut self.engine else {
            return;
        };
        let done = engine.reap();
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if !done.is_empty() {
            for c in done {
                post_completion(active, &self.metrics, c);
            }
            notify_if_needed(active);
        }
        if self.stall == Stall::EngineFull {
            self.process_queue_inner();
        }
    }
}

/// Writes the status byte and returns the chain to the driver.
fn complete(active: &mut Active, head: u16, status: Option<(GuestAddress, u8)>, len: u32) {
    if let Some((addr, status)) = status {
        if let Err(e) = active.mem.write_obj(status, addr) {
            tracing::warn!("virtio-blk: cannot write status: {e}");
        }
    }
    if let Err(e) = active.queue.add_used(&active.mem, head, len) {
        tracing::warn!("virtio-blk: cannot add used entry: {e}");
    }
}

fn post_completion(active: &mut Active, metrics: &BlockMetrics, c: Completion) {
    count_result(metrics, c.kind, c.status, c.bytes);
    let used_len = if c.kind == RequestKind::In && c.status == VIRTIO_BLK_S_OK {
        c.bytes as u32 + 1
    } else {
        1
    };
    complete(active, c.head, Some((c.status_addr, c.status)), used_len);
}

fn notify_if_needed(active: &mut Active) {
    match active.queue.needs_notification(&active.mem) {
        Ok(false) => {}
        Ok(true) | Err(_) => {
            if let Err(e) = active.interrupt.trigger(InterruptKind::Vring) {
                tracing::warn!("virtio-blk: cannot raise interrupt: {e}");
            }
        }
    }
}

fn count_result(m: &BlockMetrics, kind: RequestKind, status: u8, bytes: u64) {
    if status != VIRTIO_BLK_S_OK {
        inc(&m.io_errors, 1);
        return;
    }
    match kind {
        RequestKind::In => {
            inc(&m.read_count, 1);
            inc(&m.read_bytes, bytes);
        }
        RequestKind::Out => {
            inc(&m.write_count, 1);
            inc(&m.write_bytes, bytes);
        }
        RequestKind::Flush => inc(&m.flush_count, 1),
        RequestKind::GetId => inc(&m.get_id_count, 1),
    }
}

/// Takes tokens for `req`; false (nothing taken) when the limiter says wait.
fn rate_limit(rl: &mut RateLimiter, req: &Request) -> bool {
    if req.kind == RequestKind::GetId {
        return true;
    }
    if !rl.consume(1, TokenType::Ops) {
        return false;
    }
    if req.data_len > 0 && !rl.consume(req.data_len, TokenType::Bytes) {
        rl.manual_replenish(1, TokenType::Ops);
        return false;
    }
    true
}

/// Pops and handles available chains until the queue is empty or processing must pause.
#[allow(clippy::too_many_arguments)]
fn drain_queue(
    active: &mut Active,
    disk: &mut Disk,
    engine: &mut Engine,
    rl: &mut RateLimiter,
    metrics: &BlockMetrics,
    id: &[u8; VIRTIO_BLK_ID_BYTES],
    cache_type: CacheType,
    read_only: bool,
    used: &mut bool,
) -> Stall {
    loop {
        if let Engine::Async(e) = engine {
            if e.is_full() {
                return Stall::EngineFull;
            }
        }
        let chain = match active.queue.iter(&active.mem) {
            Ok(mut avail) => avail.next(),
            Err(e) => {
                // E.g. an avail index more than a queue size ahead: the ring is broken and
                // retrying cannot help until the driver resets the device.
                tracing::warn!("virtio-blk: queue unusable: {e}");
                return Stall::Broken;
            }
        };
        let Some(chain) = chain else {
            return Stall::None;
        };
        let head = chain.head_index();
        let req = match parse(&active.mem, chain, disk.nsectors, read_only) {
            Ok(req) => req,
            Err(rejected) => {
                tracing::debug!("virtio-blk: request refused: {}", rejected.error);
                inc(&metrics.invalid_requests, 1);
                if matches!(rejected.error, request::RequestError::Unsupported(_)) {
                    inc(&metrics.unsupported_requests, 1);
                }
                match rejected.status_addr {
                    Some(addr) => complete(active, head, Some((addr, rejected.error.status())), 1),
                    None => {
                        inc(&metrics.skipped_requests, 1);
                        complete(active, head, None, 0);
                    }
                }
                *used = true;
                continue;
            }
        };
        if !rate_limit(rl, &req) {
            inc(&metrics.rate_limited_events, 1);
            active.queue.go_to_previous_position();
            return Stall::RateLimited;
        }
        let flush_noop = req.kind == RequestKind::Flush && cache_type == CacheType::Unsafe;
        match engine {
            Engine::Async(e)
                if matches!(req.kind, RequestKind::In | RequestKind::Out)
                    || (req.kind == RequestKind::Flush && !flush_noop) =>
            {
                let (kind, status_addr) = (req.kind, req.status_addr);
                if let Err(err) = e.push(&active.mem, disk.file.as_raw_fd(), head, req) {
                    tracing::warn!("virtio-blk: cannot queue request: {err}");
                    count_result(metrics, kind, VIRTIO_BLK_S_IOERR, 0);
                    complete(active, head, Some((status_addr, VIRTIO_BLK_S_IOERR)), 1);
                    *used = true;
                }
            }
            _ => {
                let (status, len) = execute_sync(&active.mem, &req, disk, id, flush_noop);
                count_result(metrics, req.kind, status, len as u64);
                let used_len = match (req.kind, status) {
                    (RequestKind::In | RequestKind::GetId, VIRTIO_BLK_S_OK) => len + 1,
                    _ => 1,
                };
                complete(active, head, Some((req.status_addr, status)), used_len);
                *used = true;
            }
        }
    }
}

/// Runs a request to completion on the VMM thread. Returns the status and bytes moved.
fn execute_sync(
    mem: &GuestMemoryMmap,
    req: &Request,
    disk: &mut Disk,
    id: &[u8; VIRTIO_BLK_ID_BYTES],
    flush_noop: bool,
) -> (u8, u32) {
    let result = match req.kind {
        RequestKind::In | RequestKind::Out => rw_sync(mem, req, &mut disk.file).map(|n| n as u32),
        RequestKind::Flush if flush_noop => Ok(0),
        RequestKind::Flush => disk.file.sync_data().map(|_| 0),
        RequestKind::GetId => Ok(request::write_id(mem, req, id)),
    };
    match result {
        Ok(n) => (VIRTIO_BLK_S_OK, n),
        Err(e) => {
            tracing::warn!(
                "virtio-blk: {:?} at sector {} failed: {e}",
                req.kind,
                req.sector
            );
            (VIRTIO_BLK_S_IOERR, 0)
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.features.avail()
    }

    fn set_acked_features(&mut self, features: u64) {
        self.features.ack(features);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            "virtio-blk: {}-byte write to read-only config at {offset:#x} ignored",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        mut queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: queues.len(),
            });
        }
        let queue = queues.remove(0);
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        self.stall = Stall::None;
        inc(&self.metrics.activate_count, 1);
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        if let Engine::Async(engine) = &mut self.engine {
            // Wait for the kernel to finish with guest buffers; the driver no longer wants the
            // answers, so nothing is posted.
            let dropped = engine.drain();
            if !dropped.is_empty() {
                tracing::debug!("virtio-blk: {} requests dropped by reset", dropped.len());
            }
        }
        self.active = None;
        self.features.reset();
        self.stall = Stall::None;
    }

    fn process_queue(&mut self, index: usize) {
        if index != 0 || self.active.is_none() {
            return;
        }
        inc(&self.metrics.queue_events, 1);
        if self.rate_limiter.is_blocked() {
            // The timer will bring us back.
            return;
        }
        self.process_queue_inner();
    }

    fn aux_event_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.rate_limiter.as_raw_fd()];
        if let Engine::Async(engine) = &self.engine {
            fds.push(engine.completion_fd());
        }
        fds
    }

    fn handle_aux_event(&mut self, index: usize) {
        match index {
            AUX_RATE_LIMITER => {
                if let Err(e) = self.rate_limiter.event_handler() {
                    tracing::warn!("virtio-blk: {e}");
                }
                if !self.rate_limiter.is_blocked() {
                    self.process_queue_inner();
                }
            }
            AUX_IO_URING => self.process_completions(),
            _ => {}
        }
    }

    fn quiesce(&mut self) {
        // The io_uring engine's requests are finished and posted to the used ring; the Sync
        // engine completes inline and has nothing in flight.
        self.complete_in_flight();
        if self.stall == Stall::EngineFull {
            // Completions normally restart a queue stalled on a full engine; none will come
            // now, so ask the event loop to look at the queue again.
            if let Engine::Async(engine) = &self.engine {
                engine.wake();
            }
        }
    }

    fn queue_states(&self) -> Option<Vec<QueueState>> {
        self.active.as_ref().map(|a| vec![a.queue.state()])
    }
}
