//! The event-manager subscriber that drives a virtio device on the VMM thread.

use std::collections::HashMap;
use std::os::unix::io::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::reset::DeviceReset;
use super::{FdChange, VirtioDevice, VirtioInterrupt};

/// `data` values at or above this mark a device aux fd (`data - AUX_BASE` is its index); below it,
/// the queue index.
const AUX_BASE: u32 = 0x1_0000;
/// `data` values at or above this mark a dynamic fd (`data - DYN_BASE` is its token).
const DYN_BASE: u32 = 0x8000_0000;
/// `data` of the device-reset EventFd (below [`AUX_BASE`], above any queue index).
const RESET_DATA: u32 = AUX_BASE - 1;
/// [`RESET_DATA`], for tests that drive a handler by hand.
#[cfg(test)]
pub(crate) const RESET_DATA_FOR_TESTS: u32 = RESET_DATA;
/// Largest dynamic fd token.
pub const MAX_FD_TOKEN: u32 = u32::MAX - DYN_BASE;

/// Watches a device's queue notification EventFds and its aux fds (rate-limiter timers, io_uring
/// completion eventfd) and calls [`VirtioDevice::process_queue`] /
/// [`VirtioDevice::handle_aux_event`]. All fds are registered once in `init`: they are stable
/// across device resets, and the device ignores queue events while inactive, so re-activation needs
/// nothing from the handler.
///
/// Devices whose fds come and go (vsock connections) report them through
/// [`VirtioDevice::take_fd_changes`]; the handler applies those changes after every call into the
/// device and routes their events to [`VirtioDevice::handle_fd_event`].
pub struct VirtioEventHandler {
    device: Arc<Mutex<dyn VirtioDevice>>,
    queue_evts: Vec<EventFd>,
    /// Dynamic fds currently in the event loop, by token.
    watched: HashMap<u32, RawFd>,
    /// Resets the driver asked for on a vCPU thread, done here on the VMM thread.
    reset: Option<(Arc<DeviceReset>, Arc<VirtioInterrupt>)>,
}

