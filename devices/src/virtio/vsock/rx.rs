//! Delivery to the guest: control packets first, then host data round-robin over the
//! connections, each within the guest's credit, into the receive buffers the driver posted.

use std::io::Read;
use std::ops::Bound;

use virtio_queue::{QueueOwnedT, QueueT};

use super::conn::{State, BUF_ALLOC};
use super::packet::{self, Header, RxBuffer};
use super::{inc, Control, Vsock, HANDSHAKE_TIMEOUT, HOST_CID, RXQ};

/// What the next receive buffer carries.
enum Next {
    Control,
    Data((u32, u32)),
}

impl Vsock {
    /// The next connection after the round-robin cursor whose host data can go to the guest.
    fn next_data_conn(&self) -> Option<(u32, u32)> {
        let ready = |c: &super::Connection| c.host_readable && c.can_send_to_guest();
        let after = match self.cursor {
            Some(k) => self
                .conns
                .range((Bound::Excluded(k), Bound::Unbounded))
                .find(|(_, c)| ready(c))
                .map(|(k, _)| *k),
            None => None,
        };
        after.or_else(|| self.conns.iter().find(|(_, c)| ready(c)).map(|(k, _)| *k))
    }

    /// Asks for credit on connections that have host data but none to send it with.
    fn request_credit(&mut self) {
        let mut want = Vec::new();
        for (k, c) in self.conns.iter_mut() {
            if c.host_readable
                && !c.host_eof
                && c.state == State::Established
                && c.peer_credit() == 0
                && !c.credit_requested
            {
                c.credit_requested = true;
                want.push(*k);
            }
        }
        for k in want {
            self.queue_control(k.0, k.1, packet::OP_CREDIT_REQUEST, 0);
        }
    }

    /// The header of a packet on connection `key` (or on no connection), carrying our credit.
    fn header(&mut self, local: u32, peer: u32, op: u16, flags: u32) -> Header {
        let (buf_alloc, fwd_cnt) = match self.conns.get_mut(&(local, peer)) {
            Some(c) => {
                c.last_fwd_sent = c.fwd_cnt;
                (BUF_ALLOC, c.fwd_cnt)
            }
            None => (0, 0),
        };
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local,
            dst_port: peer,
            len: 0,
            type_: packet::TYPE_STREAM,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }

