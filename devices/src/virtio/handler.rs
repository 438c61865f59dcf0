//! The event-manager subscriber that drives a virtio device on the VMM thread.

use std::os::unix::io::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::VirtioDevice;

/// `data` values at or above this mark a device aux fd (`data - AUX_BASE` is its index); below it,
/// the queue index.
const AUX_BASE: u32 = 0x1_0000;

/// Watches a device's queue notification EventFds and its aux fds (rate-limiter timers, io_uring
/// completion eventfd) and calls [`VirtioDevice::process_queue`] /
/// [`VirtioDevice::handle_aux_event`]. All fds are registered once in `init`: they are stable
/// across device resets, and the device ignores queue events while inactive, so re-activation needs
/// nothing from the handler.
pub struct VirtioEventHandler {
    device: Arc<Mutex<dyn VirtioDevice>>,
    queue_evts: Vec<EventFd>,
}

impl VirtioEventHandler {
    /// A handler for `device`; `queue_evts` are clones of the transport's queue EventFds.
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>, queue_evts: Vec<EventFd>) -> Self {
        VirtioEventHandler { device, queue_evts }
    }

    fn device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles one readiness event identified by its `data` (what `process` does; public so the
    /// VMM or tests can drive a device without an event manager).
    pub fn handle(&mut self, data: u32) {
        if data >= AUX_BASE {
            self.device().handle_aux_event((data - AUX_BASE) as usize);
            return;
        }
        let index = data as usize;
        let Some(evt) = self.queue_evts.get(index) else {
            return;
        };
        // Drain the counter first, so a notification that arrives while we process is not lost.
        match evt.read() {
            Ok(_) => self.device().process_queue(index),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::warn!("virtio: cannot read queue {index} event: {e}"),
        }
    }
}

impl MutEventSubscriber for VirtioEventHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                tracing::error!("virtio: cannot watch queue {i} event: {e}");
            }
        }
        let device = self.device();
        let aux: Vec<(RawFd, EventSet)> = device
            .aux_event_fds()
            .into_iter()
            .enumerate()
            .map(|(i, fd)| match device.aux_event_edge_triggered(i) {
                true => (fd, EventSet::IN | EventSet::EDGE_TRIGGERED),
                false => (fd, EventSet::IN),
            })
            .collect();
        drop(device);
        for (i, (fd, set)) in aux.into_iter().enumerate() {
            let data = AUX_BASE + i as u32;
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, set)) {
                tracing::error!("virtio: cannot watch device fd {fd}: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events
            .event_set()
            .intersects(EventSet::ERROR | EventSet::HANG_UP)
        {
            tracing::warn!(
                "virtio: fd {} reported an error; no longer watched",
                events.fd()
            );
            let _ = ops.remove(events);
            return;
        }
        self.handle(events.data());
    }
}
