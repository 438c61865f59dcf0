// SPDX-License-Identifier: Apache-2.0
/*
 * virtio_vsock: drives the first virtio-vsock device announced on the command line
 * (queues rx 0, tx 1, event 2; stream sockets only). One connection at a time:
 *   vsock_listen=<port>   accept a host-initiated connection to <port>, echo every
 *                         byte back, until the host shuts down or resets it;
 *   vsock_connect=<port>  connect to the host (CID 2) at <port>, send
 *                         "hello from guest\n", print what comes back, shut down.
 * Polled, one packet at a time, credit-based flow control honoured both ways.
 * See ../README.md for the exact output.
 */
#include "guest.h"
#include "text.h"
#include "tsc.h"
#include "virtio.h"

#define RXQ 0
#define TXQ 1
#define EVQ 2

#define VSOCK_HOST_CID 2
#define VSOCK_TYPE_STREAM 1

#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7

#define SHUTDOWN_RCV 1
#define SHUTDOWN_SEND 2

#define RX_BUFS 4
#define RX_DATA 2048		 /* payload bytes per RX buffer (header + data in one descriptor, as Linux does) */
#define BUF_ALLOC 65536		 /* what we advertise: we consume every byte as it arrives */
#define WAIT_MS_DEFAULT 30000	 /* vsock_wait=<ms>: longest wait for the next packet */
#define CLOSE_WAIT_MS 2000	 /* wait for the host's RST after our SHUTDOWN */
#define LOCAL_PORT_DEFAULT 50000 /* vsock_local_port=<port> for vsock_connect */
#define TEXT_PRINT_MAX 256

struct vsock_hdr {
	uint64_t src_cid;
	uint64_t dst_cid;
	uint32_t src_port;
	uint32_t dst_port;
	uint32_t len;
	uint16_t type;
	uint16_t op;
	uint32_t flags;
	uint32_t buf_alloc;
	uint32_t fwd_cnt;
} __attribute__((packed));

_Static_assert(sizeof(struct vsock_hdr) == 44, "virtio_vsock_hdr is 44 bytes");

struct rx_buf {
	struct vsock_hdr hdr;
	uint8_t data[RX_DATA];
} __attribute__((packed));

static struct virtio_dev dev;
static struct virtq rxq, txq, evq;
static struct rx_buf rx_bufs[RX_BUFS] __attribute__((aligned(64)));
static int rx_head_buf[VQ_MAX];
static uint8_t ev_buf[8] __attribute__((aligned(8)));
static struct vsock_hdr tx_hdr __attribute__((aligned(16)));
static uint8_t tx_data[RX_DATA] __attribute__((aligned(16)));

/* The received packet being handled (copied out so its RX buffer can go back at once). */
static struct vsock_hdr pkt;
static uint8_t pkt_data[RX_DATA];

static uint64_t guest_cid, timeout_ms, wait_ms;
static int quiet; /* vsock_quiet: no per-packet "vsock echo" lines (benchmarks) */

/* The one connection. */
static struct {
	uint64_t peer_cid;
	uint32_t peer_port, local_port;
	uint32_t peer_buf_alloc, peer_fwd_cnt; /* from the last header the peer sent */
	uint32_t tx_cnt;		       /* payload bytes we have sent */
	uint32_t fwd_cnt;		       /* payload bytes we have received and consumed */
} conn;

static const char *const WHO = "virtio-vsock";

__attribute__((noreturn)) static void finish(const char *how)
{
	gprintf("virtio-vsock: %s\n", how);
	if (dev.base)
		virtio_reset(&dev);
	i8042_reset();
}

static void post_rx(unsigned int i)
{
	struct vq_buf b = { &rx_bufs[i], sizeof(rx_bufs[i]), 1 };
	int head = virtq_add(&rxq, &b, 1);
	if (head >= 0)
		rx_head_buf[head] = (int)i;
}

static void post_event(void)
{
	struct vq_buf b = { ev_buf, sizeof(ev_buf), 1 };
	virtq_add(&evq, &b, 1);
}

