// SPDX-License-Identifier: Apache-2.0
#include "mptable.h"
#include "bootparams.h"
#include "string.h"

#define MP_ENTRY_PROCESSOR 0
#define MP_ENTRY_BUS 1
#define MP_ENTRY_IOAPIC 2
#define MP_ENTRY_IOINT 3
#define MP_ENTRY_LINT 4
#define MP_CPU_ENABLED 0x01

static uint8_t checksum(const uint8_t *p, unsigned int len)
{
	uint8_t sum = 0;
	while (len--)
		sum += *p++;
	return sum;
}

static uint64_t scan(uint64_t start, uint64_t end)
{
	for (uint64_t a = start & ~15ULL; a + 16 <= end; a += 16) {
		const uint8_t *p = (const uint8_t *)a;
		if (p[0] != '_' || p[1] != 'M' || p[2] != 'P' || p[3] != '_')
			continue;
		unsigned int len = p[8] * 16u; /* length in 16-byte units, normally 1 */
		if (len == 0 || a + len > end || checksum(p, len) != 0)
			continue;
		return a;
	}
	return 0;
}

static uint64_t find_floating_pointer(void)
{
	uint64_t fp;
	/* BDA word at 0x40e: EBDA segment. A VMM without a BIOS usually leaves it 0. */
	uint64_t ebda = (uint64_t)*(const volatile uint16_t *)0x40e << 4;
	if (ebda >= 0x80000 && ebda < 0xa0000 && (fp = scan(ebda, ebda + 1024)))
		return fp;
	if ((fp = scan(0x9fc00, 0xa0000)))
		return fp;
	return scan(0xf0000, 0x100000);
}

enum mptable_status mptable_probe(struct mptable_info *info)
{
	memset(info, 0, sizeof(*info));
	uint64_t fp = find_floating_pointer();
	if (!fp)
		return MPTABLE_NONE;
	info->fp_addr = fp;

	uint64_t cfg = *(const uint32_t *)(fp + 4);
	if (cfg == 0 || cfg + 44 > GUEST_IDENTITY_MAP_END)
		return MPTABLE_BAD_CONFIG_PTR;
	info->config_addr = cfg;

	const uint8_t *h = (const uint8_t *)cfg;
	if (h[0] != 'P' || h[1] != 'C' || h[2] != 'M' || h[3] != 'P')
		return MPTABLE_BAD_CONFIG_SIG;
	uint16_t base_len = *(const uint16_t *)(h + 4);
	if (base_len < 44 || checksum(h, base_len) != 0)
		return MPTABLE_BAD_CONFIG_CSUM;

	info->entries = *(const uint16_t *)(h + 34); /* entry_count */
	const uint8_t *e = h + 44, *end = h + base_len;
	for (unsigned int i = 0; i < info->entries; i++) {
		if (e >= end)
			return MPTABLE_BAD_ENTRY;
		unsigned int size;
		switch (e[0]) {
		case MP_ENTRY_PROCESSOR:
			size = 20;
			info->cpu_entries++;
			if (e + size <= end && (e[3] & MP_CPU_ENABLED))
				info->cpus++;
			break;
		case MP_ENTRY_IOAPIC:
			info->ioapics++;
			size = 8;
			break;
		case MP_ENTRY_BUS:
		case MP_ENTRY_IOINT:
		case MP_ENTRY_LINT:
			size = 8;
			break;
		default:
			return MPTABLE_BAD_ENTRY;
		}
		if (e + size > end)
			return MPTABLE_BAD_ENTRY;
		e += size;
	}
	return MPTABLE_OK;
}

const char *mptable_status_str(enum mptable_status st)
{
	switch (st) {
	case MPTABLE_OK:
		return "ok";
	case MPTABLE_NONE:
		return "none";
	case MPTABLE_BAD_CONFIG_PTR:
		return "bad config table pointer";
	case MPTABLE_BAD_CONFIG_SIG:
		return "bad config table signature";
	case MPTABLE_BAD_CONFIG_CSUM:
		return "bad config table checksum";
	case MPTABLE_BAD_ENTRY:
		return "bad config table entry";
	}
	return "?";
}
