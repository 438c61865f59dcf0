//! Legacy PC devices on the port-I/O bus: the 8250 UART (COM1) and the i8042 controller.

pub mod i8042;
pub mod serial;

pub use i8042::I8042;
pub use serial::{SerialCounters, SerialDevice};

use std::io;
use std::ops::Deref;
use vmm_sys_util::eventfd::EventFd;

/// An interrupt line or notification backed by an `EventFd`. The VMM registers the fd with KVM
/// as an irqfd, so triggering it injects the interrupt without a trip through the VMM thread.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger(evt)
    }

    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(EventFdTrigger(self.0.try_clone()?))
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

impl Deref for EventFdTrigger {
    type Target = EventFd;
    fn deref(&self) -> &EventFd {
        &self.0
    }
}
