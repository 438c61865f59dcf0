//! Transport save/restore with virtio-blk on mock queues: the restored device continues on
//! the same ring positions; in-flight io_uring requests are finished before the state is read;
//! bad states are refused.

use std::io::Write;
use std::sync::{Arc, Mutex};

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::tempfile::TempFile;

use super::regs::*;
use super::*;
use crate::virtio::block::request::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use crate::virtio::block::{Block, BlockConfig, IoEngine};
use crate::virtio::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};
use crate::virtio::test_utils::*;
use crate::virtio::{ActivateError, VirtioInterrupt, TYPE_NET};

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS_ADDR: u64 = 0x30_0000;

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// A 64-sector disk whose sector n is filled with byte n.
fn disk() -> TempFile {
    let f = TempFile::new_with_prefix("/tmp/tartarus-persist-").unwrap();
    for n in 0..64u8 {
        f.as_file().write_all(&[n; 512]).unwrap();
    }
    f
}

fn block(f: &TempFile, engine: IoEngine) -> Arc<Mutex<Block>> {
    Arc::new(Mutex::new(
        Block::new(BlockConfig {
            drive_id: "vda".into(),
            path_on_host: f.as_path().to_owned(),
            io_engine: engine,
            ..Default::default()
        })
        .unwrap(),
    ))
}

