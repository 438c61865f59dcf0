//! virtio-net on mock queues with a socket pair as the tap: TX, RX, mergeable buffers, offload
//! negotiation, stalls and rate limiting.

use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::rate_limiter::TokenBucketConfig;
use crate::virtio::test_utils::*;
use crate::virtio::VIRTIO_F_VERSION_1;

pub const TXQ_ADDR: u64 = 0x8000;
pub const RX_BUF: u64 = 0x10_0000;
pub const TX_BUF: u64 = 0x20_0000;

/// A backend on one end of a datagram socket pair; the test holds the other end.
pub struct SockBackend {
    sock: UnixDatagram,
    pub offload: Arc<Mutex<Option<u32>>>,
}

impl NetBackend for SockBackend {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.recv(buf)
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.send(buf)
    }
    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        *self.offload.lock().unwrap() = Some(flags);
        Ok(())
    }
    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

pub struct Rig<'a> {
    pub rxq: MockSplitQueue<'a, GuestMemoryMmap>,
    pub txq: MockSplitQueue<'a, GuestMemoryMmap>,
    pub dev: Net,
    pub peer: UnixDatagram,
    pub offload: Arc<Mutex<Option<u32>>>,
    pub intr: Arc<VirtioInterrupt>,
}

pub fn config() -> NetConfig {
    NetConfig {
        iface_id: "eth0".into(),
        guest_mac: Some([0x06, 0, 0xac, 0x10, 0, 2]),
        ..Default::default()
    }
}

impl<'a> Rig<'a> {
    /// A device with `cfg`, the driver acking `features` (VERSION_1 is added), activated.
    pub fn new(mem: &'a GuestMemoryMmap, cfg: NetConfig, features: u64) -> Self {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let offload = Arc::new(Mutex::new(None));
        let backend = SockBackend {
            sock: a,
            offload: offload.clone(),
        };
        let mut dev = Net::new(cfg, Box::new(backend)).unwrap();
        dev.set_acked_features(features | (1 << VIRTIO_F_VERSION_1));
        let rxq = mock_queue(mem);
        let txq = MockSplitQueue::create(mem, GuestAddress(TXQ_ADDR), QUEUE_LEN);
        let intr = interrupt();
        dev.activate(
            mem.clone(),
            vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
            intr.clone(),
        )
        .unwrap();
        Rig {
            rxq,
            txq,
            dev,
            peer: b,
            offload,
            intr,
        }
    }

    pub fn m(&self) -> Arc<NetMetrics> {
        self.dev.metrics()
    }

    /// What the backend received, frame by frame.
    pub fn sent(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; MAX_BUFFER_LEN + 100];
        while let Ok(n) = self.peer.recv(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    /// The host sends a frame to the guest and the tap's readiness is reported.
    pub fn inject(&mut self, data: &[u8]) {
        self.peer.send(data).unwrap();
        self.dev.handle_aux_event(AUX_TAP);
    }
}

/// A 12-byte header (all zero but `flags`) followed by an Ethernet frame of `len` bytes.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    f
}

pub fn read_mem(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[test]
fn tx_frame_reaches_the_backend() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem, config(), 0);
    let f = frame(60, 1);
    mem.write_slice(&f, GuestAddress(TX_BUF)).unwrap();
    // Header split across two descriptors, the frame in a third.
    add_chain(
        &r.txq,
        0,
        &[(TX_BUF, 4, R), (TX_BUF + 4, 8, R), (TX_BUF + 12, 60, R)],
    );
    r.dev.process_queue(TX_QUEUE);
    assert_eq!(r.sent(), vec![f]);
    assert_eq!(used_idx(&r.txq), 1);
    assert_eq!(used_elem(&r.txq, 0), (0, 0));
    assert!(irq_fired(&r.intr));
    let m = r.m();
    assert_eq!(get(&m.tx_frames), 1);
    assert_eq!(get(&m.tx_bytes), 60);
    assert_eq!(get(&m.tx_invalid_chains), 0);
}

