/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Reading the Linux boot_params "zero page" the VMM passes in RSI, and the
 * kernel command line it points to. Offsets from arch/x86/include/uapi/asm/bootparam.h.
 */
#ifndef GUEST_BOOTPARAMS_H
#define GUEST_BOOTPARAMS_H

#include <stdint.h>

#define BP_EXT_CMD_LINE_PTR 0x0c8 /* u32, high 32 bits of the command line address */
#define BP_E820_ENTRIES 0x1e8	  /* u8 */
#define BP_HDR 0x1f1		  /* struct setup_header */
#define BP_HDR_MAGIC 0x202	  /* u32 "HdrS" */
#define BP_CMD_LINE_PTR 0x228	  /* u32 */
#define BP_E820_TABLE 0x2d0	  /* struct boot_e820_entry[128] */
#define BP_E820_MAX 128

#define E820_TYPE_RAM 1

struct e820_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
} __attribute__((packed));

/* The entry stub stores RSI here before anything else runs. */
extern uint64_t boot_params_ptr;

/* The guest can only dereference what the VMM's identity map covers (1 GiB). */
#define GUEST_IDENTITY_MAP_END 0x40000000ULL

/* The command line (NUL-terminated), or "" if the VMM gave none or it lies outside the identity map. */
const char *bp_cmdline(void);
/* Physical address of the command line as given by the VMM (0 if none). */
uint64_t bp_cmdline_addr(void);

/* Number of e820 entries (clamped to 128) and entry i. */
unsigned int bp_e820_count(void);
const struct e820_entry *bp_e820_entry(unsigned int i);
/* Sum of the sizes of all type-1 (RAM) entries. */
uint64_t bp_e820_ram_bytes(void);
/* One past the highest RAM byte (0 if none). */
uint64_t bp_e820_ram_end(void);

/*
 * Command-line words are separated by spaces/tabs/newlines.
 * cmdline_has_word("wait_cad") is true for the exact word "wait_cad" (not "wait_cad=1").
 * cmdline_value("count", buf, n) finds "count=VALUE" and copies VALUE; returns its length or -1.
 * cmdline_u64("count", dflt) parses "count=N" (decimal or 0x hex), else dflt.
 */
int cmdline_has_word(const char *word);
int cmdline_value(const char *key, char *buf, unsigned int bufsize);
uint64_t cmdline_u64(const char *key, uint64_t dflt);

#endif
