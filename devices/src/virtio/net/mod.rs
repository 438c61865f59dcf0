//! virtio-net: an Ethernet card whose other end is a host tap device (virtio spec 5.1).
//!
//! Two queues: receiveq ([`RX_QUEUE`]) and transmitq ([`TX_QUEUE`]), [`QUEUE_SIZE`] entries each.
//! Features offered: VERSION_1, RING_EVENT_IDX, MAC (when a `guest_mac` is configured), CSUM,
//! GUEST_CSUM, GUEST_TSO4/6, GUEST_UFO, HOST_TSO4/6, HOST_UFO and MRG_RXBUF. Every buffer starts
//! with the 12-byte `virtio_net_hdr_v1`; the tap uses the same header (`TUNSETVNETHDRSZ` 12), so
//! headers pass through unchanged except `num_buffers`, which the device fills in.
//!
//! - TX: a chain (device-readable only, at most [`MAX_BUFFER_LEN`] bytes, at least a header and
//!   an Ethernet header) is gathered into a device buffer and written to the tap as one frame.
//! - RX: a frame is read from the tap into a device buffer, then copied into one chain, or with
//!   MRG_RXBUF into as many chains as it needs (`num_buffers` set, all published at once). A frame
//!   that does not fit (one chain too small without MRG_RXBUF, or the whole queue too small with
//!   it) is dropped and counted. With no buffers posted, RX stalls with the frame kept and resumes
//!   on the receive queue's notification.
//! - The tap fd is watched edge-triggered: the device reads until the tap is empty, or stops with
//!   a frame in hand when the guest has no room or the rate limiter says wait.
//! - Offloads the tap may hand the guest (`TUNSETOFFLOAD`) follow the negotiated GUEST_* features;
//!   they are applied on the VMM thread at the first queue event after activation.
//! - One rate limiter per direction (bytes = frame length without the virtio header, ops = frames).
//!
//! [`NetBackend`] abstracts the tap so unit tests can run the device on a socket pair.

mod chains;
pub mod tap;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_hostile;

use std::io;
use std::mem::{offset_of, size_of};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_net::{virtio_net_config, virtio_net_hdr_v1};
use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT};

pub use self::chains::ChainError;
use self::chains::{add_used_batch, check, read_chain, write_chain, Chain};
pub use self::tap::{Tap, TapError};
use super::{
    read_config_bytes, ActivateError, Features, InterruptKind, VirtioDevice, VirtioInterrupt,
    TYPE_NET,
};
use crate::rate_limiter::{
    BucketUpdate, RateLimiter, RateLimiterConfig, RateLimiterError, TokenType,
};
use crate::GuestMemoryMmap;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;

/// Size of `virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers (12 bytes).
pub const VNET_HDR_LEN: usize = size_of::<virtio_net_hdr_v1>();
const NUM_BUFFERS_OFFSET: usize = offset_of!(virtio_net_hdr_v1, num_buffers);
/// Ethernet header length; not a virtio constant, so not in `virtio-bindings`.
const ETH_HLEN: usize = 14;
/// The largest frame moved: a 64 KiB GSO packet plus its Ethernet header.
pub const MAX_FRAME_LEN: usize = 65536 + ETH_HLEN;
/// The largest buffer (header + frame) moved in either direction.
pub const MAX_BUFFER_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// The smallest TX chain accepted: a header and an Ethernet header.
pub const MIN_BUFFER_LEN: usize = VNET_HDR_LEN + ETH_HLEN;

pub use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
};

/// The part of `virtio_net_config` the device fills in: the MAC. `status` and the fields after
/// it belong to features not offered.
const CONFIG_LEN: usize = offset_of!(virtio_net_config, status);

/// Indices in [`VirtioDevice::aux_event_fds`].
pub const AUX_RX_RATE_LIMITER: usize = 0;
pub const AUX_TX_RATE_LIMITER: usize = 1;
pub const AUX_TAP: usize = 2;

/// Errors of virtio-net set-up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("Cannot create the {0} rate limiter")]
    RateLimiter(&'static str, #[source] RateLimiterError),
}

/// The host side of the device: a tap, or a socket in tests. `read` and `write` move one frame
/// (virtio header included) and must not block.
pub trait NetBackend: Send {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Which offloads (`TUN_F_*`) frames handed to the guest may use.
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
    /// The fd to watch for readability.
    fn fd(&self) -> RawFd;
}

