// SPDX-License-Identifier: Apache-2.0
/*
 * virtio_net: drives the first virtio-net device announced on the command line.
 * Negotiates VIRTIO_NET_F_MAC only (no offloads, no mergeable buffers: the header
 * is the 12-byte virtio_net_hdr_v1), posts RX buffers, sends one broadcast frame
 * with EtherType 0x88b5 and payload "tartarus-net-tx", then prints received frames
 * until one with EtherType 0x88b5 arrives or net_rx_wait=<ms> (default 2000) have passed.
 * For benchmarks: net_tx_count=<n> sends n frames in all (payload "tartarus-net-tx <i>"),
 * net_rx_count=<n> waits for n 0x88b5 frames (printing only the count at the end).
 * See ../README.md for the exact output.
 */
#include "guest.h"
#include "text.h"
#include "tsc.h"
#include "virtio.h"

#define VIRTIO_NET_F_MAC (1ULL << 5)

#define RXQ 0
#define TXQ 1
#define NET_HDR_LEN 12	 /* virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers */
#define RX_BUFS 4
#define RX_BUF_LEN 1536	 /* >= 12 + 1514, the spec's minimum without MRG_RXBUF or GUEST_TSO/UFO */
#define ETH_HLEN 14
#define ETH_ZLEN 60
#define ETHERTYPE_TARTARUS 0x88b5 /* IEEE 802 local experimental */
#define TX_PAYLOAD "tartarus-net-tx"
#define RX_WAIT_MS_DEFAULT 2000
#define RX_PRINT_MAX 64	 /* payload bytes printed per frame */

static struct virtio_dev dev;
static struct virtq rxq, txq;
static uint8_t rx_bufs[RX_BUFS][RX_BUF_LEN] __attribute__((aligned(64)));
static int rx_head_buf[VQ_MAX]; /* descriptor head -> rx buffer index */
static uint8_t tx_hdr[NET_HDR_LEN] __attribute__((aligned(16)));
static uint8_t tx_frame[ETH_ZLEN] __attribute__((aligned(16)));
static uint8_t mac[6];

static const char *const WHO = "virtio-net";

__attribute__((noreturn)) static void finish(const char *how)
{
	gprintf("virtio-net: %s\n", how);
	if (dev.base)
		virtio_reset(&dev);
	i8042_reset();
}

static int post_rx(unsigned int i)
{
	struct vq_buf b = { rx_bufs[i], RX_BUF_LEN, 1 };
	int head = virtq_add(&rxq, &b, 1);
	if (head < 0)
		return -1;
	rx_head_buf[head] = (int)i;
	return 0;
}

