//! virtio-net against hostile descriptor chains: each is returned unused and counted, nothing
//! panics, nothing reaches the tap from a bad TX chain, and nothing outside the guest's own
//! good buffers is written on RX.

use vm_memory::{Bytes, GuestAddress};

use super::tests::*;
use super::*;
use crate::virtio::test_utils::*;

const CANARY: u8 = 0x5a;
const CANARY_LEN: usize = 0x4000;

fn canary(mem: &GuestMemoryMmap) {
    mem.write_slice(&[CANARY; CANARY_LEN], GuestAddress(RX_BUF))
        .unwrap();
}

fn canary_intact(mem: &GuestMemoryMmap) -> bool {
    read_mem(mem, RX_BUF, CANARY_LEN)
        .iter()
        .all(|&b| b == CANARY)
}

/// A bad TX chain (written from index 0) is returned unsent and counted; a good chain after it
/// still goes out.
fn tx_refused(descs: &[(u64, u32, u16)]) {
    let mem = guest_memory();
    let mut r = Rig::new(&mem, config(), 0);
    let good = frame(60, 3);
    mem.write_slice(&good, GuestAddress(TX_BUF + 0x8000))
        .unwrap();
    add_chain(&r.txq, 0, descs);
    let next = descs.len() as u16;
    add_chain(&r.txq, next, &[(TX_BUF + 0x8000, 72, R)]);
    r.dev.process_queue(TX_QUEUE);
    assert_eq!(r.sent(), vec![good], "only the good frame leaves");
    assert_eq!(used_idx(&r.txq), 2);
    assert_eq!(used_elem(&r.txq, 0), (0, 0));
    assert_eq!(get(&r.m().tx_invalid_chains), 1);
}

#[test]
fn tx_descriptor_outside_guest_memory() {
    tx_refused(&[(TX_BUF, 12, R), (MEM_SIZE, 60, R)]);
    // Straddling the end of memory.
    tx_refused(&[(TX_BUF, 12, R), (MEM_SIZE - 30, 60, R)]);
    // Address arithmetic that wraps.
    tx_refused(&[(TX_BUF, 12, R), (u64::MAX - 10, 60, R)]);
}

#[test]
fn tx_device_writable_descriptor() {
    tx_refused(&[(TX_BUF, 12, R), (TX_BUF + 12, 60, W)]);
    tx_refused(&[(TX_BUF, 72, W)]);
}

#[test]
fn tx_zero_length_and_runt_chains() {
    tx_refused(&[(TX_BUF, 0, R)]);
    // A header and nothing else, or a header split over descriptors without a frame.
    tx_refused(&[(TX_BUF, 12, R)]);
    tx_refused(&[(TX_BUF, 6, R), (TX_BUF + 6, 6, R), (TX_BUF + 12, 13, R)]);
}

#[test]
fn tx_oversized_chain() {
    tx_refused(&[(TX_BUF, 40_000, R), (TX_BUF + 0x1_0000, 40_000, R)]);
    tx_refused(&[(0, u32::MAX, R)]);
}

#[test]
fn tx_looping_and_overlong_chains() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem, config(), 0);
    // 0 -> 1 -> 0 -> ...
    write_raw_descs(
        &r.txq,
        0,
        &[
            (TX_BUF, 36, VRING_DESC_F_NEXT, 1),
            (TX_BUF + 36, 36, VRING_DESC_F_NEXT, 0),
        ],
    );
    make_available(&r.txq, &mem, 0);
    // A chain that leaves the descriptor table.
    write_raw_descs(&r.txq, 2, &[(TX_BUF, 72, VRING_DESC_F_NEXT, 1000)]);
    make_available(&r.txq, &mem, 2);
    // A head index beyond the table.
    make_available(&r.txq, &mem, 200);
    r.dev.process_queue(TX_QUEUE);
    assert!(r.sent().is_empty());
    assert_eq!(get(&r.m().tx_invalid_chains), 3);
    // Still serving afterwards.
    let good = frame(60, 1);
    mem.write_slice(&good, GuestAddress(TX_BUF + 0x8000))
        .unwrap();
    add_chain(&r.txq, 3, &[(TX_BUF + 0x8000, 72, R)]);
    r.dev.process_queue(TX_QUEUE);
    assert_eq!(r.sent(), vec![good]);
}

