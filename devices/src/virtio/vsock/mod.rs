//! virtio-vsock with a hybrid Unix-socket backend (Firecracker's scheme): stream sockets between
//! the guest and host processes, without vhost.
//!
//! - Host-initiated: a host process connects to `uds_path`, writes `CONNECT <port>\n`; the device
//!   sends OP_REQUEST to the guest's `<port>` from a fresh host port (from 2^30 up); when the
//!   guest answers OP_RESPONSE the host gets `OK <host_port>\n` and the stream is spliced.
//! - Guest-initiated: OP_REQUEST to host port P connects to the Unix socket `<uds_path>_<P>`;
//!   OP_RESPONSE on success, OP_RST when nobody listens.
//!
//! Queues: rx 0, tx 1, event 2 ([`QUEUE_SIZE`] each); config space: the guest CID (le64).
//! Connections ([`conn`]) are keyed by (host port, guest port) and have credit flow control both
//! ways. The listener, a timer and a wake EventFd are the device's static aux fds; every
//! connection's and every pending handshake's stream is a dynamic fd registered through
//! [`FdChange`]s. Deadlines: a `CONNECT` line must arrive within [`HANDSHAKE_TIMEOUT`], the
//! guest must answer an OP_REQUEST within it, and after the host stream is gone (we send
//! OP_SHUTDOWN with both flags) the guest's OP_RST is awaited as long; then the device closes by
//! itself. A host half-close (EOF read with no hang-up) only sends OP_SHUTDOWN(SEND): guest data
//! still reaches the host until the guest shuts down its send side too (then RST), resets, or
//! the host closes for good (its EPOLLHUP, or a failed write).
//!
//! After a snapshot restore the VMM calls [`Vsock::after_restore`] with what [`Vsock::save`]
//! kept: host ports go on from the saved one and each connection the snapshotted device had
//! gets OP_RST. Without that state (older files) [`Vsock::transport_reset`] puts
//! VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue instead.

pub mod conn;
pub mod packet;
mod rx;
mod tx;
pub mod unix;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_hostile;
#[cfg(test)]
mod tests_restore;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use self::conn::Connection;
use self::unix::{HostListener, Pending, UnixError};
use super::handler::MAX_FD_TOKEN;
use super::{
    read_config_bytes, ActivateError, FdChange, Features, InterruptKind, VirtioDevice,
    VirtioInterrupt, TYPE_VSOCK,
};
use crate::GuestMemoryMmap;

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
pub const EVQ: usize = 2;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// The event id of a transport reset (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET). Hand-written, like
/// the packet constants in [`packet`]: `virtio-bindings` has no vsock module.
pub const EVENT_TRANSPORT_RESET: u32 = 0;
/// Host ports for host-initiated connections start here.
pub const FIRST_HOST_PORT: u32 = 1 << 30;
/// How long a handshake step may take (CONNECT line, guest's answer, guest's RST at close).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most simultaneous connections; further guest requests get RST, further host streams are closed.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host streams waiting for their CONNECT line.
pub const MAX_PENDING: usize = 64;
/// Most control packets waiting for receive buffers; more are dropped and counted.
pub const MAX_CONTROL: usize = 1024;

/// Data packets per connection and direction logged at debug level ([`stamp_rw`]).
const STAMPED_RW: u8 = 3;

/// Logs (debug) a data packet of connection `key`, if it is among the first [`STAMPED_RW`]
/// of its direction: with the log's time stamps these show where a restored guest's first
/// request spends its time.
pub(crate) fn stamp_rw(count: &mut u8, key: (u32, u32), to_guest: bool, len: usize) {
    if *count < STAMPED_RW {
        *count += 1;
        let dir = if to_guest {
            "host -> guest"
        } else {
            "guest -> host"
        };
        tracing::debug!("virtio-vsock: {key:?} RW #{count} {dir}, {len} bytes");
    }
}

/// Index of the listener in [`VirtioDevice::aux_event_fds`].
pub const AUX_LISTENER: usize = 0;
/// Index of the deadline timer.
pub const AUX_TIMER: usize = 1;
/// Index of the wake EventFd (signalled when connections change off the VMM thread).
pub const AUX_WAKE: usize = 2;

/// Errors of vsock set-up.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest_cid {0} is reserved: it must be at least 3")]
    ReservedCid(u64),
    #[error(transparent)]
    Unix(#[from] UnixError),
    #[error("Cannot create an EventFd or timer")]
    Setup(#[source] std::io::Error),
}

/// What a snapshot keeps of a device beyond its configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedVsock {
    /// The next host port for a host-initiated connection.
    pub next_host_port: u32,
    /// (host port, guest port) of every connection, and of every queued control packet: the
    /// guest may hold a socket for each that the restored device must reset.
    pub open: Vec<(u32, u32)>,
}

