//! The virtio-mmio transport, register layout version 2 (virtio 1.x spec 4.2.2).
//!
//! Registers below 0x100 accept only aligned 4-byte accesses; other sizes are ignored (reads
//! return zeros). The device config space at 0x100 accepts any size.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::features::{self, bit};
use super::reset::DeviceReset;
use super::status::{ACKNOWLEDGE, DEVICE_NEEDS_RESET, DRIVER, DRIVER_OK, FAILED, FEATURES_OK};
use super::{
    InterruptKind, VirtioDevice, VirtioEventHandler, VirtioInterrupt, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::bus::BusDevice;
use crate::GuestMemoryMmap;

/// Size of one device's MMIO window.
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// "virt" in little endian. Hand-written: `virtio-bindings` has the register's offset only.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// The register layout version implemented (virtio 1.x, non-legacy). Hand-written: not in
/// `virtio-bindings`.
pub const MMIO_VERSION: u32 = 2;
/// VendorID reported to the driver ("TRTS").
pub const VENDOR_ID: u32 = 0x5354_5254;

/// Register offsets: `virtio-bindings`' `VIRTIO_MMIO_*` (virtio 1.x names for the ring
/// addresses: driver area = avail ring, device area = used ring), as the bus's u64 offsets.
pub mod regs {
    use virtio_bindings::virtio_mmio as b;

    /// The one place the bindings' u32 offsets are widened.
    const fn reg(offset: u32) -> u64 {
        offset as u64
    }

    pub const MAGIC_VALUE: u64 = reg(b::VIRTIO_MMIO_MAGIC_VALUE);
    pub const VERSION: u64 = reg(b::VIRTIO_MMIO_VERSION);
    pub const DEVICE_ID: u64 = reg(b::VIRTIO_MMIO_DEVICE_ID);
    pub const VENDOR_ID: u64 = reg(b::VIRTIO_MMIO_VENDOR_ID);
    pub const DEVICE_FEATURES: u64 = reg(b::VIRTIO_MMIO_DEVICE_FEATURES);
    pub const DEVICE_FEATURES_SEL: u64 = reg(b::VIRTIO_MMIO_DEVICE_FEATURES_SEL);
    pub const DRIVER_FEATURES: u64 = reg(b::VIRTIO_MMIO_DRIVER_FEATURES);
    pub const DRIVER_FEATURES_SEL: u64 = reg(b::VIRTIO_MMIO_DRIVER_FEATURES_SEL);
    pub const QUEUE_SEL: u64 = reg(b::VIRTIO_MMIO_QUEUE_SEL);
    pub const QUEUE_NUM_MAX: u64 = reg(b::VIRTIO_MMIO_QUEUE_NUM_MAX);
    pub const QUEUE_NUM: u64 = reg(b::VIRTIO_MMIO_QUEUE_NUM);
    pub const QUEUE_READY: u64 = reg(b::VIRTIO_MMIO_QUEUE_READY);
    pub const QUEUE_NOTIFY: u64 = reg(b::VIRTIO_MMIO_QUEUE_NOTIFY);
    pub const INTERRUPT_STATUS: u64 = reg(b::VIRTIO_MMIO_INTERRUPT_STATUS);
    pub const INTERRUPT_ACK: u64 = reg(b::VIRTIO_MMIO_INTERRUPT_ACK);
    pub const STATUS: u64 = reg(b::VIRTIO_MMIO_STATUS);
    pub const QUEUE_DESC_LOW: u64 = reg(b::VIRTIO_MMIO_QUEUE_DESC_LOW);
    pub const QUEUE_DESC_HIGH: u64 = reg(b::VIRTIO_MMIO_QUEUE_DESC_HIGH);
    pub const QUEUE_DRIVER_LOW: u64 = reg(b::VIRTIO_MMIO_QUEUE_AVAIL_LOW);
    pub const QUEUE_DRIVER_HIGH: u64 = reg(b::VIRTIO_MMIO_QUEUE_AVAIL_HIGH);
    pub const QUEUE_DEVICE_LOW: u64 = reg(b::VIRTIO_MMIO_QUEUE_USED_LOW);
    pub const QUEUE_DEVICE_HIGH: u64 = reg(b::VIRTIO_MMIO_QUEUE_USED_HIGH);
    pub const SHM_LEN_LOW: u64 = reg(b::VIRTIO_MMIO_SHM_LEN_LOW);
    pub const SHM_LEN_HIGH: u64 = reg(b::VIRTIO_MMIO_SHM_LEN_HIGH);
    pub const CONFIG_GENERATION: u64 = reg(b::VIRTIO_MMIO_CONFIG_GENERATION);
    pub const CONFIG: u64 = reg(b::VIRTIO_MMIO_CONFIG);
}

/// Offset of QueueNotify: where the VMM registers the queue ioeventfds (datamatch = queue index).
pub const NOTIFY_REG_OFFSET: u64 = regs::QUEUE_NOTIFY;

/// Errors of the transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("Cannot create an EventFd")]
    EventFd(#[source] io::Error),
    #[error("Device offers no queues")]
    NoQueues,
    #[error("Invalid queue maximum size {0}")]
    QueueSize(u16),
}

/// The kernel command-line entry announcing a virtio-mmio device at `base` with interrupt `irq`.
pub fn cmdline_entry(base: u64, irq: u32) -> String {
    format!(
        "virtio_mmio.device={}K@{:#x}:{}",
        MMIO_DEVICE_SIZE / 1024,
        base,
        irq
    )
}

/// A virtio device behind the virtio-mmio transport.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queue_evts: Vec<EventFd>,
    queues: Vec<Queue>,
    device_type: u32,
    features_sel: u32,
    acked_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    status: u32,
    activated: bool,
    /// A device reset the driver asked for, done on the VMM thread (see [`super::reset`]).
    device_reset: Arc<DeviceReset>,
    /// What Status reads while that reset is pending.
    status_while_resetting: u32,
}