/// Everything needed to create a network device besides its backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    pub iface_id: String,
    pub guest_mac: Option<[u8; 6]>,
    pub rx_rate_limiter: RateLimiterConfig,
    pub tx_rate_limiter: RateLimiterConfig,
}

crate::counters! {
    /// Per-device counters for the metrics.
    pub struct NetMetrics {
        pub rx_queue_events,
        pub tx_queue_events,
        pub tap_events,
        pub rx_frames,
        pub rx_bytes,
        pub tx_frames,
        pub tx_bytes,
        /// Frames from the tap that did not fit the guest's buffers (dropped).
        pub rx_frames_too_big,
        /// Frames from the tap shorter than a header plus an Ethernet header (dropped).
        pub rx_frames_too_short,
        /// Times RX stopped because the guest had posted no (or not enough) buffers.
        pub rx_no_buffers,
        /// Tap read failures other than "nothing to read".
        pub rx_tap_errors,
        /// Tap write failures (the frame is dropped).
        pub tx_tap_errors,
        /// Malformed RX chains (returned unused).
        pub rx_invalid_chains,
        /// Malformed TX chains (returned unsent).
        pub tx_invalid_chains,
        pub rx_rate_limited,
        pub tx_rate_limited,
        /// Times the device stopped a queue whose rings cannot be read (until reset).
        pub broken_queues,
        pub activate_count,
        pub update_count,
    }
}

fn inc(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// State that exists only while the device is active.
struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<VirtioInterrupt>,
    /// Offloads still to be applied to the backend (on the VMM thread).
    offload: Option<u32>,
    rx_broken: bool,
    tx_broken: bool,
    /// RX chains taken from the ring for the pending frame but not returned yet.
    rx_held: Vec<Chain>,
}

/// A virtio-net device.
pub struct Net {
    iface_id: String,
    mac: Option<[u8; 6]>,
    backend: Box<dyn NetBackend>,
    features: Features,
    queue_sizes: [u16; 2],
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
    metrics: Arc<NetMetrics>,
    active: Option<Active>,
    rx_buf: Vec<u8>,
    /// Length of the frame in `rx_buf` not yet delivered.
    rx_pending: Option<usize>,
    tx_buf: Vec<u8>,
}

/// What happened to the frame in hand.
enum Delivery {
    Delivered(usize),
    Dropped,
    /// Not enough buffers: keep the frame and wait for the driver.
    NoRoom,
    /// The ring cannot be read.
    Broken,
}

impl Net {
    pub fn new(cfg: NetConfig, backend: Box<dyn NetBackend>) -> Result<Self, NetError> {
        let features = Features::new(&[
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_UFO,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_HOST_UFO,
            VIRTIO_NET_F_MRG_RXBUF,
        ])
        .offer_if(VIRTIO_NET_F_MAC, cfg.guest_mac.is_some());
        Ok(Net {
            iface_id: cfg.iface_id,
            mac: cfg.guest_mac,
            backend,
            features,
            queue_sizes: [QUEUE_SIZE; 2],
            rx_limiter: RateLimiter::new(cfg.rx_rate_limiter)
                .map_err(|e| NetError::RateLimiter("RX", e))?,
            tx_limiter: RateLimiter::new(cfg.tx_rate_limiter)
                .map_err(|e| NetError::RateLimiter("TX", e))?,
            metrics: Arc::new(NetMetrics::default()),
            active: None,
            rx_buf: vec![0; MAX_BUFFER_LEN],
            rx_pending: None,
            tx_buf: vec![0; MAX_BUFFER_LEN],
        })
    }

    pub fn iface_id(&self) -> &str {
        &self.iface_id
    }

    /// The counters, shared with the metrics writer.
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    pub fn acked_features(&self) -> u64 {
        self.features.acked()
    }

    fn acked(&self, bit: u32) -> bool {
        self.features.is_acked(bit)
    }

    /// PATCH `rx_rate_limiter` / `tx_rate_limiter`; valid before and after activation.
    pub fn update_rate_limiters(
        &mut self,
        rx: (BucketUpdate, BucketUpdate),
        tx: (BucketUpdate, BucketUpdate),
    ) {
        self.rx_limiter.update_buckets(rx.0, rx.1);
        self.tx_limiter.update_buckets(tx.0, tx.1);
        inc(&self.metrics.update_count, 1);
    }

