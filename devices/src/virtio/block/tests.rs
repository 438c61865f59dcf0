//! virtio-blk on mock queues: the regular requests, with both engines.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::request::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use super::*;
use crate::rate_limiter::TokenBucketConfig;
use crate::virtio::test_utils::*;
use crate::virtio::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

pub const HDR: u64 = 0x10_0000;
pub const DATA: u64 = 0x20_0000;
pub const STATUS: u64 = 0x30_0000;
pub const DISK_SECTORS: u64 = 64;
pub const ENGINES: [IoEngine; 2] = [IoEngine::Sync, IoEngine::Async];

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

pub fn disk_file(sectors: u64, seed: u8) -> TempFile {
    let f = TempFile::new_with_prefix("/tmp/tartarus-blk-").unwrap();
    f.as_file()
        .write_all(&pattern((sectors * SECTOR_SIZE) as usize, seed))
        .unwrap();
    f
}

pub fn file_bytes(f: &TempFile, offset: u64, len: usize) -> Vec<u8> {
    let mut file = f.as_file();
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len];
    file.read_exact(&mut buf).unwrap();
    buf
}

pub fn config(f: &TempFile, engine: IoEngine) -> BlockConfig {
    BlockConfig {
        drive_id: "rootfs".into(),
        path_on_host: f.as_path().to_owned(),
        is_read_only: false,
        cache_type: CacheType::Writeback,
        io_engine: engine,
        rate_limiter: RateLimiterConfig::default(),
    }
}

pub fn activate(
    dev: &mut Block,
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<'_, GuestMemoryMmap>,
) -> Arc<VirtioInterrupt> {
    let intr = interrupt();
    dev.activate(mem.clone(), vec![vq.create_queue().unwrap()], intr.clone())
        .unwrap();
    intr
}

pub fn header(mem: &GuestMemoryMmap, addr: u64, req_type: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&req_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(addr)).unwrap();
}

pub fn status_at(mem: &GuestMemoryMmap, addr: u64) -> u8 {
    mem.read_obj(GuestAddress(addr)).unwrap()
}

