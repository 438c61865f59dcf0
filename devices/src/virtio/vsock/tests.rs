//! virtio-vsock on mock queues: the handshakes both ways, data and credit, shutdown and reset,
//! deadlines, the transport-reset event.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::io::RawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use event_manager::EventSet;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::conn::BUF_ALLOC;
use super::packet::*;
use super::*;
use crate::virtio::test_utils::*;

pub const CID: u64 = 3;
pub const RX_ADDR: u64 = 0x1000;
pub const TX_ADDR: u64 = 0x3000;
pub const EV_ADDR: u64 = 0x5000;
/// RX buffers, 4 KiB apart.
pub const RX_BUFS: u64 = 0x10000;
/// TX headers and payloads, 128 KiB apart.
pub const TX_BUFS: u64 = 0x100000;
pub const EV_BUF: u64 = 0x8000;
pub const RX_DATA: u32 = 2048;

/// A unique directory for socket files, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new() -> Dir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "vsock-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A driver's view of the device: three mock queues, a fake event loop.
pub struct H<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub rx: MockSplitQueue<'a, GuestMemoryMmap>,
    pub tx: MockSplitQueue<'a, GuestMemoryMmap>,
    pub ev: MockSplitQueue<'a, GuestMemoryMmap>,
    pub dev: Vsock,
    pub intr: Arc<VirtioInterrupt>,
    pub _dir: Dir,
    rx_desc: u16,
    rx_seen: u16,
    rx_addr: HashMap<u32, u64>,
    tx_slot: u16,
    /// Dynamic fds the fake event loop watches: token → (fd, readable, writable).
    pub watched: HashMap<u32, (RawFd, bool, bool)>,
    pub closed: Vec<u32>,
}

