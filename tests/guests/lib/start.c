// SPDX-License-Identifier: Apache-2.0
#include "guest.h"

/* Called by entry.S on our own stack with .bss zeroed. */
__attribute__((noreturn)) void guest_start(void)
{
	exceptions_init();
	guest_main();
	gprintf("tartarus-guest: guest_main returned, halting\n");
	halt_forever();
}
