/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A minimal polled virtio 1.x driver core: virtio-mmio transport (register layout
 * version 2) and split virtqueues in .bss. No interrupts: the guest polls the used
 * rings (interrupts stay off) and acknowledges InterruptStatus to be polite.
 *
 * Devices are found only where the kernel command line announces them:
 *     virtio_mmio.device=<size>@<addr>:<irq>[:<id>]
 * (size and addr as Linux's memparse: decimal or 0x hex, optional K/M/G suffix).
 */
#ifndef GUEST_VIRTIO_H
#define GUEST_VIRTIO_H

#include <stdint.h>

/* virtio-mmio v2 registers */
#define VIRTIO_MMIO_MAGIC_VALUE 0x000 /* "virt" = 0x74726976 */
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_VENDOR_ID 0x00c
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW 0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH 0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION 0x0fc
#define VIRTIO_MMIO_CONFIG 0x100

#define VIRTIO_MMIO_MAGIC 0x74726976

/* Device status bits */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_DEVICE_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED 128

#define VIRTIO_F_VERSION_1 (1ULL << 32)

#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_VSOCK 19

/* Split virtqueue (virtio 1.x section 2.7) */
#define VQ_MAX 16 /* entries this driver uses at most (power of two) */
#define VQ_DESC_F_NEXT 1
#define VQ_DESC_F_WRITE 2

struct vq_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct vq_avail {
	uint16_t flags;
	uint16_t idx;
	uint16_t ring[VQ_MAX + 1]; /* ring[num] is used_event (unused: no EVENT_IDX) */
};

struct vq_used_elem {
	uint32_t id;
	uint32_t len;
};

struct vq_used {
	uint16_t flags;
	uint16_t idx;
	struct vq_used_elem ring[VQ_MAX];
	uint16_t avail_event; /* when num == VQ_MAX; else it lands in ring[num] (unused either way) */
};

struct virtio_dev;

struct virtq {
	/* Shared with the device (the spec's alignments: 16, 2, 4). */
	struct vq_desc desc[VQ_MAX] __attribute__((aligned(16)));
	struct vq_avail avail __attribute__((aligned(16)));
	struct vq_used used __attribute__((aligned(16)));
	/* Driver state. */
	struct virtio_dev *dev;
	uint16_t index;	    /* queue index on the device */
	uint16_t num;	    /* queue size in use (power of two <= VQ_MAX) */
	uint16_t free_head; /* free descriptor list, linked through desc[].next */
	uint16_t num_free;
	uint16_t avail_idx; /* next avail.idx to publish */
	uint16_t last_used; /* next used.idx to consume */
	uint8_t chain_len[VQ_MAX]; /* descriptors in the chain headed at i (0: not in flight) */
};

/* One buffer of a descriptor chain: device-readable, or device-writable if `write`. */
struct vq_buf {
	const void *addr;
	uint32_t len;
	int write;
};

struct virtio_mmio_info {
	uint64_t size;
	uint64_t addr;
	uint32_t irq;
};

struct virtio_dev {
	uint64_t base;
	uint64_t size;
	uint32_t irq;
	uint32_t device_id;
	uint32_t vendor_id;
	uint64_t device_features; /* offered */
	uint64_t features;	  /* negotiated */
};

/* All virtio_mmio.device= words of the command line, in order; returns how many (<= max). */
unsigned int virtio_mmio_cmdline(struct virtio_mmio_info *out, unsigned int max);

/*
 * Maps 0..4 GiB (paging_map_4g), then looks at the announced devices in command-line
 * order and fills *dev for the nth (0: first) one with DeviceID `device_id` (Magic
 * "virt", Version 2). Prints a `virtio: ...` line for each announced device that is
 * unusable (beyond 4 GiB, bad magic, legacy version 1). Returns 0 if found, -1 if not.
 */
int virtio_find(uint32_t device_id, unsigned int nth, struct virtio_dev *dev);

/*
 * Reset, ACKNOWLEDGE, DRIVER, read the offered features, write offered & (wanted |
 * VERSION_1), FEATURES_OK, re-read it. Returns 0, or -1 (status set to FAILED, a line
 * printed with `who` as prefix) if VERSION_1 is not offered or FEATURES_OK is refused.
 */
int virtio_negotiate(struct virtio_dev *dev, uint64_t wanted, const char *who);

/*
 * Sets up queue `index` with min(QueueNumMax, VQ_MAX) entries (rounded down to a
 * power of two) in *q and sets QueueReady. Returns 0, or -1 (line printed).
 */
int virtq_setup(struct virtio_dev *dev, struct virtq *q, unsigned int index, const char *who);

/* Sets DRIVER_OK. Returns 0, or -1 if the device reports DEVICE_NEEDS_RESET or FAILED. */
int virtio_driver_ok(struct virtio_dev *dev, const char *who);

/*
 * Writes 0 to Status and waits (up to virtio_timeout) until it reads back 0. Returns how
 * many reads showed a non-zero Status, or -1 if it never read 0.
 */
int virtio_reset(struct virtio_dev *dev);

/*
 * Puts a chain of n buffers on the avail ring (readable ones must come first) and
 * returns its head descriptor index, or -1 if there are not enough free descriptors.
 * Does not notify.
 */
int virtq_add(struct virtq *q, const struct vq_buf *bufs, unsigned int n);
/* Memory barrier, then QueueNotify. */
void virtq_kick(struct virtq *q);
/*
 * Non-blocking: if the device has returned a chain, frees it, stores its head and the
 * used length and returns 1; else 0. A used element naming a descriptor that is not an
 * in-flight head is reported (`virtio: queue N: bad used id`) and skipped.
 */
int virtq_get_used(struct virtq *q, uint32_t *head, uint32_t *len);
/* Polls virtq_get_used for up to about timeout_ms; returns 1 or 0 on timeout. ACKs interrupts. */
int virtq_wait_used(struct virtq *q, uint32_t *head, uint32_t *len, uint64_t timeout_ms);

/* Acknowledges whatever InterruptStatus shows; returns what it showed. */
uint32_t virtio_ack_interrupts(struct virtio_dev *dev);

/* Device config space (offset from 0x100), read under ConfigGeneration. */
uint8_t virtio_config_read8(struct virtio_dev *dev, uint32_t off);
uint32_t virtio_config_read32(struct virtio_dev *dev, uint32_t off);
uint64_t virtio_config_read64(struct virtio_dev *dev, uint32_t off); /* two 32-bit reads */
void virtio_config_read_bytes(struct virtio_dev *dev, uint32_t off, void *buf, uint32_t len);

static inline uint32_t virtio_read32(struct virtio_dev *dev, uint32_t reg)
{
	return *(volatile uint32_t *)(dev->base + reg);
}

static inline void virtio_write32(struct virtio_dev *dev, uint32_t reg, uint32_t val)
{
	*(volatile uint32_t *)(dev->base + reg) = val;
}

/* Milliseconds the drivers wait for a single request by default (`virtio_timeout=<ms>`). */
#define VIRTIO_TIMEOUT_MS_DEFAULT 10000
uint64_t virtio_timeout_ms(void);

#endif
