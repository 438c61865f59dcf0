//! virtio-blk against hostile descriptor chains: every one gets an error status or is skipped
//! and counted; nothing panics; nothing outside the request's own buffers changes.

use vm_memory::{Bytes, GuestAddress};

use super::request::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use super::tests::*;
use super::*;
use crate::virtio::test_utils::*;

const CANARY: u8 = 0x5a;

struct Case {
    mem: GuestMemoryMmap,
    file: vmm_sys_util::tempfile::TempFile,
}

impl Case {
    fn new() -> Self {
        let mem = guest_memory();
        // Fill the data and status areas with a canary to detect stray writes.
        mem.write_slice(&[CANARY; 0x10000], GuestAddress(DATA))
            .unwrap();
        mem.write_slice(&[CANARY; 0x100], GuestAddress(STATUS))
            .unwrap();
        Case {
            mem,
            file: disk_file(DISK_SECTORS, 9),
        }
    }

    fn device(&self, engine: IoEngine) -> Block {
        Block::new(config(&self.file, engine)).unwrap()
    }

    fn data_untouched(&self) -> bool {
        let mut buf = vec![0u8; 0x10000];
        self.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        buf.iter().all(|&b| b == CANARY)
    }

    fn disk_untouched(&self) -> bool {
        file_bytes(&self.file, 0, (DISK_SECTORS * 512) as usize)
            == pattern((DISK_SECTORS * 512) as usize, 9)
    }
}

fn counter(dev: &Block, f: fn(&BlockMetrics) -> &AtomicU64) -> u64 {
    f(&dev.metrics()).load(Ordering::Relaxed)
}

/// Runs one chain with each engine; returns (status byte, used len, skipped count) per engine.
fn one_chain(descs: &[(u64, u32, u16)], req_type: u32, sector: u64) -> Vec<(u8, u32, u64, bool)> {
    ENGINES
        .iter()
        .map(|&engine| {
            let case = Case::new();
            let vq = mock_queue(&case.mem);
            let mut dev = case.device(engine);
            let _intr = activate(&mut dev, &case.mem, &vq);
            header(&case.mem, HDR, req_type, sector);
            add_chain(&vq, 0, descs);
            run(&mut dev, &vq, 1);
            assert_eq!(used_elem(&vq, 0).0, 0);
            assert!(case.disk_untouched(), "{engine:?}: disk changed");
            (
                status_at(&case.mem, STATUS),
                used_elem(&vq, 0).1,
                counter(&dev, |m| &m.skipped_requests),
                case.data_untouched(),
            )
        })
        .collect()
}

fn assert_ioerr(descs: &[(u64, u32, u16)], req_type: u32) {
    for (status, len, skipped, untouched) in one_chain(descs, req_type, 0) {
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        assert_eq!(len, 1);
        assert_eq!(skipped, 0);
        assert!(untouched, "data area written");
    }
}

fn assert_skipped(descs: &[(u64, u32, u16)], req_type: u32) {
    for (status, len, skipped, untouched) in one_chain(descs, req_type, 0) {
        assert_eq!(status, CANARY, "no status may be written");
        assert_eq!(len, 0);
        assert_eq!(skipped, 1);
        assert!(untouched, "data area written");
    }
}

#[test]
fn data_outside_guest_memory() {
    assert_ioerr(
        &[(HDR, 16, R), (MEM_SIZE, 512, W), (STATUS, 1, W)],
        VIRTIO_BLK_T_IN,
    );
    assert_ioerr(
        &[(HDR, 16, R), (MEM_SIZE, 512, R), (STATUS, 1, W)],
        VIRTIO_BLK_T_OUT,
    );
    // Straddling the end of memory: not even the part inside may be written.
    assert_ioerr(
        &[(HDR, 16, R), (MEM_SIZE - 512, 1024, W), (STATUS, 1, W)],
        VIRTIO_BLK_T_IN,
    );
    // Address arithmetic that wraps.
    assert_ioerr(
        &[(HDR, 16, R), (u64::MAX - 100, 512, W), (STATUS, 1, W)],
        VIRTIO_BLK_T_IN,
    );
}

#[test]
fn header_outside_guest_memory() {
    assert_ioerr(
        &[(MEM_SIZE + 0x1000, 16, R), (DATA, 512, W), (STATUS, 1, W)],
        VIRTIO_BLK_T_IN,
    );
}

