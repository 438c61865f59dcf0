/* SPDX-License-Identifier: Apache-2.0 */
/* Finding the Intel MultiProcessor table (MP spec 1.4) and counting its processors. */
#ifndef GUEST_MPTABLE_H
#define GUEST_MPTABLE_H

#include <stdint.h>

enum mptable_status {
	MPTABLE_OK = 0,
	MPTABLE_NONE,		  /* no valid "_MP_" floating pointer found */
	MPTABLE_BAD_CONFIG_PTR,	  /* floating pointer has no / an out-of-range config table address */
	MPTABLE_BAD_CONFIG_SIG,	  /* config table does not start with "PCMP" */
	MPTABLE_BAD_CONFIG_CSUM,  /* config table checksum is not zero */
	MPTABLE_BAD_ENTRY,	  /* unknown entry type or entries overrun the table */
};

struct mptable_info {
	uint64_t fp_addr;	/* where the floating pointer was found */
	uint64_t config_addr;	/* address of the "PCMP" configuration table */
	unsigned int cpus;	/* processor entries with the enabled flag */
	unsigned int cpu_entries; /* all processor entries */
	unsigned int ioapics;
	unsigned int entries;	/* entry_count from the header */
};

/*
 * Scans (16-byte aligned) the EBDA named by the BDA word at 0x40e, 0x9fc00..0xa0000
 * and 0xf0000..0x100000 for a floating pointer with a valid checksum, then walks the
 * config table.
 */
enum mptable_status mptable_probe(struct mptable_info *info);
const char *mptable_status_str(enum mptable_status st);

#endif
