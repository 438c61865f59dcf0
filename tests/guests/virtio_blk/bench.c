// SPDX-License-Identifier: Apache-2.0
/*
 * Benchmark mode of the virtio_blk guest:
 *
 *   blk_bench=read|write      IN or OUT requests
 *   blk_bench_count=<n>       requests in the batch (default 64)
 *   blk_bench_sectors=<s>     sectors per request, 1..2048 (default 8 = 4 KiB)
 *   blk_bench_depth=<d>       requests in flight, 1..5 (default 1; each takes 3 descriptors)
 *   blk_bench_pattern=seq|rand  request offsets (default seq)
 *   blk_bench_seed=<x>        xorshift64 seed for rand (default 1)
 *   blk_bench_sum             also checksum every buffer read (slow here: outside the
 *                             interesting path, for tests only)
 *   blk_bench_probe           also time MMIO register reads and an empty loop
 *
 * The disk is cut into units of <s> sectors (capacity / s of them). Request i (in
 * submission order) goes to unit i % units (seq) or to unit r_i % units (rand), where
 * r_i is the i-th output of xorshift64 (x ^= x << 13; x ^= x >> 7; x ^= x << 17)
 * started from the seed. Data buffers are <s> * 512 bytes each, one per slot, at 16 MiB
 * (physical = virtual): outside the image, so the .bss the entry code zeroes stays small.
 * OUT buffers hold 64-bit words 0x7461727461727573 ^ <word index in the buffer>.
 *
 * The batch is timed with the TSC from just before the first request is put on the ring
 * to the last completion. After each round of completions the guest refills the freed
 * slots, notifies once and reads/acks InterruptStatus once, as an interrupt handler would.
 */
#include "guest.h"
#include "tsc.h"
#include "bench.h"

#define BLK_T_IN 0
#define BLK_T_OUT 1
#define SECTOR_SIZE 512
#define STATUS_UNSET 0xff

#define BENCH_BUF_BASE ((uint64_t)0x1000000) /* 16 MiB */
#define BENCH_MAX_SECTORS 2048	    /* 1 MiB per request */
#define BENCH_MAX_DEPTH 5	    /* 16 descriptors / 3 per request */
#define BENCH_DEFAULT_COUNT 64
#define BENCH_DEFAULT_SECTORS 8
#define BENCH_WRITE_PATTERN 0x7461727461727573ULL
#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL
#define PROBE_ROUNDS 256