#[test]
fn status_outside_memory_or_read_only_is_skipped() {
    assert_skipped(
        &[(HDR, 16, R), (DATA, 512, W), (MEM_SIZE, 1, W)],
        VIRTIO_BLK_T_IN,
    );
    assert_skipped(
        &[(HDR, 16, R), (DATA, 512, W), (u64::MAX, 1, W)],
        VIRTIO_BLK_T_IN,
    );
    // Read-only status byte: the request is not executed at all (no write to the disk).
    assert_skipped(
        &[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, R)],
        VIRTIO_BLK_T_OUT,
    );
    assert_skipped(
        &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, R)],
        VIRTIO_BLK_T_IN,
    );
    // Zero-length status descriptor.
    assert_skipped(
        &[(HDR, 16, R), (DATA, 512, W), (STATUS, 0, W)],
        VIRTIO_BLK_T_IN,
    );
    // A lone header.
    assert_skipped(&[(HDR, 16, R)], VIRTIO_BLK_T_IN);
}

#[test]
fn wrong_direction() {
    // IN whose data the device could only read.
    assert_ioerr(
        &[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)],
        VIRTIO_BLK_T_IN,
    );
    // OUT whose data is device-writable.
    assert_ioerr(
        &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)],
        VIRTIO_BLK_T_OUT,
    );
    // A device-writable header (no readable bytes at all).
    assert_ioerr(
        &[(HDR, 16, W), (DATA, 512, W), (STATUS, 1, W)],
        VIRTIO_BLK_T_IN,
    );
    // Readable after writable.
    assert_ioerr(
        &[
            (HDR, 16, R),
            (DATA, 512, W),
            (DATA + 0x1000, 512, R),
            (STATUS, 1, W),
        ],
        VIRTIO_BLK_T_IN,
    );
}

#[test]
fn zero_length_and_odd_sized_buffers() {
    assert_ioerr(
        &[(HDR, 16, R), (DATA, 0, W), (STATUS, 1, W)],
        VIRTIO_BLK_T_IN,
    );
    assert_ioerr(&[(HDR, 16, R), (STATUS, 1, W)], VIRTIO_BLK_T_IN);
    assert_ioerr(
        &[(HDR, 16, R), (DATA, 100, W), (STATUS, 1, W)],
        VIRTIO_BLK_T_IN,
    );
    assert_ioerr(
        &[(HDR, 0, R), (DATA, 512, W), (STATUS, 1, W)],
        VIRTIO_BLK_T_IN,
    );
}

#[test]
fn oversized_buffers() {
    // Larger than guest memory.
    assert_ioerr(
        &[(HDR, 16, R), (DATA, 0xffff_fe00, W), (STATUS, 1, W)],
        VIRTIO_BLK_T_IN,
    );
    // Inside guest memory but larger than the disk.
    let len = ((DISK_SECTORS + 1) * 512) as u32;
    assert_ioerr(
        &[(HDR, 16, R), (0x10_0200, len, W), (STATUS, 1, W)],
        VIRTIO_BLK_T_IN,
    );
}

#[test]
fn header_split_across_descriptors_is_accepted() {
    // Spec 2.6.4: the device must not assume framing. 16 header bytes in 3 pieces, then data.
    for engine in ENGINES {
        let case = Case::new();
        let vq = mock_queue(&case.mem);
        let mut dev = case.device(engine);
        let _intr = activate(&mut dev, &case.mem, &vq);
        header(&case.mem, HDR, VIRTIO_BLK_T_IN, 2);
        add_chain(
            &vq,
            0,
            &[
                (HDR, 5, R),
                (HDR + 5, 7, R),
                (HDR + 12, 4, R),
                (DATA, 512, W),
                (STATUS, 1, W),
            ],
        );
        run(&mut dev, &vq, 1);
        assert_eq!(status_at(&case.mem, STATUS), VIRTIO_BLK_S_OK);
        let mut got = vec![0u8; 512];
        case.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, file_bytes(&case.file, 2 * 512, 512));
    }
    // A split header that is too short in total.
    assert_ioerr(
        &[(HDR, 5, R), (HDR + 5, 7, R), (STATUS, 1, W)],
        VIRTIO_BLK_T_IN,
    );
}

