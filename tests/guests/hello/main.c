// SPDX-License-Identifier: Apache-2.0
/*
 * hello: reports what the VMM handed over (command line, e820 map, MP table) on
 * the serial port, optionally waits for Ctrl-Alt-Del and/or counts, then resets
 * the machine through the i8042. See ../README.md for the exact output.
 */
#include "guest.h"

#define COUNT_DEFAULT 5
#define COUNT_MAX 1000
#define CMDLINE_PRINT_MAX 4096

void guest_main(void)
{
	gprintf("tartarus-guest: hello\n");

	const char *cmdline = bp_cmdline();
	gprintf("boot_args: %.*s\n", (int)strnlen(cmdline, CMDLINE_PRINT_MAX), cmdline);

	gprintf("e820: entries=%u ram_bytes=%lu\n", bp_e820_count(), bp_e820_ram_bytes());

	struct mptable_info mp;
	enum mptable_status st = mptable_probe(&mp);
	if (st == MPTABLE_OK)
		gprintf("mptable: cpus=%u\n", mp.cpus);
	else if (st == MPTABLE_NONE)
		gprintf("mptable: none\n");
	else
		gprintf("mptable: invalid (%s)\n", mptable_status_str(st));

	if (cmdline_has_word("wait_cad")) {
		gprintf("waiting for ctrl-alt-del\n");
		i8042_wait_ctrl_alt_del();
		gprintf("ctrl-alt-del received\n");
	}

	/* "count" prints count: 1..5; "count=N" prints 1..N (N <= 1000). */
	uint64_t n = 0;
	if (cmdline_has_word("count"))
		n = COUNT_DEFAULT;
	n = cmdline_u64("count", n);
	if (n > COUNT_MAX)
		n = COUNT_MAX;
	for (uint64_t k = 1; k <= n; k++)
		gprintf("count: %lu\n", k);

	gprintf("resetting\n");
	i8042_reset();
}
