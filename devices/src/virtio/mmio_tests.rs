//! virtio-mmio transport tests with a recording dummy device, and one end-to-end run with
//! virtio-blk through the transport and the event handler.

use std::sync::{Arc, Mutex};

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::regs::*;
use super::*;
use crate::virtio::handler::RESET_DATA_FOR_TESTS;
use crate::virtio::test_utils::*;
use crate::virtio::{ActivateError, TYPE_BLOCK};

#[derive(Default)]
struct Dummy {
    acked: u64,
    queues: Vec<(u16, u64, bool)>,
    interrupt: Option<Arc<VirtioInterrupt>>,
    resets: usize,
    processed: Vec<usize>,
    config: [u8; 8],
    fail_activate: bool,
}

const DUMMY_FEATURES: u64 = 1 << 3 | 1 << 40;

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 16]
    }
    fn avail_features(&self) -> u64 {
        DUMMY_FEATURES
    }
    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = *self.config.get(offset as usize + i).unwrap_or(&0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(c) = self.config.get_mut(offset as usize + i) {
                *c = *b;
            }
        }
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::Backend(std::io::Error::other("nope")));
        }
        self.queues = queues
            .iter()
            .map(|q| (q.size(), q.desc_table(), q.event_idx_enabled()))
            .collect();
        self.interrupt = Some(interrupt);
        Ok(())
    }
    fn is_activated(&self) -> bool {
        self.interrupt.is_some()
    }
    fn reset(&mut self) {
        self.resets += 1;
        self.queues.clear();
        self.interrupt = None;
    }
    fn process_queue(&mut self, index: usize) {
        self.processed.push(index);
    }
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn new_transport(mem: &GuestMemoryMmap) -> (MmioTransport, Arc<Mutex<Dummy>>) {
    let dev = Arc::new(Mutex::new(Dummy::default()));
    let t = MmioTransport::new(mem.clone(), dev.clone()).unwrap();
    (t, dev)
}