impl<'a> H<'a> {
    pub fn new(mem: &'a GuestMemoryMmap) -> H<'a> {
        Self::build(mem, false)
    }

    /// With VIRTIO_RING_F_EVENT_IDX negotiated on every queue.
    pub fn with_event_idx(mem: &'a GuestMemoryMmap) -> H<'a> {
        Self::build(mem, true)
    }

    fn build(mem: &'a GuestMemoryMmap, event_idx: bool) -> H<'a> {
        let dir = Dir::new();
        let dev = Vsock::new(VsockConfig {
            guest_cid: CID,
            uds_path: dir.0.join("v.sock"),
        })
        .unwrap();
        let mut h = H {
            mem,
            rx: MockSplitQueue::create(mem, GuestAddress(RX_ADDR), QUEUE_LEN),
            tx: MockSplitQueue::create(mem, GuestAddress(TX_ADDR), QUEUE_LEN),
            ev: MockSplitQueue::create(mem, GuestAddress(EV_ADDR), QUEUE_LEN),
            dev,
            intr: interrupt(),
            _dir: dir,
            rx_desc: 0,
            rx_seen: 0,
            rx_addr: HashMap::new(),
            tx_slot: 0,
            watched: HashMap::new(),
            closed: Vec::new(),
        };
        let mut queues: Vec<Queue> = vec![
            h.rx.create_queue().unwrap(),
            h.tx.create_queue().unwrap(),
            h.ev.create_queue().unwrap(),
        ];
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        h.dev.activate(mem.clone(), queues, h.intr.clone()).unwrap();
        h
    }

    pub fn uds(&self) -> PathBuf {
        self.dev.uds_path().to_owned()
    }

    /// Applies the device's fd changes to the fake event loop.
    pub fn changes(&mut self) {
        for c in self.dev.take_fd_changes() {
            match c {
                FdChange::Watch {
                    fd,
                    token,
                    readable,
                    writable,
                } => {
                    self.watched.insert(token, (fd, readable, writable));
                }
                FdChange::Unwatch { token } => {
                    self.watched.remove(&token);
                }
                FdChange::Close { token, .. } => {
                    self.watched.remove(&token);
                    self.closed.push(token);
                }
            }
        }
    }

    /// Posts `n` receive buffers of one descriptor (header + 2048 bytes), as Linux does.
    pub fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let i = self.rx_desc % QUEUE_LEN;
            let addr = RX_BUFS + u64::from(i) * 0x1000;
            add_chain_wrapping(
                &self.rx,
                self.mem,
                i,
                &[(addr, HDR_LEN as u32 + RX_DATA, W)],
            );
            self.rx_addr.insert(u32::from(i), addr);
            self.rx_desc = self.rx_desc.wrapping_add(1);
        }
    }

    /// Posts one receive buffer split into a header and a payload descriptor.
    pub fn post_rx_split(&mut self) {
        let i = self.rx_desc % QUEUE_LEN;
        let i = if i == QUEUE_LEN - 1 { 0 } else { i };
        let addr = RX_BUFS + u64::from(i) * 0x1000;
        add_chain_wrapping(
            &self.rx,
            self.mem,
            i,
            &[
                (addr, HDR_LEN as u32, W),
                (addr + HDR_LEN as u64, RX_DATA, W),
            ],
        );
        self.rx_addr.insert(u32::from(i), addr);
        self.rx_desc = i + 2;
    }

    /// Packets the device delivered since the last call.
    pub fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        while self.rx_seen != used_idx(&self.rx) {
            let (id, len) = used_elem(&self.rx, self.rx_seen % QUEUE_LEN);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let addr = self.rx_addr[&id];
            let mut raw = [0u8; HDR_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let hdr = Header::from_bytes(&raw);
            assert_eq!(len as usize, HDR_LEN + hdr.len as usize);
            let mut data = vec![0u8; hdr.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(addr + HDR_LEN as u64))
                .unwrap();
            out.push((hdr, data));
        }
        out
    }

    /// Sends one packet as the test guest does: header, then payload in its own descriptor.
    pub fn send(&mut self, hdr: Header, payload: &[u8]) {
        let mut hdr = hdr;
        hdr.len = payload.len() as u32;
        let slot = self.tx_slot % (QUEUE_LEN / 2);
        self.tx_slot = self.tx_slot.wrapping_add(1);
        let base = TX_BUFS + u64::from(slot) * 0x20000;
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(base))
            .unwrap();
        self.mem
            .write_slice(payload, GuestAddress(base + 0x100))
            .unwrap();
        let mut descs = vec![(base, HDR_LEN as u32, R)];
        if !payload.is_empty() {
            descs.push((base + 0x100, payload.len() as u32, R));
        }
        add_chain_wrapping(&self.tx, self.mem, slot * 2, &descs);
        self.dev.process_queue(TXQ);
        self.changes();
    }

    /// Runs an fd event through the device.
    pub fn fd_event(&mut self, token: u32, events: EventSet) {
        self.dev.handle_fd_event(token, events);
        self.changes();
    }

    pub fn aux(&mut self, index: usize) {
        self.dev.handle_aux_event(index);
        self.changes();
    }

    /// A host process connects to uds_path and sends CONNECT; returns its stream and the
    /// device's token for it.
    pub fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut s = UnixStream::connect(self.uds()).unwrap();
        let before: Vec<u32> = self.watched.keys().copied().collect();
        self.aux(AUX_LISTENER);
        let token = *self
            .watched
            .keys()
            .find(|t| !before.contains(t))
            .expect("accepted stream is watched");
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        self.fd_event(token, EventSet::IN);
        (s, token)
    }

    /// A host-initiated connection the guest accepted; returns the host stream, token and the
    /// host port.
    pub fn established(&mut self, guest_port: u32) -> (UnixStream, u32, u32) {
        self.post_rx(4);
        let (mut s, token) = self.host_connect(guest_port);
        let pkts = self.recv();
        assert_eq!(pkts.len(), 1);
        let req = pkts[0].0;
        assert_eq!(req.op, OP_REQUEST);
        self.send(ghdr(guest_port, req.src_port, OP_RESPONSE), &[]);
        let mut line = [0u8; 14];
        s.read_exact(&mut line).unwrap();
        assert_eq!(&line, format!("OK {}\n", req.src_port).as_bytes());
        (s, token, req.src_port)
    }
}

