//! Device resets requested by the driver, carried out on the VMM thread.
//!
//! The driver resets a device by writing 0 to Status, an MMIO write that reaches the transport
//! on a vCPU thread. Resetting the device itself may wait on host I/O (the io_uring engine
//! drains the kernel's in-flight requests) and may need syscalls only the VMM thread's seccomp
//! filter allows (`io_uring_enter`). So the transport resets its own registers at once, records
//! the device reset here and signals the VMM thread, whose event handler resets the device.
//! Until then Status reads back non-zero: the driver must wait for 0 before it initialises the
//! device again (virtio 1.x, 2.1.2), and the transport ignores register writes meanwhile.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{VirtioDevice, VirtioInterrupt};

/// A pending device reset, shared by a transport (vCPU side) and its event handler (VMM side).
#[derive(Debug)]
pub struct DeviceReset {
    pending: AtomicBool,
    evt: EventFd,
}

fn lock(dev: &Mutex<dyn VirtioDevice>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

impl DeviceReset {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(DeviceReset {
            pending: AtomicBool::new(false),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Whether the driver asked for a reset the VMM thread has not done yet.
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    /// The EventFd the VMM thread watches for reset requests.
    pub fn evt(&self) -> &EventFd {
        &self.evt
    }

    /// Records a reset and wakes the VMM thread (vCPU side; never blocks).
    pub(crate) fn request(&self) {
        self.pending.store(true, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::error!("virtio: cannot signal a device reset: {e}");
        }
    }

    /// Resets `device` if a reset is pending (VMM side): in-flight work is drained, queues
    /// and memory dropped, and what the device signalled meanwhile is cleared from
    /// InterruptStatus. Then Status reads 0.
    pub(crate) fn complete(&self, device: &Mutex<dyn VirtioDevice>, interrupt: &VirtioInterrupt) {
        if !self.is_pending() {
            return;
        }
        lock(device).reset();
        interrupt.clear();
        self.pending.store(false, Ordering::SeqCst);
    }
}