/// Everything needed to create a vsock device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

crate::counters! {
    /// Counters for the metrics.
    pub struct VsockMetrics {
        pub queue_events,
        /// Packets the guest sent (TX queue) and their payload bytes.
        pub tx_packets,
        pub tx_bytes,
        /// Packets delivered to the guest (RX queue) and their payload bytes.
        pub rx_packets,
        pub rx_bytes,
        /// Malformed TX chains (skipped) and unusable RX buffers (returned empty).
        pub tx_invalid_chains,
        pub rx_invalid_buffers,
        /// Packets that broke the protocol (wrong CIDs, credit overruns, unexpected ops).
        pub protocol_errors,
        /// Host stream reads/writes that failed.
        pub host_io_errors,
        pub connections_opened,
        pub connections_closed,
        /// Guest requests nobody on the host accepted, host requests the guest refused or ignored.
        pub connections_refused,
        /// Host streams closed before or at a bad CONNECT line.
        pub handshake_failures,
        pub control_dropped,
        pub events_sent,
        pub activate_count,
    }
}

pub(crate) fn inc(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

/// State that exists only while the device is active.
struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<VirtioInterrupt>,
    /// Which queues got used entries since the last interrupt.
    used: [bool; 3],
    /// A queue whose avail ring could not be read: ignored until reset.
    broken: [bool; 3],
}

/// A control packet waiting for a receive buffer: from host port `local` to guest port `peer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Control {
    local: u32,
    peer: u32,
    op: u16,
    flags: u32,
}

/// What a dynamic fd token names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Pending,
    Conn((u32, u32)),
}

/// A virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    listener: HostListener,
    timer: TimerFd,
    timer_armed: bool,
    wake: EventFd,
    features: Features,
    queue_sizes: [u16; 3],
    metrics: Arc<VsockMetrics>,
    active: Option<Active>,
    conns: BTreeMap<(u32, u32), Connection>,
    pending: HashMap<u32, Pending>,
    tokens: HashMap<u32, Owner>,
    control: VecDeque<Control>,
    changes: Vec<FdChange>,
    next_token: u32,
    next_host_port: u32,
    /// The last connection served data, for round-robin.
    cursor: Option<(u32, u32)>,
    /// Data waited for a receive buffer the guest had not posted.
    rx_starved: bool,
    reset_event_pending: bool,
    scratch: Vec<u8>,
}

impl Vsock {
    /// Binds `uds_path` and creates the device.
    pub fn new(cfg: VsockConfig) -> Result<Self, VsockError> {
        if cfg.guest_cid < 3 {
            return Err(VsockError::ReservedCid(cfg.guest_cid));
        }
        let listener = HostListener::bind(&cfg.uds_path)?;
        let wake = EventFd::new(EFD_NONBLOCK).map_err(VsockError::Setup)?;
        let timer = TimerFd::new().map_err(|e| VsockError::Setup(e.into()))?;
        set_nonblocking(timer.as_raw_fd()).map_err(VsockError::Setup)?;
        let mut dev = Vsock {
            guest_cid: cfg.guest_cid,
            listener,
            timer,
            timer_armed: false,
            wake,
            features: Features::new(&[]),
            queue_sizes: [QUEUE_SIZE; 3],
            metrics: Arc::new(VsockMetrics::default()),
            active: None,
            conns: BTreeMap::new(),
            pending: HashMap::new(),
            tokens: HashMap::new(),
            control: VecDeque::new(),
            changes: Vec::new(),
            next_token: 1,
            next_host_port: FIRST_HOST_PORT,
            cursor: None,
            rx_starved: false,
            reset_event_pending: false,
            scratch: vec![0u8; packet::MAX_PAYLOAD],
        };
        dev.arm_timer(false);
        Ok(dev)
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        self.listener.path()
    }

    /// The counters, shared with the metrics writer.
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    /// Open connections (established or in a handshake with the guest).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// What a snapshot keeps of the device beyond its configuration ([`SavedVsock`]).
    pub fn save(&self) -> SavedVsock {
        let mut open: std::collections::BTreeSet<(u32, u32)> = self.conns.keys().copied().collect();
        open.extend(self.control.iter().map(|c| (c.local, c.peer)));
        SavedVsock {
            next_host_port: self.next_host_port,
            open: open.into_iter().collect(),
        }
    }

