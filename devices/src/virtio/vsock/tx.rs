//! The guest's packets: the TX queue and what each packet does to the connection table.

use std::io::Write;

use virtio_queue::{QueueOwnedT, QueueT};

use super::conn::{Connection, State};
use super::packet::{self, TxPacket};
use super::{inc, unix, Owner, Vsock, HOST_CID, MAX_CONNECTIONS, TXQ};

impl Vsock {
    /// Pops every available TX chain, returns it to the driver and handles its packet.
    pub(super) fn process_tx(&mut self) {
        // At most one re-check per empty ring, so a ring that never yields cannot spin us.
        let mut rechecked = false;
        loop {
            let Some(active) = self.active.as_mut() else {
                return;
            };
            if active.broken[TXQ] {
                return;
            }
            let chain = match active.queues[TXQ].iter(&active.mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    tracing::warn!("virtio-vsock: tx queue unusable: {e}");
                    active.broken[TXQ] = true;
                    return;
                }
            };
            let Some(chain) = chain else {
                // With EVENT_IDX this also tells the driver where to notify next; a chain that
                // arrived meanwhile is taken at once.
                match active.queues[TXQ].enable_notification(&active.mem) {
                    Ok(true) if !rechecked => {
                        rechecked = true;
                        continue;
                    }
                    _ => return,
                }
            };
            rechecked = false;
            let head = chain.head_index();
            let parsed = packet::read_tx(&active.mem, chain);
            if let Err(e) = active.queues[TXQ].add_used(&active.mem, head, 0) {
                tracing::warn!("virtio-vsock: cannot add used entry: {e}");
            }
            active.used[TXQ] = true;
            match parsed {
                Ok(p) => {
                    inc(&self.metrics.tx_packets, 1);
                    inc(&self.metrics.tx_bytes, p.payload.len() as u64);
                    self.handle_guest_packet(p);
                }
                Err(e) => {
                    tracing::debug!("virtio-vsock: tx chain refused: {e}");
                    inc(&self.metrics.tx_invalid_chains, 1);
                }
            }
        }
    }

    fn protocol_error(&self, what: &str) {
        tracing::debug!("virtio-vsock: {what}");
        inc(&self.metrics.protocol_errors, 1);
    }

    fn handle_guest_packet(&mut self, p: TxPacket) {
        let h = p.hdr;
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID {
            self.protocol_error("packet with foreign CIDs dropped");
            return;
        }
        let key = (h.dst_port, h.src_port);
        if h.type_ != packet::TYPE_STREAM {
            self.protocol_error("non-stream packet refused");
            if self.conns.contains_key(&key) {
                self.close(key, true);
            } else if h.op != packet::OP_RST {
                self.queue_control(key.0, key.1, packet::OP_RST, 0);
            }
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            match h.op {
                packet::OP_REQUEST => self.guest_connect(key, h.buf_alloc, h.fwd_cnt),
                packet::OP_RST => {}
                _ => self.queue_control(key.0, key.1, packet::OP_RST, 0),
            }
            return;
        };
        c.update_peer_credit(h.buf_alloc, h.fwd_cnt);
        match (c.state, h.op) {
            (State::Connecting(_), packet::OP_RESPONSE) => {
                tracing::debug!("virtio-vsock: OP_RESPONSE {key:?}, OK to the host");
                c.state = State::Established;
                let ok = format!("OK {}\n", c.local_port);
                if c.stream.write_all(ok.as_bytes()).is_err() {
                    inc(&self.metrics.host_io_errors, 1);
                    self.close(key, true);
                } else {
                    inc(&self.metrics.connections_opened, 1);
                }
            }
            (State::Connecting(_), packet::OP_RST) => {
                inc(&self.metrics.connections_refused, 1);
                self.close(key, false);
            }
            (_, packet::OP_RST) => self.close(key, false),
            (State::Connecting(_), _) => {
                self.protocol_error("unexpected op during connect");
                self.close(key, true);
            }
            (_, packet::OP_CREDIT_UPDATE) => {}
            (_, packet::OP_CREDIT_REQUEST) => {
                self.queue_control(key.0, key.1, packet::OP_CREDIT_UPDATE, 0)
            }
            (State::Established, packet::OP_RW) => {
                super::stamp_rw(&mut c.stamped.1, key, false, p.payload.len());
                match c.push_to_host(&p.payload) {
                    Ok(()) => {
                        if c.needs_credit_update() {
                            self.queue_control(key.0, key.1, packet::OP_CREDIT_UPDATE, 0);
                        }
                    }
                    Err(e) => {
                        tracing::debug!("virtio-vsock: connection {key:?}: {e}");
                        if matches!(e, super::conn::ConnError::HostWrite(_)) {
                            inc(&self.metrics.host_io_errors, 1);
                        } else {
                            inc(&self.metrics.protocol_errors, 1);
                        }
                        self.close(key, true);
                    }
                }
            }
            // The host side is gone: late data is dropped.
            (State::Closing(_), packet::OP_RW) => {}
            (_, packet::OP_SHUTDOWN) => {
                c.peer_shutdown |= h.flags & (packet::SHUTDOWN_RCV | packet::SHUTDOWN_SEND);
                if c.peer_shutdown == packet::SHUTDOWN_RCV | packet::SHUTDOWN_SEND {
                    // Nothing more either way: hand the host what we can, then close with RST.
                    let _ = c.flush_to_host();
                    self.close(key, true);
                } else {
                    c.maybe_close_host_write();
                    if c.both_sides_done() {
                        // The host had half-closed and now has all the guest sent: done.
                        self.close(key, true);
                    }
                }
            }
            _ => {
                self.protocol_error("unexpected op on a connection");
                self.close(key, true);
            }
        }
    }

    /// The guest's OP_REQUEST to host port `key.0`: connect to `<uds_path>_<port>`.
    fn guest_connect(&mut self, key: (u32, u32), buf_alloc: u32, fwd_cnt: u32) {
        if self.conns.len() >= MAX_CONNECTIONS {
            inc(&self.metrics.connections_refused, 1);
            self.queue_control(key.0, key.1, packet::OP_RST, 0);
            return;
        }
        let path = unix::port_path(self.listener.path(), key.0);
        let stream = match unix::connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("virtio-vsock: guest connection refused: {e}");
                inc(&self.metrics.connections_refused, 1);
                self.queue_control(key.0, key.1, packet::OP_RST, 0);
                return;
            }
        };
        let token = self.alloc_token();
        let mut c = Connection::new(stream, token, key.0, key.1, State::Established);
        c.update_peer_credit(buf_alloc, fwd_cnt);
        self.tokens.insert(token, Owner::Conn(key));
        self.conns.insert(key, c);
        inc(&self.metrics.connections_opened, 1);
        self.queue_control(key.0, key.1, packet::OP_RESPONSE, 0);
    }

    /// Readiness of a connection's host stream.
    pub(super) fn on_host_event(&mut self, key: (u32, u32), events: event_manager::EventSet) {
        use event_manager::EventSet;
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if events.contains(EventSet::OUT) {
            match c.flush_to_host() {
                Ok(_) if c.both_sides_done() => {
                    // The last guest data after its SHUTDOWN(SEND) reached a half-closed host.
                    self.close(key, true);
                    return;
                }
                Ok(_) => {
                    if c.needs_credit_update() {
                        self.queue_control(key.0, key.1, packet::OP_CREDIT_UPDATE, 0);
                    }
                }
                Err(e) => {
                    tracing::debug!("virtio-vsock: connection {key:?}: {e}");
                    inc(&self.metrics.host_io_errors, 1);
                    self.close(key, true);
                    return;
                }
            }
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if events.contains(EventSet::IN) && !c.host_eof {
            c.host_readable = true;
        }
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) && c.host_eof {
            // A half-closed host (EOF already read) that now hangs up has closed for good (or
            // failed): nobody reads the guest's data any more.
            c.host_hup = true;
            if c.state == State::Established {
                self.host_gone(key);
            }
            return;
        }
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            // Level-triggered hang-ups would fire forever: stop watching and read the stream
            // to its end as the guest's credit allows.
            c.host_hup = true;
            c.host_readable = true;
            if matches!(c.state, State::Connecting(_)) {
                // The host gave up before the guest answered.
                self.close(key, true);
            }
        }
    }
}