#[test]
fn looping_chain_is_skipped() {
    for engine in ENGINES {
        let case = Case::new();
        let vq = mock_queue(&case.mem);
        let mut dev = case.device(engine);
        let _intr = activate(&mut dev, &case.mem, &vq);
        header(&case.mem, HDR, VIRTIO_BLK_T_IN, 0);
        // 0 -> 1 -> 2 -> 1 -> ...
        write_raw_descs(
            &vq,
            0,
            &[
                (HDR, 16, VRING_DESC_F_NEXT, 1),
                (DATA, 512, W | VRING_DESC_F_NEXT, 2),
                (STATUS, 1, W | VRING_DESC_F_NEXT, 1),
            ],
        );
        make_available(&vq, &case.mem, 0);
        run(&mut dev, &vq, 1);
        assert_eq!(used_elem(&vq, 0), (0, 0));
        assert_eq!(status_at(&case.mem, STATUS), CANARY);
        assert!(case.data_untouched());
        assert_eq!(counter(&dev, |m| &m.skipped_requests), 1);
    }
}

#[test]
fn overlong_chain_and_bad_indices_are_skipped() {
    for engine in ENGINES {
        let case = Case::new();
        let vq = mock_queue(&case.mem);
        let mut dev = case.device(engine);
        let _intr = activate(&mut dev, &case.mem, &vq);
        header(&case.mem, HDR, VIRTIO_BLK_T_IN, 0);
        // A chain that runs through every descriptor and then points past the table.
        let mut descs = vec![(HDR, 16, VRING_DESC_F_NEXT, 1)];
        for i in 1..QUEUE_LEN {
            descs.push((DATA + 512 * i as u64, 512, W | VRING_DESC_F_NEXT, i + 1));
        }
        write_raw_descs(&vq, 0, &descs);
        make_available(&vq, &case.mem, 0);
        // A head index beyond the descriptor table.
        make_available(&vq, &case.mem, QUEUE_LEN + 7);
        run(&mut dev, &vq, 1);
        assert_eq!(used_elem(&vq, 0), (0, 0));
        // An invalid head cannot be returned through the used ring; it is dropped and counted.
        assert_eq!(used_idx(&vq), 1);
        assert!(case.data_untouched());
        assert_eq!(counter(&dev, |m| &m.skipped_requests), 2);
    }
}

#[test]
fn avail_index_far_ahead_does_not_panic() {
    let case = Case::new();
    let vq = mock_queue(&case.mem);
    let mut dev = case.device(IoEngine::Sync);
    let _intr = activate(&mut dev, &case.mem, &vq);
    vq.avail().idx().store(QUEUE_LEN * 3);
    dev.process_queue(0);
    assert_eq!(used_idx(&vq), 0);
    assert!(case.data_untouched());
}

#[test]
fn descriptor_table_outside_memory() {
    // The queue itself is validated by the transport; a chain whose `next` leaves the table is
    // covered above. Here an indirect table outside guest memory: the chain ends early.
    let case = Case::new();
    let vq = mock_queue(&case.mem);
    let mut dev = case.device(IoEngine::Sync);
    let _intr = activate(&mut dev, &case.mem, &vq);
    const VRING_DESC_F_INDIRECT: u16 = 4;
    write_raw_descs(&vq, 0, &[(MEM_SIZE + 0x1000, 64, VRING_DESC_F_INDIRECT, 0)]);
    make_available(&vq, &case.mem, 0);
    run(&mut dev, &vq, 1);
    assert_eq!(used_elem(&vq, 0), (0, 0));
    assert_eq!(counter(&dev, |m| &m.skipped_requests), 1);
}

#[test]
fn errors_do_not_stop_later_requests() {
    for engine in ENGINES {
        let case = Case::new();
        let vq = mock_queue(&case.mem);
        let mut dev = case.device(engine);
        let _intr = activate(&mut dev, &case.mem, &vq);
        header(&case.mem, HDR, VIRTIO_BLK_T_IN, 1);
        add_chain(&vq, 0, &[(HDR, 16, R), (MEM_SIZE, 512, W), (STATUS, 1, W)]);
        add_chain(
            &vq,
            3,
            &[(HDR, 16, R), (DATA, 512, W), (MEM_SIZE + 1, 1, W)],
        );
        add_chain(&vq, 6, &[(HDR, 16, R), (DATA, 512, W), (STATUS + 1, 1, W)]);
        run(&mut dev, &vq, 3);
        assert_eq!(status_at(&case.mem, STATUS), VIRTIO_BLK_S_IOERR);
        assert_eq!(status_at(&case.mem, STATUS + 1), VIRTIO_BLK_S_OK);
        assert_eq!(counter(&dev, |m| &m.invalid_requests), 2);
        assert_eq!(counter(&dev, |m| &m.skipped_requests), 1);
    }
}
