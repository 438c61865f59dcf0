// SPDX-License-Identifier: Apache-2.0
#include "virtio.h"
#include "bootparams.h"
#include "io.h"
#include "paging.h"
#include "print.h"
#include "string.h"
#include "tsc.h"

#define CMDLINE_KEY "virtio_mmio.device="
#define POLL_SPIN 64 /* pauses between two looks at a used ring */

/* ---- command line ---- */

static int is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Linux memparse: decimal or 0x hex, then an optional K/M/G (k/m/g) suffix. */
static const char *parse_num(const char *p, const char *end, uint64_t *out, int suffix)
{
	unsigned int base = 10;
	if (end - p > 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
		base = 16;
		p += 2;
	}
	const char *start = p;
	uint64_t v = 0;
	for (; p < end; p++) {
		unsigned int d;
		if (*p >= '0' && *p <= '9')
			d = *p - '0';
		else if (base == 16 && *p >= 'a' && *p <= 'f')
			d = *p - 'a' + 10;
		else if (base == 16 && *p >= 'A' && *p <= 'F')
			d = *p - 'A' + 10;
		else
			break;
		v = v * base + d;
	}
	if (p == start)
		return 0;
	if (suffix && p < end) {
		switch (*p) {
		case 'G': case 'g': v <<= 10; /* fall through */
		case 'M': case 'm': v <<= 10; /* fall through */
		case 'K': case 'k': v <<= 10; p++; break;
		default: break;
		}
	}
	*out = v;
	return p;
}

/* "<size>@<addr>:<irq>[:<id>]" */
static int parse_device(const char *p, const char *end, struct virtio_mmio_info *info)
{
	uint64_t irq;
	if (!(p = parse_num(p, end, &info->size, 1)) || p >= end || *p++ != '@')
		return -1;
	if (!(p = parse_num(p, end, &info->addr, 1)) || p >= end || *p++ != ':')
		return -1;
	if (!(p = parse_num(p, end, &irq, 0)) || (p < end && *p != ':'))
		return -1;
	info->irq = (uint32_t)irq;
	return 0;
}

unsigned int virtio_mmio_cmdline(struct virtio_mmio_info *out, unsigned int max)
{
	const char *p = bp_cmdline();
	const char *end = p + strnlen(p, 65536);
	unsigned int n = 0, klen = sizeof(CMDLINE_KEY) - 1;
	while (p < end && n < max) {
		while (p < end && is_space(*p))
			p++;
		const char *w = p;
		while (p < end && !is_space(*p))
			p++;
		if ((unsigned long)(p - w) <= klen || memcmp(w, CMDLINE_KEY, klen) != 0)
			continue;
		if (parse_device(w + klen, p, &out[n]) == 0)
			n++;
		else
			gprintf("virtio: cannot parse %.*s\n", (int)(p - w), w);
	}
	return n;
}

/* ---- device discovery and initialisation ---- */

uint64_t virtio_timeout_ms(void)
{
	return cmdline_u64("virtio_timeout", VIRTIO_TIMEOUT_MS_DEFAULT);
}

int virtio_find(uint32_t device_id, unsigned int nth, struct virtio_dev *dev)
{
	struct virtio_mmio_info info[16];
	unsigned int n = virtio_mmio_cmdline(info, 16);
	if (n == 0)
		return -1;
	if (paging_map_4g() != 0)
		return -1;
	for (unsigned int i = 0; i < n; i++) {
		if (info[i].size < 0x200 || info[i].addr + info[i].size > PAGING_MAP_END || (info[i].addr & 3)) {
			gprintf("virtio: device %u at 0x%lx size 0x%lx: unusable (size < 0x200, unaligned or beyond 4 GiB), skipped\n",
				i, info[i].addr, info[i].size);
			continue;
		}
		struct virtio_dev d = { .base = info[i].addr, .size = info[i].size, .irq = info[i].irq };
		uint32_t magic = virtio_read32(&d, VIRTIO_MMIO_MAGIC_VALUE);
		uint32_t version = virtio_read32(&d, VIRTIO_MMIO_VERSION);
		if (magic != VIRTIO_MMIO_MAGIC) {
			gprintf("virtio: device %u at 0x%lx: bad magic 0x%x\n", i, d.base, magic);
			continue;
		}
		if (version != 2) {
			gprintf("virtio: device %u at 0x%lx: version %u, only 2 is supported\n", i, d.base, version);
			continue;
		}
		d.device_id = virtio_read32(&d, VIRTIO_MMIO_DEVICE_ID);
		if (d.device_id != device_id || nth-- != 0)
			continue;
		d.vendor_id = virtio_read32(&d, VIRTIO_MMIO_VENDOR_ID);
		*dev = d;
		return 0;
	}
	return -1;
}