    /// The `TUN_F_*` flags matching the acked GUEST_* features.
    pub fn offload_flags(&self) -> u32 {
        if !self.acked(VIRTIO_NET_F_GUEST_CSUM) {
            // The tap only segments or skips checksums for a guest that checks them itself.
            return 0;
        }
        let mut f = tap::TUN_F_CSUM;
        for (bit, flag) in [
            (VIRTIO_NET_F_GUEST_TSO4, tap::TUN_F_TSO4),
            (VIRTIO_NET_F_GUEST_TSO6, tap::TUN_F_TSO6),
            (VIRTIO_NET_F_GUEST_UFO, tap::TUN_F_UFO),
        ] {
            if self.acked(bit) {
                f |= flag;
            }
        }
        f
    }

    fn apply_offload(&mut self) {
        let Some(flags) = self.active.as_mut().and_then(|a| a.offload.take()) else {
            return;
        };
        if let Err(e) = self.backend.set_offload(flags) {
            // Without offloads the tap hands over plain frames, which every driver accepts.
            tracing::warn!(
                "virtio-net {}: cannot set tap offloads {flags:#x}: {e}",
                self.iface_id
            );
        }
    }

    /// Moves frames from the backend to the guest until the backend is empty or RX must wait.
    fn process_rx(&mut self) {
        self.apply_offload();
        let mergeable = self.acked(VIRTIO_NET_F_MRG_RXBUF);
        let guest_csum = self.acked(VIRTIO_NET_F_GUEST_CSUM);
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.rx_broken {
            return;
        }
        let m = &*self.metrics;
        let mut used = false;
        loop {
            if self.rx_limiter.is_blocked() {
                break;
            }
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.backend.read(&mut self.rx_buf) {
                    Ok(n) if n < VNET_HDR_LEN + ETH_HLEN => {
                        inc(&m.rx_frames_too_short, 1);
                        continue;
                    }
                    Ok(n) => {
                        if !guest_csum {
                            // DATA_VALID and NEEDS_CSUM mean nothing to this driver.
                            self.rx_buf[0] = 0;
                        }
                        self.rx_pending = Some(n);
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        inc(&m.rx_tap_errors, 1);
                        tracing::warn!("virtio-net {}: tap read failed: {e}", self.iface_id);
                        break;
                    }
                },
            };
            let frame_len = (len - VNET_HDR_LEN) as u64;
            if !self.rx_limiter.consume(1, TokenType::Ops) {
                inc(&m.rx_rate_limited, 1);
                break;
            }
            if !self.rx_limiter.consume(frame_len, TokenType::Bytes) {
                self.rx_limiter.manual_replenish(1, TokenType::Ops);
                inc(&m.rx_rate_limited, 1);
                break;
            }
            let refund = |rl: &mut RateLimiter| {
                rl.manual_replenish(1, TokenType::Ops);
                rl.manual_replenish(frame_len, TokenType::Bytes);
            };
            match deliver(active, &mut self.rx_buf[..len], mergeable, m, &mut used) {
                Delivery::Delivered(n) => {
                    self.rx_pending = None;
                    inc(&m.rx_frames, 1);
                    inc(&m.rx_bytes, frame_len);
                    if n > 1 {
                        // Batched publication bypasses the queue's event-index bookkeeping;
                        // an extra interrupt is always safe.
                        signal(active);
                        used = false;
                    }
                }
                Delivery::Dropped => {
                    self.rx_pending = None;
                    refund(&mut self.rx_limiter);
                }
                Delivery::NoRoom => {
                    refund(&mut self.rx_limiter);
                    inc(&m.rx_no_buffers, 1);
                    // Ask for a notification when buffers arrive; retry if some already did.
                    match active.rx.enable_notification(&active.mem) {
                        Ok(true) => continue,
                        Ok(false) => break,
                        Err(e) => {
                            tracing::warn!("virtio-net {}: {e}", self.iface_id);
                            break;
                        }
                    }
                }
                Delivery::Broken => {
                    refund(&mut self.rx_limiter);
                    active.rx_broken = true;
                    inc(&m.broken_queues, 1);
                    break;
                }
            }
        }
        if used {
            notify_if_needed(&mut active.rx, &active.mem, &active.interrupt);
        }
    }

    /// Sends every available TX chain to the backend, unless the rate limiter says wait.
    fn process_tx(&mut self) {
        self.apply_offload();
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.tx_broken {
            return;
        }
        let m = &*self.metrics;
        let mut used = false;
        loop {
            if let Err(e) = active.tx.disable_notification(&active.mem) {
                tracing::warn!("virtio-net {}: {e}", self.iface_id);
            }
            let stop = loop {
                if self.tx_limiter.is_blocked() {
                    break true;
                }
                let chain = match active.tx.iter(&active.mem) {
                    Ok(mut avail) => avail.next(),
                    Err(e) => {
                        tracing::warn!("virtio-net {}: TX queue unusable: {e}", self.iface_id);
                        active.tx_broken = true;
                        inc(&m.broken_queues, 1);
                        break true;
                    }
                };
                let Some(chain) = chain else {
                    break false;
                };
                let head = chain.head_index();
                let checked =
                    check(&active.mem, chain, false, MAX_BUFFER_LEN as u64).and_then(|c| {
                        match c.len {
                            l if l < MIN_BUFFER_LEN as u64 => Err(ChainError::TooShort(l)),
                            _ => Ok(c),
                        }
                    });
                let c = match checked {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!("virtio-net {}: TX chain refused: {e}", self.iface_id);
                        inc(&m.tx_invalid_chains, 1);
                        return_unused(active, TX_QUEUE, head);
                        used = true;
                        continue;
                    }
                };
                let frame_len = c.len - VNET_HDR_LEN as u64;
                if !self.tx_limiter.consume(1, TokenType::Ops) {
                    inc(&m.tx_rate_limited, 1);
                    active.tx.go_to_previous_position();
                    break true;
                }
                if !self.tx_limiter.consume(frame_len, TokenType::Bytes) {
                    self.tx_limiter.manual_replenish(1, TokenType::Ops);
                    inc(&m.tx_rate_limited, 1);
                    active.tx.go_to_previous_position();
                    break true;
                }
                match read_chain(&active.mem, &c, &mut self.tx_buf) {
                    Some(n) => match self.backend.write(&self.tx_buf[..n]) {
                        Ok(_) => {
                            inc(&m.tx_frames, 1);
                            inc(&m.tx_bytes, frame_len);
                        }
                        Err(e) => {
                            inc(&m.tx_tap_errors, 1);
                            tracing::debug!("virtio-net {}: tap write failed: {e}", self.iface_id);
                        }
                    },
                    None => inc(&m.tx_invalid_chains, 1),
                }
                return_unused(active, TX_QUEUE, c.head);
                used = true;
            };
            if stop {
                break;
            }
            match active.tx.enable_notification(&active.mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!("virtio-net {}: {e}", self.iface_id);
                    break;
                }
            }
        }
        if used {
            notify_if_needed(&mut active.tx, &active.mem, &active.interrupt);
        }
    }
}