/// Like `add_chain`, but wraps around the available ring (the mock's own helper does not).
pub fn add_chain_wrapping(
    vq: &MockSplitQueue<'_, GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    first: u16,
    descs: &[(u64, u32, u16)],
) {
    let raw: Vec<(u64, u32, u16, u16)> = descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let idx = first + i as u16;
            if i + 1 < descs.len() {
                (addr, len, flags | VRING_DESC_F_NEXT, idx + 1)
            } else {
                (addr, len, flags & !VRING_DESC_F_NEXT, 0)
            }
        })
        .collect();
    write_raw_descs(vq, first, &raw);
    make_available(vq, mem, first);
}

/// A header from the guest (CID 3, port `src`) to the host (CID 2, port `dst`).
pub fn ghdr(src: u32, dst: u32, op: u16) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: src,
        dst_port: dst,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

pub fn read_timeout(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn config_features_and_cid_checks() {
    let mem = guest_memory();
    let h = H::new(&mem);
    let mut b = [0u8; 8];
    h.dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), CID);
    let mut b = [0xffu8; 4];
    h.dev.read_config(4, &mut b);
    assert_eq!(b, [0; 4]);
    h.dev.read_config(u64::MAX, &mut b);
    assert_eq!(h.dev.device_type(), TYPE_VSOCK);
    assert_eq!(h.dev.queue_max_sizes().len(), 3);
    let d = Dir::new();
    for cid in [0, 1, 2] {
        let r = Vsock::new(VsockConfig {
            guest_cid: cid,
            uds_path: d.0.join("x"),
        });
        assert!(matches!(r, Err(VsockError::ReservedCid(c)) if c == cid));
    }
    let r = Vsock::new(VsockConfig {
        guest_cid: 3,
        uds_path: d.0.join("no/such/dir/x"),
    });
    assert!(matches!(r, Err(VsockError::Unix(_))));
    // Wrong queue count.
    let mut dev = Vsock::new(VsockConfig {
        guest_cid: 3,
        uds_path: d.0.join("y"),
    })
    .unwrap();
    let q = mock_queue(&mem);
    let r = dev.activate(mem.clone(), vec![q.create_queue().unwrap()], interrupt());
    assert!(matches!(r, Err(ActivateError::QueueCount { .. })));
    // The socket file goes with the device.
    drop(dev);
    assert!(!d.0.join("y").exists());
}

#[test]
fn host_initiated_handshake_echo_and_close() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    let (mut s, token, host_port) = h.established(52);
    assert_eq!(host_port, FIRST_HOST_PORT);
    assert_eq!(h.dev.connection_count(), 1);
    // Host → guest.
    s.write_all(b"ping").unwrap();
    h.fd_event(token, EventSet::IN);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    let (hdr, data) = &pkts[0];
    assert_eq!((hdr.op, hdr.src_port, hdr.dst_port), (OP_RW, host_port, 52));
    assert_eq!((hdr.src_cid, hdr.dst_cid), (HOST_CID, CID));
    assert_eq!(hdr.buf_alloc, BUF_ALLOC);
    assert_eq!(data, b"ping");
    assert!(irq_fired(&h.intr));
    // Guest → host.
    h.send(ghdr(52, host_port, OP_RW), b"pong");
    assert_eq!(read_timeout(&mut s, 4), b"pong");
    // The host goes away: SHUTDOWN both ways, the guest's RST closes.
    drop(s);
    h.fd_event(token, EventSet::IN | EventSet::HANG_UP);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_SHUTDOWN);
    assert_eq!(pkts[0].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    assert!(
        !h.watched.contains_key(&token),
        "hung-up stream not unwatched"
    );
    h.send(ghdr(52, host_port, OP_RST), &[]);
    assert_eq!(h.dev.connection_count(), 0);
    assert!(h.closed.contains(&token));
    let m = h.dev.metrics();
    assert_eq!(m.connections_opened.load(Ordering::Relaxed), 1);
    assert_eq!(m.connections_closed.load(Ordering::Relaxed), 1);
    assert_eq!(m.rx_bytes.load(Ordering::Relaxed), 4);
    assert_eq!(m.tx_bytes.load(Ordering::Relaxed), 4);
    // The next host connection gets the next port.
    h.post_rx(1);
    let (_s2, _) = h.host_connect(53);
    assert_eq!(h.recv()[0].0.src_port, FIRST_HOST_PORT + 1);
}

