//! Tartarus devices: the port-I/O and MMIO buses and the devices that sit on them.
//!
//! Devices know nothing of the VMM: they see reads and writes at offsets inside their own range,
//! and raise interrupts through [`legacy::EventFdTrigger`]s that the VMM wires to KVM irqfds.

pub mod bus;
pub mod counters;
pub mod host_file;
pub mod legacy;
pub mod rate_limiter;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};

/// Guest memory as every device and the VMM see it. The bitmap marks pages the VMM itself
/// writes (device DMA, boot data), which KVM's dirty log does not see; diff snapshots use both.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
