//! virtio devices and the virtio-mmio transport.
//!
//! # Pieces
//! - [`VirtioDevice`]: what a device model (virtio-blk, vsock, later net) implements. It knows
//!   nothing of the transport: it offers features, exposes a config space, and once activated it
//!   owns its queues and guest memory until it is reset.
//! - [`mmio::MmioTransport`]: the virtio-mmio (register layout version 2) transport. It is a
//!   [`BusDevice`](crate::BusDevice) on the MMIO bus, negotiates features, runs the driver status
//!   state machine, collects queue configuration and activates/resets the device. It owns one
//!   `EventFd` per queue (the ioeventfds) and the interrupt `EventFd` (the irqfd).
//! - [`handler::VirtioEventHandler`]: an event-manager subscriber that watches the queue EventFds
//!   and any device-side fds (rate-limiter timer, io_uring completions) and calls into the device
//!   on the VMM thread. Devices whose fds come and go (vsock's sockets) hand the handler
//!   [`FdChange`]s to watch, re-watch or close them; their events arrive under the device's own
//!   tokens.
//! - [`block::Block`]: virtio-blk with a synchronous and an io_uring engine.
//! - [`net::Net`]: virtio-net backed by a tap device.
//! - [`vsock::Vsock`]: virtio-vsock with a hybrid Unix-socket backend.
//!
//! # Wiring a device into the VMM (one call site per device)
//! ```text
//! let block = Arc::new(Mutex::new(Block::new(block_config)?));      // Err → 400 for PUT /drives
//! let transport = MmioTransport::new(mem.clone(), block.clone())?;  // Arc<Mutex<dyn VirtioDevice>>
//! for (i, evt) in transport.queue_evts().iter().enumerate() {
//!     vm_fd.register_ioevent(evt, &IoEventAddress::Mmio(base + NOTIFY_REG_OFFSET), i as u32)?;
//! }
//! vm_fd.register_irqfd(transport.interrupt_evt(), irq)?;
//! event_manager.add_subscriber(Arc::new(Mutex::new(transport.event_handler()?)));
//! mmio_bus.insert(Arc::new(Mutex::new(transport)), base, MMIO_DEVICE_SIZE)?;
//! cmdline.push(mmio::cmdline_entry(base, irq));
//! ```
//! The ioeventfd is registered at `base + 0x50` (QueueNotify), 4 bytes wide, with datamatch equal
//! to the queue index. If the VMM does not register it, the transport writes the EventFd itself when
//! the guest's QueueNotify write reaches it through the bus, so behaviour is the same, only slower.
//!
//! # Snapshots
//! [`mmio::TransportState`] is the transport's saved form (registers, interrupt state, every
//! queue incl. the ring positions of an active device); `MmioTransport::save_state` quiesces
//! the device first ([`VirtioDevice::quiesce`]) and takes the live queues from it
//! ([`VirtioDevice::queue_states`]); `restore_state` on a freshly created transport puts the
//! registers back and re-activates an active device with the restored queues, so the driver's
//! next request continues on the same ring indices. The device's own configuration (backing
//! file, MAC, CID) is saved and re-created by the VMM per device kind.
//!
//! # Locking
//! The transport (vCPU threads, through the bus) locks the device while it holds its own lock; the
//! event handler (VMM thread) locks only the device. Nobody locks the transport while holding the
//! device, so the order transport → device is deadlock free. The VMM keeps its own
//! `Arc<Mutex<Block>>` for PATCH (`update_backing_file`, `update_rate_limiter`) and metrics.

pub mod block;
pub mod config_space;
#[cfg(test)]
mod constants_tests;
pub mod features;
pub mod handler;
pub mod mmio;
pub mod net;
pub mod reset;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod vsock;

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueState};
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMemoryMmap;

pub use config_space::read_config_bytes;
pub use features::Features;
pub use handler::VirtioEventHandler;
pub use mmio::MmioTransport;

// The virtio constants come from `virtio-bindings` (the Linux uapi headers); names kept from
// before are re-exported under them so callers do not change.

/// Device type: block device (virtio spec 5).
pub use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK as TYPE_BLOCK;
/// Device type: network card.
pub use virtio_bindings::virtio_ids::VIRTIO_ID_NET as TYPE_NET;
/// Device type: socket device.
pub use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK as TYPE_VSOCK;

/// Feature bit: the device complies with virtio 1.x.
pub use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Feature bit: used/avail event index notification suppression.
pub use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Driver status bits (virtio spec 2.1).
pub mod status {
    pub use virtio_bindings::virtio_config::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE as ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as DRIVER,
        VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FAILED as FAILED,
        VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK,
        VIRTIO_CONFIG_S_NEEDS_RESET as DEVICE_NEEDS_RESET,
    };
}

/// InterruptStatus bit: the configuration changed.
pub use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;
/// InterruptStatus bit: a used buffer was added to a queue.
pub use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;

/// Errors of device activation.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("Expected {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("Device is already active")]
    AlreadyActive,
    #[error("Device backend failed to start")]
    Backend(#[source] io::Error),
}

/// Which interrupt cause to raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptKind {
    /// A used buffer notification (InterruptStatus bit 0).
    Vring,
    /// A configuration change notification (InterruptStatus bit 1).
    Config,
}

/// The interrupt state shared by a transport and its active device: the InterruptStatus register,
/// the ConfigGeneration counter and the irqfd.
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    irq_evt: EventFd,
}