/// Returns a chain with used length 0.
fn return_unused(active: &mut Active, queue: usize, head: u16) {
    let q = if queue == RX_QUEUE {
        &mut active.rx
    } else {
        &mut active.tx
    };
    if let Err(e) = q.add_used(&active.mem, head, 0) {
        tracing::warn!("virtio-net: cannot add used entry: {e}");
    }
}

fn signal(active: &Active) {
    if let Err(e) = active.interrupt.trigger(InterruptKind::Vring) {
        tracing::warn!("virtio-net: cannot raise interrupt: {e}");
    }
}

fn notify_if_needed(q: &mut Queue, mem: &GuestMemoryMmap, interrupt: &VirtioInterrupt) {
    match q.needs_notification(mem) {
        Ok(false) => {}
        Ok(true) | Err(_) => {
            if let Err(e) = interrupt.trigger(InterruptKind::Vring) {
                tracing::warn!("virtio-net: cannot raise interrupt: {e}");
            }
        }
    }
}

/// Copies the frame in `buf` (header included) into the guest's RX buffers.
fn deliver(
    active: &mut Active,
    buf: &mut [u8],
    mergeable: bool,
    m: &NetMetrics,
    used: &mut bool,
) -> Delivery {
    let need = buf.len() as u64;
    let size = active.rx.size() as usize;
    loop {
        let have: u64 = active.rx_held.iter().map(|c| c.len).sum();
        if have >= need {
            break;
        }
        if !active.rx_held.is_empty() && (!mergeable || active.rx_held.len() >= size) {
            // One chain too small, or the whole ring too small: this frame cannot fit.
            break;
        }
        let chain = match active.rx.iter(&active.mem) {
            Ok(mut avail) => avail.next(),
            Err(e) => {
                tracing::warn!("virtio-net: RX queue unusable: {e}");
                return Delivery::Broken;
            }
        };
        let Some(chain) = chain else {
            return Delivery::NoRoom;
        };
        let head = chain.head_index();
        match check(&active.mem, chain, true, u64::MAX) {
            Ok(c) if c.len > 0 => active.rx_held.push(c),
            Ok(_) => {
                inc(&m.rx_invalid_chains, 1);
                return_unused(active, RX_QUEUE, head);
                *used = true;
            }
            Err(e) => {
                tracing::debug!("virtio-net: RX chain refused: {e}");
                inc(&m.rx_invalid_chains, 1);
                return_unused(active, RX_QUEUE, head);
                *used = true;
            }
        }
    }
    let held = std::mem::take(&mut active.rx_held);
    let have: u64 = held.iter().map(|c| c.len).sum();
    if have < need {
        inc(&m.rx_frames_too_big, 1);
        for c in &held {
            return_unused(active, RX_QUEUE, c.head);
        }
        *used = true;
        return Delivery::Dropped;
    }
    // Chains beyond the ones the frame needs are not taken (with MRG_RXBUF the last one
    // pushed is the one that made it fit, so there are none).
    let n = held.len();
    buf[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&(n as u16).to_le_bytes());
    let mut at = 0usize;
    let mut used_elems = Vec::with_capacity(n);
    for c in &held {
        let written = write_chain(&active.mem, c, &buf[at..]);
        at += written as usize;
        used_elems.push((c.head, written));
    }
    if n == 1 {
        if let Err(e) = active
            .rx
            .add_used(&active.mem, used_elems[0].0, used_elems[0].1)
        {
            tracing::warn!("virtio-net: cannot add used entry: {e}");
        }
    } else if !add_used_batch(&mut active.rx, &active.mem, &used_elems) {
        tracing::warn!("virtio-net: cannot write the RX used ring");
    }
    *used = true;
    Delivery::Delivered(n)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
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
        // The MAC reads as zeros when none is configured (MAC is not offered then).
        let config: [u8; CONFIG_LEN] = self.mac.unwrap_or_default();
        read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            "virtio-net {}: {}-byte write to read-only config at {offset:#x} ignored",
            self.iface_id,
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let got = queues.len();
        let Ok::<[Queue; 2], _>([rx, tx]) = queues.try_into() else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        self.active = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
            offload: Some(self.offload_flags()),
            rx_broken: false,
            tx_broken: false,
            rx_held: Vec::new(),
        });
        inc(&self.metrics.activate_count, 1);
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        self.active = None;
        self.features.reset();
        self.rx_pending = None;
    }

    fn process_queue(&mut self, index: usize) {
        if self.active.is_none() {
            return;
        }
        match index {
            RX_QUEUE => {
                inc(&self.metrics.rx_queue_events, 1);
                self.process_rx();
            }
            TX_QUEUE => {
                inc(&self.metrics.tx_queue_events, 1);
                self.process_tx();
            }
            _ => {}
        }
    }

    fn quiesce(&mut self) {
        // A frame waiting for more RX buffers is not part of a snapshot: it is dropped (as a
        // network may drop it) and the chains held for it go back to the guest, empty.
        if self.rx_pending.take().is_some() {
            inc(&self.metrics.rx_no_buffers, 1);
        }
        if let Some(active) = self.active.as_mut() {
            let held = std::mem::take(&mut active.rx_held);
            if !held.is_empty() {
                for c in &held {
                    return_unused(active, RX_QUEUE, c.head);
                }
                signal(active);
            }
        }
    }

    fn queue_states(&self) -> Option<Vec<QueueState>> {
        self.active
            .as_ref()
            .map(|a| vec![a.rx.state(), a.tx.state()])
    }

    fn aux_event_fds(&self) -> Vec<RawFd> {
        vec![
            self.rx_limiter.as_raw_fd(),
            self.tx_limiter.as_raw_fd(),
            self.backend.fd(),
        ]
    }

    fn aux_event_edge_triggered(&self, index: usize) -> bool {
        index == AUX_TAP
    }

    fn handle_aux_event(&mut self, index: usize) {
        match index {
            AUX_RX_RATE_LIMITER => {
                if let Err(e) = self.rx_limiter.event_handler() {
                    tracing::warn!("virtio-net {}: {e}", self.iface_id);
                }
                self.process_rx();
            }
            AUX_TX_RATE_LIMITER => {
                if let Err(e) = self.tx_limiter.event_handler() {
                    tracing::warn!("virtio-net {}: {e}", self.iface_id);
                }
                self.process_tx();
            }
            AUX_TAP => {
                inc(&self.metrics.tap_events, 1);
                self.process_rx();
            }
            _ => {}
        }
    }
}