void guest_main(void)
{
	if (virtio_find(VIRTIO_ID_NET, (unsigned int)cmdline_u64("net_dev", 0), &dev) != 0) {
		gprintf("virtio-net: no device\n");
		i8042_reset();
	}
	uint64_t timeout_ms = virtio_timeout_ms();

	if (virtio_negotiate(&dev, VIRTIO_NET_F_MAC, WHO) != 0)
		finish("failed");
	if (virtq_setup(&dev, &rxq, RXQ, WHO) != 0 || virtq_setup(&dev, &txq, TXQ, WHO) != 0)
		finish("failed");
	if (txq.num < 2) {
		gprintf("virtio-net: queue 1 has %u entries, a frame needs 2\n", txq.num);
		finish("failed");
	}
	if (dev.features & VIRTIO_NET_F_MAC) {
		virtio_config_read_bytes(&dev, 0, mac, 6);
	} else {
		static const uint8_t dflt[6] = { 0x02, 0x00, 0x00, 0x00, 0x00, 0x01 }; /* locally administered */
		memcpy(mac, dflt, 6);
		gprintf("virtio-net: device offers no MAC, using a default\n");
	}
	/* Receive buffers go in before DRIVER_OK, so the device never sees an empty RX queue. */
	unsigned int nrx = RX_BUFS < rxq.num ? RX_BUFS : rxq.num;
	for (unsigned int i = 0; i < nrx; i++)
		post_rx(i);
	if (virtio_driver_ok(&dev, WHO) != 0)
		finish("failed");
	virtq_kick(&rxq);
	gprintf("virtio-net: mac=%02x:%02x:%02x:%02x:%02x:%02x\n", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);

	/* One broadcast frame: dst ff:ff:ff:ff:ff:ff, src our MAC, 0x88b5, payload, zero padding to 60. */
	memset(tx_hdr, 0, sizeof(tx_hdr));
	memset(tx_frame, 0, sizeof(tx_frame));
	memset(tx_frame, 0xff, 6);
	memcpy(tx_frame + 6, mac, 6);
	tx_frame[12] = ETHERTYPE_TARTARUS >> 8;
	tx_frame[13] = ETHERTYPE_TARTARUS & 0xff;
	memcpy(tx_frame + ETH_HLEN, TX_PAYLOAD, sizeof(TX_PAYLOAD) - 1);
	struct vq_buf tx[2] = { { tx_hdr, NET_HDR_LEN, 0 }, { tx_frame, ETH_ZLEN, 0 } };
	if (virtq_add(&txq, tx, 2) < 0)
		finish("failed");
	virtq_kick(&txq);
	uint32_t id, len;
	if (!virtq_wait_used(&txq, &id, &len, timeout_ms)) {
		gprintf("net tx timeout\n");
		finish("failed");
	}
	gprintf("net tx done\n");

	/* Benchmark mode: more frames, one at a time through the same two descriptors. */
	uint64_t tx_count = cmdline_u64("net_tx_count", 1);
	for (uint64_t i = 1; i < tx_count; i++) {
		tx_frame[ETH_HLEN + sizeof(TX_PAYLOAD) - 1] = ' ';
		tx_frame[ETH_HLEN + sizeof(TX_PAYLOAD)] = (uint8_t)('0' + i % 10);
		if (virtq_add(&txq, tx, 2) < 0)
			finish("failed");
		virtq_kick(&txq);
		if (!virtq_wait_used(&txq, &id, &len, timeout_ms)) {
			gprintf("net tx timeout\n");
			finish("failed");
		}
	}
	if (tx_count > 1)
		gprintf("net tx count=%u\n", (unsigned int)tx_count);

	uint64_t rx_count = cmdline_u64("net_rx_count", 0);
	if (rx_count > 0) {
		uint64_t got = 0;
		while (got < rx_count) {
			if (!virtq_wait_used(&rxq, &id, &len, cmdline_u64("net_rx_wait", RX_WAIT_MS_DEFAULT))) {
				gprintf("net rx timeout after %u frames\n", (unsigned int)got);
				finish("failed");
			}
			int bi = rx_head_buf[id];
			const uint8_t *frame = rx_bufs[bi] + NET_HDR_LEN;
			if (len >= NET_HDR_LEN + ETH_HLEN && ((frame[12] << 8) | frame[13]) == ETHERTYPE_TARTARUS)
				got++;
			post_rx((unsigned int)bi);
			virtq_kick(&rxq);
		}
		gprintf("net rx count=%u\n", (unsigned int)got);
		finish("done");
	}

	/* A bound on the whole receive phase (other traffic on a tap must not keep it going). */
	uint64_t wait_ms = cmdline_u64("net_rx_wait", RX_WAIT_MS_DEFAULT);
	uint64_t deadline = tsc_deadline_ms(wait_ms), khz = tsc_khz();
	for (;;) {
		uint64_t now = rdtsc(), left_ms = tsc_expired(deadline) ? 0 : (deadline - now) / khz + 1;
		if (!virtq_wait_used(&rxq, &id, &len, left_ms)) {
			gprintf("net rx timeout\n");
			break;
		}
		int bi = rx_head_buf[id];
		const uint8_t *buf = rx_bufs[bi];
		uint32_t flen = len >= NET_HDR_LEN ? len - NET_HDR_LEN : 0;
		if (flen > RX_BUF_LEN - NET_HDR_LEN)
			flen = RX_BUF_LEN - NET_HDR_LEN;
		const uint8_t *frame = buf + NET_HDR_LEN;
		uint32_t plen = flen > ETH_HLEN ? flen - ETH_HLEN : 0;
		gprintf("net rx len=%u ", flen);
		print_text_line("payload=", frame + ETH_HLEN, plen < RX_PRINT_MAX ? plen : RX_PRINT_MAX);
		int ours = flen >= ETH_HLEN && ((frame[12] << 8) | frame[13]) == ETHERTYPE_TARTARUS;
		post_rx((unsigned int)bi);
		virtq_kick(&rxq);
		if (ours)
			break;
	}
	finish("done");
}
