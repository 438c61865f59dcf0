//! Tartarus devices: the port-I/O and MMIO buses and the devices that sit on them.
//!
//! Devices know nothing of the VMM: they see reads and writes at offsets inside their own range,
//! and raise interrupts through [`legacy::EventFdTrigger`]s that the VMM wires to KVM irqfds.

pub mod bus;
pub mod legacy;

pub use bus::{Bus, BusDevice, BusError};