#[test]
fn guest_initiated_connection_reaches_the_port_socket() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    let listener = UnixListener::bind(unix::port_path(&h.uds(), 1234)).unwrap();
    h.post_rx(4);
    h.send(ghdr(50000, 1234, OP_REQUEST), &[]);
    let pkts = h.recv();
    assert_eq!(pkts[0].0.op, OP_RESPONSE);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (1234, 50000));
    let (mut host, _) = listener.accept().unwrap();
    h.send(ghdr(50000, 1234, OP_RW), b"hello from guest\n");
    assert_eq!(read_timeout(&mut host, 17), b"hello from guest\n");
    host.write_all(b"hi").unwrap();
    let token = *h.watched.keys().next().unwrap();
    assert!(h.watched[&token].1, "stream not watched for reading");
    h.fd_event(token, EventSet::IN);
    let pkts = h.recv();
    assert_eq!(pkts[0].1, b"hi");
    assert_eq!(pkts[0].0.fwd_cnt, 17);
    // SHUTDOWN both ways: RST back, host sees EOF.
    let mut sd = ghdr(50000, 1234, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    h.send(sd, &[]);
    assert_eq!(h.recv()[0].0.op, OP_RST);
    assert_eq!(h.dev.connection_count(), 0);
    let mut rest = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn guest_connection_refused_and_stray_packets_get_rst() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    h.post_rx(4);
    h.send(ghdr(50000, 999, OP_REQUEST), &[]);
    let p = h.recv();
    assert_eq!(p[0].0.op, OP_RST);
    assert_eq!((p[0].0.src_port, p[0].0.dst_port), (999, 50000));
    h.send(ghdr(1, 2, OP_RW), b"x");
    assert_eq!(h.recv()[0].0.op, OP_RST);
    // Never an RST to an RST.
    h.send(ghdr(1, 2, OP_RST), &[]);
    assert!(h.recv().is_empty());
    let m = h.dev.metrics();
    assert_eq!(m.connections_refused.load(Ordering::Relaxed), 1);
}

#[test]
fn guest_shutdown_send_half_closes_the_host_stream() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    let (mut s, _token, port) = h.established(7);
    let mut sd = ghdr(7, port, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_SEND;
    h.send(sd, &[]);
    assert_eq!(h.dev.connection_count(), 1);
    let mut rest = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn host_data_respects_guest_credit() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    h.post_rx(4);
    let (mut s, token) = h.host_connect(9);
    let req = h.recv()[0].0;
    let mut resp = ghdr(9, req.src_port, OP_RESPONSE);
    resp.buf_alloc = 100;
    h.send(resp, &[]);
    let mut ok = [0u8; 14];
    s.read_exact(&mut ok).unwrap();
    s.write_all(&[1u8; 300]).unwrap();
    h.fd_event(token, EventSet::IN);
    let p = h.recv();
    let data: usize = p
        .iter()
        .filter(|(h, _)| h.op == OP_RW)
        .map(|(_, d)| d.len())
        .sum();
    assert_eq!(data, 100);
    assert!(p.iter().any(|(h, _)| h.op == OP_CREDIT_REQUEST));
    assert!(!h.watched[&token].1, "read interest kept without credit");
    // The guest consumed 100 bytes: 100 more may come.
    let mut cu = ghdr(9, req.src_port, OP_CREDIT_UPDATE);
    cu.buf_alloc = 100;
    cu.fwd_cnt = 100;
    h.post_rx(4);
    h.send(cu, &[]);
    let data: usize = h.recv().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(data, 100);
}