fn bring_up(t: &mut MmioTransport, vq: &MockSplitQueue<'_, GuestMemoryMmap>) {
    w(t, STATUS, ACKNOWLEDGE);
    w(t, STATUS, ACKNOWLEDGE | DRIVER);
    w(t, DRIVER_FEATURES_SEL, 1);
    w(t, DRIVER_FEATURES, 1);
    w(t, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    w(t, QUEUE_SEL, 0);
    w(t, QUEUE_NUM, QUEUE_LEN as u32);
    w(t, QUEUE_DESC_LOW, vq.desc_table_addr().0 as u32);
    w(t, QUEUE_DRIVER_LOW, vq.avail_addr().0 as u32);
    w(t, QUEUE_DEVICE_LOW, vq.used_addr().0 as u32);
    w(t, QUEUE_READY, 1);
    w(t, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(t.is_activated());
}

/// Makes a request for `sector` available, its three descriptors at `first`.
fn request(
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<'_, GuestMemoryMmap>,
    first: u16,
    kind: u32,
    sector: u64,
) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    let hdr = HDR + first as u64 * 0x100;
    mem.write_slice(&h, GuestAddress(hdr)).unwrap();
    let data_flags = if kind == VIRTIO_BLK_T_IN { W } else { R };
    add_chain(
        vq,
        first,
        &[
            (hdr, 16, R),
            (DATA + first as u64 * 0x1000, 512, data_flags),
            (STATUS_ADDR + first as u64, 1, W),
        ],
    );
}

/// Drains the transport's queue-0 notification and lets the device process it.
fn notify(t: &MmioTransport) {
    let mut h = t.event_handler().unwrap();
    h.handle(0);
}

#[test]
fn restored_block_device_continues_on_the_same_ring_positions() {
    let mem = guest_memory();
    let vq = mock_queue(&mem);
    let f = disk();
    let mut t = MmioTransport::new(mem.clone(), block(&f, IoEngine::Sync)).unwrap();
    bring_up(&mut t, &vq);
    request(&mem, &vq, 0, VIRTIO_BLK_T_IN, 7);
    request(&mem, &vq, 3, VIRTIO_BLK_T_IN, 9);
    notify(&t);
    assert_eq!(used_idx(&vq), 2);
    let state = t.save_state().unwrap();
    assert!(state.activated);
    assert_eq!(state.status, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(state.interrupt_status, 1);
    let q = &state.queues[0];
    assert_eq!((q.next_avail, q.next_used, q.size), (2, 2, QUEUE_LEN));
    assert_eq!(q.desc_table, vq.desc_table_addr().0);
    assert!(q.ready);

    // Through JSON, into a new device and transport on the same memory (as a restore does).
    let json = serde_json::to_string(&state).unwrap();
    let state: TransportState = serde_json::from_str(&json).unwrap();
    let dev2 = block(&f, IoEngine::Sync);
    let mut t2 = MmioTransport::new(mem.clone(), dev2.clone()).unwrap();
    t2.restore_state(&state).unwrap();
    assert!(t2.is_activated() && dev2.lock().unwrap().is_activated());
    assert_eq!(r(&mut t2, STATUS), state.status);
    assert_eq!(r(&mut t2, INTERRUPT_STATUS), 1);
    assert_eq!(r(&mut t2, QUEUE_READY), 1);
    assert_eq!(dev2.lock().unwrap().acked_features(), state.acked_features);
    // The pending interrupt is raised again and every queue kicked once.
    assert_eq!(t2.interrupt_evt().read().unwrap(), 1);
    // The next request continues at ring position 2 (it would be lost, or the old ones redone,
    // if the queue had been reset).
    request(&mem, &vq, 6, VIRTIO_BLK_T_OUT, 11);
    mem.write_slice(&[0xab; 512], GuestAddress(DATA + 6 * 0x1000))
        .unwrap();
    notify(&t2);
    assert_eq!(used_idx(&vq), 3);
    assert_eq!(used_elem(&vq, 2), (6, 1));
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(STATUS_ADDR + 6)).unwrap(),
        VIRTIO_BLK_S_OK
    );
    let m = dev2.lock().unwrap().metrics();
    assert_eq!(m.write_count.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(m.read_count.load(std::sync::atomic::Ordering::Relaxed), 0);
    let mut written = [0u8; 512];
    use std::os::unix::fs::FileExt;
    f.as_file().read_exact_at(&mut written, 11 * 512).unwrap();
    assert_eq!(written, [0xab; 512]);
}

#[test]
fn save_finishes_in_flight_io_uring_requests_and_marks_pages_dirty() {
    let mem = guest_memory();
    let vq = mock_queue(&mem);
    let f = disk();
    let dev = block(&f, IoEngine::Async);
    let mut t = MmioTransport::new(mem.clone(), dev.clone()).unwrap();
    bring_up(&mut t, &vq);
    let region = mem.find_region(GuestAddress(0)).unwrap();
    let mapping: &vm_memory::MmapRegion<vm_memory::bitmap::AtomicBitmap> = region;
    mapping.bitmap().reset();
    assert!(!region.bitmap().dirty_at(vq.used_addr().0 as usize));
    for (i, sector) in [(0u16, 5u64), (3, 6), (6, 7)] {
        request(&mem, &vq, i, VIRTIO_BLK_T_IN, sector);
    }
    // Submitted to io_uring; no completion is reaped before the snapshot.
    notify(&t);
    let state = t.save_state().unwrap();
    assert_eq!(used_idx(&vq), 3, "in-flight requests were not finished");
    assert_eq!(state.queues[0].next_used, 3);
    assert_eq!(state.queues[0].next_avail, 3);
    for (i, sector) in [(0u64, 5u8), (3, 6), (6, 7)] {
        let data = DATA + i * 0x1000;
        assert_eq!(mem.read_obj::<u8>(GuestAddress(data)).unwrap(), sector);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(STATUS_ADDR + i)).unwrap(),
            VIRTIO_BLK_S_OK
        );
        // What the device wrote is in the VMM's dirty bitmap, so a Diff snapshot has it.
        assert!(region.bitmap().dirty_at(data as usize), "data page {i}");
        assert!(region.bitmap().dirty_at((STATUS_ADDR + i) as usize));
    }
    assert!(region.bitmap().dirty_at(vq.used_addr().0 as usize));
}

