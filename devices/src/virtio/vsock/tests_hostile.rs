//! virtio-vsock against hostile descriptor chains and packets: nothing panics, nothing outside
//! the chains' own device-writable buffers changes, bad chains are counted and returned.

use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress};

use super::packet::*;
use super::tests::*;
use super::*;
use crate::virtio::test_utils::*;

const CANARY: u8 = 0xa5;
/// A canary area the device must never write.
const GUARD: u64 = 0x200000;
const GUARD_LEN: usize = 0x10000;

fn guard(mem: &GuestMemoryMmap) {
    mem.write_slice(&[CANARY; GUARD_LEN], GuestAddress(GUARD))
        .unwrap();
}

fn guard_intact(mem: &GuestMemoryMmap) -> bool {
    let mut b = vec![0u8; GUARD_LEN];
    mem.read_slice(&mut b, GuestAddress(GUARD)).unwrap();
    b.iter().all(|&x| x == CANARY)
}

fn hdr_at(mem: &GuestMemoryMmap, addr: u64, h: Header) {
    mem.write_slice(&h.to_bytes(), GuestAddress(addr)).unwrap();
}

/// Sends one raw TX chain; returns (tx_invalid_chains, used entries on TX, RX packets).
fn tx_chain(descs: &[(u64, u32, u16)], hdr: Header) -> (u64, u16, usize) {
    let mem = guest_memory();
    guard(&mem);
    let mut h = H::new(&mem);
    h.post_rx(4);
    hdr_at(&mem, TX_BUFS, hdr);
    add_chain(&h.tx, 0, descs);
    h.dev.process_queue(TXQ);
    assert!(guard_intact(&mem));
    let rx = h.recv().len();
    (
        h.dev.metrics().tx_invalid_chains.load(Ordering::Relaxed),
        used_idx(&h.tx),
        rx,
    )
}

fn refused_request() -> Header {
    // A request to a port nobody listens on: a valid chain gets an RST back.
    ghdr(50000, 4242, OP_REQUEST)
}

#[test]
fn tx_chains_outside_memory_or_in_the_wrong_direction_are_dropped() {
    let bad: Vec<Vec<(u64, u32, u16)>> = vec![
        vec![(MEM_SIZE - 10, 44, R)],
        vec![(u64::MAX - 10, 44, R)],
        vec![(TX_BUFS, 44, W)],
        vec![(TX_BUFS, 20, R), (TX_BUFS + 20, 24, W)],
        vec![(TX_BUFS, 0, R)],
        vec![(TX_BUFS, 43, R)],
        vec![(TX_BUFS, 20, R), (MEM_SIZE, 24, R)],
    ];
    for descs in bad {
        let (invalid, used, rx) = tx_chain(&descs, refused_request());
        assert_eq!((invalid, used, rx), (1, 1, 0), "{descs:?}");
    }
}

#[test]
fn header_split_over_descriptors_and_zero_length_ones_are_fine() {
    let descs = vec![
        (TX_BUFS, 10, R),
        (TX_BUFS + 10, 0, R),
        (TX_BUFS + 10, 30, R),
        (TX_BUFS + 40, 4, R),
    ];
    let (invalid, used, rx) = tx_chain(&descs, refused_request());
    assert_eq!((invalid, used, rx), (0, 1, 1));
}

#[test]
fn lengths_beyond_the_buffers_or_the_limit_are_refused() {
    for len in [1u32, 100, MAX_PAYLOAD as u32 + 1, u32::MAX] {
        let mut h = ghdr(50000, 4242, OP_RW);
        h.len = len;
        let (invalid, used, _) = tx_chain(&[(TX_BUFS, 44, R)], h);
        assert_eq!((invalid, used), (1, 1), "len {len}");
    }
    // An oversized payload that is really there is still refused.
    let mut h = ghdr(50000, 4242, OP_RW);
    h.len = MAX_PAYLOAD as u32 + 4;
    let (invalid, _, _) = tx_chain(&[(TX_BUFS, 44, R), (TX_BUFS + 44, h.len, R)], h);
    assert_eq!(invalid, 1);
}