#[test]
fn guest_overrunning_our_credit_is_reset() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    let (_s, _token, port) = h.established(9);
    // Nobody reads the host stream: after BUF_ALLOC bytes plus what the socket holds, the
    // guest has overrun the credit we advertised.
    let chunk = vec![5u8; 60000];
    let mut rst = false;
    for _ in 0..200 {
        h.send(ghdr(9, port, OP_RW), &chunk);
        if h.dev.connection_count() == 0 {
            rst = true;
            break;
        }
    }
    assert!(rst, "credit overrun not detected");
    h.post_rx(8);
    h.dev.process_queue(RXQ);
    assert!(h.recv().iter().any(|(hd, _)| hd.op == OP_RST));
    assert!(h.dev.metrics().protocol_errors.load(Ordering::Relaxed) >= 1);
}

#[test]
fn no_receive_buffers_parks_host_data_until_the_guest_posts_some() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    let (mut s, token, _port) = h.established(9);
    // The 4 buffers are used by REQUEST; none left.
    h.recv();
    h.post_rx(0);
    s.write_all(b"abc").unwrap();
    // Use up remaining buffers (3 left) with data, then starve.
    for _ in 0..4 {
        h.fd_event(token, EventSet::IN);
        s.write_all(b"abc").unwrap();
    }
    let got: usize = h.recv().iter().map(|(_, d)| d.len()).sum();
    assert!(got > 0);
    assert!(
        !h.watched[&token].1,
        "starved connection still watched for reading"
    );
    h.post_rx(2);
    h.dev.process_queue(RXQ);
    h.changes();
    let more: usize = h.recv().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(got + more, 15);
}

#[test]
fn split_receive_buffers_are_filled_too() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    h.post_rx_split();
    h.send(ghdr(50000, 999, OP_REQUEST), &[]);
    let p = h.recv();
    assert_eq!(p[0].0.op, OP_RST);
}

#[test]
fn bad_or_missing_connect_lines_close_the_host_stream() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    let mut s = UnixStream::connect(h.uds()).unwrap();
    h.aux(AUX_LISTENER);
    let token = *h.watched.keys().next().unwrap();
    s.write_all(b"HELLO\n").unwrap();
    h.fd_event(token, EventSet::IN);
    assert!(h.closed.contains(&token));
    assert_eq!(read_timeout_eof(&mut s), 0);
    assert_eq!(
        h.dev.metrics().handshake_failures.load(Ordering::Relaxed),
        1
    );
}

fn read_timeout_eof(s: &mut UnixStream) -> usize {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 16];
    s.read(&mut b).unwrap()
}

#[test]
fn deadlines_close_silent_peers() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    h.post_rx(4);
    // A host stream that never sends its line, and one whose guest never answers.
    let mut quiet = UnixStream::connect(h.uds()).unwrap();
    h.aux(AUX_LISTENER);
    let (mut unanswered, token) = h.host_connect(77);
    assert_eq!(h.recv()[0].0.op, OP_REQUEST);
    std::thread::sleep(HANDSHAKE_TIMEOUT + Duration::from_millis(100));
    h.aux(AUX_TIMER);
    assert_eq!(read_timeout_eof(&mut quiet), 0);
    assert_eq!(read_timeout_eof(&mut unanswered), 0);
    assert!(h.closed.contains(&token));
    assert_eq!(h.recv()[0].0.op, OP_RST);
    assert_eq!(h.dev.connection_count(), 0);
}

