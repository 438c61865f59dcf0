// SPDX-License-Identifier: Apache-2.0
#include "i8042.h"
#include "io.h"
#include "print.h"

int i8042_try_read(uint8_t *b)
{
	if (!(inb(I8042_STATUS) & I8042_STATUS_OBF))
		return 0;
	*b = inb(I8042_DATA);
	return 1;
}

uint8_t i8042_read(void)
{
	uint8_t b;
	while (!i8042_try_read(&b))
		cpu_relax_n(I8042_POLL_SPIN);
	return b;
}

void i8042_wait_ctrl_alt_del(void)
{
	static const uint8_t seq[] = { 0x14, 0x11, 0xe0, 0x71 };
	unsigned int matched = 0;
	int warned = 0;

	while (matched < sizeof(seq)) {
		uint8_t st = inb(I8042_STATUS);
		if (st == 0xff && !warned) {
			/* An unclaimed port reads as all ones: there is probably no i8042. */
			gprintf("i8042: status reads 0xff, no controller?\n");
			warned = 1;
		}
		if (!(st & I8042_STATUS_OBF)) {
			cpu_relax_n(I8042_POLL_SPIN);
			continue;
		}
		uint8_t b = inb(I8042_DATA);
		/* seq has no proper prefix that is also a suffix, so restarting is exact. */
		if (b == seq[matched])
			matched++;
		else
			matched = (b == seq[0]) ? 1 : 0;
	}
}

void i8042_reset(void)
{
	outb(I8042_COMMAND, I8042_CMD_RESET);
	halt_forever();
}