    /// Applies what [`Vsock::save`] kept, after a snapshot restore (the device's queues are
    /// restored), instead of a blanket [`Vsock::transport_reset`]:
    /// - host ports go on from the saved one: the guest may still hold a socket (being closed)
    ///   for a (host port, guest port) pair of the snapshotted VMM, and a new connection on
    ///   that pair would be refused;
    /// - each connection the device had (or had a control packet queued for) gets OP_RST: its
    ///   host end is gone. The RSTs go out before anything else on the receive queue, so a
    ///   new connection is never caught by them, as it can be by a transport reset that the
    ///   guest handles on its event queue after it accepted the connection; and a device with
    ///   no connection costs the guest nothing at all.
    ///
    /// Without saved state (an older file), or with more connections than the control queue
    /// holds, the transport is reset as before.
    pub fn after_restore(&mut self, saved: Option<SavedVsock>) {
        let Some(saved) = saved.filter(|s| s.open.len() <= MAX_CONTROL) else {
            self.transport_reset();
            return;
        };
        self.next_host_port = saved.next_host_port.max(FIRST_HOST_PORT);
        tracing::debug!(
            "virtio-vsock: restored; RST to {} connections of the snapshotted VMM",
            saved.open.len()
        );
        for (local, peer) in saved.open {
            self.queue_control(local, peer, packet::OP_RST, 0);
        }
        self.process_rx();
        self.signal_interrupts();
        self.wake_handler();
    }

    /// Drops every connection and queues VIRTIO_VSOCK_EVENT_TRANSPORT_RESET for the guest
    /// (delivered now, or when the driver next posts an event buffer). Called after a snapshot
    /// restore: the host ends of all streams are gone, so guest sockets must learn it.
    pub fn transport_reset(&mut self) {
        tracing::debug!(
            "virtio-vsock: transport reset ({} connections dropped)",
            self.conns.len()
        );
        self.drop_all();
        self.reset_event_pending = true;
        self.deliver_event();
        self.signal_interrupts();
        self.wake_handler();
    }

    /// Asks the event handler to call in (it then applies pending fd changes).
    fn wake_handler(&self) {
        if let Err(e) = self.wake.write(1) {
            tracing::warn!("virtio-vsock: cannot wake the event handler: {e}");
        }
    }

    /// Closes every connection and pending handshake without telling the guest.
    fn drop_all(&mut self) {
        let keys: Vec<_> = self.conns.keys().copied().collect();
        for k in keys {
            self.close(k, false);
        }
        let tokens: Vec<_> = self.pending.keys().copied().collect();
        for t in tokens {
            self.close_pending(t);
        }
        self.control.clear();
        self.rx_starved = false;
        // The timer is left to the next pump on the VMM thread: reset() runs on a vCPU thread,
        // whose seccomp filter has no timerfd calls.
    }

    fn alloc_token(&mut self) -> u32 {
        loop {
            let t = self.next_token;
            self.next_token = if t >= MAX_FD_TOKEN { 1 } else { t + 1 };
            if !self.tokens.contains_key(&t) {
                return t;
            }
        }
    }

    fn alloc_host_port(&mut self) -> u32 {
        loop {
            let p = self.next_host_port;
            self.next_host_port = p.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.conns.keys().any(|&(local, _)| local == p) {
                return p;
            }
        }
    }

    /// Removes a connection, closes its host stream and, if `rst`, tells the guest.
    fn close(&mut self, key: (u32, u32), rst: bool) {
        let Some(c) = self.conns.remove(&key) else {
            return;
        };
        self.tokens.remove(&c.token);
        self.changes.push(FdChange::Close {
            token: c.token,
            fd: c.stream.into(),
        });
        inc(&self.metrics.connections_closed, 1);
        if rst {
            self.queue_control(key.0, key.1, packet::OP_RST, 0);
        }
    }

    fn close_pending(&mut self, token: u32) {
        if let Some(p) = self.pending.remove(&token) {
            self.tokens.remove(&token);
            self.changes.push(FdChange::Close {
                token,
                fd: p.stream.into(),
            });
        }
    }

    fn queue_control(&mut self, local: u32, peer: u32, op: u16, flags: u32) {
        if self.control.len() >= MAX_CONTROL {
            inc(&self.metrics.control_dropped, 1);
            return;
        }
        self.control.push_back(Control {
            local,
            peer,
            op,
            flags,
        });
    }