#[test]
fn transport_reset_drops_connections_and_signals_the_guest() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    let (mut s, token, _) = h.established(5);
    mem.write_slice(&[0xffu8; 8], GuestAddress(EV_BUF)).unwrap();
    // No event buffer yet: the event waits for one.
    h.dev.transport_reset();
    h.changes();
    assert_eq!(h.dev.connection_count(), 0);
    assert!(h.closed.contains(&token));
    assert_eq!(read_timeout_eof(&mut s), 0);
    assert_eq!(used_idx(&h.ev), 0);
    add_chain(&h.ev, 0, &[(EV_BUF, 8, W)]);
    h.dev.process_queue(EVQ);
    assert_eq!(used_idx(&h.ev), 1);
    assert_eq!(used_elem(&h.ev, 0), (0, 4));
    let mut b = [0u8; 8];
    mem.read_slice(&mut b, GuestAddress(EV_BUF)).unwrap();
    assert_eq!(&b[..4], &EVENT_TRANSPORT_RESET.to_le_bytes());
    assert_eq!(&b[4..], &[0xff; 4]);
    assert!(irq_fired(&h.intr));
    // Once only; a second reset with a buffer posted goes out at once.
    add_chain(&h.ev, 1, &[(EV_BUF, 8, W)]);
    h.dev.process_queue(EVQ);
    assert_eq!(used_idx(&h.ev), 1);
    h.dev.transport_reset();
    assert_eq!(used_idx(&h.ev), 2);
    assert_eq!(h.dev.metrics().events_sent.load(Ordering::Relaxed), 2);
}

#[test]
fn device_reset_closes_everything_and_wakes_the_handler() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    let (mut s, token, _) = h.established(5);
    let _ = h.dev.wake.read();
    h.dev.reset();
    assert!(h.dev.wake.read().is_ok(), "handler not woken");
    h.changes();
    assert!(h.closed.contains(&token));
    assert_eq!(read_timeout_eof(&mut s), 0);
    assert!(!h.dev.is_activated());
    // A host connection while inactive is refused at its CONNECT line.
    let mut s = UnixStream::connect(h.uds()).unwrap();
    h.aux(AUX_LISTENER);
    let t = *h.watched.keys().next().unwrap();
    s.write_all(b"CONNECT 5\n").unwrap();
    h.fd_event(t, EventSet::IN);
    assert_eq!(read_timeout_eof(&mut s), 0);
}

/// The avail_event field (after the used ring) the device writes with EVENT_IDX.
fn avail_event(vq: &MockSplitQueue<'_, GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u16 {
    let addr = vq.used_addr().0 + 4 + 8 * u64::from(QUEUE_LEN);
    mem.read_obj(GuestAddress(addr)).unwrap()
}

#[test]
fn event_idx_asks_for_the_next_notifications() {
    let mem = guest_memory();
    let mut h = H::with_event_idx(&mem);
    h.post_rx(1);
    // Two stray packets: the first RST takes the one buffer, the second waits for another.
    h.send(ghdr(1, 2, OP_RW), &[]);
    h.send(ghdr(1, 3, OP_RW), &[]);
    assert_eq!(avail_event(&h.tx, &mem), 2, "TX: notify at the next packet");
    assert_eq!(h.recv().len(), 1);
    assert_eq!(avail_event(&h.rx, &mem), 1, "RX: notify at the next buffer");
    h.post_rx(1);
    h.dev.process_queue(RXQ);
    assert_eq!(h.recv().len(), 1);
    h.dev.transport_reset();
    assert_eq!(
        avail_event(&h.ev, &mem),
        0,
        "EVQ: notify at the first buffer"
    );
}

