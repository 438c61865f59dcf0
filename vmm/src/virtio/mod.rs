//! virtio devices of a microVM: their API configurations, where they sit on the MMIO bus, the
//! one generic call that wires any device's transport into KVM and the bus, and what the
//! snapshot code needs from each kind ([`SlotDevice`], [`DeviceKindState`]).
//!
//! One module per kind ([`block`], [`net`], [`vsock`]) holds everything about that kind: its
//! API checks, `PUT`/`PATCH`, attach, and its snapshot state beside it. Adding a kind: a module
//! with those, a variant in [`DeviceKindState`], and its place in [`attach_all`] and
//! [`AttachedDevices::in_slot_order`] (a format minor bump in the snapshot crate).
//!
//! Every device kind (drives, then network interfaces, then vsock) takes the next free slot from
//! one [`Slots`] allocator, so slot `i` is MMIO window `MMIO_GAP_START + i * 4 KiB` and GSI
//! `FIRST_VIRTIO_IRQ + i`, in that order. The same order is used at boot and at restore, which
//! keeps addresses and interrupt lines stable across snapshots.

use std::sync::{Arc, Mutex};

use api::models::{BlockDeviceConfig, NetworkInterfaceConfig, VsockDeviceConfig};
use devices::virtio::mmio::{cmdline_entry, MmioTransport, MMIO_DEVICE_SIZE, NOTIFY_REG_OFFSET};
use devices::virtio::VirtioDevice;
use devices::{Bus, GuestMemoryMmap};
use event_manager::MutEventSubscriber;
use kvm_ioctls::{IoEventAddress, VmFd};

use serde::{Deserialize, Serialize};

use crate::arch::layout::{IOAPIC_PINS, MMIO_GAP_START};

pub mod block;
pub mod limiter;
pub mod net;
pub mod vsock;

use block::{AttachedDrive, DriveState};
use net::{AttachedNet, NetState};
use vsock::{AttachedVsock, VsockState};

/// First GSI handed to virtio devices (0-4 are the PIT, keyboard, cascade and COM ports).
pub const FIRST_VIRTIO_IRQ: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum VirtioDeviceError {
    #[error("Too many virtio devices: only {0} interrupt lines are free")]
    TooManyDevices(u32),
    #[error("{0}: cannot set up the virtio-mmio transport: {1}")]
    Transport(String, String),
    #[error("{0}: KVM {1} failed")]
    Kvm(String, &'static str, #[source] kvm_ioctls::Error),
    #[error("{0}: cannot place it on the MMIO bus")]
    Bus(String, #[source] devices::BusError),
    #[error(transparent)]
    Drive(#[from] block::DriveError),
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error(transparent)]
    Vsock(#[from] vsock::VsockError),
}

/// The virtio devices the API configured, before the microVM exists.
#[derive(Clone, Debug, Default)]
pub struct DeviceConfigs {
    pub drives: Vec<BlockDeviceConfig>,
    pub nets: Vec<NetworkInterfaceConfig>,
    /// `--allow-tap-create`: a missing tap is created at InstanceStart instead of refused.
    pub allow_tap_create: bool,
    pub vsock: Option<VsockDeviceConfig>,
}

/// The MMIO base address and GSI of slot `i`.
pub fn slot_address(i: u32) -> (u64, u32) {
    (
        MMIO_GAP_START + u64::from(i) * MMIO_DEVICE_SIZE,
        FIRST_VIRTIO_IRQ + i,
    )
}

/// Hands out MMIO windows and GSIs in order.
#[derive(Debug, Default)]
pub struct Slots {
    next: u32,
}

impl Slots {
    /// The next slot's MMIO base address and GSI.
    pub fn take(&mut self) -> Result<(u64, u32), VirtioDeviceError> {
        let free = u32::from(IOAPIC_PINS) - FIRST_VIRTIO_IRQ;
        if self.next >= free {
            return Err(VirtioDeviceError::TooManyDevices(free));
        }
        let i = self.next;
        self.next += 1;
        Ok(slot_address(i))
    }
}

/// The attached virtio devices of a running microVM, by kind, for PATCH, metrics and snapshots.
#[derive(Default)]
pub struct AttachedDevices {
    pub drives: Vec<AttachedDrive>,
    pub nets: Vec<AttachedNet>,
    /// What sits in each MMIO slot, in slot order, as named in errors ("Drive rootfs").
    pub slots: Vec<String>,
    pub vsock: Option<AttachedVsock>,
}

impl AttachedDevices {
    /// Every attached device in slot order (the order [`attach_all`] attached them in).
    pub fn in_slot_order(&self) -> Vec<&dyn SlotDevice> {
        let mut v: Vec<&dyn SlotDevice> = Vec::with_capacity(self.slots.len());
        v.extend(self.drives.iter().map(|d| d as &dyn SlotDevice));
        v.extend(self.nets.iter().map(|n| n as &dyn SlotDevice));
        v.extend(self.vsock.iter().map(|v| v as &dyn SlotDevice));
        v
    }
}

/// What the snapshot code needs from an attached device of any kind: the one loop over MMIO
/// slots (`crate::persist::devices`) saves and restores every device through it.
pub trait SlotDevice {
    /// The device's id (drive_id, iface_id, "vsock").
    fn id(&self) -> &str;
    /// Its kind, as the state file names it ("block", "net", "vsock").
    fn kind(&self) -> &'static str;
    /// Its virtio-mmio transport (registers, queues, interrupt state).
    fn transport(&self) -> &Arc<Mutex<MmioTransport>>;
    /// The kind's own snapshot state, from its current configuration in `cfgs` (None: the
    /// device has no configuration there).
    fn save_kind(&self, cfgs: &DeviceConfigs) -> Option<DeviceKindState>;
    /// Called once every device's transport state is restored, before the vCPUs run, with
    /// the device's saved kind state.
    fn after_restore(&self, _saved: &DeviceKindState) {}
}

/// The per-kind part of a device's snapshot state: what creates the same device again.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeviceKindState {
    Block(DriveState),
    Net(NetState),
    Vsock(VsockState),
}

impl DeviceKindState {
    /// The kind, as [`SlotDevice::kind`] names it.
    pub fn name(&self) -> &'static str {
        match self {
            DeviceKindState::Block(_) => "block",
            DeviceKindState::Net(_) => "net",
            DeviceKindState::Vsock(_) => "vsock",
        }
    }

    /// The API's own validation of the saved configuration (ids, names, CIDs, rate limits).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            DeviceKindState::Block(d) => d.config().validate(),
            DeviceKindState::Net(n) => n.config().validate(),
            DeviceKindState::Vsock(v) => v.config().validate(),
        }
    }

    /// Checks that the device can be created on this host, next to the devices already
    /// checked (`cfgs`: interfaces must not clash).
    pub fn check_host(&self, cfgs: &mut DeviceConfigs) -> Result<(), VirtioDeviceError> {
        match self {
            DeviceKindState::Block(d) => d.check_host()?,
            DeviceKindState::Net(n) => n.check_host(cfgs)?,
            DeviceKindState::Vsock(v) => vsock::check(&v.config())?,
        }
        Ok(())
    }

    /// Adds the API configuration that creates this device again.
    pub fn add_config(&self, cfgs: &mut DeviceConfigs) {
        match self {
            DeviceKindState::Block(d) => cfgs.drives.push(d.config()),
            DeviceKindState::Net(n) => cfgs.nets.push(n.config()),
            DeviceKindState::Vsock(v) => cfgs.vsock = Some(v.config()),
        }
    }
}

