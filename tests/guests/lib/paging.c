// SPDX-License-Identifier: Apache-2.0
#include "paging.h"
#include "print.h"

#define PTE_P 0x001ULL
#define PTE_RW 0x002ULL
#define PTE_PWT 0x008ULL
#define PTE_PCD 0x010ULL
#define PTE_PS 0x080ULL /* in a PDE: 2 MiB page */

#define CR0_PG (1ULL << 31)
#define CR4_PAE (1ULL << 5)
#define CR4_LA57 (1ULL << 12)
#define MSR_EFER 0xc0000080
#define EFER_LMA (1ULL << 10)

static uint64_t pml4[512] __attribute__((aligned(4096)));
static uint64_t pdpt[512] __attribute__((aligned(4096)));
static uint64_t pd[4][512] __attribute__((aligned(4096)));
static int mapped;

static inline uint64_t read_cr0(void)
{
	uint64_t v;
	__asm__ volatile("mov %%cr0, %0" : "=r"(v));
	return v;
}

static inline uint64_t read_cr4(void)
{
	uint64_t v;
	__asm__ volatile("mov %%cr4, %0" : "=r"(v));
	return v;
}

static inline uint64_t rdmsr(uint32_t msr)
{
	uint32_t lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((uint64_t)hi << 32) | lo;
}

int paging_map_4g(void)
{
	if (mapped)
		return 0;
	uint64_t cr0 = read_cr0(), cr4 = read_cr4(), efer = rdmsr(MSR_EFER);
	if (!(cr0 & CR0_PG) || !(cr4 & CR4_PAE) || !(efer & EFER_LMA) || (cr4 & CR4_LA57)) {
		gprintf("paging: not in 4-level long mode (cr0=0x%lx cr4=0x%lx efer=0x%lx)\n", cr0, cr4, efer);
		return -1;
	}
	for (uint64_t g = 0; g < 4; g++) {
		for (uint64_t i = 0; i < 512; i++) {
			uint64_t addr = (g << 30) | (i << 21);
			uint64_t flags = PTE_P | PTE_RW | PTE_PS;
			if (addr >= PAGING_UC_START)
				flags |= PTE_PCD | PTE_PWT;
			pd[g][i] = addr | flags;
		}
		pdpt[g] = (uint64_t)pd[g] | PTE_P | PTE_RW;
	}
	pml4[0] = (uint64_t)pdpt | PTE_P | PTE_RW;
	/* The image, its stack and .bss lie below 1 GiB and stay identity-mapped across the switch. */
	__asm__ volatile("mov %0, %%cr3" : : "r"((uint64_t)pml4) : "memory");
	mapped = 1;
	return 0;
}