fn negotiate(t: &mut MmioTransport, high_features: u32) {
    w(t, STATUS, ACKNOWLEDGE);
    w(t, STATUS, ACKNOWLEDGE | DRIVER);
    w(t, DRIVER_FEATURES_SEL, 1);
    w(t, DRIVER_FEATURES, high_features);
    w(t, DRIVER_FEATURES_SEL, 0);
    w(t, DRIVER_FEATURES, 1 << 3 | 1 << 29);
    w(t, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
}

fn setup_queue(t: &mut MmioTransport, index: u32, vq: &MockSplitQueue<'_, GuestMemoryMmap>) {
    w(t, QUEUE_SEL, index);
    w(t, QUEUE_NUM, QUEUE_LEN as u32);
    w(t, QUEUE_DESC_LOW, vq.desc_table_addr().0 as u32);
    w(t, QUEUE_DESC_HIGH, 0);
    w(t, QUEUE_DRIVER_LOW, vq.avail_addr().0 as u32);
    w(t, QUEUE_DRIVER_HIGH, 0);
    w(t, QUEUE_DEVICE_LOW, vq.used_addr().0 as u32);
    w(t, QUEUE_DEVICE_HIGH, 0);
    w(t, QUEUE_READY, 1);
}

const DRIVER_OK_ALL: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;

#[test]
fn identification_registers() {
    let mem = guest_memory();
    let (mut t, _) = new_transport(&mem);
    assert_eq!(r(&mut t, MAGIC_VALUE), 0x7472_6976);
    assert_eq!(r(&mut t, VERSION), 2);
    assert_eq!(r(&mut t, DEVICE_ID), TYPE_BLOCK);
    assert_eq!(r(&mut t, regs::VENDOR_ID), super::VENDOR_ID);
    assert_eq!(r(&mut t, QUEUE_NUM_MAX), 16);
    w(&mut t, QUEUE_SEL, 7);
    assert_eq!(r(&mut t, QUEUE_NUM_MAX), 0, "no such queue");
    assert_eq!(r(&mut t, SHM_LEN_LOW), u32::MAX);
    // Wrong sizes and misaligned accesses are ignored.
    let mut b = [0xffu8; 2];
    t.read(MAGIC_VALUE, &mut b);
    assert_eq!(b, [0, 0]);
    let mut b = [0xffu8; 4];
    t.read(MAGIC_VALUE + 1, &mut b);
    assert_eq!(b, [0; 4]);
    t.write(STATUS, &[ACKNOWLEDGE as u8]);
    assert_eq!(r(&mut t, STATUS), 0);
    assert_eq!(
        cmdline_entry(0xd000_0000, 5),
        "virtio_mmio.device=4K@0xd0000000:5"
    );
}

#[test]
fn feature_negotiation() {
    let mem = guest_memory();
    let (mut t, dev) = new_transport(&mem);
    w(&mut t, DEVICE_FEATURES_SEL, 0);
    assert_eq!(r(&mut t, DEVICE_FEATURES), 1 << 3 | 1 << 29);
    w(&mut t, DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut t, DEVICE_FEATURES), 1 | 1 << 8);
    w(&mut t, DEVICE_FEATURES_SEL, 2);
    assert_eq!(r(&mut t, DEVICE_FEATURES), 0);
    // Features before DRIVER are ignored.
    w(&mut t, DRIVER_FEATURES, 1 << 3);
    // Without VERSION_1 FEATURES_OK is refused.
    negotiate(&mut t, 1 << 8);
    assert_eq!(r(&mut t, STATUS), ACKNOWLEDGE | DRIVER);
    // With it, accepted; unoffered bits are dropped.
    w(&mut t, DRIVER_FEATURES_SEL, 1);
    w(&mut t, DRIVER_FEATURES, 1 | 1 << 20);
    w(&mut t, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(r(&mut t, STATUS), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(dev.lock().unwrap().acked, 1 << 32 | 1 << 3 | 1 << 29);
    // After FEATURES_OK the features are frozen.
    w(&mut t, DRIVER_FEATURES, 0);
    assert_eq!(dev.lock().unwrap().acked, 1 << 32 | 1 << 3 | 1 << 29);
}

#[test]
fn invalid_status_transitions_are_ignored() {
    let mem = guest_memory();
    let (mut t, _) = new_transport(&mem);
    w(&mut t, STATUS, DRIVER);
    assert_eq!(r(&mut t, STATUS), 0);
    w(
        &mut t,
        STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert_eq!(r(&mut t, STATUS), 0);
    w(&mut t, STATUS, ACKNOWLEDGE);
    w(&mut t, STATUS, ACKNOWLEDGE | FEATURES_OK);
    assert_eq!(r(&mut t, STATUS), ACKNOWLEDGE);
    w(&mut t, STATUS, ACKNOWLEDGE | DRIVER);
    w(&mut t, STATUS, ACKNOWLEDGE);
    assert_eq!(
        r(&mut t, STATUS),
        ACKNOWLEDGE | DRIVER,
        "bits cannot be cleared"
    );
    w(&mut t, STATUS, ACKNOWLEDGE | DRIVER | FAILED);
    assert_eq!(r(&mut t, STATUS), ACKNOWLEDGE | DRIVER | FAILED);
}

#[test]
fn activation_with_valid_queues() {
    let mem = guest_memory();
    let (mut t, dev) = new_transport(&mem);
    let vq0 = MockSplitQueue::create(&mem, GuestAddress(0x1000), QUEUE_LEN);
    let vq1 = MockSplitQueue::create(&mem, GuestAddress(0x8000), QUEUE_LEN);
    // Queue registers before FEATURES_OK are ignored.
    setup_queue(&mut t, 0, &vq0);
    assert_eq!(r(&mut t, QUEUE_READY), 0);
    negotiate(&mut t, 1);
    setup_queue(&mut t, 0, &vq0);
    setup_queue(&mut t, 1, &vq1);
    assert_eq!(r(&mut t, QUEUE_READY), 1);
    w(&mut t, STATUS, DRIVER_OK_ALL);
    assert!(t.is_activated());
    assert_eq!(r(&mut t, STATUS), DRIVER_OK_ALL);
    let d = dev.lock().unwrap();
    assert_eq!(d.queues, vec![(16, 0x1000, true), (16, 0x8000, true)]);
    drop(d);
    // Activation kicks every queue once; QueueNotify without ioeventfd signals the EventFd.
    assert_eq!(t.queue_evts()[1].read().unwrap(), 1);
    w(&mut t, QUEUE_NOTIFY, 1);
    assert_eq!(t.queue_evts()[1].read().unwrap(), 1);
    w(&mut t, QUEUE_NOTIFY, 9);
    // Queue registers after DRIVER_OK are ignored.
    w(&mut t, QUEUE_SEL, 0);
    w(&mut t, QUEUE_READY, 0);
    assert_eq!(r(&mut t, QUEUE_READY), 1);
}

#[test]
fn activation_with_bad_queues_needs_reset() {
    let mem = guest_memory();
    let cases: [fn(&mut MmioTransport); 3] = [
        // Queue 1 never made ready.
        |_| {},
        // Used ring outside guest memory.
        |t| {
            w(t, QUEUE_SEL, 1);
            w(t, QUEUE_READY, 0);
            w(t, QUEUE_DEVICE_HIGH, 1);
            w(t, QUEUE_READY, 1);
        },
        // Descriptor table straddling the end of memory.
        |t| {
            w(t, QUEUE_SEL, 1);
            w(t, QUEUE_READY, 0);
            w(t, QUEUE_DESC_LOW, (MEM_SIZE - 0x80) as u32);
            w(t, QUEUE_READY, 1);
        },
    ];
    for (i, breakit) in cases.iter().enumerate() {
        let (mut t, dev) = new_transport(&mem);
        let vq0 = MockSplitQueue::create(&mem, GuestAddress(0x1000), QUEUE_LEN);
        let vq1 = MockSplitQueue::create(&mem, GuestAddress(0x8000), QUEUE_LEN);
        negotiate(&mut t, 1);
        setup_queue(&mut t, 0, &vq0);
        if i > 0 {
            setup_queue(&mut t, 1, &vq1);
        }
        breakit(&mut t);
        w(&mut t, STATUS, DRIVER_OK_ALL);
        assert!(!t.is_activated(), "case {i}");
        assert!(!dev.lock().unwrap().is_activated());
        assert_eq!(r(&mut t, STATUS) & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
        assert_eq!(r(&mut t, INTERRUPT_STATUS), 2, "config interrupt");
        // Reset recovers.
        w(&mut t, STATUS, 0);
        assert_eq!(r(&mut t, STATUS), 0);
        assert_eq!(r(&mut t, INTERRUPT_STATUS), 0);
    }
    // A device that refuses activation.
    let (mut t, dev) = new_transport(&mem);
    dev.lock().unwrap().fail_activate = true;
    let vq0 = MockSplitQueue::create(&mem, GuestAddress(0x1000), QUEUE_LEN);
    let vq1 = MockSplitQueue::create(&mem, GuestAddress(0x8000), QUEUE_LEN);
    negotiate(&mut t, 1);
    setup_queue(&mut t, 0, &vq0);
    setup_queue(&mut t, 1, &vq1);
    w(&mut t, STATUS, DRIVER_OK_ALL);
    assert!(!t.is_activated());
    assert_ne!(r(&mut t, STATUS) & DEVICE_NEEDS_RESET, 0);
}

#[test]
fn reset_and_reactivation() {
    let mem = guest_memory();
    let (mut t, dev) = new_transport(&mem);
    let vq0 = MockSplitQueue::create(&mem, GuestAddress(0x1000), QUEUE_LEN);
    let vq1 = MockSplitQueue::create(&mem, GuestAddress(0x8000), QUEUE_LEN);
    for round in 0..3 {
        negotiate(&mut t, 1);
        setup_queue(&mut t, 0, &vq0);
        setup_queue(&mut t, 1, &vq1);
        w(&mut t, STATUS, DRIVER_OK_ALL);
        assert!(t.is_activated(), "round {round}");
        w(&mut t, STATUS, 0);
        assert!(!t.is_activated());
        // The device reset waits for the VMM thread; Status reads non-zero until it is done
        // and the driver's writes are ignored meanwhile.
        assert!(t.reset_pending());
        assert_eq!(dev.lock().unwrap().resets, round);
        assert_ne!(r(&mut t, STATUS), 0);
        w(&mut t, STATUS, ACKNOWLEDGE);
        assert_ne!(r(&mut t, STATUS), ACKNOWLEDGE);
        t.complete_pending_reset();
        assert!(!t.reset_pending());
        assert_eq!(dev.lock().unwrap().resets, round + 1);
        assert!(!dev.lock().unwrap().is_activated());
        assert_eq!(r(&mut t, STATUS), 0);
        w(&mut t, QUEUE_SEL, 0);
        assert_eq!(r(&mut t, QUEUE_READY), 0, "queues reset");
    }
    // A reset in the middle of negotiation works too.
    w(&mut t, STATUS, ACKNOWLEDGE);
    w(&mut t, STATUS, 0);
    assert_eq!(r(&mut t, STATUS), 0);
}

#[test]
fn interrupt_status_and_ack() {
    let mem = guest_memory();
    let (mut t, dev) = new_transport(&mem);
    let vq0 = MockSplitQueue::create(&mem, GuestAddress(0x1000), QUEUE_LEN);
    let vq1 = MockSplitQueue::create(&mem, GuestAddress(0x8000), QUEUE_LEN);
    negotiate(&mut t, 1);
    setup_queue(&mut t, 0, &vq0);
    setup_queue(&mut t, 1, &vq1);
    w(&mut t, STATUS, DRIVER_OK_ALL);
    let intr = dev.lock().unwrap().interrupt.clone().unwrap();
    intr.trigger(InterruptKind::Vring).unwrap();
    assert_eq!(t.interrupt_evt().read().unwrap(), 1);
    assert_eq!(r(&mut t, INTERRUPT_STATUS), 1);
    intr.notify_config_change().unwrap();
    assert_eq!(r(&mut t, INTERRUPT_STATUS), 3);
    assert_eq!(r(&mut t, CONFIG_GENERATION), 1);
    w(&mut t, INTERRUPT_ACK, 1);
    assert_eq!(r(&mut t, INTERRUPT_STATUS), 2);
    w(&mut t, INTERRUPT_ACK, 2);
    assert_eq!(r(&mut t, INTERRUPT_STATUS), 0);
}

#[test]
fn config_space_goes_to_the_device() {
    let mem = guest_memory();
    let (mut t, dev) = new_transport(&mem);
    t.write(CONFIG + 2, &[7, 8]);
    assert_eq!(dev.lock().unwrap().config[2..4], [7, 8]);
    let mut b = [0u8; 1];
    t.read(CONFIG + 3, &mut b);
    assert_eq!(b, [8]);
}

#[test]
fn event_handler_dispatches_queue_events() {
    let mem = guest_memory();
    let (mut t, dev) = new_transport(&mem);
    let mut h = t.event_handler().unwrap();
    w(&mut t, QUEUE_NOTIFY, 1);
    h.handle(1);
    // No event pending: nothing is called.
    h.handle(0);
    h.handle(42);
    assert_eq!(dev.lock().unwrap().processed, vec![1]);
}

#[test]
fn block_end_to_end_through_transport() {
    use crate::virtio::block::request::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
    use crate::virtio::block::{Block, BlockConfig};
    use std::io::Write;
    use vm_memory::Bytes;

    let mem = guest_memory();
    let f = vmm_sys_util::tempfile::TempFile::new().unwrap();
    f.as_file().write_all(&[0x42; 4096]).unwrap();
    let block = Arc::new(Mutex::new(
        Block::new(BlockConfig {
            drive_id: "vda".into(),
            path_on_host: f.as_path().to_owned(),
            ..Default::default()
        })
        .unwrap(),
    ));
    let mut t = MmioTransport::new(mem.clone(), block.clone()).unwrap();
    let mut h = t.event_handler().unwrap();
    assert_eq!(r(&mut t, QUEUE_NUM_MAX), 256);
    let mut cap = [0u8; 8];
    t.read(CONFIG, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x1000), QUEUE_LEN);
    for _round in 0..2 {
        w(&mut t, STATUS, ACKNOWLEDGE);
        w(&mut t, STATUS, ACKNOWLEDGE | DRIVER);
        w(&mut t, DRIVER_FEATURES_SEL, 1);
        w(&mut t, DRIVER_FEATURES, 1);
        w(&mut t, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        setup_queue(&mut t, 0, &vq);
        w(&mut t, STATUS, DRIVER_OK_ALL);
        assert!(t.is_activated());
        let mut h16 = [0u8; 16];
        h16[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        mem.write_slice(&h16, GuestAddress(0x10_0000)).unwrap();
        add_chain(
            &vq,
            0,
            &[(0x10_0000, 16, R), (0x20_0000, 512, W), (0x30_0000, 1, W)],
        );
        w(&mut t, QUEUE_NOTIFY, 0);
        h.handle(0);
        assert_eq!(used_idx(&vq), 1);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x30_0000)).unwrap(),
            VIRTIO_BLK_S_OK
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x20_0000)).unwrap(), 0x42);
        assert_eq!(r(&mut t, INTERRUPT_STATUS), 1);
        assert_eq!(t.interrupt_evt().read().unwrap(), 1);
        // The guest resets the device; the VMM thread's handler resets the device when the
        // reset EventFd fires; the mock rings start over.
        w(&mut t, STATUS, 0);
        assert!(block.lock().unwrap().is_activated());
        assert_ne!(r(&mut t, STATUS), 0);
        h.handle(RESET_DATA_FOR_TESTS);
        assert!(!block.lock().unwrap().is_activated());
        assert_eq!(r(&mut t, STATUS), 0);
        vq.avail().idx().store(0);
        vq.used().idx().store(0);
    }
}
