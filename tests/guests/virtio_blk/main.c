// SPDX-License-Identifier: Apache-2.0
/*
 * virtio_blk: drives the first virtio-blk device announced on the command line
 * (virtio_mmio.device=...) with one polled request at a time: blk_read=<sector>,
 * blk_write=<sector>, blk_flush, blk_id, in that order, optionally waits for
 * Ctrl-Alt-Del and runs a second batch (blk_wait_cad), then the benchmark mode
 * (blk_bench=..., bench.c) if asked for, then resets the machine through the
 * i8042. See ../README.md for the exact output.
 */
#include "guest.h"
#include "text.h"
#include "virtio.h"
#include "bench.h"

#define VIRTIO_BLK_F_RO (1ULL << 5)
#define VIRTIO_BLK_F_FLUSH (1ULL << 9)

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8

#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

#define SECTOR_SIZE 512
#define BLK_ID_BYTES 20
#define STATUS_UNSET 0xff /* what the status byte holds until the device writes it */

struct blk_req_hdr {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

static struct virtio_dev dev;
static struct virtq vq;
static struct blk_req_hdr hdr __attribute__((aligned(16)));
static uint8_t data[SECTOR_SIZE] __attribute__((aligned(512)));
static volatile uint8_t status_byte;
static uint64_t timeout_ms;

static const char *const WHO = "virtio-blk";

__attribute__((noreturn)) static void finish(const char *how)
{
	gprintf("virtio-blk: %s\n", how);
	i8042_reset();
}

/*
 * Sends one request (header, optional data buffer, status byte) and waits for it.
 * Returns the status byte (0xff if the device did not write it), or -1 on timeout.
 */
static int blk_request(uint32_t type, uint64_t sector, void *buf, uint32_t len, int dev_writes_buf)
{
	hdr.type = type;
	hdr.reserved = 0;
	hdr.sector = sector;
	status_byte = STATUS_UNSET;

	struct vq_buf bufs[3];
	unsigned int n = 0;
	bufs[n++] = (struct vq_buf){ &hdr, sizeof(hdr), 0 };
	if (len)
		bufs[n++] = (struct vq_buf){ buf, len, dev_writes_buf };
	bufs[n++] = (struct vq_buf){ (const void *)&status_byte, 1, 1 };

	int head = virtq_add(&vq, bufs, n);
	if (head < 0) {
		gprintf("virtio-blk: no free descriptors\n");
		return -1;
	}
	virtq_kick(&vq);
	uint32_t id, used_len;
	if (!virtq_wait_used(&vq, &id, &used_len, timeout_ms))
		return -1;
	if (id != (uint32_t)head)
		gprintf("virtio-blk: used id %u, expected %d\n", id, head);
	return status_byte;
}

static void print_status_tail(int st)
{
	if (st < 0)
		gprintf("timeout\n");
	else
		gprintf("%d\n", st);
}

static void do_read(uint64_t sector)
{
	memset(data, 0, sizeof(data));
	int st = blk_request(VIRTIO_BLK_T_IN, sector, data, SECTOR_SIZE, 1);
	gprintf("blk read sector %lu status=", sector);
	if (st < 0) {
		print_status_tail(st);
		finish("timeout");
	}
	gprintf("%d data=", st);
	for (unsigned int i = 0; i < 16; i++)
		gprintf("%02x", data[i]);
	gprintf("\n");
	if (cmdline_has_word("blk_print_text"))
		print_text_line("blk text: ", data, SECTOR_SIZE);
}

static void do_write(uint64_t sector)
{
	memset(data, 0, sizeof(data));
	gsnprintf((char *)data, sizeof(data), "tartarus-blk-write sector %lu", sector);
	int st = blk_request(VIRTIO_BLK_T_OUT, sector, data, SECTOR_SIZE, 0);
	gprintf("blk write sector %lu status=", sector);
	print_status_tail(st);
	if (st < 0)
		finish("timeout");
}

static void do_flush(void)
{
	if (!(dev.features & VIRTIO_BLK_F_FLUSH)) {
		gprintf("blk flush unsupported\n");
		return;
	}
	int st = blk_request(VIRTIO_BLK_T_FLUSH, 0, 0, 0, 0);
	gprintf("blk flush status=");
	print_status_tail(st);
	if (st < 0)
		finish("timeout");
}

static void do_get_id(void)
{
	memset(data, 0, sizeof(data));
	int st = blk_request(VIRTIO_BLK_T_GET_ID, 0, data, BLK_ID_BYTES, 1);
	if (st < 0) {
		gprintf("blk id status=timeout\n");
		finish("timeout");
	}
	if (st != VIRTIO_BLK_S_OK) {
		gprintf("blk id status=%d\n", st);
		return;
	}
	/* Up to 20 bytes, NUL-terminated only if shorter. */
	print_text_line("blk id=", data, BLK_ID_BYTES);
}

/* 1 if the command line has key=<sector> (decimal or 0x hex); complains about a bad value. */
static int sector_arg(const char *key, uint64_t *sector)
{
	char tmp[4];
	if (cmdline_value(key, tmp, sizeof(tmp)) < 0)
		return 0;
	uint64_t a = cmdline_u64(key, 1), b = cmdline_u64(key, 2);
	if (a != b) { /* the default came back: not a number */
		gprintf("virtio-blk: bad %s= value, skipped\n", key);
		return 0;
	}
	*sector = a;
	return 1;
}

/*
 * blk_wait_cad: between the first batch and the reset, wait for Ctrl-Alt-Del (the host may
 * pause and snapshot the VM meanwhile, and resume it elsewhere), then run a second batch on
 * the same queue: blk_read2=<sector>, blk_write2=<sector>.
 */
static void wait_then_second_batch(void)
{
	gprintf("blk waiting for ctrl-alt-del\n");
	i8042_wait_ctrl_alt_del();
	gprintf("blk ctrl-alt-del received\n");
	uint64_t sector;
	if (sector_arg("blk_read2", &sector))
		do_read(sector);
	if (sector_arg("blk_write2", &sector))
		do_write(sector);
}

/* Up to 5 requests of 3 descriptors each fit the 16-entry queue. */
#define NR_MAX 5
#define NR_SECTORS 128 /* 64 KiB per request */
static uint8_t nr_data[NR_MAX][NR_SECTORS * SECTOR_SIZE] __attribute__((aligned(4096)));
static struct blk_req_hdr nr_hdr[NR_MAX] __attribute__((aligned(16)));
static volatile uint8_t nr_status[NR_MAX];

/* Negotiates, sets up the queue and sets DRIVER_OK again after a reset. */
static void reinit(void)
{
	if (virtio_negotiate(&dev, VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_RO, WHO) != 0 ||
	    virtq_setup(&dev, &vq, 0, WHO) != 0 || virtio_driver_ok(&dev, WHO) != 0)
		finish("failed");
}

/*
 * blk_notify_reset=<rounds>: each round queues NR_MAX 64 KiB requests (reads, or writes
 * with blk_notify_reset_write), notifies, and at once writes 0 to Status, then waits for
 * Status to read 0, re-initialises the device and reads sector 3 to show it works.
 */
static void notify_then_reset(uint64_t rounds)
{
	int write = cmdline_has_word("blk_notify_reset_write");
	for (uint64_t r = 0; r < rounds; r++) {
		for (unsigned int i = 0; i < NR_MAX; i++) {
			nr_hdr[i].type = write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;
			nr_hdr[i].reserved = 0;
			nr_hdr[i].sector = 64 + (uint64_t)i * NR_SECTORS;
			nr_status[i] = STATUS_UNSET;
			struct vq_buf bufs[3] = {
				{ &nr_hdr[i], sizeof(nr_hdr[i]), 0 },
				{ nr_data[i], sizeof(nr_data[i]), !write },
				{ (const void *)&nr_status[i], 1, 1 },
			};
			if (virtq_add(&vq, bufs, 3) < 0) {
				gprintf("virtio-blk: no free descriptors\n");
				finish("failed");
			}
		}
		virtq_kick(&vq);
		int busy = virtio_reset(&dev);
		if (busy < 0) {
			gprintf("blk notify-reset round %lu status never read 0\n", r);
			finish("timeout");
		}
		gprintf("blk notify-reset round %lu busy_reads=%d\n", r, busy);
		reinit();
		do_read(3);
	}
}

void guest_main(void)
{
	if (virtio_find(VIRTIO_ID_BLOCK, (unsigned int)cmdline_u64("blk_dev", 0), &dev) != 0)
		finish("no device");
	timeout_ms = virtio_timeout_ms();

	if (virtio_negotiate(&dev, VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_RO, WHO) != 0)
		finish("failed");
	if (virtq_setup(&dev, &vq, 0, WHO) != 0)
		finish("failed");
	if (vq.num < 3) {
		gprintf("virtio-blk: queue 0 has %u entries, a request needs 3\n", vq.num);
		finish("failed");
	}
	if (virtio_driver_ok(&dev, WHO) != 0)
		finish("failed");

	uint64_t capacity = virtio_config_read64(&dev, 0);
	gprintf("virtio-blk: capacity=%lu features=0x%lx\n", capacity, dev.features);

	uint64_t sector;
	if (sector_arg("blk_read", &sector))
		do_read(sector);
	if (sector_arg("blk_write", &sector))
		do_write(sector);
	if (cmdline_has_word("blk_flush"))
		do_flush();
	if (cmdline_has_word("blk_id"))
		do_get_id();
	if (cmdline_has_word("blk_wait_cad"))
		wait_then_second_batch();
	if (sector_arg("blk_notify_reset", &sector))
		notify_then_reset(sector);
	if (cmdline_has_word("blk_bench_probe"))
		blk_bench_probe(&dev);
	if (blk_bench_requested()) {
		const char *how = blk_bench(&dev, &vq, capacity, timeout_ms);
		if (how)
			finish(how);
	}

	virtio_reset(&dev);
	finish("done");
}