    /// Starts or stops the periodic deadline check.
    fn arm_timer(&mut self, on: bool) {
        if on == self.timer_armed {
            return;
        }
        let res = if on {
            let period = HANDSHAKE_TIMEOUT / 8;
            self.timer.reset(period, Some(period))
        } else {
            self.timer.clear()
        };
        match res {
            Ok(()) => self.timer_armed = on,
            Err(e) => tracing::warn!("virtio-vsock: cannot set the deadline timer: {e}"),
        }
    }

    fn has_deadlines(&self) -> bool {
        !self.pending.is_empty()
            || self
                .conns
                .values()
                .any(|c| !matches!(c.state, conn::State::Established))
    }

    /// Closes whatever missed its deadline.
    fn check_deadlines(&mut self) {
        let now = std::time::Instant::now();
        let late: Vec<u32> = self
            .pending
            .values()
            .filter(|p| p.deadline <= now)
            .map(|p| p.token)
            .collect();
        for t in late {
            inc(&self.metrics.handshake_failures, 1);
            self.close_pending(t);
        }
        let late: Vec<((u32, u32), bool)> = self
            .conns
            .iter()
            .filter_map(|(k, c)| match c.state {
                conn::State::Connecting(d) if d <= now => Some((*k, true)),
                conn::State::Closing(d) if d <= now => Some((*k, false)),
                _ => None,
            })
            .collect();
        for (k, refused) in late {
            if refused {
                inc(&self.metrics.connections_refused, 1);
            }
            self.close(k, true);
        }
    }

    /// Brings the fd watch set in line with what each connection can do now.
    fn update_interest(&mut self) {
        let rx_ok = !self.rx_starved;
        for c in self.conns.values_mut() {
            let want = c.wanted_events(rx_ok);
            if want == c.watched {
                continue;
            }
            match want {
                Some((readable, writable)) => self.changes.push(FdChange::Watch {
                    fd: c.stream.as_raw_fd(),
                    token: c.token,
                    readable,
                    writable,
                }),
                None => self.changes.push(FdChange::Unwatch { token: c.token }),
            }
            c.watched = want;
        }
    }

    /// After any event: deliver what can be delivered, fix the watch set, the timer and raise
    /// interrupts.
    fn pump(&mut self) {
        self.process_rx();
        self.deliver_event();
        self.update_interest();
        let on = self.has_deadlines();
        self.arm_timer(on);
        self.signal_interrupts();
    }

    fn signal_interrupts(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut fire = false;
        for q in 0..3 {
            if !std::mem::take(&mut active.used[q]) {
                continue;
            }
            match active.queues[q].needs_notification(&active.mem) {
                Ok(false) => {}
                Ok(true) | Err(_) => fire = true,
            }
        }
        if fire {
            if let Err(e) = active.interrupt.trigger(InterruptKind::Vring) {
                tracing::warn!("virtio-vsock: cannot raise interrupt: {e}");
            }
        }
    }

    /// Puts a pending transport-reset event on the event queue if the driver posted a buffer.
    fn deliver_event(&mut self) {
        if !self.reset_event_pending {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.broken[EVQ] {
            return;
        }
        let mut rechecked = false;
        loop {
            let chain = match active.queues[EVQ].iter(&active.mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    tracing::warn!("virtio-vsock: event queue unusable: {e}");
                    active.broken[EVQ] = true;
                    return;
                }
            };
            let Some(chain) = chain else {
                match active.queues[EVQ].enable_notification(&active.mem) {
                    Ok(true) if !rechecked => {
                        rechecked = true;
                        continue;
                    }
                    _ => return,
                }
            };
            let head = chain.head_index();
            let written = packet::write_event(&active.mem, chain, EVENT_TRANSPORT_RESET);
            let len = *written.as_ref().unwrap_or(&0);
            if let Err(e) = active.queues[EVQ].add_used(&active.mem, head, len) {
                tracing::warn!("virtio-vsock: cannot add used entry: {e}");
            }
            active.used[EVQ] = true;
            if written.is_ok() {
                tracing::debug!("virtio-vsock: transport reset event on the event queue");
                self.reset_event_pending = false;
                inc(&self.metrics.events_sent, 1);
                return;
            }
            inc(&self.metrics.rx_invalid_buffers, 1);
        }
    }

