//! One vsock stream connection between a guest port and a host Unix stream: its state, its
//! credit accounting in both directions and the bounded buffer of guest data the host socket
//! has not taken yet.
//!
//! Credit (virtio spec 5.10.6.3): each side advertises `buf_alloc` (its receive buffer) and
//! `fwd_cnt` (bytes it has consumed). A sender may have at most
//! `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` bytes in flight. We advertise [`BUF_ALLOC`] and
//! count as consumed what the host socket accepted, so the guest can never make us buffer more
//! than `BUF_ALLOC` bytes per connection.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::packet::SHUTDOWN_SEND;

/// What we advertise as our receive buffer per connection.
pub const BUF_ALLOC: u32 = 64 * 1024;
/// Send a CREDIT_UPDATE once this many consumed bytes have not been reported to the guest.
pub const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: we sent OP_REQUEST and wait for OP_RESPONSE until the deadline.
    Connecting(Instant),
    Established,
    /// The host stream is gone (closed, or failed): we sent OP_SHUTDOWN with both flags and wait
    /// for OP_RST until the deadline. A host that only half-closed (`shutdown(SHUT_WR)`) leaves
    /// the connection `Established` with [`Connection::host_eof`] set.
    Closing(Instant),
}

/// Why a write to the host failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("The guest sent {0} bytes beyond the credit it was given")]
    CreditViolation(u32),
    #[error("Guest data buffered for the host exceeds its bound")]
    Overflow,
    #[error("Host stream write failed")]
    HostWrite(#[source] io::Error),
}

pub struct Connection {
    pub stream: UnixStream,
    /// Handler token of the stream's fd.
    pub token: u32,
    /// Host-side port (the port the guest addresses).
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
    pub state: State,
    /// Payload bytes received from the guest (all of them, buffered or not).
    pub rx_cnt: u32,
    /// Payload bytes the host socket accepted.
    pub fwd_cnt: u32,
    /// `fwd_cnt` as last sent to the guest.
    pub last_fwd_sent: u32,
    /// Payload bytes sent to the guest.
    pub tx_cnt: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// SHUTDOWN flags the guest sent.
    pub peer_shutdown: u32,
    /// Guest data the host socket has not taken yet (at most `BUF_ALLOC` bytes).
    pub to_host: VecDeque<u8>,
    /// The host stream may have data (epoll said so, or it hung up).
    pub host_readable: bool,
    /// The host stream hung up: it is no longer watched and is read until it ends.
    pub host_hup: bool,
    /// The host write side was shut down after the guest's SHUTDOWN(SEND).
    pub host_write_closed: bool,
    /// The host half-closed its stream (we read EOF without a hang-up): the guest got
    /// SHUTDOWN(SEND), the stream is no longer read, guest data still goes to the host.
    pub host_eof: bool,
    /// We asked the guest for credit and have not heard from it since.
    pub credit_requested: bool,
    /// Events the handler currently watches for the stream: (readable, writable); None if
    /// not watched.
    pub watched: Option<(bool, bool)>,
    /// Data packets logged at debug level so far (to the guest, to the host): the first few
    /// of each connection are, as time stamps of a restored guest's first request.
    pub stamped: (u8, u8),
}

impl Connection {
    pub fn new(
        stream: UnixStream,
        token: u32,
        local_port: u32,
        peer_port: u32,
        state: State,
    ) -> Self {
        Connection {
            stream,
            token,
            local_port,
            peer_port,
            state,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_sent: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            peer_shutdown: 0,
            to_host: VecDeque::new(),
            host_readable: false,
            host_hup: false,
            host_write_closed: false,
            host_eof: false,
            credit_requested: false,
            watched: None,
            stamped: (0, 0),
        }
    }