/* Sends one packet to (dst_cid, dst_port) from (guest_cid, src_port); waits for the TX buffer to come back. */
static void send_pkt_to(uint64_t dst_cid, uint32_t src_port, uint32_t dst_port, uint16_t op, uint32_t flags,
			const void *data, uint32_t len)
{
	tx_hdr = (struct vsock_hdr){
		.src_cid = guest_cid,
		.dst_cid = dst_cid,
		.src_port = src_port,
		.dst_port = dst_port,
		.len = len,
		.type = VSOCK_TYPE_STREAM,
		.op = op,
		.flags = flags,
		.buf_alloc = BUF_ALLOC,
		.fwd_cnt = conn.fwd_cnt,
	};
	struct vq_buf b[2] = { { &tx_hdr, sizeof(tx_hdr), 0 }, { tx_data, len, 0 } };
	if (len)
		memcpy(tx_data, data, len);
	if (virtq_add(&txq, b, len ? 2 : 1) < 0)
		finish("no free tx descriptors");
	virtq_kick(&txq);
	uint32_t id, ulen;
	if (!virtq_wait_used(&txq, &id, &ulen, timeout_ms)) {
		gprintf("vsock tx timeout\n");
		finish("failed");
	}
}

static void send_pkt(uint16_t op, uint32_t flags, const void *data, uint32_t len)
{
	send_pkt_to(conn.peer_cid, conn.local_port, conn.peer_port, op, flags, data, len);
}

/* Waits for the next packet on the RX queue (handling event-queue entries on the way); 0 on timeout. */
static int recv_pkt(uint64_t ms)
{
	uint64_t deadline = tsc_deadline_ms(ms);
	for (;;) {
		uint32_t id, len;
		if (virtq_get_used(&evq, &id, &len)) {
			gprintf("vsock event id=%u%s\n", *(volatile uint32_t *)ev_buf,
				*(volatile uint32_t *)ev_buf == 0 ? " (transport reset)" : "");
			post_event();
			virtq_kick(&evq);
		}
		if (virtq_get_used(&rxq, &id, &len)) {
			virtio_ack_interrupts(&dev);
			int bi = rx_head_buf[id];
			const struct rx_buf *rb = &rx_bufs[bi];
			memcpy(&pkt, &rb->hdr, sizeof(pkt));
			uint32_t n = pkt.len;
			if (len < sizeof(struct vsock_hdr) || n > RX_DATA || n > len - sizeof(struct vsock_hdr)) {
				gprintf("vsock bad rx packet: used len %u, hdr len %u\n", len, n);
				n = 0;
				pkt.len = 0;
			}
			memcpy(pkt_data, rb->data, n);
			post_rx((unsigned int)bi);
			virtq_kick(&rxq);
			return 1;
		}
		if (tsc_expired(deadline))
			return 0;
		cpu_relax_n(64);
	}
}

/* Is `pkt` addressed to the connection? (stream, our CID, its ports) */
static int pkt_is_conn(void)
{
	return pkt.type == VSOCK_TYPE_STREAM && pkt.dst_cid == guest_cid && pkt.src_cid == conn.peer_cid &&
	       pkt.src_port == conn.peer_port && pkt.dst_port == conn.local_port;
}

/* Answers a packet that belongs to no connection with RST (never an RST to an RST). */
static void reset_stray(void)
{
	if (pkt.op != OP_RST)
		send_pkt_to(pkt.src_cid, pkt.dst_port, pkt.src_port, OP_RST, 0, 0, 0);
}

static uint32_t peer_credit(void)
{
	return conn.peer_buf_alloc - (conn.tx_cnt - conn.peer_fwd_cnt);
}

static void update_credit(void)
{
	conn.peer_buf_alloc = pkt.buf_alloc;
	conn.peer_fwd_cnt = pkt.fwd_cnt;
}