/// Processes the queue and, for the Async engine, reaps until `want` used entries exist.
pub fn run(dev: &mut Block, vq: &MockSplitQueue<'_, GuestMemoryMmap>, want: u16) {
    dev.process_queue(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while used_idx(vq) < want {
        assert!(Instant::now() < deadline, "requests did not complete");
        std::thread::sleep(Duration::from_millis(1));
        dev.handle_aux_event(AUX_IO_URING);
    }
}

#[test]
fn read_sectors() {
    for engine in ENGINES {
        let mem = guest_memory();
        let vq = mock_queue(&mem);
        let f = disk_file(DISK_SECTORS, 3);
        let mut dev = Block::new(config(&f, engine)).unwrap();
        let intr = activate(&mut dev, &mem, &vq);
        header(&mem, HDR, VIRTIO_BLK_T_IN, 5);
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        // Two data segments that are not adjacent in guest memory.
        add_chain(
            &vq,
            0,
            &[
                (HDR, 16, R),
                (DATA, 512, W),
                (DATA + 0x1000, 1024, W),
                (STATUS, 1, W),
            ],
        );
        run(&mut dev, &vq, 1);
        assert_eq!(status_at(&mem, STATUS), VIRTIO_BLK_S_OK, "{engine:?}");
        assert_eq!(used_elem(&vq, 0), (0, 1536 + 1));
        let want = file_bytes(&f, 5 * 512, 1536);
        let mut got = vec![0u8; 1536];
        mem.read_slice(&mut got[..512], GuestAddress(DATA)).unwrap();
        mem.read_slice(&mut got[512..], GuestAddress(DATA + 0x1000))
            .unwrap();
        assert_eq!(got, want);
        let m = dev.metrics();
        assert_eq!(m.read_count.load(Ordering::Relaxed), 1);
        assert_eq!(m.read_bytes.load(Ordering::Relaxed), 1536);
        assert!(irq_fired(&intr));
        assert_eq!(intr.status() & 1, 1);
    }
}

#[test]
fn write_sectors_and_flush() {
    for engine in ENGINES {
        let mem = guest_memory();
        let vq = mock_queue(&mem);
        let f = disk_file(DISK_SECTORS, 1);
        let mut dev = Block::new(config(&f, engine)).unwrap();
        let _intr = activate(&mut dev, &mem, &vq);
        let data = pattern(2048, 99);
        mem.write_slice(&data, GuestAddress(DATA)).unwrap();
        header(&mem, HDR, VIRTIO_BLK_T_OUT, DISK_SECTORS - 4);
        header(&mem, HDR + 0x100, VIRTIO_BLK_T_FLUSH, 0);
        add_chain(&vq, 0, &[(HDR, 16, R), (DATA, 2048, R), (STATUS, 1, W)]);
        add_chain(&vq, 3, &[(HDR + 0x100, 16, R), (STATUS + 1, 1, W)]);
        run(&mut dev, &vq, 2);
        assert_eq!(status_at(&mem, STATUS), VIRTIO_BLK_S_OK, "{engine:?}");
        assert_eq!(status_at(&mem, STATUS + 1), VIRTIO_BLK_S_OK);
        assert_eq!(file_bytes(&f, (DISK_SECTORS - 4) * 512, 2048), data);
        // The sector before is untouched.
        assert_eq!(
            file_bytes(&f, (DISK_SECTORS - 5) * 512, 512),
            pattern((DISK_SECTORS * 512) as usize, 1)[(DISK_SECTORS as usize - 5) * 512..][..512]
        );
        let m = dev.metrics();
        assert_eq!(m.write_bytes.load(Ordering::Relaxed), 2048);
        assert_eq!(m.flush_count.load(Ordering::Relaxed), 1);
        let used: Vec<_> = (0..2).map(|i| used_elem(&vq, i)).collect();
        assert!(used.contains(&(0, 1)) && used.contains(&(3, 1)));
    }
}

#[test]
fn flush_in_unsafe_mode_is_a_noop_and_not_offered() {
    for engine in ENGINES {
        let mem = guest_memory();
        let vq = mock_queue(&mem);
        let f = disk_file(8, 0);
        let mut cfg = config(&f, engine);
        cfg.cache_type = CacheType::Unsafe;
        let mut dev = Block::new(cfg).unwrap();
        assert_eq!(dev.avail_features() & (1 << VIRTIO_BLK_F_FLUSH), 0);
        let _intr = activate(&mut dev, &mem, &vq);
        header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
        add_chain(&vq, 0, &[(HDR, 16, R), (STATUS, 1, W)]);
        run(&mut dev, &vq, 1);
        assert_eq!(status_at(&mem, STATUS), VIRTIO_BLK_S_OK);
    }
}

#[test]
fn get_id_answers_the_drive_id() {
    for engine in ENGINES {
        let mem = guest_memory();
        let vq = mock_queue(&mem);
        let f = disk_file(8, 0);
        let mut cfg = config(&f, engine);
        cfg.drive_id = "a-very-long-drive-identifier".into();
        let mut dev = Block::new(cfg).unwrap();
        let _intr = activate(&mut dev, &mem, &vq);
        mem.write_slice(&[0xaa; 32], GuestAddress(DATA)).unwrap();
        header(&mem, HDR, VIRTIO_BLK_T_GET_ID, 0);
        add_chain(&vq, 0, &[(HDR, 16, R), (DATA, 20, W), (STATUS, 1, W)]);
        run(&mut dev, &vq, 1);
        assert_eq!(status_at(&mem, STATUS), VIRTIO_BLK_S_OK);
        let mut id = [0u8; 21];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..20], b"a-very-long-drive-id");
        assert_eq!(id[20], 0xaa, "nothing past the 20-byte buffer");
        assert_eq!(used_elem(&vq, 0), (0, 21));

        // A short id is zero padded.
        let f2 = disk_file(8, 0);
        let mut dev = Block::new(config(&f2, engine)).unwrap();
        let mem = guest_memory();
        let vq = mock_queue(&mem);
        let _intr = activate(&mut dev, &mem, &vq);
        mem.write_slice(&[0xaa; 20], GuestAddress(DATA)).unwrap();
        header(&mem, HDR, VIRTIO_BLK_T_GET_ID, 0);
        add_chain(&vq, 0, &[(HDR, 16, R), (DATA, 20, W), (STATUS, 1, W)]);
        run(&mut dev, &vq, 1);
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..7], b"rootfs\0");
        assert_eq!(id[19], 0);
    }
}