#[test]
fn tx_sends_every_available_chain_in_order() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem, config(), 0);
    let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(100 + i, i as u8)).collect();
    for (i, f) in frames.iter().enumerate() {
        let addr = TX_BUF + i as u64 * 0x1000;
        mem.write_slice(f, GuestAddress(addr)).unwrap();
        add_chain(&r.txq, i as u16, &[(addr, f.len() as u32, R)]);
    }
    r.dev.process_queue(TX_QUEUE);
    assert_eq!(r.sent(), frames);
    assert_eq!(used_idx(&r.txq), 3);
}

#[test]
fn rx_frame_into_one_buffer() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem, config(), 0);
    add_chain(&r.rxq, 0, &[(RX_BUF, 1536, W)]);
    let f = frame(60, 7);
    r.inject(&f);
    assert_eq!(used_idx(&r.rxq), 1);
    assert_eq!(used_elem(&r.rxq, 0), (0, 72));
    let got = read_mem(&mem, RX_BUF, 72);
    // num_buffers is 1; everything else as the tap sent it.
    let mut want = f.clone();
    want[10] = 1;
    assert_eq!(got, want);
    assert!(irq_fired(&r.intr));
    let m = r.m();
    assert_eq!((get(&m.rx_frames), get(&m.rx_bytes)), (1, 60));
}

#[test]
fn rx_frame_across_descriptors_of_one_chain() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem, config(), 0);
    add_chain(
        &r.rxq,
        0,
        &[
            (RX_BUF, 10, W),
            (RX_BUF + 0x1000, 1000, W),
            (RX_BUF + 0x2000, 600, W),
        ],
    );
    let f = frame(1500, 3);
    r.inject(&f);
    assert_eq!(used_elem(&r.rxq, 0), (0, 1512));
    let mut got = read_mem(&mem, RX_BUF, 10);
    got.extend(read_mem(&mem, RX_BUF + 0x1000, 1000));
    got.extend(read_mem(&mem, RX_BUF + 0x2000, 502));
    assert_eq!(&got[..10], &f[..10]);
    assert_eq!(&got[12..], &f[12..]);
}

#[test]
fn rx_stalls_without_buffers_and_resumes_on_notification() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem, config(), 0);
    let f1 = frame(60, 1);
    let f2 = frame(80, 2);
    r.inject(&f1);
    r.peer.send(&f2).unwrap();
    assert_eq!(used_idx(&r.rxq), 0);
    assert_eq!(get(&r.m().rx_no_buffers), 1);
    // The driver posts two buffers and notifies: both frames arrive, in order.
    add_chain(&r.rxq, 0, &[(RX_BUF, 1536, W)]);
    add_chain(&r.rxq, 1, &[(RX_BUF + 0x1000, 1536, W)]);
    r.dev.process_queue(RX_QUEUE);
    assert_eq!(used_idx(&r.rxq), 2);
    assert_eq!(used_elem(&r.rxq, 0), (0, 72));
    assert_eq!(used_elem(&r.rxq, 1), (1, 92));
    assert_eq!(read_mem(&mem, RX_BUF + 0x1000 + 12, 80), f2[12..]);
    assert_eq!(get(&r.m().rx_frames), 2);
}

