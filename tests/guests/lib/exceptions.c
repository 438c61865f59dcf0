// SPDX-License-Identifier: Apache-2.0
/*
 * A 32-entry IDT whose handlers print the exception and halt, so a guest bug (or a
 * VMM bug that corrupts guest state) shows up on the serial port instead of as a
 * silent triple fault. Stubs are in entry.S, 16 bytes apart.
 */
#include "guest.h"

struct idt_gate {
	uint16_t off0;
	uint16_t sel;
	uint8_t ist;
	uint8_t type;
	uint16_t off1;
	uint32_t off2;
	uint32_t reserved;
} __attribute__((packed));

struct idt_ptr {
	uint16_t limit;
	uint64_t base;
} __attribute__((packed));

extern const char exc_stubs[];
static struct idt_gate idt[32] __attribute__((aligned(16)));

static const char *const exc_names[32] = {
	"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP",
	"#SS", "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23",
	"#24", "#25", "#26", "#27", "#HV", "#VC", "#SX", "#31",
};

void exceptions_init(void)
{
	uint16_t cs;
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	for (unsigned int i = 0; i < 32; i++) {
		uint64_t a = (uint64_t)exc_stubs + 16 * i;
		idt[i] = (struct idt_gate){
			.off0 = (uint16_t)a,
			.sel = cs,
			.type = 0x8e, /* present, DPL 0, 64-bit interrupt gate */
			.off1 = (uint16_t)(a >> 16),
			.off2 = (uint32_t)(a >> 32),
		};
	}
	struct idt_ptr p = { .limit = sizeof(idt) - 1, .base = (uint64_t)idt };
	__asm__ volatile("lidt %0" : : "m"(p));
}

__attribute__((noreturn)) void guest_exception(uint64_t vec, uint64_t err, uint64_t rip, uint64_t cr2,
					       uint64_t rsp)
{
	gprintf("tartarus-guest: exception %s (vector %lu) err=0x%lx rip=0x%lx cr2=0x%lx rsp=0x%lx\n",
		exc_names[vec & 31], vec, err, rip, cr2, rsp);
	halt_forever();
}