/// The host half-closes after its request: the guest hears SHUTDOWN(SEND) only, the host still
/// gets the guest's reply (with credit updates as usual), and the guest's own SHUTDOWN(SEND)
/// ends the connection: the host reads EOF and the guest gets RST.
#[test]
fn host_half_close_keeps_the_reply_direction_open() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    let (mut s, token, port) = h.established(52);
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    // A peer's SHUT_WR makes the stream readable (EPOLLIN | EPOLLRDHUP), never EPOLLHUP.
    h.fd_event(token, EventSet::IN | EventSet::READ_HANG_UP);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 2, "{pkts:?}");
    assert_eq!(pkts[0].0.op, OP_RW);
    assert_eq!(pkts[0].1, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(pkts[1].0.op, OP_SHUTDOWN);
    assert_eq!(pkts[1].0.flags, SHUTDOWN_SEND);
    // Still registered (for its hang-up), no longer read, no deadline.
    assert_eq!(
        h.watched.get(&token).map(|w| (w.1, w.2)),
        Some((false, false))
    );
    assert!(!h.dev.has_deadlines());
    // More readiness reports deliver nothing. (The mock rings hold 8 buffers in all.)
    h.post_rx(3);
    h.fd_event(token, EventSet::IN);
    assert!(h.recv().is_empty());
    // The guest's reply reaches the host, past the credit-update threshold.
    let chunk = vec![b'r'; 4000];
    for _ in 0..5 {
        h.send(ghdr(52, port, OP_RW), &chunk);
    }
    assert_eq!(read_timeout(&mut s, 20000), vec![b'r'; 20000]);
    let pkts = h.recv();
    assert!(
        pkts.iter()
            .any(|(hd, _)| hd.op == OP_CREDIT_UPDATE && hd.fwd_cnt >= 16000),
        "{pkts:?}"
    );
    assert_eq!(h.dev.connection_count(), 1);
    // The guest is done too: the host reads EOF, the guest gets RST.
    let mut sd = ghdr(52, port, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_SEND;
    h.send(sd, &[]);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].0.op, OP_RST);
    assert_eq!(h.dev.connection_count(), 0);
    assert!(h.closed.contains(&token));
    assert_eq!(read_timeout_eof(&mut s), 0);
}

/// After a host half-close, the guest's SHUTDOWN(SEND) waits for the guest data the host has
/// not taken yet; the connection ends once it is flushed.
#[test]
fn host_half_close_then_guest_shutdown_flushes_before_closing() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    let (mut s, token, port) = h.established(52);
    s.shutdown(std::net::Shutdown::Write).unwrap();
    h.fd_event(token, EventSet::IN | EventSet::READ_HANG_UP);
    assert_eq!(h.recv()[0].0.flags, SHUTDOWN_SEND);
    // The host reads nothing: fill its socket until the device buffers.
    let chunk = vec![b'x'; 4000];
    let mut sent = 0usize;
    let key = (port, 52);
    while h.dev.conns[&key].to_host.is_empty() {
        let mut p = ghdr(52, port, OP_RW);
        p.fwd_cnt = 0;
        h.send(p, &chunk);
        sent += chunk.len();
        assert!(sent < 8 * 1024 * 1024, "the host socket never filled");
    }
    assert_eq!(
        h.watched.get(&token).map(|w| (w.1, w.2)),
        Some((false, true))
    );
    let mut sd = ghdr(52, port, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_SEND;
    h.send(sd, &[]);
    assert_eq!(h.dev.connection_count(), 1, "closed with data unflushed");
    // The host drains; each writable report flushes, the last one closes.
    let mut got = 0usize;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    while h.dev.connection_count() == 1 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "EOF before all data arrived");
        assert!(buf[..n].iter().all(|&b| b == b'x'));
        got += n;
        h.fd_event(token, EventSet::OUT);
    }
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert_eq!(got + rest.len(), sent);
    assert!(h.closed.contains(&token));
    // The RST is delivered or, with the few mock buffers used up by credit updates, queued.
    let delivered = h.recv().iter().any(|(hd, _)| hd.op == OP_RST);
    assert!(delivered || h.dev.control.back().map(|c| c.op) == Some(OP_RST));
}