#[test]
fn read_only_drive_refuses_writes() {
    for engine in ENGINES {
        let mem = guest_memory();
        let vq = mock_queue(&mem);
        let f = disk_file(8, 5);
        let mut cfg = config(&f, engine);
        cfg.is_read_only = true;
        let mut dev = Block::new(cfg).unwrap();
        assert_ne!(dev.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
        let _intr = activate(&mut dev, &mem, &vq);
        mem.write_slice(&[0u8; 512], GuestAddress(DATA)).unwrap();
        header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
        header(&mem, HDR + 0x100, VIRTIO_BLK_T_IN, 0);
        add_chain(&vq, 0, &[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)]);
        add_chain(
            &vq,
            3,
            &[
                (HDR + 0x100, 16, R),
                (DATA + 0x1000, 512, W),
                (STATUS + 1, 1, W),
            ],
        );
        run(&mut dev, &vq, 2);
        assert_eq!(status_at(&mem, STATUS), VIRTIO_BLK_S_IOERR);
        assert_eq!(
            status_at(&mem, STATUS + 1),
            VIRTIO_BLK_S_OK,
            "reads still work"
        );
        assert_eq!(file_bytes(&f, 0, 512), pattern(512, 5));
    }
}

#[test]
fn out_of_range_sectors_and_unknown_types() {
    for engine in ENGINES {
        let mem = guest_memory();
        let vq = mock_queue(&mem);
        let f = disk_file(8, 0);
        let mut dev = Block::new(config(&f, engine)).unwrap();
        let _intr = activate(&mut dev, &mem, &vq);
        // Last sector plus one; a sector number that overflows; a write past the end.
        header(&mem, HDR, VIRTIO_BLK_T_IN, 7);
        header(&mem, HDR + 0x100, VIRTIO_BLK_T_IN, u64::MAX);
        header(&mem, HDR + 0x200, VIRTIO_BLK_T_OUT, 8);
        header(&mem, HDR + 0x300, 0x1234, 0);
        add_chain(&vq, 0, &[(HDR, 16, R), (DATA, 1024, W), (STATUS, 1, W)]);
        add_chain(
            &vq,
            3,
            &[(HDR + 0x100, 16, R), (DATA, 512, W), (STATUS + 1, 1, W)],
        );
        add_chain(
            &vq,
            6,
            &[(HDR + 0x200, 16, R), (DATA, 512, R), (STATUS + 2, 1, W)],
        );
        add_chain(&vq, 9, &[(HDR + 0x300, 16, R), (STATUS + 3, 1, W)]);
        run(&mut dev, &vq, 4);
        assert_eq!(status_at(&mem, STATUS), VIRTIO_BLK_S_IOERR);
        assert_eq!(status_at(&mem, STATUS + 1), VIRTIO_BLK_S_IOERR);
        assert_eq!(status_at(&mem, STATUS + 2), VIRTIO_BLK_S_IOERR);
        assert_eq!(status_at(&mem, STATUS + 3), VIRTIO_BLK_S_UNSUPP);
        let m = dev.metrics();
        assert_eq!(m.invalid_requests.load(Ordering::Relaxed), 4);
        assert_eq!(m.unsupported_requests.load(Ordering::Relaxed), 1);
        assert_eq!(file_bytes(&f, 0, 8 * 512), pattern(8 * 512, 0));
    }
}

#[test]
fn config_space_and_features() {
    let f = disk_file(DISK_SECTORS, 0);
    let dev = Block::new(config(&f, IoEngine::Sync)).unwrap();
    assert_eq!(dev.device_type(), TYPE_BLOCK);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE]);
    let feats = dev.avail_features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
    ] {
        assert_ne!(feats & (1 << bit), 0, "bit {bit}");
    }
    assert_eq!(feats & (1 << VIRTIO_BLK_F_RO), 0);
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
    let mut w = [0u8; 4];
    dev.read_config(12, &mut w);
    assert_eq!(u32::from_le_bytes(w), SEG_MAX);
    dev.read_config(20, &mut w);
    assert_eq!(u32::from_le_bytes(w), 512);
    // Past the end reads zeros; partial overlap is truncated.
    let mut tail = [0xffu8; 8];
    dev.read_config(21, &mut tail);
    assert_eq!(tail, [2, 0, 0, 0, 0, 0, 0, 0]);
    dev.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 8]);
}