impl VirtioEventHandler {
    /// A handler for `device`; `queue_evts` are clones of the transport's queue EventFds.
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>, queue_evts: Vec<EventFd>) -> Self {
        VirtioEventHandler {
            device,
            queue_evts,
            watched: HashMap::new(),
            reset: None,
        }
    }

    /// Also watches `reset`'s EventFd and carries out the device resets it signals.
    pub fn with_reset(mut self, reset: Arc<DeviceReset>, interrupt: Arc<VirtioInterrupt>) -> Self {
        self.reset = Some((reset, interrupt));
        self
    }

    fn device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles one readiness event identified by its `data` (what `process` does; public so the
    /// VMM or tests can drive a device without an event manager).
    pub fn handle(&mut self, data: u32) {
        if data >= DYN_BASE {
            // Only reached without an event set (tests); process() passes the real one.
            self.device()
                .handle_fd_event(data - DYN_BASE, EventSet::IN | EventSet::OUT);
            return;
        }
        if data >= AUX_BASE {
            self.device().handle_aux_event((data - AUX_BASE) as usize);
            return;
        }
        if data == RESET_DATA {
            if let Some((reset, interrupt)) = &self.reset {
                let _ = reset.evt().read();
                reset.complete(&self.device, interrupt);
            }
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

    /// The dynamic fds currently watched (token → fd).
    pub fn watched_fds(&self) -> &HashMap<u32, RawFd> {
        &self.watched
    }

    /// Applies the device's pending fd changes to the event loop.
    fn apply_fd_changes(&mut self, ops: &mut EventOps) {
        let changes = self.device().take_fd_changes();
        for change in changes {
            match change {
                FdChange::Watch {
                    fd,
                    token,
                    readable,
                    writable,
                } => {
                    if token > MAX_FD_TOKEN {
                        tracing::error!("virtio: fd token {token} out of range");
                        continue;
                    }
                    let mut set = EventSet::empty();
                    if readable {
                        set |= EventSet::IN;
                    }
                    if writable {
                        set |= EventSet::OUT;
                    }
                    let ev = Events::with_data_raw(fd, DYN_BASE + token, set);
                    let res = match self.watched.get(&token) {
                        Some(&old) if old == fd => ops.modify(ev),
                        Some(&old) => {
                            let _ = ops.remove(Events::empty_raw(old));
                            ops.add(ev)
                        }
                        None => ops.add(ev),
                    };
                    match res {
                        Ok(()) => {
                            self.watched.insert(token, fd);
                        }
                        Err(e) => {
                            self.watched.remove(&token);
                            tracing::error!("virtio: cannot watch device fd {fd}: {e}");
                        }
                    }
                }
                FdChange::Unwatch { token } => self.unwatch(ops, token),
                FdChange::Close { token, fd } => {
                    self.unwatch(ops, token);
                    drop(fd);
                }
            }
        }
    }

    fn unwatch(&mut self, ops: &mut EventOps, token: u32) {
        if let Some(fd) = self.watched.remove(&token) {
            if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                tracing::warn!("virtio: cannot stop watching device fd {fd}: {e}");
            }
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
        if let Some((reset, _)) = &self.reset {
            if let Err(e) = ops.add(Events::with_data(reset.evt(), RESET_DATA, EventSet::IN)) {
                tracing::error!("virtio: cannot watch the device reset event: {e}");
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
        self.apply_fd_changes(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let data = events.data();
        if data >= DYN_BASE {
            // Dynamic fds (sockets) report hang-ups to the device, which closes or unwatches them.
            self.device()
                .handle_fd_event(data - DYN_BASE, events.event_set());
            self.apply_fd_changes(ops);
            return;
        }
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
        self.handle(data);
        self.apply_fd_changes(ops);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::io::AsRawFd;
    use std::os::unix::net::UnixStream;

    use event_manager::{EventManager, SubscriberOps};
    use virtio_queue::Queue;

    use super::*;
    use crate::virtio::{ActivateError, VirtioInterrupt};
    use crate::GuestMemoryMmap;

    /// A device that, on a queue notification, asks for one socket to be watched, and closes it
    /// on its first event.
    struct Dynamic {
        sizes: [u16; 1],
        sock: Option<UnixStream>,
        changes: Vec<FdChange>,
        seen: Vec<(u32, EventSet)>,
    }

    impl VirtioDevice for Dynamic {
        fn device_type(&self) -> u32 {
            0
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn avail_features(&self) -> u64 {
            0
        }
        fn set_acked_features(&mut self, _: u64) {}
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(
            &mut self,
            _: GuestMemoryMmap,
            _: Vec<Queue>,
            _: Arc<VirtioInterrupt>,
        ) -> Result<(), ActivateError> {
            Ok(())
        }
        fn is_activated(&self) -> bool {
            true
        }
        fn reset(&mut self) {}
        fn process_queue(&mut self, _: usize) {
            if let Some(s) = &self.sock {
                self.changes.push(FdChange::Watch {
                    fd: s.as_raw_fd(),
                    token: 7,
                    readable: true,
                    writable: false,
                });
            }
        }
        fn take_fd_changes(&mut self) -> Vec<FdChange> {
            std::mem::take(&mut self.changes)
        }
        fn handle_fd_event(&mut self, token: u32, events: EventSet) {
            self.seen.push((token, events));
            if let Some(s) = self.sock.take() {
                self.changes.push(FdChange::Close {
                    token,
                    fd: s.into(),
                });
            }
        }
    }

    #[test]
    fn dynamic_fds_are_watched_routed_and_closed() {
        let (mine, mut peer) = UnixStream::pair().unwrap();
        let dev = Arc::new(Mutex::new(Dynamic {
            sizes: [4],
            sock: Some(mine),
            changes: Vec::new(),
            seen: Vec::new(),
        }));
        let evt = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let handler = Arc::new(Mutex::new(VirtioEventHandler::new(
            dev.clone(),
            vec![evt.try_clone().unwrap()],
        )));
        let mut em = EventManager::<Arc<Mutex<VirtioEventHandler>>>::new().unwrap();
        em.add_subscriber(handler.clone());
        evt.write(1).unwrap();
        em.run_with_timeout(1000).unwrap();
        assert_eq!(handler.lock().unwrap().watched_fds().len(), 1);
        peer.write_all(b"x").unwrap();
        em.run_with_timeout(1000).unwrap();
        {
            let d = dev.lock().unwrap();
            assert_eq!(d.seen.len(), 1);
            assert_eq!(d.seen[0].0, 7);
            assert!(d.seen[0].1.contains(EventSet::IN));
        }
        assert!(handler.lock().unwrap().watched_fds().is_empty());
        // Closed (with our byte unread, so the peer sees a reset), and the loop has nothing left
        // to report.
        let mut b = [0u8; 1];
        match std::io::Read::read(&mut peer, &mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("socket not closed: {other:?}"),
        }
        assert_eq!(em.run_with_timeout(10).unwrap(), 0);
    }
}