#[test]
fn rx_mergeable_buffers_hold_a_large_frame() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem, config(), 1 << VIRTIO_NET_F_MRG_RXBUF);
    for i in 0..3u16 {
        add_chain(&r.rxq, i, &[(RX_BUF + u64::from(i) * 0x1000, 1536, W)]);
    }
    let f = frame(3000, 9);
    r.inject(&f);
    // Two buffers used, published together; the third stays available.
    assert_eq!(used_idx(&r.rxq), 2);
    assert_eq!(used_elem(&r.rxq, 0), (0, 1536));
    assert_eq!(used_elem(&r.rxq, 1), (1, 3012 - 1536));
    let mut got = read_mem(&mem, RX_BUF, 1536);
    got.extend(read_mem(&mem, RX_BUF + 0x1000, 3012 - 1536));
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 2);
    assert_eq!(&got[12..], &f[12..]);
    assert!(irq_fired(&r.intr));
    // The third buffer takes the next frame.
    let f2 = frame(100, 4);
    r.inject(&f2);
    assert_eq!(used_elem(&r.rxq, 2), (2, 112));
    assert_eq!(read_mem(&mem, RX_BUF + 0x2000 + 10, 2), vec![1, 0]);
}

#[test]
fn rx_mergeable_waits_for_enough_buffers() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem, config(), 1 << VIRTIO_NET_F_MRG_RXBUF);
    add_chain(&r.rxq, 0, &[(RX_BUF, 1536, W)]);
    let f = frame(2000, 5);
    r.inject(&f);
    assert_eq!(used_idx(&r.rxq), 0, "half a frame must not be published");
    assert_eq!(get(&r.m().rx_no_buffers), 1);
    add_chain(&r.rxq, 1, &[(RX_BUF + 0x1000, 1536, W)]);
    r.dev.process_queue(RX_QUEUE);
    assert_eq!(used_idx(&r.rxq), 2);
    assert_eq!(used_elem(&r.rxq, 1), (1, 2012 - 1536));
    assert_eq!(
        read_mem(&mem, RX_BUF + 0x1000, 2012 - 1536),
        f[1536..].to_vec()
    );
}

#[test]
fn rx_frame_too_big_for_one_buffer_is_dropped_and_counted() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem, config(), 0);
    mem.write_slice(&[0x5a; 200], GuestAddress(RX_BUF)).unwrap();
    add_chain(&r.rxq, 0, &[(RX_BUF, 100, W)]);
    add_chain(&r.rxq, 1, &[(RX_BUF + 0x1000, 1536, W)]);
    r.peer.send(&frame(200, 1)).unwrap();
    let small = frame(50, 2);
    r.inject(&small);
    assert_eq!(used_idx(&r.rxq), 2);
    assert_eq!(used_elem(&r.rxq, 0), (0, 0));
    assert_eq!(
        read_mem(&mem, RX_BUF, 200),
        vec![0x5a; 200],
        "nothing written"
    );
    assert_eq!(used_elem(&r.rxq, 1), (1, 62));
    let m = r.m();
    assert_eq!(get(&m.rx_frames_too_big), 1);
    assert_eq!(get(&m.rx_frames), 1);
}

#[test]
fn runt_frames_from_the_tap_are_dropped() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem, config(), 0);
    add_chain(&r.rxq, 0, &[(RX_BUF, 1536, W)]);
    r.inject(&[0u8; 5]);
    assert_eq!(used_idx(&r.rxq), 0);
    assert_eq!(get(&r.m().rx_frames_too_short), 1);
}

#[test]
fn offloads_follow_the_guest_features() {
    let mem = guest_memory();
    let feats = (1 << VIRTIO_NET_F_GUEST_CSUM) | (1 << VIRTIO_NET_F_GUEST_TSO4);
    let mut r = Rig::new(&mem, config(), feats);
    assert_eq!(
        *r.offload.lock().unwrap(),
        None,
        "applied on the VMM thread"
    );
    r.dev.process_queue(RX_QUEUE);
    assert_eq!(
        *r.offload.lock().unwrap(),
        Some(tap::TUN_F_CSUM | tap::TUN_F_TSO4)
    );
    // TSO without checksum offload is not asked of the tap.
    let mem2 = guest_memory();
    let mut r2 = Rig::new(&mem2, config(), 1 << VIRTIO_NET_F_GUEST_TSO6);
    r2.dev.process_queue(TX_QUEUE);
    assert_eq!(*r2.offload.lock().unwrap(), Some(0));
}