#[test]
fn looping_and_overlong_chains_are_dropped() {
    let mem = guest_memory();
    guard(&mem);
    let mut h = H::new(&mem);
    h.post_rx(4);
    hdr_at(&mem, TX_BUFS, refused_request());
    // Descriptor 0 points at itself.
    write_raw_descs(&h.tx, 0, &[(TX_BUFS, 44, R | VRING_DESC_F_NEXT, 0)]);
    make_available(&h.tx, &mem, 0);
    // A chain whose next leaves the table.
    write_raw_descs(&h.tx, 1, &[(TX_BUFS, 44, R | VRING_DESC_F_NEXT, 200)]);
    make_available(&h.tx, &mem, 1);
    // A chain through all 16 descriptors and back to the start.
    let ring: Vec<(u64, u32, u16, u16)> = (2..QUEUE_LEN)
        .map(|i| (TX_BUFS, 44, R | VRING_DESC_F_NEXT, (i + 1) % QUEUE_LEN))
        .collect();
    write_raw_descs(&h.tx, 2, &ring);
    make_available(&h.tx, &mem, 2);
    h.dev.process_queue(TXQ);
    assert_eq!(used_idx(&h.tx), 3);
    assert_eq!(h.dev.metrics().tx_invalid_chains.load(Ordering::Relaxed), 3);
    assert!(h.recv().is_empty());
    assert!(guard_intact(&mem));
}

#[test]
fn a_broken_avail_ring_stops_the_queue_without_panicking() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    h.tx.avail().idx().store(1000);
    h.dev.process_queue(TXQ);
    h.dev.process_queue(TXQ);
    h.rx.avail().idx().store(1000);
    h.send(refused_request(), &[]);
    assert_eq!(used_idx(&h.rx), 0);
}

#[test]
fn bad_receive_buffers_are_returned_empty_and_nothing_else_is_written() {
    let mem = guest_memory();
    guard(&mem);
    let mut h = H::new(&mem);
    // Device-readable, too small, outside memory, a readable tail: all refused.
    add_chain(&h.rx, 0, &[(GUARD, 2092, R)]);
    add_chain(&h.rx, 1, &[(GUARD, 43, W)]);
    add_chain(&h.rx, 2, &[(MEM_SIZE - 8, 64, W)]);
    add_chain(&h.rx, 3, &[(GUARD, 44, W), (GUARD + 44, 100, R)]);
    write_raw_descs(&h.rx, 5, &[(GUARD, 64, W | VRING_DESC_F_NEXT, 5)]);
    make_available(&h.rx, &mem, 5);
    h.send(refused_request(), &[]);
    assert_eq!(used_idx(&h.rx), 5);
    for i in 0..5 {
        assert_eq!(used_elem(&h.rx, i).1, 0);
    }
    assert!(guard_intact(&mem));
    assert_eq!(
        h.dev.metrics().rx_invalid_buffers.load(Ordering::Relaxed),
        5
    );
    // A header-sized buffer takes the pending RST.
    add_chain(&h.rx, 6, &[(RX_BUFS, 44, W)]);
    h.dev.process_queue(RXQ);
    assert_eq!(used_idx(&h.rx), 6);
    assert_eq!(used_elem(&h.rx, 5), (6, 44));
}

#[test]
fn hostile_event_buffers_do_not_block_the_reset_event() {
    let mem = guest_memory();
    guard(&mem);
    let mut h = H::new(&mem);
    add_chain(&h.ev, 0, &[(GUARD, 8, R)]);
    add_chain(&h.ev, 1, &[(GUARD, 3, W)]);
    add_chain(&h.ev, 2, &[(MEM_SIZE - 2, 8, W)]);
    add_chain(&h.ev, 3, &[(EV_BUF, 4, W)]);
    h.dev.transport_reset();
    assert_eq!(used_idx(&h.ev), 4);
    assert_eq!(used_elem(&h.ev, 3), (3, 4));
    assert!(guard_intact(&mem));
}

#[test]
fn foreign_cids_types_and_ops_do_not_disturb_connections() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    let (_s, _t, port) = h.established(8);
    let mut bad = ghdr(8, port, OP_RW);
    bad.src_cid = 99;
    h.send(bad, b"x");
    let mut bad = ghdr(8, port, OP_RW);
    bad.dst_cid = 7;
    h.send(bad, b"x");
    assert_eq!(h.dev.connection_count(), 1);
    assert!(h.recv().is_empty());
    let mut dgram = ghdr(8, port, OP_RW);
    dgram.type_ = 2;
    h.send(dgram, b"x");
    assert_eq!(h.recv()[0].0.op, OP_RST);
    assert_eq!(
        h.dev.connection_count(),
        0,
        "a non-stream packet resets its port pair"
    );
    let (_s, _t, port) = h.established(9);
    h.send(ghdr(9, port, 99), &[]);
    assert_eq!(h.dev.connection_count(), 0);
    assert!(h.dev.metrics().protocol_errors.load(Ordering::Relaxed) >= 3);
}

#[test]
fn a_flood_of_stray_packets_keeps_the_control_queue_bounded() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    for i in 0..(MAX_CONTROL as u32 + 50) {
        h.send(ghdr(i, 1, OP_RW), &[]);
    }
    assert!(h.dev.control.len() <= MAX_CONTROL);
    assert_eq!(h.dev.metrics().control_dropped.load(Ordering::Relaxed), 50);
}
