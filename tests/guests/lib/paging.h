/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The guest's own page tables. The VMM identity-maps only the first 1 GiB; virtio-mmio
 * devices live in the MMIO gap at 0xd0000000+, so guests that drive them first call
 * paging_map_4g(): an identity map of 0..4 GiB with 2 MiB pages (PML4, PDPT and four
 * page directories in .bss), everything from 3 GiB up uncached (PCD|PWT), then CR3.
 */
#ifndef GUEST_PAGING_H
#define GUEST_PAGING_H

#include <stdint.h>

/* Everything below this is identity-mapped once paging_map_4g() has returned 0. */
#define PAGING_MAP_END 0x100000000ULL
/* From here to PAGING_MAP_END the mapping is uncached (PCD|PWT): the MMIO gap lies there. */
#define PAGING_UC_START 0xc0000000ULL

/*
 * Builds the tables and loads CR3 (only the first call does work). Returns 0, or -1
 * (and prints why) if the CPU is not in 4-level long mode paging.
 */
int paging_map_4g(void);

#endif
