//! The virtio constants taken from `virtio-bindings` keep the values the devices were written
//! against (virtio 1.x spec): a renamed or re-mapped binding fails here, not in a guest.

use super::block::request::{
    HEADER_LEN, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use super::block::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};
use super::mmio::regs;
use super::net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VNET_HDR_LEN,
};
use super::status::*;
use super::test_utils::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use super::*;

#[test]
fn device_ids_status_bits_and_common_features() {
    assert_eq!((TYPE_NET, TYPE_BLOCK, TYPE_VSOCK), (1, 2, 19));
    assert_eq!((VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX), (32, 29));
    assert_eq!(
        [
            ACKNOWLEDGE,
            DRIVER,
            DRIVER_OK,
            FEATURES_OK,
            DEVICE_NEEDS_RESET,
            FAILED
        ],
        [1, 2, 4, 8, 64, 128]
    );
    assert_eq!((VIRTIO_MMIO_INT_VRING, VIRTIO_MMIO_INT_CONFIG), (1, 2));
    assert_eq!((VRING_DESC_F_NEXT, VRING_DESC_F_WRITE), (1, 2));
}

#[test]
fn mmio_register_offsets() {
    let got = [
        regs::MAGIC_VALUE,
        regs::VERSION,
        regs::DEVICE_ID,
        regs::VENDOR_ID,
        regs::DEVICE_FEATURES,
        regs::DEVICE_FEATURES_SEL,
        regs::DRIVER_FEATURES,
        regs::DRIVER_FEATURES_SEL,
        regs::QUEUE_SEL,
        regs::QUEUE_NUM_MAX,
        regs::QUEUE_NUM,
        regs::QUEUE_READY,
        regs::QUEUE_NOTIFY,
        regs::INTERRUPT_STATUS,
        regs::INTERRUPT_ACK,
        regs::STATUS,
        regs::QUEUE_DESC_LOW,
        regs::QUEUE_DESC_HIGH,
        regs::QUEUE_DRIVER_LOW,
        regs::QUEUE_DRIVER_HIGH,
        regs::QUEUE_DEVICE_LOW,
        regs::QUEUE_DEVICE_HIGH,
        regs::SHM_LEN_LOW,
        regs::SHM_LEN_HIGH,
        regs::CONFIG_GENERATION,
        regs::CONFIG,
    ];
    let want = [
        0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
        0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0b0, 0x0b4, 0x0fc, 0x100,
    ];
    assert_eq!(got, want);
}

#[test]
fn block_constants() {
    assert_eq!(
        [
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_RO,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_FLUSH
        ],
        [2, 5, 6, 9]
    );
    assert_eq!(
        [
            VIRTIO_BLK_T_IN,
            VIRTIO_BLK_T_OUT,
            VIRTIO_BLK_T_FLUSH,
            VIRTIO_BLK_T_GET_ID
        ],
        [0, 1, 4, 8]
    );
    assert_eq!(
        [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP],
        [0, 1, 2]
    );
    assert_eq!((VIRTIO_BLK_ID_BYTES, HEADER_LEN), (20, 16));
}

#[test]
fn net_constants() {
    let got = [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_UFO,
        VIRTIO_NET_F_MRG_RXBUF,
    ];
    assert_eq!(got, [0, 1, 5, 7, 8, 10, 11, 12, 14, 15]);
    assert_eq!(VNET_HDR_LEN, 12);
}
