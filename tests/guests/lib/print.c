// SPDX-License-Identifier: Apache-2.0
#include "print.h"
#include "serial.h"

#include <stdint.h>

struct sink {
	int serial;	/* 1: serial port, 0: buf */
	char *buf;
	size_t size;
	size_t len;	/* characters produced so far */
};

static void sink_putc(struct sink *s, char c)
{
	if (s->serial)
		serial_putc(c);
	else if (s->len + 1 < s->size)
		s->buf[s->len] = c;
	s->len++;
}

static void sink_pad(struct sink *s, char c, int n)
{
	while (n-- > 0)
		sink_putc(s, c);
}

static void format_uint(struct sink *s, uint64_t v, unsigned int base, int upper, int width, int zero,
			int left, int negative)
{
	char tmp[24];
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	int n = 0;

	do {
		tmp[n++] = digits[v % base];
		v /= base;
	} while (v);

	int len = n + (negative ? 1 : 0);
	if (!left && !zero)
		sink_pad(s, ' ', width - len);
	if (negative)
		sink_putc(s, '-');
	if (!left && zero)
		sink_pad(s, '0', width - len);
	while (n)
		sink_putc(s, tmp[--n]);
	if (left)
		sink_pad(s, ' ', width - len);
}

static void format(struct sink *s, const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			sink_putc(s, *fmt);
			continue;
		}
		fmt++;

		int zero = 0, left = 0, width = 0, prec = -1, lng = 0;
		for (;; fmt++) {
			if (*fmt == '0')
				zero = 1;
			else if (*fmt == '-')
				left = 1;
			else
				break;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		if (*fmt == '.') {
			fmt++;
			if (*fmt == '*') {
				prec = va_arg(ap, int);
				fmt++;
			} else {
				prec = 0;
				while (*fmt >= '0' && *fmt <= '9')
					prec = prec * 10 + (*fmt++ - '0');
			}
		}
		while (*fmt == 'l' || *fmt == 'z') {
			lng++;
			fmt++;
		}

		switch (*fmt) {
		case 'd':
		case 'i': {
			int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
			uint64_t mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
			format_uint(s, mag, 10, 0, width, zero, left, v < 0);
			break;
		}
		case 'u':
		case 'x':
		case 'X': {
			uint64_t v = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned int);
			format_uint(s, v, *fmt == 'u' ? 10 : 16, *fmt == 'X', width, zero, left, 0);
			break;
		}
		case 'p':
			sink_putc(s, '0');
			sink_putc(s, 'x');
			format_uint(s, (uintptr_t)va_arg(ap, void *), 16, 0, width, zero, left, 0);
			break;
		case 'c':
			sink_putc(s, (char)va_arg(ap, int));
			break;
		case 's': {
			const char *str = va_arg(ap, const char *);
			if (!str)
				str = "(null)";
			int n = 0;
			while ((prec < 0 || n < prec) && str[n])
				n++;
			if (!left)
				sink_pad(s, ' ', width - n);
			for (int i = 0; i < n; i++)
				sink_putc(s, str[i]);
			if (left)
				sink_pad(s, ' ', width - n);
			break;
		}
		case '%':
			sink_putc(s, '%');
			break;
		case '\0':
			return;
		default:
			sink_putc(s, '%');
			sink_putc(s, *fmt);
			break;
		}
	}
}

int gvprintf(const char *fmt, va_list ap)
{
	struct sink s = { .serial = 1 };
	format(&s, fmt, ap);
	return (int)s.len;
}

int gprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = gvprintf(fmt, ap);
	va_end(ap);
	return n;
}

int gvsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct sink s = { .buf = buf, .size = size };
	format(&s, fmt, ap);
	if (size)
		buf[s.len < size ? s.len : size - 1] = '\0';
	return (int)s.len;
}

int gsnprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = gvsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n;
}