/* Returns 1 if the packet (for the connection) closed it. RW payloads are left to the caller. */
static int handle_control(void)
{
	update_credit();
	switch (pkt.op) {
	case OP_CREDIT_REQUEST:
		send_pkt(OP_CREDIT_UPDATE, 0, 0, 0);
		return 0;
	case OP_SHUTDOWN:
		gprintf("vsock shutdown flags=%u\n", pkt.flags);
		/* We have nothing left to send either: close, as Linux does, with RST. */
		send_pkt(OP_RST, 0, 0, 0);
		return 1;
	case OP_RST:
		gprintf("vsock rst\n");
		return 1;
	default:
		return 0;
	}
}

/* Sends len bytes as RW packets within the peer's credit; 0 if the connection closed meanwhile. */
static int send_data(const uint8_t *data, uint32_t len)
{
	while (len) {
		uint32_t chunk = peer_credit();
		if (chunk > len)
			chunk = len;
		if (chunk > RX_DATA)
			chunk = RX_DATA;
		if (chunk == 0) {
			/* No credit: ask for an update and handle packets until some arrives. */
			send_pkt(OP_CREDIT_REQUEST, 0, 0, 0);
			if (!recv_pkt(wait_ms)) {
				gprintf("vsock timeout waiting for credit\n");
				finish("failed");
			}
			if (!pkt_is_conn()) {
				reset_stray();
				continue;
			}
			if (pkt.op == OP_RW) {
				/* Data while we are blocked: consume it (it is echoed by nobody: report it). */
				conn.fwd_cnt += pkt.len;
				gprintf("vsock dropped %u bytes while out of credit\n", pkt.len);
			}
			if (handle_control())
				return 0;
			continue;
		}
		send_pkt(OP_RW, 0, data, chunk);
		conn.tx_cnt += chunk;
		data += chunk;
		len -= chunk;
	}
	return 1;
}

static void listen_mode(uint32_t port)
{
	conn.local_port = port;
	gprintf("vsock listening on port %u\n", port);
	for (;;) {
		if (!recv_pkt(wait_ms)) {
			gprintf("vsock timeout\n");
			finish("failed");
		}
		if (pkt.type == VSOCK_TYPE_STREAM && pkt.op == OP_REQUEST && pkt.dst_cid == guest_cid &&
		    pkt.dst_port == port)
			break;
		reset_stray();
	}
	conn.peer_cid = pkt.src_cid;
	conn.peer_port = pkt.src_port;
	update_credit();
	send_pkt(OP_RESPONSE, 0, 0, 0);
	gprintf("vsock connected from %lu:%u\n", conn.peer_cid, conn.peer_port);

	for (;;) {
		if (!recv_pkt(wait_ms)) {
			gprintf("vsock timeout\n");
			finish("failed");
		}
		if (!pkt_is_conn()) {
			reset_stray();
			continue;
		}
		if (pkt.op == OP_RW) {
			update_credit();
			uint32_t n = pkt.len;
			conn.fwd_cnt += n; /* consumed: it is copied out and about to be echoed */
			static uint8_t echo[RX_DATA];
			memcpy(echo, pkt_data, n);
			if (!send_data(echo, n))
				break;
			if (!quiet)
				gprintf("vsock echo %u bytes\n", n);
			continue;
		}
		if (handle_control())
			break;
	}
}

