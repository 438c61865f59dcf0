// SPDX-License-Identifier: Apache-2.0
#include "tsc.h"

#define TSC_KHZ_DEFAULT 3000000ULL

static uint64_t khz;

static inline void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
	__asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

static uint64_t probe_khz(void)
{
	uint32_t a, b, c, d;
	cpuid(1, &a, &b, &c, &d);
	if (c & (1u << 31)) { /* hypervisor present: KVM/VMware timing leaf */
		cpuid(0x40000000, &a, &b, &c, &d);
		if (a >= 0x40000010) {
			cpuid(0x40000010, &a, &b, &c, &d);
			if (a >= 100000 && a <= 20000000)
				return a;
		}
	}
	cpuid(0, &a, &b, &c, &d);
	uint32_t max = a;
	if (max >= 0x15) {
		cpuid(0x15, &a, &b, &c, &d); /* TSC = crystal (ecx Hz) * ebx / eax */
		if (a && b && c) {
			uint64_t k = (uint64_t)c * b / a / 1000;
			if (k >= 100000 && k <= 20000000)
				return k;
		}
	}
	if (max >= 0x16) {
		cpuid(0x16, &a, &b, &c, &d); /* base frequency in MHz */
		if ((a & 0xffff) >= 100)
			return (uint64_t)(a & 0xffff) * 1000;
	}
	return TSC_KHZ_DEFAULT;
}

uint64_t tsc_khz(void)
{
	if (!khz)
		khz = probe_khz();
	return khz;
}

uint64_t tsc_deadline_ms(uint64_t ms)
{
	return rdtsc() + ms * tsc_khz();
}

int tsc_expired(uint64_t deadline)
{
	return (int64_t)(rdtsc() - deadline) >= 0;
}
