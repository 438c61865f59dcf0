/* SPDX-License-Identifier: Apache-2.0 */
/* 8250/16550 UART at COM1 (0x3f8), transmit only, no init needed. */
#ifndef GUEST_SERIAL_H
#define GUEST_SERIAL_H

#define SERIAL_COM1 0x3f8

void serial_putc(char c);
void serial_write(const char *s, unsigned long len);
void serial_puts(const char *s); /* no newline added */

#endif