    /// Takes the credit fields of a header the guest sent for this connection.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
        self.credit_requested = false;
    }

    /// Bytes we may still send to the guest (0 if its counters make no sense).
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the guest's view of our free space is stale enough for a CREDIT_UPDATE.
    pub fn needs_credit_update(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.last_fwd_sent) >= CREDIT_UPDATE_THRESHOLD
    }

    /// Whether host data may flow to the guest now (state, shutdown and credit allowing).
    pub fn can_send_to_guest(&self) -> bool {
        matches!(self.state, State::Established)
            && !self.host_eof
            && self.peer_shutdown & super::packet::SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Accepts an RW payload from the guest: writes what the host takes at once and buffers the
    /// rest. Fails if the guest overran its credit or the host stream is broken.
    pub fn push_to_host(&mut self, data: &[u8]) -> Result<(), ConnError> {
        let buffered = self.rx_cnt.wrapping_sub(self.fwd_cnt);
        let len = data.len() as u32;
        if u64::from(buffered) + u64::from(len) > u64::from(BUF_ALLOC) {
            return Err(ConnError::CreditViolation(len));
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(len);
        if self.host_write_closed {
            // The host will read no more: count it as consumed and drop it.
            self.fwd_cnt = self.fwd_cnt.wrapping_add(len);
            return Ok(());
        }
        let mut data = data;
        if self.to_host.is_empty() {
            match self.stream.write(data) {
                Ok(n) => {
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                    data = &data[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::HostWrite(e)),
            }
        }
        if self.to_host.len() + data.len() > BUF_ALLOC as usize {
            return Err(ConnError::Overflow);
        }
        self.to_host.extend(data);
        Ok(())
    }

    /// Writes buffered guest data to the host until it would block; returns bytes written.
    pub fn flush_to_host(&mut self) -> Result<usize, ConnError> {
        let mut total = 0;
        while !self.to_host.is_empty() {
            let (a, _) = self.to_host.as_slices();
            match self.stream.write(a) {
                Ok(0) => break,
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::HostWrite(e)),
            }
        }
        self.maybe_close_host_write();
        Ok(total)
    }

    /// After the guest's SHUTDOWN(SEND), ends the host's reading side once the buffer is empty.
    pub fn maybe_close_host_write(&mut self) {
        if self.peer_shutdown & SHUTDOWN_SEND != 0
            && self.to_host.is_empty()
            && !self.host_write_closed
        {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            self.host_write_closed = true;
        }
    }

    /// Whether nothing flows either way any more: the host half-closed (EOF) and the guest's
    /// SHUTDOWN(SEND) has been passed on to the host (its data flushed, the write side shut).
    pub fn both_sides_done(&self) -> bool {
        self.host_eof && self.host_write_closed
    }

    /// The events the stream should be watched for: readable when data can flow to the guest
    /// and `rx_ok` (the guest has receive buffers); writable while guest data waits. A stream
    /// watched for neither stays registered, so its hang-up (EPOLLHUP, always reported) is seen:
    /// that is how a half-closed host that then closes for good is noticed.
    pub fn wanted_events(&self, rx_ok: bool) -> Option<(bool, bool)> {
        if self.host_hup {
            return None;
        }
        let read = rx_ok && !self.host_readable && self.can_send_to_guest();
        let write = !self.to_host.is_empty();
        Some((read, write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Connection::new(a, 1, 1024, 5000, State::Established), b)
    }

    #[test]
    fn credit_accounting_wraps() {
        let (mut c, _peer) = conn();
        assert_eq!(c.peer_credit(), 0);
        c.update_peer_credit(1000, 0);
        c.tx_cnt = 400;
        assert_eq!(c.peer_credit(), 600);
        // Counters wrap around u32.
        c.tx_cnt = 100;
        c.update_peer_credit(1000, u32::MAX - 99);
        assert_eq!(c.peer_credit(), 800);
        // A guest claiming to have consumed more than we sent gets no credit, not a huge one.
        c.update_peer_credit(10, 0);
        c.tx_cnt = 50;
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn guest_data_beyond_credit_is_refused() {
        let (mut c, _peer) = conn();
        // Nothing reads the peer: the socket buffer fills, then our buffer.
        let chunk = vec![7u8; 4096];
        let mut sent = 0u32;
        loop {
            match c.push_to_host(&chunk) {
                Ok(()) => sent += chunk.len() as u32,
                Err(ConnError::CreditViolation(_)) => break,
                Err(e) => panic!("{e}"),
            }
            assert!(sent < 16 * 1024 * 1024, "no bound");
        }
        assert!(c.rx_cnt.wrapping_sub(c.fwd_cnt) <= BUF_ALLOC);
        assert!(c.to_host.len() <= BUF_ALLOC as usize);
    }

    #[test]
    fn buffered_data_flows_when_the_host_reads() {
        use std::io::Read;
        let (mut c, mut peer) = conn();
        let big = vec![1u8; 200 * 1024];
        let mut pushed = 0;
        while pushed < big.len() {
            let n = (big.len() - pushed).min(8192);
            if c.push_to_host(&big[pushed..pushed + n]).is_err() {
                break;
            }
            pushed += n;
        }
        assert!(!c.to_host.is_empty());
        let fwd_before = c.fwd_cnt;
        let mut sink = vec![0u8; 512 * 1024];
        let _ = peer.read(&mut sink).unwrap();
        let n = c.flush_to_host().unwrap();
        assert!(n > 0);
        assert_eq!(c.fwd_cnt, fwd_before.wrapping_add(n as u32));
        assert!(c.needs_credit_update());
    }
}