#[test]
fn an_inactive_transport_round_trips_its_registers() {
    let mem = guest_memory();
    let f = disk();
    let mut t = MmioTransport::new(mem.clone(), block(&f, IoEngine::Sync)).unwrap();
    w(&mut t, STATUS, ACKNOWLEDGE);
    w(&mut t, STATUS, ACKNOWLEDGE | DRIVER);
    w(&mut t, DEVICE_FEATURES_SEL, 1);
    w(&mut t, DRIVER_FEATURES_SEL, 1);
    w(&mut t, DRIVER_FEATURES, 1);
    let state = t.save_state().unwrap();
    assert!(!state.activated);
    let mut t2 = MmioTransport::new(mem.clone(), block(&f, IoEngine::Sync)).unwrap();
    t2.restore_state(&state).unwrap();
    assert!(!t2.is_activated());
    assert_eq!(t2.save_state().unwrap(), state);
    assert_eq!(r(&mut t2, STATUS), ACKNOWLEDGE | DRIVER);
    assert_eq!(r(&mut t2, DEVICE_FEATURES), 1);
    // The driver carries on from there.
    w(&mut t2, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(r(&mut t2, STATUS), ACKNOWLEDGE | DRIVER | FEATURES_OK);
}

#[test]
fn bad_states_are_refused() {
    let mem = guest_memory();
    let vq = mock_queue(&mem);
    let f = disk();
    let mut t = MmioTransport::new(mem.clone(), block(&f, IoEngine::Sync)).unwrap();
    bring_up(&mut t, &vq);
    let good = t.save_state().unwrap();
    let fresh = || MmioTransport::new(mem.clone(), block(&f, IoEngine::Sync)).unwrap();

    let mut s = good.clone();
    s.device_type = TYPE_NET;
    let e = fresh().restore_state(&s).unwrap_err();
    assert!(matches!(e, TransportPersistError::DeviceType { .. }), "{e}");

    let mut s = good.clone();
    s.queues.push(s.queues[0].clone());
    let e = fresh().restore_state(&s).unwrap_err();
    assert!(matches!(e, TransportPersistError::QueueCount { .. }), "{e}");

    let mut s = good.clone();
    s.queues[0].size = 3;
    let e = fresh().restore_state(&s).unwrap_err();
    assert!(
        matches!(e, TransportPersistError::InvalidQueue(0, _)),
        "{e}"
    );

    let mut s = good.clone();
    s.queues[0].max_size = 128;
    let e = fresh().restore_state(&s).unwrap_err();
    assert!(
        matches!(e, TransportPersistError::QueueMaxSize { .. }),
        "{e}"
    );

    let mut s = good.clone();
    s.queues[0].used_ring = MEM_SIZE + 0x1000;
    let e = fresh().restore_state(&s).unwrap_err();
    assert!(
        matches!(e, TransportPersistError::QueueOutsideMemory(0)),
        "{e}"
    );

    // Only a fresh transport can be restored.
    let e = t.restore_state(&good).unwrap_err();
    assert!(matches!(e, TransportPersistError::NotFresh), "{e}");

    // A refused state leaves the transport usable.
    let mut t3 = fresh();
    t3.restore_state(&good).unwrap();
    assert!(t3.is_activated());
}

/// A device that implements nothing for snapshots.
struct NoSnapshots {
    active: bool,
}

impl VirtioDevice for NoSnapshots {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn avail_features(&self) -> u64 {
        0
    }
    fn set_acked_features(&mut self, _features: u64) {}
    fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        _queues: Vec<Queue>,
        _interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        self.active = true;
        Ok(())
    }
    fn is_activated(&self) -> bool {
        self.active
    }
    fn reset(&mut self) {
        self.active = false;
    }
    fn process_queue(&mut self, _index: usize) {}
}

#[test]
fn an_active_device_without_snapshot_support_is_refused() {
    let mem = guest_memory();
    let vq = mock_queue(&mem);
    let dev = Arc::new(Mutex::new(NoSnapshots { active: false }));
    let mut t = MmioTransport::new(mem.clone(), dev).unwrap();
    // Not active yet: the transport's own registers are all there is.
    assert!(t.save_state().is_ok());
    bring_up(&mut t, &vq);
    let e = t.save_state().unwrap_err();
    assert!(
        matches!(e, TransportPersistError::Unsupported(TYPE_NET)),
        "{e}"
    );
    assert!(e.to_string().contains("type 1"), "{e}");
}
