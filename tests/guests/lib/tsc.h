/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Rough wall-clock bounds from the TSC, for timeouts only. The TSC rate comes from
 * CPUID (hypervisor leaf 0x40000010, else leaf 0x15, else leaf 0x16); if none reports
 * it, 3 GHz is assumed. Under nested PVM CPUID shows the host's leaves, whose TSC
 * rate is also the guest's. Timeouts are "milliseconds, give or take a factor of two".
 */
#ifndef GUEST_TSC_H
#define GUEST_TSC_H

#include <stdint.h>

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi) : : "memory");
	return ((uint64_t)hi << 32) | lo;
}

/* TSC ticks per millisecond (cached after the first call). */
uint64_t tsc_khz(void);
/* A deadline `ms` milliseconds from now, and whether it has passed. */
uint64_t tsc_deadline_ms(uint64_t ms);
int tsc_expired(uint64_t deadline);

#endif