#[test]
fn rx_header_flags_are_kept_only_with_guest_csum() {
    for (features, want_flags) in [(0u64, 0u8), (1 << VIRTIO_NET_F_GUEST_CSUM, 2)] {
        let mem = guest_memory();
        let mut r = Rig::new(&mem, config(), features);
        add_chain(&r.rxq, 0, &[(RX_BUF, 1536, W)]);
        let mut f = frame(60, 1);
        f[0] = 2; // VIRTIO_NET_HDR_F_DATA_VALID
        r.inject(&f);
        assert_eq!(read_mem(&mem, RX_BUF, 1)[0], want_flags);
    }
}

#[test]
fn features_and_config_space() {
    let (a, _b) = UnixDatagram::pair().unwrap();
    let backend = || SockBackend {
        sock: a.try_clone().unwrap(),
        offload: Arc::default(),
    };
    let dev = Net::new(config(), Box::new(backend())).unwrap();
    let f = dev.avail_features();
    for bit in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_F_VERSION_1,
    ] {
        assert!(f & (1 << bit) != 0, "bit {bit}");
    }
    let mut mac = [0u8; 8];
    dev.read_config(0, &mut mac);
    assert_eq!(mac, [0x06, 0, 0xac, 0x10, 0, 2, 0, 0]);
    let mut tail = [0xffu8; 4];
    dev.read_config(4, &mut tail);
    assert_eq!(tail, [0, 2, 0, 0]);
    dev.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 4]);
    let no_mac = NetConfig {
        guest_mac: None,
        ..config()
    };
    let dev = Net::new(no_mac, Box::new(backend())).unwrap();
    assert_eq!(dev.avail_features() & (1 << VIRTIO_NET_F_MAC), 0);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_eq!(dev.aux_event_fds().len(), 3);
    assert!(dev.aux_event_edge_triggered(AUX_TAP));
    assert!(!dev.aux_event_edge_triggered(AUX_RX_RATE_LIMITER));
}

fn wait_readable(fd: RawFd) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, 100) };
        if n == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "timer never fired");
    }
}

#[test]
fn tx_rate_limiter_delays_frames_until_its_timer_fires() {
    let mem = guest_memory();
    let cfg = NetConfig {
        tx_rate_limiter: RateLimiterConfig {
            ops: Some(TokenBucketConfig {
                size: 1,
                one_time_burst: 0,
                refill_time: 50,
            }),
            bandwidth: None,
        },
        ..config()
    };
    let mut r = Rig::new(&mem, cfg, 0);
    for i in 0..2u16 {
        let addr = TX_BUF + u64::from(i) * 0x1000;
        mem.write_slice(&frame(60, i as u8), GuestAddress(addr))
            .unwrap();
        add_chain(&r.txq, i, &[(addr, 72, R)]);
    }
    r.dev.process_queue(TX_QUEUE);
    assert_eq!(r.sent().len(), 1);
    assert_eq!(used_idx(&r.txq), 1);
    assert_eq!(get(&r.m().tx_rate_limited), 1);
    // A queue notification while blocked sends nothing.
    r.dev.process_queue(TX_QUEUE);
    assert_eq!(r.sent().len(), 0);
    wait_readable(r.dev.aux_event_fds()[AUX_TX_RATE_LIMITER]);
    r.dev.handle_aux_event(AUX_TX_RATE_LIMITER);
    assert_eq!(r.sent(), vec![frame(60, 1)]);
    assert_eq!(used_idx(&r.txq), 2);
}