    fn accept_host_streams(&mut self) {
        loop {
            let stream = match self.listener.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("virtio-vsock: accept failed: {e}");
                    return;
                }
            };
            if self.pending.len() >= MAX_PENDING
                || self.conns.len() >= MAX_CONNECTIONS
                || stream.set_nonblocking(true).is_err()
            {
                inc(&self.metrics.handshake_failures, 1);
                continue;
            }
            let token = self.alloc_token();
            tracing::debug!("virtio-vsock: host stream accepted (token {token})");
            self.changes.push(FdChange::Watch {
                fd: stream.as_raw_fd(),
                token,
                readable: true,
                writable: false,
            });
            self.tokens.insert(token, Owner::Pending);
            self.pending.insert(
                token,
                Pending {
                    stream,
                    token,
                    line: Vec::new(),
                    deadline: std::time::Instant::now() + HANDSHAKE_TIMEOUT,
                },
            );
        }
    }

    /// A pending host stream is readable: read its CONNECT line and, if complete, ask the guest.
    fn on_pending(&mut self, token: u32) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        let port = match p.read_line() {
            unix::LineResult::Incomplete => return,
            unix::LineResult::Invalid => {
                inc(&self.metrics.handshake_failures, 1);
                self.close_pending(token);
                return;
            }
            unix::LineResult::Connect(port) => port,
        };
        if self.active.is_none() || self.conns.len() >= MAX_CONNECTIONS {
            // No driver to ask (yet): refuse.
            inc(&self.metrics.connections_refused, 1);
            self.close_pending(token);
            return;
        }
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        let local = self.alloc_host_port();
        let key = (local, port);
        let deadline = std::time::Instant::now() + HANDSHAKE_TIMEOUT;
        let mut c = Connection::new(
            p.stream,
            token,
            local,
            port,
            conn::State::Connecting(deadline),
        );
        // Watched for hang-ups only until the guest answers.
        c.watched = Some((true, false));
        self.tokens.insert(token, Owner::Conn(key));
        self.conns.insert(key, c);
        tracing::debug!("virtio-vsock: CONNECT {port} read, OP_REQUEST {key:?} queued");
        self.queue_control(local, port, packet::OP_REQUEST, 0);
    }
}

/// Makes `fd` non-blocking, so a spurious wake-up never blocks the VMM thread on it.
fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on an fd we own, no pointers; results are checked.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    /// Snapshot support. Connections are not saved: their host ends belong to this process.
    /// A restored device drops them all with [`Vsock::transport_reset`] (see
    /// [`Vsock::after_restore`]), and the guest's sockets see the reset instead of hanging.
    fn queue_states(&self) -> Option<Vec<QueueState>> {
        self.active
            .as_ref()
            .map(|a| a.queues.iter().map(|q| q.state()).collect())
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
        // struct virtio_vsock_config: le64 guest_cid.
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            "virtio-vsock: {}-byte write to read-only config at {offset:#x} ignored",
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
        if queues.len() != 3 {
            return Err(ActivateError::QueueCount {
                expected: 3,
                got: queues.len(),
            });
        }
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
            used: [false; 3],
            broken: [false; 3],
        });
        self.rx_starved = false;
        inc(&self.metrics.activate_count, 1);
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        // Runs on the VMM thread (the transport defers the driver's reset there); the handler
        // applies the fd changes after this call.
        self.drop_all();
        self.active = None;
        self.features.reset();
        self.reset_event_pending = false;
        self.wake_handler();
    }

    fn process_queue(&mut self, index: usize) {
        if self.active.is_none() {
            return;
        }
        inc(&self.metrics.queue_events, 1);
        match index {
            RXQ => self.rx_starved = false,
            TXQ => self.process_tx(),
            _ => tracing::debug!("virtio-vsock: event queue notified (buffers posted)"),
        }
        self.pump();
    }

    fn aux_event_fds(&self) -> Vec<RawFd> {
        vec![
            self.listener.listener.as_raw_fd(),
            self.timer.as_raw_fd(),
            self.wake.as_raw_fd(),
        ]
    }

    fn handle_aux_event(&mut self, index: usize) {
        match index {
            AUX_LISTENER => self.accept_host_streams(),
            AUX_TIMER => {
                // A non-blocking read: the timer fired, so this does not wait.
                let _ = self.timer.wait();
                self.check_deadlines();
            }
            AUX_WAKE => {
                let _ = self.wake.read();
            }
            _ => return,
        }
        self.pump();
    }

    fn take_fd_changes(&mut self) -> Vec<FdChange> {
        std::mem::take(&mut self.changes)
    }

    fn handle_fd_event(&mut self, token: u32, events: event_manager::EventSet) {
        match self.tokens.get(&token).copied() {
            Some(Owner::Pending) => self.on_pending(token),
            Some(Owner::Conn(key)) => self.on_host_event(key, events),
            None => {}
        }
        self.pump();
    }
}