/// A bad RX chain (index 0) is returned unused and counted, the frame goes into the good chain
/// after it, and nothing else in the canary area changes.
fn rx_refused(descs: &[(u64, u32, u16)]) {
    let mem = guest_memory();
    canary(&mem);
    let mut r = Rig::new(&mem, config(), 1 << VIRTIO_NET_F_MRG_RXBUF);
    add_chain(&r.rxq, 0, descs);
    let next = descs.len() as u16;
    let good_addr = 0x30_0000;
    add_chain(&r.rxq, next, &[(good_addr, 1536, W)]);
    let f = frame(100, 6);
    r.inject(&f);
    assert_eq!(used_idx(&r.rxq), 2);
    assert_eq!(used_elem(&r.rxq, 0), (0, 0));
    assert_eq!(used_elem(&r.rxq, 1), (u32::from(next), 112));
    assert_eq!(read_mem(&mem, good_addr + 12, 100), f[12..]);
    assert!(canary_intact(&mem), "a refused buffer was written");
    assert_eq!(get(&r.m().rx_invalid_chains), 1);
    assert_eq!(get(&r.m().rx_frames), 1);
}

#[test]
fn rx_descriptor_outside_guest_memory() {
    rx_refused(&[(RX_BUF, 12, W), (MEM_SIZE, 1536, W)]);
    rx_refused(&[(RX_BUF, 12, W), (MEM_SIZE - 100, 1536, W)]);
    rx_refused(&[(RX_BUF, 12, W), (u64::MAX - 10, 1536, W)]);
}

#[test]
fn rx_device_readable_descriptor() {
    rx_refused(&[(RX_BUF, 1536, R)]);
    rx_refused(&[(RX_BUF, 12, W), (RX_BUF + 12, 1524, R)]);
}

#[test]
fn rx_zero_length_chain() {
    rx_refused(&[(RX_BUF, 0, W)]);
}

#[test]
fn rx_looping_chain() {
    let mem = guest_memory();
    canary(&mem);
    let mut r = Rig::new(&mem, config(), 0);
    let loop_flags = VRING_DESC_F_NEXT | VRING_DESC_F_WRITE;
    write_raw_descs(
        &r.rxq,
        0,
        &[
            (RX_BUF, 768, loop_flags, 1),
            (RX_BUF + 768, 768, loop_flags, 0),
        ],
    );
    make_available(&r.rxq, &mem, 0);
    add_chain(&r.rxq, 2, &[(0x30_0000, 1536, W)]);
    r.inject(&frame(100, 1));
    assert_eq!(used_elem(&r.rxq, 0), (0, 0));
    assert_eq!(used_elem(&r.rxq, 1), (2, 112));
    assert!(canary_intact(&mem));
}

#[test]
fn rx_mergeable_ring_too_small_for_the_frame() {
    let mem = guest_memory();
    canary(&mem);
    let mut r = Rig::new(&mem, config(), 1 << VIRTIO_NET_F_MRG_RXBUF);
    // The whole ring (16 entries) holds 16 * 64 bytes: a 2000-byte frame can never fit.
    for i in 0..QUEUE_LEN {
        add_chain(&r.rxq, i, &[(RX_BUF + u64::from(i) * 64, 64, W)]);
    }
    r.inject(&frame(2000, 1));
    assert_eq!(used_idx(&r.rxq), QUEUE_LEN);
    for i in 0..QUEUE_LEN {
        assert_eq!(used_elem(&r.rxq, i).1, 0);
    }
    assert!(canary_intact(&mem));
    assert_eq!(get(&r.m().rx_frames_too_big), 1);
    assert_eq!(get(&r.m().rx_frames), 0);
}

#[test]
fn rx_oversized_frame_from_the_tap_never_overruns_a_buffer() {
    let mem = guest_memory();
    canary(&mem);
    let mut r = Rig::new(&mem, config(), 0);
    // The frame is larger than the one buffer: dropped, the buffer untouched.
    add_chain(&r.rxq, 0, &[(RX_BUF, 1000, W)]);
    r.inject(&frame(MAX_FRAME_LEN, 1));
    assert_eq!(used_elem(&r.rxq, 0), (0, 0));
    assert!(canary_intact(&mem));
    assert_eq!(get(&r.m().rx_frames_too_big), 1);
}

#[test]
fn broken_avail_ring_stops_the_queue_without_panicking() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem, config(), 0);
    // An avail index far more than a queue size ahead.
    r.rxq.avail().idx().store(1000);
    r.txq.avail().idx().store(1000);
    r.inject(&frame(60, 1));
    r.dev.process_queue(TX_QUEUE);
    r.dev.process_queue(RX_QUEUE);
    assert_eq!(get(&r.m().broken_queues), 2);
    assert!(r.sent().is_empty());
    // A reset brings the device back.
    r.dev.reset();
    assert!(!r.dev.is_activated());
}

#[test]
fn unknown_queue_and_aux_indices_are_ignored() {
    let mem = guest_memory();
    let mut r = Rig::new(&mem, config(), 0);
    r.dev.process_queue(7);
    r.dev.handle_aux_event(99);
    let mut buf = [0u8; 4];
    r.dev.write_config(0, &[1, 2, 3, 4]);
    r.dev.read_config(0, &mut buf);
    assert_eq!(buf, [0x06, 0, 0xac, 0x10], "config is read-only");
}