#[test]
fn rx_rate_limiter_keeps_the_frame_until_its_timer_fires() {
    let mem = guest_memory();
    let cfg = NetConfig {
        rx_rate_limiter: RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 100,
                one_time_burst: 0,
                refill_time: 50,
            }),
            ops: None,
        },
        ..config()
    };
    let mut r = Rig::new(&mem, cfg, 0);
    add_chain(&r.rxq, 0, &[(RX_BUF, 1536, W)]);
    add_chain(&r.rxq, 1, &[(RX_BUF + 0x1000, 1536, W)]);
    r.peer.send(&frame(80, 1)).unwrap();
    r.inject(&frame(80, 2));
    assert_eq!(used_idx(&r.rxq), 1);
    assert_eq!(get(&r.m().rx_rate_limited), 1);
    wait_readable(r.dev.aux_event_fds()[AUX_RX_RATE_LIMITER]);
    r.dev.handle_aux_event(AUX_RX_RATE_LIMITER);
    assert_eq!(used_idx(&r.rxq), 2);
    assert_eq!(read_mem(&mem, RX_BUF + 0x1000 + 12, 80), frame(80, 2)[12..]);
}

#[test]
fn patching_a_limiter_away_lets_traffic_through_after_the_timer() {
    let mem = guest_memory();
    let cfg = NetConfig {
        tx_rate_limiter: RateLimiterConfig {
            ops: Some(TokenBucketConfig {
                size: 1,
                one_time_burst: 0,
                refill_time: 60_000,
            }),
            bandwidth: None,
        },
        ..config()
    };
    let mut r = Rig::new(&mem, cfg, 0);
    for i in 0..3u16 {
        let addr = TX_BUF + u64::from(i) * 0x1000;
        mem.write_slice(&frame(60, i as u8), GuestAddress(addr))
            .unwrap();
        add_chain(&r.txq, i, &[(addr, 72, R)]);
    }
    r.dev.process_queue(TX_QUEUE);
    assert_eq!(r.sent().len(), 1);
    r.dev.update_rate_limiters(
        (BucketUpdate::None, BucketUpdate::None),
        (BucketUpdate::None, BucketUpdate::Disabled),
    );
    assert_eq!(get(&r.m().update_count), 1);
    // Still blocked until the pending timer fires (60 s here): nothing more goes out now.
    r.dev.process_queue(TX_QUEUE);
    assert_eq!(r.sent().len(), 0);
}

#[test]
fn reset_drops_state_and_reactivation_works() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem, config(), 0);
    r.inject(&frame(60, 1)); // no buffers: the frame is held
    r.dev.reset();
    assert!(!r.dev.is_activated());
    r.dev.process_queue(RX_QUEUE); // inactive: no-op
    r.dev.handle_aux_event(AUX_TAP);
    let rxq = mock_queue(&mem);
    let txq = MockSplitQueue::create(&mem, GuestAddress(TXQ_ADDR), QUEUE_LEN);
    r.dev.set_acked_features(1 << VIRTIO_F_VERSION_1);
    r.dev
        .activate(
            mem.clone(),
            vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
            interrupt(),
        )
        .unwrap();
    assert!(matches!(
        r.dev.activate(mem.clone(), vec![], interrupt()),
        Err(ActivateError::AlreadyActive)
    ));
    add_chain(&rxq, 0, &[(RX_BUF, 1536, W)]);
    let f = frame(70, 3);
    r.inject(&f);
    assert_eq!(used_elem(&rxq, 0), (0, 82));
    assert_eq!(get(&r.m().activate_count), 2);
}

#[test]
fn activation_needs_two_queues() {
    let mem = guest_memory();
    let (a, _b) = UnixDatagram::pair().unwrap();
    let backend = SockBackend {
        sock: a,
        offload: Arc::default(),
    };
    let mut dev = Net::new(config(), Box::new(backend)).unwrap();
    let q = mock_queue(&mem);
    let e = dev
        .activate(mem.clone(), vec![q.create_queue().unwrap()], interrupt())
        .unwrap_err();
    assert!(matches!(
        e,
        ActivateError::QueueCount {
            expected: 2,
            got: 1
        }
    ));
}
