/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A tiny printf for test guests, output to the serial port.
 * Conversions: %s %c %d %i %u %x %X %p %%; length modifiers l, ll, z;
 * flags '0' and '-', a decimal field width, and "%.*s"/"%.Ns" for bounded strings.
 */
#ifndef GUEST_PRINT_H
#define GUEST_PRINT_H

#include <stdarg.h>
#include <stddef.h>

__attribute__((format(printf, 1, 2))) int gprintf(const char *fmt, ...);
int gvprintf(const char *fmt, va_list ap);
/* Formats into buf (always NUL-terminated if size > 0); returns the untruncated length. */
__attribute__((format(printf, 3, 4))) int gsnprintf(char *buf, size_t size, const char *fmt, ...);
int gvsnprintf(char *buf, size_t size, const char *fmt, va_list ap);

#endif
