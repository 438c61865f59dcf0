//! What a snapshot keeps of the vsock and how a restored device uses it.

use vm_memory::{Bytes, GuestAddress};

use super::packet::*;
use super::tests::*;
use super::*;
use crate::virtio::test_utils::*;

#[test]
fn a_restore_resets_each_saved_connection_before_new_ones() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    let empty = SavedVsock {
        next_host_port: FIRST_HOST_PORT,
        open: vec![],
    };
    assert_eq!(h.dev.save(), empty);
    let (_s, _token, port) = h.established(5);
    assert_eq!(port, FIRST_HOST_PORT);
    let saved = h.dev.save();
    assert_eq!(saved.next_host_port, FIRST_HOST_PORT + 1);
    assert_eq!(saved.open, vec![(FIRST_HOST_PORT, 5)]);

    // The restored device: an RST for the old connection, no transport reset, and a new
    // connection on a fresh host port after it.
    let mem2 = guest_memory();
    let mut r = H::new(&mem2);
    add_chain(&r.ev, 0, &[(EV_BUF, 8, W)]);
    r.post_rx(1);
    r.dev.after_restore(Some(saved));
    assert_eq!(used_idx(&r.ev), 0, "no transport reset");
    let pkts = r.recv();
    assert_eq!(pkts.len(), 1);
    let rst = pkts[0].0;
    assert_eq!(
        (rst.op, rst.src_port, rst.dst_port),
        (OP_RST, FIRST_HOST_PORT, 5)
    );
    assert!(irq_fired(&r.intr));
    let (_s, _token, port) = r.established(5);
    assert_eq!(port, FIRST_HOST_PORT + 1);
}

#[test]
fn a_quiet_restore_sends_the_guest_nothing() {
    let mem = guest_memory();
    let mut h = H::new(&mem);
    add_chain(&h.ev, 0, &[(EV_BUF, 8, W)]);
    h.post_rx(1);
    h.dev.after_restore(Some(SavedVsock {
        next_host_port: FIRST_HOST_PORT + 7,
        open: vec![],
    }));
    h.dev.process_queue(EVQ);
    assert_eq!(used_idx(&h.ev), 0, "no transport reset");
    assert!(h.recv().is_empty());
    let (_s, _token, port) = h.established(5);
    assert_eq!(port, FIRST_HOST_PORT + 7);
    // A port below the range is taken as its start.
    let mut h = H::new(&mem);
    h.dev.after_restore(Some(SavedVsock {
        next_host_port: 5,
        open: vec![],
    }));
    assert_eq!(h.established(6).2, FIRST_HOST_PORT);
}

#[test]
fn without_saved_state_or_with_too_much_the_transport_is_reset() {
    let too_many = SavedVsock {
        next_host_port: FIRST_HOST_PORT,
        open: (0..=MAX_CONTROL as u32)
            .map(|p| (FIRST_HOST_PORT, p))
            .collect(),
    };
    for saved in [None, Some(too_many)] {
        let mem = guest_memory();
        let mut h = H::new(&mem);
        add_chain(&h.ev, 0, &[(EV_BUF, 8, W)]);
        h.dev.after_restore(saved);
        assert_eq!(used_idx(&h.ev), 1);
        let mut b = [0u8; 4];
        mem.read_slice(&mut b, GuestAddress(EV_BUF)).unwrap();
        assert_eq!(b, EVENT_TRANSPORT_RESET.to_le_bytes());
        assert_eq!(h.established(5).2, FIRST_HOST_PORT);
    }
}