#[test]
fn missing_backing_file_is_an_error() {
    let cfg = BlockConfig {
        path_on_host: "/nonexistent/disk.img".into(),
        ..Default::default()
    };
    let err = Block::new(cfg).err().unwrap();
    assert!(matches!(err, BlockError::Open { .. }), "{err}");
}

#[test]
fn update_backing_file_changes_capacity_and_data() {
    for engine in ENGINES {
        let mem = guest_memory();
        let vq = mock_queue(&mem);
        let f = disk_file(8, 1);
        let f2 = disk_file(16, 2);
        let mut dev = Block::new(config(&f, engine)).unwrap();
        let intr = activate(&mut dev, &mem, &vq);
        dev.update_backing_file(f2.as_path()).unwrap();
        assert_eq!(dev.capacity(), 16);
        assert_eq!(intr.status() & 2, 2, "config interrupt");
        assert_eq!(intr.config_generation(), 1);
        header(&mem, HDR, VIRTIO_BLK_T_IN, 12);
        add_chain(&vq, 0, &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
        run(&mut dev, &vq, 1);
        assert_eq!(status_at(&mem, STATUS), VIRTIO_BLK_S_OK);
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, file_bytes(&f2, 12 * 512, 512));
        assert!(dev.update_backing_file(Path::new("/nonexistent")).is_err());
        assert_eq!(dev.capacity(), 16, "a failed update keeps the old file");
    }
}