    /// Pops the next receive buffer: None when there is none (or the queue is unusable),
    /// Some(Err(head)) for a buffer that cannot take a packet.
    fn pop_rx(&mut self) -> Option<Result<(u16, RxBuffer), u16>> {
        let active = self.active.as_mut()?;
        if active.broken[RXQ] {
            return None;
        }
        let mut rechecked = false;
        let chain = loop {
            let chain = match active.queues[RXQ].iter(&active.mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    tracing::warn!("virtio-vsock: rx queue unusable: {e}");
                    active.broken[RXQ] = true;
                    return None;
                }
            };
            if let Some(c) = chain {
                break c;
            }
            // Out of buffers: ask to be notified of new ones (EVENT_IDX: where to notify).
            match active.queues[RXQ].enable_notification(&active.mem) {
                Ok(true) if !rechecked => rechecked = true,
                _ => return None,
            }
        };
        let head = chain.head_index();
        Some(
            RxBuffer::new(&active.mem, chain)
                .map(|b| (head, b))
                .map_err(|e| {
                    tracing::debug!("virtio-vsock: rx buffer refused: {e}");
                    head
                }),
        )
    }

    fn put_back_rx(&mut self) {
        if let Some(active) = self.active.as_mut() {
            active.queues[RXQ].go_to_previous_position();
        }
    }

    /// Writes a packet into a buffer and returns the buffer to the driver.
    fn complete_rx(&mut self, head: u16, buf: &RxBuffer, hdr: &Header, payload_len: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let len = buf.write(&active.mem, hdr, &self.scratch[..payload_len]);
        if let Err(e) = active.queues[RXQ].add_used(&active.mem, head, len) {
            tracing::warn!("virtio-vsock: cannot add used entry: {e}");
        }
        active.used[RXQ] = true;
        inc(&self.metrics.rx_packets, 1);
        inc(&self.metrics.rx_bytes, payload_len as u64);
    }

    fn return_empty_rx(&mut self, head: u16) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if let Err(e) = active.queues[RXQ].add_used(&active.mem, head, 0) {
            tracing::warn!("virtio-vsock: cannot add used entry: {e}");
        }
        active.used[RXQ] = true;
        inc(&self.metrics.rx_invalid_buffers, 1);
    }

    /// Fills receive buffers while there is something to deliver.
    pub(super) fn process_rx(&mut self) {
        if self.active.is_none() {
            return;
        }
        self.request_credit();
        loop {
            let next = if !self.control.is_empty() {
                Next::Control
            } else if let Some(k) = self.next_data_conn() {
                Next::Data(k)
            } else {
                // Connections that ran out of credit while we read ask for more.
                self.request_credit();
                if self.control.is_empty() {
                    return;
                }
                continue;
            };
            let (head, buf) = match self.pop_rx() {
                None => {
                    self.rx_starved = true;
                    return;
                }
                Some(Err(head)) => {
                    self.return_empty_rx(head);
                    continue;
                }
                Some(Ok(b)) => b,
            };
            match next {
                Next::Control => {
                    let Some(Control {
                        local,
                        peer,
                        op,
                        flags,
                    }) = self.control.pop_front()
                    else {
                        self.put_back_rx();
                        return;
                    };
                    let hdr = self.header(local, peer, op, flags);
                    if op == packet::OP_REQUEST {
                        tracing::debug!(
                            "virtio-vsock: OP_REQUEST {:?} to the guest",
                            (local, peer)
                        );
                    }
                    self.complete_rx(head, &buf, &hdr, 0);
                }
                Next::Data(key) => self.deliver_data(key, head, buf),
            }
        }
    }

    /// The host stream of connection `key` ended for good: SHUTDOWN both ways to the guest,
    /// whose RST is awaited until the deadline.
    pub(super) fn host_gone(&mut self, key: (u32, u32)) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        c.host_readable = false;
        c.state = State::Closing(std::time::Instant::now() + HANDSHAKE_TIMEOUT);
        self.queue_control(
            key.0,
            key.1,
            packet::OP_SHUTDOWN,
            packet::SHUTDOWN_RCV | packet::SHUTDOWN_SEND,
        );
    }

    /// Reads host data for connection `key` into the buffer `head` within the guest's credit.
    fn deliver_data(&mut self, key: (u32, u32), head: u16, buf: RxBuffer) {
        self.cursor = Some(key);
        let Some(c) = self.conns.get_mut(&key) else {
            self.put_back_rx();
            return;
        };
        let room = buf.payload_room().min(c.peer_credit() as usize);
        if room == 0 {
            // A buffer with no room for data still carries our credit.
            let hdr = self.header(key.0, key.1, packet::OP_CREDIT_UPDATE, 0);
            self.complete_rx(head, &buf, &hdr, 0);
            return;
        }
        let res = c.stream.read(&mut self.scratch[..room]);
        match res {
            Ok(0) => {
                c.host_readable = false;
                if c.host_hup || c.host_write_closed {
                    // The host stream is gone both ways (closed, or its half-close met ours):
                    // close both ways and wait for the guest's RST.
                    self.put_back_rx();
                    self.host_gone(key);
                } else {
                    // A half-close (shutdown(SHUT_WR)): the host sends no more but may still
                    // read. The guest may go on sending until it shuts down or resets; a host
                    // that then closes for good hangs up (EPOLLHUP) and is handled as gone.
                    c.host_eof = true;
                    self.put_back_rx();
                    self.queue_control(key.0, key.1, packet::OP_SHUTDOWN, packet::SHUTDOWN_SEND);
                }
            }
            Ok(n) => {
                super::stamp_rw(&mut c.stamped.0, key, true, n);
                c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                let hdr = self.header(key.0, key.1, packet::OP_RW, 0);
                self.complete_rx(head, &buf, &hdr, n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                c.host_readable = false;
                self.put_back_rx();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => self.put_back_rx(),
            Err(e) => {
                tracing::debug!("virtio-vsock: connection {key:?}: host read failed: {e}");
                self.put_back_rx();
                inc(&self.metrics.host_io_errors, 1);
                self.close(key, true);
            }
        }
    }
}