int virtio_reset(struct virtio_dev *dev)
{
	virtio_write32(dev, VIRTIO_MMIO_STATUS, 0);
	/* The device may finish its reset later (spec 2.1.2: wait until Status reads 0). */
	uint64_t deadline = tsc_deadline_ms(virtio_timeout_ms());
	int busy = 0;
	while (virtio_read32(dev, VIRTIO_MMIO_STATUS) != 0) {
		if (tsc_expired(deadline))
			return -1;
		busy++;
		cpu_relax_n(POLL_SPIN);
	}
	return busy;
}

static void set_status(struct virtio_dev *dev, uint32_t bits)
{
	uint32_t s = virtio_read32(dev, VIRTIO_MMIO_STATUS);
	virtio_write32(dev, VIRTIO_MMIO_STATUS, s | bits);
}

static void fail(struct virtio_dev *dev)
{
	set_status(dev, VIRTIO_STATUS_FAILED);
}

int virtio_negotiate(struct virtio_dev *dev, uint64_t wanted, const char *who)
{
	virtio_reset(dev);
	set_status(dev, VIRTIO_STATUS_ACKNOWLEDGE);
	set_status(dev, VIRTIO_STATUS_DRIVER);

	virtio_write32(dev, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	uint64_t lo = virtio_read32(dev, VIRTIO_MMIO_DEVICE_FEATURES);
	virtio_write32(dev, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	uint64_t hi = virtio_read32(dev, VIRTIO_MMIO_DEVICE_FEATURES);
	dev->device_features = lo | (hi << 32);
	if (!(dev->device_features & VIRTIO_F_VERSION_1)) {
		gprintf("%s: device does not offer VIRTIO_F_VERSION_1 (features=0x%lx)\n", who,
			dev->device_features);
		fail(dev);
		return -1;
	}
	dev->features = dev->device_features & (wanted | VIRTIO_F_VERSION_1);

	virtio_write32(dev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	virtio_write32(dev, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)dev->features);
	virtio_write32(dev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	virtio_write32(dev, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(dev->features >> 32));
	set_status(dev, VIRTIO_STATUS_FEATURES_OK);
	if (!(virtio_read32(dev, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK)) {
		gprintf("%s: device refused FEATURES_OK (features=0x%lx)\n", who, dev->features);
		fail(dev);
		return -1;
	}
	return 0;
}

int virtq_setup(struct virtio_dev *dev, struct virtq *q, unsigned int index, const char *who)
{
	memset(q, 0, sizeof(*q));
	q->dev = dev;
	q->index = (uint16_t)index;

	virtio_write32(dev, VIRTIO_MMIO_QUEUE_SEL, index);
	if (virtio_read32(dev, VIRTIO_MMIO_QUEUE_READY) != 0) {
		gprintf("%s: queue %u is already ready after reset\n", who, index);
		fail(dev);
		return -1;
	}
	uint32_t max = virtio_read32(dev, VIRTIO_MMIO_QUEUE_NUM_MAX);
	if (max == 0) {
		gprintf("%s: queue %u is not available (QueueNumMax 0)\n", who, index);
		fail(dev);
		return -1;
	}
	uint32_t num = VQ_MAX;
	while (num > max)
		num >>= 1;
	q->num = (uint16_t)num;
	for (uint32_t i = 0; i < num; i++)
		q->desc[i].next = (uint16_t)(i + 1);
	q->free_head = 0;
	q->num_free = (uint16_t)num;

	uint64_t desc = (uint64_t)q->desc, avail = (uint64_t)&q->avail, used = (uint64_t)&q->used;
	virtio_write32(dev, VIRTIO_MMIO_QUEUE_NUM, num);
	virtio_write32(dev, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)desc);
	virtio_write32(dev, VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint32_t)(desc >> 32));
	virtio_write32(dev, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)avail);
	virtio_write32(dev, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (uint32_t)(avail >> 32));
	virtio_write32(dev, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)used);
	virtio_write32(dev, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (uint32_t)(used >> 32));
	mb();
	virtio_write32(dev, VIRTIO_MMIO_QUEUE_READY, 1);
	return 0;
}

int virtio_driver_ok(struct virtio_dev *dev, const char *who)
{
	set_status(dev, VIRTIO_STATUS_DRIVER_OK);
	uint32_t s = virtio_read32(dev, VIRTIO_MMIO_STATUS);
	if ((s & (VIRTIO_STATUS_DEVICE_NEEDS_RESET | VIRTIO_STATUS_FAILED)) || !(s & VIRTIO_STATUS_DRIVER_OK)) {
		gprintf("%s: device status 0x%x after DRIVER_OK\n", who, s);
		return -1;
	}
	return 0;
}