impl VirtioInterrupt {
    /// Wraps `irq_evt`, the EventFd the VMM registers with KVM as an irqfd.
    pub fn new(irq_evt: EventFd) -> Self {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            irq_evt,
        }
    }

    /// Sets the cause bit in InterruptStatus and signals the irqfd.
    pub fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        let bit = match kind {
            InterruptKind::Vring => VIRTIO_MMIO_INT_VRING,
            InterruptKind::Config => VIRTIO_MMIO_INT_CONFIG,
        };
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq_evt.write(1)
    }

    /// Bumps ConfigGeneration and raises a configuration change interrupt. Devices call this when
    /// their config space changes while active (e.g. a new backing file changes the capacity).
    pub fn notify_config_change(&self) -> io::Result<()> {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.trigger(InterruptKind::Config)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The ConfigGeneration register.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    pub(crate) fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// Puts back InterruptStatus and ConfigGeneration from a snapshot.
    pub(crate) fn restore(&self, status: u32, config_generation: u32) {
        self.status.store(status, Ordering::SeqCst);
        self.config_generation
            .store(config_generation, Ordering::SeqCst);
    }

    /// The irqfd.
    pub fn irq_evt(&self) -> &EventFd {
        &self.irq_evt
    }
}

/// A change to the set of fds the event loop watches for a device whose fds come and go (vsock
/// connections), returned by [`VirtioDevice::take_fd_changes`]. Tokens are the device's own
/// names for its dynamic fds; events on them reach [`VirtioDevice::handle_fd_event`].
#[derive(Debug)]
pub enum FdChange {
    /// Watch `fd` under `token` for readability and/or writability (added, or modified if the
    /// token is already watched). Hang-ups and errors are always reported.
    Watch {
        fd: RawFd,
        token: u32,
        readable: bool,
        writable: bool,
    },
    /// Stop watching `token`'s fd; the device keeps the fd open.
    Unwatch { token: u32 },
    /// Stop watching `token`'s fd (if watched), then close it. The device hands the fd over so
    /// that it stays open until it has left the event loop.
    Close { token: u32, fd: OwnedFd },
}

/// A virtio device model, independent of its transport.
///
/// Life cycle: created inactive; [`activate`](Self::activate) hands it guest memory, the queues
/// the driver configured and the interrupt; [`reset`](Self::reset) stops it and drops them, after
/// which it can be activated again. All methods must tolerate any guest behaviour without panicking.
///
/// Threads: `activate`, the config-space calls and the feature calls run on a vCPU thread (the
/// driver's MMIO accesses) and must only move state in memory: no host I/O, no syscalls beyond
/// the vCPU seccomp filter. Everything else, `reset` included (see [`reset`]), runs on the VMM
/// thread.
pub trait VirtioDevice: Send {
    /// The virtio device type (e.g. [`TYPE_BLOCK`]).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device feature bits offered to the driver. The transport adds VERSION_1 and EVENT_IDX.
    fn avail_features(&self) -> u64;
    /// Features the driver accepted (a subset of the offered ones), set at FEATURES_OK.
    fn set_acked_features(&mut self, features: u64);
    /// Reads the device config space at `offset`; bytes past its end read as zero (see
    /// [`read_config_bytes`]).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device config space at `offset`; read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device. `queues` are validated against `mem` by the transport and have event-idx
    /// set as negotiated.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError>;
    /// Whether [`activate`](Self::activate) succeeded and no reset happened since.
    fn is_activated(&self) -> bool;
    /// Stops the device: in-flight work is drained, queues, memory and interrupt are dropped.
    /// Called on the VMM thread (the transport defers the driver's reset to it).
    fn reset(&mut self);
    /// Called on the VMM thread when queue `index`'s notification EventFd fired. A no-op when the
    /// device is not active.
    fn process_queue(&mut self, index: usize);
    /// Extra fds the event loop must watch for this device (timers, completion eventfds). They
    /// must stay the same for the device's whole life, across resets.
    fn aux_event_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// Whether `aux_event_fds()[index]` is watched edge-triggered (a device that may leave the
    /// fd readable while it waits, e.g. a tap while the guest has no buffers, must say yes and
    /// then always drain the fd when it resumes).
    fn aux_event_edge_triggered(&self, _index: usize) -> bool {
        false
    }
    /// Called when `aux_event_fds()[index]` is readable.
    fn handle_aux_event(&mut self, _index: usize) {}

    /// Snapshot support: finishes in-flight work (the vCPUs are paused) so that the queues
    /// and guest memory hold everything the device did. Completed requests are posted to the
    /// used rings as usual. The default does nothing, right for devices that complete inline.
    fn quiesce(&mut self) {}
    /// Snapshot support: the live state of the queues an active device works on, in queue
    /// order (the transport's copies only hold what the driver configured). `None`, the
    /// default, means the device cannot be snapshotted while active.
    fn queue_states(&self) -> Option<Vec<QueueState>> {
        None
    }
    /// Dynamic fds to watch, re-watch or forget since the last call. The event handler calls it
    /// after every call into the device (and when an aux fd fires, so a device can ask for a
    /// call by signalling one of its aux fds).
    fn take_fd_changes(&mut self) -> Vec<FdChange> {
        Vec::new()
    }
    /// Called when the dynamic fd watched under `token` has `events` (readable, writable, hang-up,
    /// error).
    fn handle_fd_event(&mut self, _token: u32, _events: event_manager::EventSet) {}
}