static void connect_mode(uint32_t port)
{
	static const char msg[] = "hello from guest\n";
	const uint32_t msg_len = sizeof(msg) - 1;

	conn.peer_cid = VSOCK_HOST_CID;
	conn.peer_port = port;
	conn.local_port = (uint32_t)cmdline_u64("vsock_local_port", LOCAL_PORT_DEFAULT);
	send_pkt(OP_REQUEST, 0, 0, 0);
	for (;;) {
		if (!recv_pkt(wait_ms)) {
			gprintf("vsock timeout\n");
			finish("failed");
		}
		if (!pkt_is_conn()) {
			reset_stray();
			continue;
		}
		update_credit();
		if (pkt.op == OP_RESPONSE)
			break;
		if (pkt.op == OP_RST) {
			gprintf("vsock connect refused\n");
			return;
		}
		/* Anything else before the handshake completes is a protocol error: reset. */
		send_pkt(OP_RST, 0, 0, 0);
		gprintf("vsock unexpected op %u during connect\n", pkt.op);
		return;
	}
	gprintf("vsock connected to %lu:%u\n", conn.peer_cid, conn.peer_port);

	if (!send_data((const uint8_t *)msg, msg_len))
		return;
	gprintf("vsock sent %u bytes\n", msg_len);

	/* Print what comes back until at least as many bytes as we sent (or the host closes). */
	uint32_t want = (uint32_t)cmdline_u64("vsock_recv_bytes", msg_len), got = 0;
	while (got < want) {
		if (!recv_pkt(wait_ms)) {
			gprintf("vsock timeout\n");
			finish("failed");
		}
		if (!pkt_is_conn()) {
			reset_stray();
			continue;
		}
		if (pkt.op == OP_RW) {
			update_credit();
			conn.fwd_cnt += pkt.len;
			got += pkt.len;
			char prefix[48];
			gsnprintf(prefix, sizeof(prefix), "vsock recv %u bytes: ", pkt.len);
			print_text_line(prefix, pkt_data, pkt.len < TEXT_PRINT_MAX ? pkt.len : TEXT_PRINT_MAX);
			continue;
		}
		if (handle_control())
			return;
	}

	/* Close: SHUTDOWN both ways, then wait (briefly) for the host's RST. */
	send_pkt(OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND, 0, 0);
	uint64_t deadline = tsc_deadline_ms(CLOSE_WAIT_MS);
	while (!tsc_expired(deadline)) {
		if (!recv_pkt(CLOSE_WAIT_MS))
			break;
		if (!pkt_is_conn()) {
			reset_stray();
			continue;
		}
		if (pkt.op == OP_RST) {
			gprintf("vsock closed\n");
			return;
		}
		if (pkt.op == OP_RW)
			conn.fwd_cnt += pkt.len; /* late data: consumed and dropped */
		if (pkt.op == OP_CREDIT_REQUEST)
			send_pkt(OP_CREDIT_UPDATE, 0, 0, 0);
	}
	send_pkt(OP_RST, 0, 0, 0);
	gprintf("vsock closed (no rst from host, sent rst)\n");
}

void guest_main(void)
{
	if (virtio_find(VIRTIO_ID_VSOCK, (unsigned int)cmdline_u64("vsock_dev", 0), &dev) != 0) {
		gprintf("virtio-vsock: no device\n");
		i8042_reset();
	}
	timeout_ms = virtio_timeout_ms();
	wait_ms = cmdline_u64("vsock_wait", WAIT_MS_DEFAULT);
	quiet = cmdline_has_word("vsock_quiet");

	if (virtio_negotiate(&dev, 0, WHO) != 0)
		finish("failed");
	if (virtq_setup(&dev, &rxq, RXQ, WHO) != 0 || virtq_setup(&dev, &txq, TXQ, WHO) != 0 ||
	    virtq_setup(&dev, &evq, EVQ, WHO) != 0)
		finish("failed");
	if (txq.num < 2) {
		gprintf("virtio-vsock: queue 1 has %u entries, a packet needs 2\n", txq.num);
		finish("failed");
	}
	guest_cid = virtio_config_read64(&dev, 0);
	unsigned int nrx = RX_BUFS < rxq.num ? RX_BUFS : rxq.num;
	for (unsigned int i = 0; i < nrx; i++)
		post_rx(i);
	post_event();
	if (virtio_driver_ok(&dev, WHO) != 0)
		finish("failed");
	virtq_kick(&rxq);
	virtq_kick(&evq);
	gprintf("virtio-vsock: cid=%lu\n", guest_cid);

	uint64_t port;
	if ((port = cmdline_u64("vsock_listen", 0)) != 0)
		listen_mode((uint32_t)port);
	else if ((port = cmdline_u64("vsock_connect", 0)) != 0)
		connect_mode((uint32_t)port);
	finish("done");
}