uint32_t virtio_ack_interrupts(struct virtio_dev *dev)
{
	uint32_t isr = virtio_read32(dev, VIRTIO_MMIO_INTERRUPT_STATUS);
	if (isr)
		virtio_write32(dev, VIRTIO_MMIO_INTERRUPT_ACK, isr);
	return isr;
}

/* ---- config space ---- */

static uint32_t generation(struct virtio_dev *dev)
{
	return virtio_read32(dev, VIRTIO_MMIO_CONFIG_GENERATION);
}

uint8_t virtio_config_read8(struct virtio_dev *dev, uint32_t off)
{
	return *(volatile uint8_t *)(dev->base + VIRTIO_MMIO_CONFIG + off);
}

uint32_t virtio_config_read32(struct virtio_dev *dev, uint32_t off)
{
	return virtio_read32(dev, VIRTIO_MMIO_CONFIG + off);
}

uint64_t virtio_config_read64(struct virtio_dev *dev, uint32_t off)
{
	uint32_t g, lo, hi;
	unsigned int tries = 0;
	do {
		g = generation(dev);
		lo = virtio_config_read32(dev, off);
		hi = virtio_config_read32(dev, off + 4);
	} while (generation(dev) != g && ++tries < 100);
	return lo | ((uint64_t)hi << 32);
}

void virtio_config_read_bytes(struct virtio_dev *dev, uint32_t off, void *buf, uint32_t len)
{
	uint8_t *b = buf;
	uint32_t g;
	unsigned int tries = 0;
	do {
		g = generation(dev);
		for (uint32_t i = 0; i < len; i++)
			b[i] = virtio_config_read8(dev, off + i);
	} while (generation(dev) != g && ++tries < 100);
}

/* ---- split virtqueue ---- */

int virtq_add(struct virtq *q, const struct vq_buf *bufs, unsigned int n)
{
	if (n == 0 || n > q->num_free)
		return -1;
	/* The free list is linked through desc[].next, so a chain taken from its front is already linked. */
	uint16_t head = q->free_head, idx = head;
	for (unsigned int i = 0; i < n; i++) {
		struct vq_desc *d = &q->desc[idx];
		d->addr = (uint64_t)bufs[i].addr;
		d->len = bufs[i].len;
		d->flags = (uint16_t)((bufs[i].write ? VQ_DESC_F_WRITE : 0) | (i + 1 < n ? VQ_DESC_F_NEXT : 0));
		idx = d->next;
	}
	q->free_head = idx;
	q->num_free = (uint16_t)(q->num_free - n);
	q->chain_len[head] = (uint8_t)n;

	volatile struct vq_avail *av = &q->avail;
	av->ring[q->avail_idx & (q->num - 1)] = head;
	barrier(); /* x86 is TSO: the ring entry is visible before the index */
	q->avail_idx++;
	av->idx = q->avail_idx;
	return head;
}

void virtq_kick(struct virtq *q)
{
	mb(); /* descriptors and avail.idx before the notification (and any used-ring reads after it) */
	virtio_write32(q->dev, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
}

int virtq_get_used(struct virtq *q, uint32_t *head, uint32_t *len)
{
	volatile struct vq_used *u = &q->used;
	for (;;) {
		uint16_t idx = u->idx;
		if (idx == q->last_used)
			return 0;
		barrier(); /* read the element only after seeing the index (loads are ordered on x86) */
		uint32_t id = u->ring[q->last_used & (q->num - 1)].id;
		uint32_t l = u->ring[q->last_used & (q->num - 1)].len;
		q->last_used++;
		if (id >= q->num || q->chain_len[id] == 0) {
			gprintf("virtio: queue %u: bad used id %u\n", q->index, id);
			continue;
		}
		/* Return the chain to the free list. */
		unsigned int n = q->chain_len[id];
		uint16_t tail = (uint16_t)id;
		for (unsigned int i = 1; i < n; i++)
			tail = q->desc[tail].next;
		q->desc[tail].next = q->free_head;
		q->free_head = (uint16_t)id;
		q->num_free = (uint16_t)(q->num_free + n);
		q->chain_len[id] = 0;
		*head = id;
		*len = l;
		return 1;
	}
}

int virtq_wait_used(struct virtq *q, uint32_t *head, uint32_t *len, uint64_t timeout_ms)
{
	uint64_t deadline = tsc_deadline_ms(timeout_ms);
	/* Safety cap should the TSC not advance: a poll costs well over 1 us anywhere. */
	uint64_t polls = timeout_ms * 1000 + 1000;
	while (!virtq_get_used(q, head, len)) {
		if (tsc_expired(deadline) || polls-- == 0)
			return 0;
		cpu_relax_n(POLL_SPIN);
	}
	virtio_ack_interrupts(q->dev);
	return 1;
}