struct bench_hdr {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

struct bench_slot {
	struct bench_hdr hdr __attribute__((aligned(16)));
	volatile uint8_t status;
	uint8_t *buf;
};

struct bench_params {
	int write;
	int random;
	int sum;
	uint64_t count;
	uint64_t sectors;
	uint64_t depth;
	uint64_t seed;
};

static struct bench_slot slots[BENCH_MAX_DEPTH];
static uint8_t slot_of_head[VQ_MAX];

int blk_bench_requested(void)
{
	char tmp[8];
	return cmdline_value("blk_bench", tmp, sizeof(tmp)) >= 0;
}

static uint64_t xorshift64(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/* FNV-1a over the buffer's 64-bit little-endian words. */
static uint64_t buf_hash(const uint8_t *buf, uint64_t len)
{
	const uint64_t *w = (const uint64_t *)buf;
	uint64_t h = FNV_OFFSET;
	for (uint64_t i = 0; i < len / 8; i++) {
		h ^= w[i];
		h *= FNV_PRIME;
	}
	return h;
}

/* 1 if [addr, addr+len) lies inside one e820 RAM entry. */
static int in_ram(uint64_t addr, uint64_t len)
{
	for (unsigned int i = 0; i < bp_e820_count(); i++) {
		const struct e820_entry *e = bp_e820_entry(i);
		if (e->type == E820_TYPE_RAM && addr >= e->addr && addr + len <= e->addr + e->size)
			return 1;
	}
	return 0;
}

/* Reads the parameters; prints why and returns -1 if they cannot be used. */
static int parse_params(struct bench_params *p, const struct virtq *vq, uint64_t capacity)
{
	char op[8], pat[8];
	cmdline_value("blk_bench", op, sizeof(op));
	if (!strcmp(op, "read"))
		p->write = 0;
	else if (!strcmp(op, "write"))
		p->write = 1;
	else {
		gprintf("blk bench: blk_bench= must be read or write\n");
		return -1;
	}
	p->random = 0;
	if (cmdline_value("blk_bench_pattern", pat, sizeof(pat)) >= 0) {
		if (!strcmp(pat, "rand"))
			p->random = 1;
		else if (strcmp(pat, "seq")) {
			gprintf("blk bench: blk_bench_pattern= must be seq or rand\n");
			return -1;
		}
	}
	p->sum = cmdline_has_word("blk_bench_sum");
	p->count = cmdline_u64("blk_bench_count", BENCH_DEFAULT_COUNT);
	p->sectors = cmdline_u64("blk_bench_sectors", BENCH_DEFAULT_SECTORS);
	p->depth = cmdline_u64("blk_bench_depth", 1);
	p->seed = cmdline_u64("blk_bench_seed", 1);
	uint64_t max_depth = vq->num / 3 < BENCH_MAX_DEPTH ? vq->num / 3 : BENCH_MAX_DEPTH;
	if (p->count == 0 || p->count > 100000000) {
		gprintf("blk bench: blk_bench_count= must be 1..100000000\n");
		return -1;
	}
	if (p->sectors == 0 || p->sectors > BENCH_MAX_SECTORS || p->sectors > capacity) {
		gprintf("blk bench: blk_bench_sectors= must be 1..%u and fit the disk (%lu sectors)\n",
			BENCH_MAX_SECTORS, capacity);
		return -1;
	}
	if (p->depth == 0 || p->depth > max_depth) {
		gprintf("blk bench: blk_bench_depth= must be 1..%lu\n", max_depth);
		return -1;
	}
	if (p->seed == 0) {
		gprintf("blk bench: blk_bench_seed= must not be 0\n");
		return -1;
	}
	uint64_t bytes = p->depth * p->sectors * SECTOR_SIZE;
	if (!in_ram(BENCH_BUF_BASE, bytes)) {
		gprintf("blk bench: buffers at 0x%lx+0x%lx are not RAM (give the VM more memory)\n",
			BENCH_BUF_BASE, bytes);
		return -1;
	}
	return 0;
}

struct bench_run {
	const struct bench_params *p;
	struct virtq *vq;
	uint64_t units;
	uint64_t rng;
	uint64_t issued;
};

/* Puts the next request of the batch on the ring in `slot` (no notification). */
static int submit(struct bench_run *r, unsigned int slot)
{
	const struct bench_params *p = r->p;
	struct bench_slot *s = &slots[slot];
	uint64_t unit = p->random ? xorshift64(&r->rng) % r->units : r->issued % r->units;
	uint32_t len = (uint32_t)(p->sectors * SECTOR_SIZE);
	s->hdr.type = p->write ? BLK_T_OUT : BLK_T_IN;
	s->hdr.reserved = 0;
	s->hdr.sector = unit * p->sectors;
	s->status = STATUS_UNSET;
	struct vq_buf bufs[3] = {
		{ &s->hdr, sizeof(s->hdr), 0 },
		{ s->buf, len, !p->write },
		{ (const void *)&s->status, 1, 1 },
	};
	int head = virtq_add(r->vq, bufs, 3);
	if (head < 0)
		return -1;
	slot_of_head[head] = (uint8_t)slot;
	r->issued++;
	return 0;
}

const char *blk_bench(struct virtio_dev *dev, struct virtq *vq, uint64_t capacity, uint64_t timeout_ms)
{
	struct bench_params p;
	if (parse_params(&p, vq, capacity) != 0)
		return "failed";
	uint32_t len = (uint32_t)(p.sectors * SECTOR_SIZE);
	for (unsigned int i = 0; i < p.depth; i++) {
		slots[i].buf = (uint8_t *)(BENCH_BUF_BASE + (uint64_t)i * len);
		if (p.write) {
			uint64_t *w = (uint64_t *)slots[i].buf;
			for (uint32_t j = 0; j < len / 8; j++)
				w[j] = BENCH_WRITE_PATTERN ^ j;
		}
	}
	struct bench_run r = { &p, vq, capacity / p.sectors, p.seed, 0 };
	uint64_t done = 0, errors = 0, sum = 0;
	uint64_t tsc_ms = tsc_khz();

	uint64_t start = rdtsc();
	for (unsigned int i = 0; i < p.depth && r.issued < p.count; i++)
		if (submit(&r, i) != 0)
			goto no_desc;
	virtq_kick(vq);
	uint64_t deadline = start + timeout_ms * tsc_ms;
	while (done < p.count) {
		uint32_t head, used_len;
		unsigned int got = 0, refilled = 0;
		while (virtq_get_used(vq, &head, &used_len)) {
			unsigned int slot = slot_of_head[head];
			got++;
			done++;
			if (slots[slot].status != 0)
				errors++;
			else if (p.sum)
				sum += buf_hash(slots[slot].buf, len);
			if (r.issued < p.count) {
				if (submit(&r, slot) != 0)
					goto no_desc;
				refilled++;
			}
		}
		if (got) {
			if (refilled)
				virtq_kick(vq);
			virtio_ack_interrupts(dev);
			deadline = rdtsc() + timeout_ms * tsc_ms;
		} else if (tsc_expired(deadline)) {
			gprintf("blk bench op=%s status=timeout done=%lu\n", p.write ? "write" : "read", done);
			return "timeout";
		} else {
			cpu_pause();
		}
	}
	uint64_t cycles = rdtsc() - start;

	gprintf("blk bench op=%s pattern=%s count=%lu sectors=%lu depth=%lu bytes=%lu cycles=%lu "
		"tsc_khz=%lu errors=%lu",
		p.write ? "write" : "read", p.random ? "rand" : "seq", p.count, p.sectors, p.depth,
		p.count * len, cycles, tsc_ms, errors);
	if (p.sum && !p.write)
		gprintf(" sum=0x%016lx", sum);
	gprintf("\n");
	return 0;

no_desc:
	gprintf("blk bench: no free descriptors\n");
	return "failed";
}

void blk_bench_probe(struct virtio_dev *dev)
{
	uint64_t t0 = rdtsc();
	for (unsigned int i = 0; i < PROBE_ROUNDS; i++)
		(void)virtio_read32(dev, VIRTIO_MMIO_INTERRUPT_STATUS);
	uint64_t t1 = rdtsc();
	for (volatile unsigned int i = 0; i < PROBE_ROUNDS; i++)
		barrier();
	uint64_t t2 = rdtsc();
	gprintf("blk probe mmio_read_cycles=%lu loop_cycles=%lu tsc_khz=%lu\n", (t1 - t0) / PROBE_ROUNDS,
		(t2 - t1) / PROBE_ROUNDS, tsc_khz());
}