/// A host that half-closed and then closes for good hangs up: the guest gets SHUTDOWN both
/// ways, late guest data is dropped, and a guest that never answers is reset after the
/// deadline.
#[test]
fn host_closing_after_its_half_close_is_gone_and_the_deadline_holds() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    let (s, token, port) = h.established(52);
    s.shutdown(std::net::Shutdown::Write).unwrap();
    h.fd_event(token, EventSet::IN | EventSet::READ_HANG_UP);
    assert_eq!(h.recv()[0].0.flags, SHUTDOWN_SEND);
    drop(s);
    // The stream stayed registered, so epoll reports the hang-up even with no events asked.
    h.fd_event(token, EventSet::IN | EventSet::HANG_UP);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].0.op, OP_SHUTDOWN);
    assert_eq!(pkts[0].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    assert!(
        !h.watched.contains_key(&token),
        "hung-up stream still watched"
    );
    assert!(h.dev.has_deadlines());
    h.send(ghdr(52, port, OP_RW), b"late");
    assert!(h.recv().is_empty());
    std::thread::sleep(HANDSHAKE_TIMEOUT + Duration::from_millis(100));
    h.aux(AUX_TIMER);
    assert_eq!(h.recv()[0].0.op, OP_RST);
    assert_eq!(h.dev.connection_count(), 0);
    assert!(h.closed.contains(&token));
}

/// A host that half-closed and then closed, before any hang-up was reported: the guest's next
/// data fails to write (EPIPE) and the connection is reset.
#[test]
fn guest_data_to_a_host_gone_after_its_half_close_resets() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    let (s, token, port) = h.established(52);
    s.shutdown(std::net::Shutdown::Write).unwrap();
    h.fd_event(token, EventSet::IN);
    assert_eq!(h.recv()[0].0.flags, SHUTDOWN_SEND);
    drop(s);
    h.send(ghdr(52, port, OP_RW), b"reply");
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].0.op, OP_RST);
    assert_eq!(h.dev.connection_count(), 0);
    assert_eq!(h.dev.metrics().host_io_errors.load(Ordering::Relaxed), 1);
}

/// A full host close still closes both ways when the EOF is read before the hang-up report:
/// the EPOLLHUP that follows turns the half-close into SHUTDOWN both ways.
#[test]
fn host_full_close_read_as_eof_first_still_ends_both_ways() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    let (mut s, token, _port) = h.established(52);
    s.write_all(b"bye").unwrap();
    drop(s);
    h.fd_event(token, EventSet::IN);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 2, "{pkts:?}");
    assert_eq!(pkts[1].0.flags, SHUTDOWN_SEND);
    h.fd_event(token, EventSet::HANG_UP);
    let pkts = h.recv();
    assert_eq!(pkts[0].0.op, OP_SHUTDOWN);
    assert_eq!(pkts[0].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
}

/// What the kernel reports for a Unix stream whose peer half-closes vs closes, which the device
/// relies on: SHUT_WR gives POLLIN | POLLRDHUP and no POLLHUP; close gives POLLHUP.
#[test]
fn unix_stream_poll_events_after_peer_shutdown_and_close() {
    fn revents(s: &UnixStream) -> i16 {
        use std::os::unix::io::AsRawFd;
        let mut p = libc::pollfd {
            fd: s.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 0) }, 1);
        p.revents
    }
    let (a, b) = UnixStream::pair().unwrap();
    b.shutdown(std::net::Shutdown::Write).unwrap();
    // Nothing asked: only the always-reported events could show, and none does.
    let mut p = libc::pollfd {
        fd: std::os::unix::io::AsRawFd::as_raw_fd(&a),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    assert_eq!(unsafe { libc::poll(&mut p, 1, 0) }, 1);
    assert_eq!(p.revents & libc::POLLHUP, 0);
    assert_ne!(p.revents & libc::POLLRDHUP, 0);
    assert_ne!(p.revents & libc::POLLIN, 0);
    drop(b);
    assert_ne!(revents(&a) & libc::POLLHUP, 0);
}