/// What attaching produced: the devices, their event handlers, the kernel command-line entries.
#[derive(Default)]
pub struct Attached {
    pub devices: AttachedDevices,
    pub subscribers: Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    pub cmdline: Vec<String>,
}

impl Attached {
    /// Creates `device`'s transport in the next slot, wires its queue notifications (ioeventfd)
    /// and interrupt (irqfd) through KVM, places it on the MMIO bus and records its event
    /// handler and command-line entry. Returns the transport (for snapshots). `id` names the
    /// device in errors.
    pub fn attach(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        mmio_bus: &mut Bus,
        slots: &mut Slots,
        id: &str,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<Arc<Mutex<MmioTransport>>, VirtioDeviceError> {
        let (base, irq) = slots.take()?;
        let transport = MmioTransport::new(mem.clone(), device)
            .map_err(|e| VirtioDeviceError::Transport(id.into(), e.to_string()))?;
        for (q, evt) in transport.queue_evts().iter().enumerate() {
            vm.register_ioevent(
                evt,
                &IoEventAddress::Mmio(base + NOTIFY_REG_OFFSET),
                q as u32,
            )
            .map_err(|e| VirtioDeviceError::Kvm(id.into(), "register ioeventfd", e))?;
        }
        vm.register_irqfd(transport.interrupt_evt(), irq)
            .map_err(|e| VirtioDeviceError::Kvm(id.into(), "register irqfd", e))?;
        let handler = transport
            .event_handler()
            .map_err(|e| VirtioDeviceError::Transport(id.into(), e.to_string()))?;
        self.subscribers.push(Arc::new(Mutex::new(handler)));
        let transport = Arc::new(Mutex::new(transport));
        mmio_bus
            .insert(transport.clone(), base, MMIO_DEVICE_SIZE)
            .map_err(|e| VirtioDeviceError::Bus(id.into(), e))?;
        self.cmdline.push(cmdline_entry(base, irq));
        self.devices.slots.push(id.to_string());
        Ok(transport)
    }
}

/// Attaches every configured device, kind by kind, in slot order.
pub fn attach_all(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    cfgs: &DeviceConfigs,
) -> Result<Attached, VirtioDeviceError> {
    let mut out = Attached::default();
    let mut slots = Slots::default();
    block::attach(&mut out, vm, mem, mmio_bus, &mut slots, &cfgs.drives)?;
    net::attach(&mut out, vm, mem, mmio_bus, &mut slots, cfgs)?;
    vsock::attach(&mut out, vm, mem, mmio_bus, &mut slots, cfgs.vsock.as_ref())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_at_the_last_ioapic_pin() {
        let mut s = Slots::default();
        let (b0, i0) = s.take().unwrap();
        let (b1, i1) = s.take().unwrap();
        assert_eq!((b0, i0), (MMIO_GAP_START, FIRST_VIRTIO_IRQ));
        assert_eq!(
            (b1, i1),
            (MMIO_GAP_START + MMIO_DEVICE_SIZE, FIRST_VIRTIO_IRQ + 1)
        );
        let free = u32::from(IOAPIC_PINS) - FIRST_VIRTIO_IRQ;
        for _ in 2..free {
            s.take().unwrap();
        }
        assert!(matches!(s.take(), Err(VirtioDeviceError::TooManyDevices(n)) if n == free));
    }
}
