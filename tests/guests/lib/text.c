// SPDX-License-Identifier: Apache-2.0
#include "text.h"
#include "print.h"

#define TEXT_MAX 1024

void print_text_line(const char *prefix, const void *buf, unsigned int len)
{
	const unsigned char *b = buf;
	char line[TEXT_MAX + 1];
	unsigned int n = 0;
	if (len > TEXT_MAX)
		len = TEXT_MAX;
	for (; n < len && b[n]; n++)
		line[n] = (b[n] >= 0x20 && b[n] < 0x7f) ? (char)b[n] : '.';
	line[n] = '\0';
	gprintf("%s%s\n", prefix, line);
}