#[test]
fn rate_limiter_blocks_and_timer_resumes() {
    for engine in ENGINES {
        let mem = guest_memory();
        let vq = mock_queue(&mem);
        let f = disk_file(8, 0);
        let mut cfg = config(&f, engine);
        cfg.rate_limiter.ops = Some(TokenBucketConfig {
            size: 1,
            one_time_burst: 0,
            refill_time: 30,
        });
        let mut dev = Block::new(cfg).unwrap();
        let _intr = activate(&mut dev, &mem, &vq);
        header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
        add_chain(&vq, 0, &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
        add_chain(
            &vq,
            3,
            &[(HDR, 16, R), (DATA + 0x1000, 512, W), (STATUS + 1, 1, W)],
        );
        run(&mut dev, &vq, 1);
        std::thread::sleep(Duration::from_millis(5));
        dev.handle_aux_event(AUX_IO_URING);
        assert_eq!(used_idx(&vq), 1, "second request waits for tokens");
        assert_eq!(dev.metrics().rate_limited_events.load(Ordering::Relaxed), 1);
        // A notification while blocked does nothing.
        dev.process_queue(0);
        assert_eq!(used_idx(&vq), 1);
        std::thread::sleep(Duration::from_millis(40));
        dev.handle_aux_event(AUX_RATE_LIMITER);
        run(&mut dev, &vq, 2);
        assert_eq!(status_at(&mem, STATUS + 1), VIRTIO_BLK_S_OK);

        // PATCH removes the limit.
        dev.update_rate_limiter(BucketUpdate::None, BucketUpdate::Disabled);
        add_chain(&vq, 6, &[(HDR, 16, R), (DATA, 512, W), (STATUS + 2, 1, W)]);
        add_chain(&vq, 9, &[(HDR, 16, R), (DATA, 512, W), (STATUS + 3, 1, W)]);
        run(&mut dev, &vq, 4);
    }
}

#[test]
fn reset_stops_and_reactivation_works() {
    for engine in ENGINES {
        let mem = guest_memory();
        let f = disk_file(8, 0);
        let mut dev = Block::new(config(&f, engine)).unwrap();
        {
            let vq = mock_queue(&mem);
            let _intr = activate(&mut dev, &mem, &vq);
            assert!(dev.is_activated());
            assert!(matches!(
                dev.activate(mem.clone(), vec![], interrupt()),
                Err(ActivateError::AlreadyActive)
            ));
            dev.reset();
            assert!(!dev.is_activated());
            header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
            add_chain(&vq, 0, &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
            dev.process_queue(0);
            assert_eq!(used_idx(&vq), 0, "inactive device ignores the queue");
        }
        // The driver sets the queue up afresh and activates again.
        let vq = mock_queue(&mem);
        assert!(matches!(
            dev.activate(mem.clone(), vec![], interrupt()),
            Err(ActivateError::QueueCount { .. })
        ));
        let _intr = activate(&mut dev, &mem, &vq);
        add_chain(&vq, 0, &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
        run(&mut dev, &vq, 1);
        assert_eq!(status_at(&mem, STATUS), VIRTIO_BLK_S_OK);
    }
}

#[test]
fn event_idx_suppresses_interrupts() {
    let mem = guest_memory();
    let vq = mock_queue(&mem);
    let f = disk_file(8, 0);
    let mut dev = Block::new(config(&f, IoEngine::Sync)).unwrap();
    // The mock places its used ring over the tail of its avail ring (used_event included), so
    // this test puts the used ring elsewhere.
    const USED: u64 = 0x8000;
    let mut q = Queue::new(QUEUE_LEN).unwrap();
    q.set_size(QUEUE_LEN);
    q.set_desc_table_address(Some(vq.desc_table_addr().0 as u32), Some(0));
    q.set_avail_ring_address(Some(vq.avail_addr().0 as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    q.set_event_idx(true);
    let intr = interrupt();
    dev.activate(mem.clone(), vec![q], intr.clone()).unwrap();
    // used_event = 1: the driver wants an interrupt only after the second used entry.
    let used_event = vq.avail_addr().0 + 4 + 2 * QUEUE_LEN as u64;
    mem.write_obj(1u16, GuestAddress(used_event)).unwrap();
    let used_idx = || mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap();
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    add_chain(&vq, 0, &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
    dev.process_queue(0);
    assert_eq!(used_idx(), 1);
    assert!(!irq_fired(&intr));
    add_chain(&vq, 3, &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
    dev.process_queue(0);
    assert_eq!(used_idx(), 2);
    assert!(irq_fired(&intr));
    // The device asked to be notified about the next available entry (avail_event).
    let avail_event = USED + 4 + 8 * QUEUE_LEN as u64;
    assert_eq!(mem.read_obj::<u16>(GuestAddress(avail_event)).unwrap(), 2);
}

#[test]
fn reads_mark_guest_pages_dirty() {
    use vm_memory::bitmap::Bitmap;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for engine in ENGINES {
        let mem = guest_memory();
        let vq = mock_queue(&mem);
        let f = disk_file(8, 0);
        let mut dev = Block::new(config(&f, engine)).unwrap();
        let _intr = activate(&mut dev, &mem, &vq);
        let region = mem.find_region(GuestAddress(0)).unwrap();
        let page = DATA + 0x5000;
        assert!(!region.bitmap().dirty_at(page as usize));
        header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
        add_chain(&vq, 0, &[(HDR, 16, R), (page, 512, W), (STATUS, 1, W)]);
        run(&mut dev, &vq, 1);
        assert!(region.bitmap().dirty_at(page as usize), "{engine:?}");
    }
}

#[test]
fn short_io_on_a_shrunken_file_gives_ioerr() {
    for engine in ENGINES {
        let mem = guest_memory();
        let vq = mock_queue(&mem);
        let f = disk_file(8, 4);
        let mut dev = Block::new(config(&f, engine)).unwrap();
        let _intr = activate(&mut dev, &mem, &vq);
        // Someone truncates the file behind the device's back: the read comes back short
        // (256 bytes), the rest hits end of file.
        f.as_file().set_len(4 * 512 + 256).unwrap();
        header(&mem, HDR, VIRTIO_BLK_T_IN, 4);
        add_chain(&vq, 0, &[(HDR, 16, R), (DATA, 1024, W), (STATUS, 1, W)]);
        header(&mem, HDR + 0x100, VIRTIO_BLK_T_IN, 3);
        add_chain(
            &vq,
            3,
            &[
                (HDR + 0x100, 16, R),
                (DATA + 0x1000, 512, W),
                (STATUS + 1, 1, W),
            ],
        );
        run(&mut dev, &vq, 2);
        assert_eq!(status_at(&mem, STATUS), VIRTIO_BLK_S_IOERR, "{engine:?}");
        assert_eq!(status_at(&mem, STATUS + 1), VIRTIO_BLK_S_OK);
        assert_eq!(dev.metrics().io_errors.load(Ordering::Relaxed), 1);
    }
}