fn lock<'a>(
    dev: &'a Mutex<dyn VirtioDevice + 'static>,
) -> MutexGuard<'a, dyn VirtioDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

impl MmioTransport {
    /// A transport for `device`, whose queues will live in `mem`.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<Self, MmioError> {
        let (sizes, device_type) = {
            let dev = lock(&device);
            (dev.queue_max_sizes().to_vec(), dev.device_type())
        };
        if sizes.is_empty() {
            return Err(MmioError::NoQueues);
        }
        let queues = sizes
            .iter()
            .map(|&s| Queue::new(s).map_err(|_| MmioError::QueueSize(s)))
            .collect::<Result<Vec<_>, _>>()?;
        let queue_evts = sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd)?;
        let device_reset = Arc::new(DeviceReset::new().map_err(MmioError::EventFd)?);
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(VirtioInterrupt::new(irq_evt)),
            queue_evts,
            queues,
            device_type,
            features_sel: 0,
            acked_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            status: 0,
            activated: false,
            device_reset,
            status_while_resetting: 0,
        })
    }

    /// One notification EventFd per queue, in queue order: register each with KVM as an
    /// ioeventfd at `base + NOTIFY_REG_OFFSET`, 4 bytes, datamatch = queue index.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The interrupt EventFd: register it with KVM as an irqfd for the device's GSI.
    pub fn interrupt_evt(&self) -> &EventFd {
        self.interrupt.irq_evt()
    }

    /// The shared interrupt state (InterruptStatus, ConfigGeneration, irqfd).
    pub fn interrupt(&self) -> Arc<VirtioInterrupt> {
        self.interrupt.clone()
    }

    /// The device behind this transport.
    pub fn device(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        self.device.clone()
    }

    /// The event-manager subscriber for this device (queue EventFds + the device's aux fds).
    pub fn event_handler(&self) -> Result<VirtioEventHandler, MmioError> {
        let evts = self
            .queue_evts
            .iter()
            .map(|e| e.try_clone().map_err(MmioError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VirtioEventHandler::new(self.device.clone(), evts)
            .with_reset(self.device_reset.clone(), self.interrupt.clone()))
    }

    /// Whether a device reset the driver asked for still waits for the VMM thread.
    pub fn reset_pending(&self) -> bool {
        self.device_reset.is_pending()
    }

    /// Carries out a pending device reset now. Call on the VMM thread (the event handler does
    /// this when the reset EventFd fires; snapshots do it before reading the device).
    pub fn complete_pending_reset(&self) {
        self.device_reset.complete(&self.device, &self.interrupt);
    }

    /// The driver status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device is running.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn avail_features(&self) -> u64 {
        lock(&self.device).avail_features() | bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX)
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    /// Queue registers may be written after FEATURES_OK and before DRIVER_OK.
    fn queue_config_allowed(&self) -> bool {
        self.has(FEATURES_OK) && self.status & (DRIVER_OK | FAILED | DEVICE_NEEDS_RESET) == 0
    }

    /// The driver wrote 0 to Status (vCPU thread): the transport's registers are reset now, the
    /// device's own reset (which may drain host I/O) is left to the VMM thread.
    fn reset(&mut self) {
        if self.device_reset.is_pending() {
            return;
        }
        let device_active = self.activated || lock(&self.device).is_activated();
        let old = self.status;
        self.activated = false;
        for q in &mut self.queues {
            q.reset();
        }
        self.features_sel = 0;
        self.acked_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt.clear();
        if device_active {
            self.status_while_resetting = old.max(ACKNOWLEDGE);
            self.device_reset.request();
        }
    }

    fn needs_reset(&mut self, why: &str) {
        tracing::warn!("virtio-mmio device type {}: {why}", self.device_type);
        self.status |= DEVICE_NEEDS_RESET;
        if self.has(DRIVER_OK) {
            if let Err(e) = self.interrupt.trigger(InterruptKind::Config) {
                tracing::warn!("virtio-mmio: cannot raise config interrupt: {e}");
            }
        }
    }

    fn activate(&mut self) {
        let event_idx = self.acked_features & bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut copies = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter_mut().enumerate() {
            if !q.is_valid(&self.mem) {
                let why = format!("queue {i} is not ready or lies outside guest memory");
                return self.needs_reset(&why);
            }
            q.set_event_idx(event_idx);
            let state = q.state();
            match Queue::try_from(state) {
                Ok(c) => copies.push(c),
                Err(e) => return self.needs_reset(&format!("queue {i} is invalid: {e}")),
            }
        }
        let result = lock(&self.device).activate(self.mem.clone(), copies, self.interrupt.clone());
        match result {
            Ok(()) => {
                self.activated = true;
                // Buffers made available before DRIVER_OK would otherwise wait for a notification.
                for evt in &self.queue_evts {
                    let _ = evt.write(1);
                }
            }
            Err(e) => self.needs_reset(&format!("activation failed: {e}")),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            return self.reset();
        }
        let old = self.status;
        if value == old {
            return;
        }
        // The driver only ever adds bits (spec 3.1.1); FAILED may be added at any time.
        if value & old != old {
            tracing::warn!("virtio-mmio: status {old:#x} -> {value:#x} clears bits; ignored");
            return;
        }
        let added = value & !old;
        if added & FAILED != 0 {
            self.status |= FAILED;
            return;
        }
        let allowed = match added {
            ACKNOWLEDGE => old == 0,
            DRIVER => old == ACKNOWLEDGE,
            FEATURES_OK => old == ACKNOWLEDGE | DRIVER,
            DRIVER_OK => old == ACKNOWLEDGE | DRIVER | FEATURES_OK,
            _ => false,
        };
        if !allowed {
            tracing::warn!("virtio-mmio: invalid status transition {old:#x} -> {value:#x}");
            return;
        }
        match added {
            FEATURES_OK => {
                if self.acked_features & bit(VIRTIO_F_VERSION_1) == 0 {
                    // Leaving FEATURES_OK clear tells the driver the features were refused.
                    tracing::warn!("virtio-mmio: driver did not accept VIRTIO_F_VERSION_1");
                    return;
                }
                lock(&self.device).set_acked_features(self.acked_features);
                self.status = value;
            }
            DRIVER_OK => {
                self.status = value;
                self.activate();
            }
            _ => self.status = value,
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            regs::MAGIC_VALUE => MMIO_MAGIC_VALUE,
            regs::VERSION => MMIO_VERSION,
            regs::DEVICE_ID => self.device_type,
            regs::VENDOR_ID => VENDOR_ID,
            regs::DEVICE_FEATURES => features::page(self.avail_features(), self.features_sel),
            regs::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size() as u32),
            regs::QUEUE_READY => self.selected_queue().is_some_and(|q| q.ready()) as u32,
            regs::INTERRUPT_STATUS => self.interrupt.status(),
            regs::STATUS if self.device_reset.is_pending() => self.status_while_resetting,
            regs::STATUS => self.status,
            regs::SHM_LEN_LOW | regs::SHM_LEN_HIGH => u32::MAX, // no shared memory regions
            regs::CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        if self.device_reset.is_pending() && offset != regs::QUEUE_NOTIFY {
            // The driver must wait for Status to read 0 first (spec 2.1.2).
            tracing::debug!("virtio-mmio: register {offset:#x} written during a reset; ignored");
            return;
        }
        match offset {
            regs::DEVICE_FEATURES_SEL => self.features_sel = v,
            regs::DRIVER_FEATURES_SEL => self.acked_features_sel = v,
            regs::DRIVER_FEATURES => {
                if !self.has(ACKNOWLEDGE | DRIVER) || self.has(FEATURES_OK) {
                    tracing::warn!(
                        "virtio-mmio: DriverFeatures written in status {:#x}",
                        self.status
                    );
                    return;
                }
                let offered = self.avail_features();
                self.acked_features =
                    features::set_page(self.acked_features, self.acked_features_sel, v, offered);
            }
            regs::QUEUE_SEL => self.queue_sel = v,
            regs::QUEUE_NOTIFY => {
                // Only reached when no ioeventfd is registered for this address/datamatch.
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    if let Err(e) = evt.write(1) {
                        tracing::warn!("virtio-mmio: cannot signal queue {v}: {e}");
                    }
                }
            }
            regs::INTERRUPT_ACK => self.interrupt.ack(v),
            regs::STATUS => self.write_status(v),
            regs::QUEUE_NUM
            | regs::QUEUE_READY
            | regs::QUEUE_DESC_LOW
            | regs::QUEUE_DESC_HIGH
            | regs::QUEUE_DRIVER_LOW
            | regs::QUEUE_DRIVER_HIGH
            | regs::QUEUE_DEVICE_LOW
            | regs::QUEUE_DEVICE_HIGH => self.write_queue_reg(offset, v),
            _ => tracing::debug!("virtio-mmio: write to unknown register {offset:#x}"),
        }
    }

    fn write_queue_reg(&mut self, offset: u64, v: u32) {
        if !self.queue_config_allowed() {
            tracing::warn!(
                "virtio-mmio: queue register {offset:#x} written in status {:#x}",
                self.status
            );
            return;
        }
        let Some(q) = self.selected_queue() else {
            return;
        };
        // Changing a live queue's layout is not allowed; only QueueReady=0 may follow ready.
        if q.ready() && offset != regs::QUEUE_READY {
            return;
        }
        match offset {
            regs::QUEUE_NUM => match u16::try_from(v) {
                Ok(size) => q.set_size(size),
                Err(_) => tracing::warn!("virtio-mmio: queue size {v} too large"),
            },
            regs::QUEUE_READY => q.set_ready(v == 1),
            regs::QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
            regs::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
            regs::QUEUE_DRIVER_LOW => q.set_avail_ring_address(Some(v), None),
            regs::QUEUE_DRIVER_HIGH => q.set_avail_ring_address(None, Some(v)),
            regs::QUEUE_DEVICE_LOW => q.set_used_ring_address(Some(v), None),
            regs::QUEUE_DEVICE_HIGH => q.set_used_ring_address(None, Some(v)),
            _ => {}
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= regs::CONFIG {
            data.fill(0);
            return lock(&self.device).read_config(offset - regs::CONFIG, data);
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            tracing::debug!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored",
                data.len()
            );
            data.fill(0);
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= regs::CONFIG {
            return lock(&self.device).write_config(offset - regs::CONFIG, data);
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::debug!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[path = "mmio_persist.rs"]
mod persist;
pub use persist::{QueueSnapshot, TransportPersistError, TransportState};

#[cfg(test)]
#[path = "mmio_persist_tests.rs"]
mod persist_tests;
#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
