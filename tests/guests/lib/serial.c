// SPDX-License-Identifier: Apache-2.0
#include "serial.h"
#include "io.h"

#define UART_THR 0 /* transmit holding register (DLAB=0) */
#define UART_LSR 5 /* line status register */
#define UART_LSR_THRE 0x20

/*
 * Wait (bounded) for the transmit holding register to be empty, then write.
 * A UART that never reports THRE (or no UART at all) costs a bounded spin per
 * byte instead of hanging the guest. No initialisation: after reset DLAB is 0,
 * so offset 0 is THR, and an emulated UART ignores the baud rate.
 */
void serial_putc(char c)
{
	for (unsigned int i = 0; i < 1000; i++) {
		if (inb(SERIAL_COM1 + UART_LSR) & UART_LSR_THRE)
			break;
		cpu_relax_n(50);
	}
	outb(SERIAL_COM1 + UART_THR, (uint8_t)c);
}

void serial_write(const char *s, unsigned long len)
{
	for (unsigned long i = 0; i < len; i++)
		serial_putc(s[i]);
}

void serial_puts(const char *s)
{
	while (*s)
		serial_putc(*s++);
}
