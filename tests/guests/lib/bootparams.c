// SPDX-License-Identifier: Apache-2.0
#include "bootparams.h"
#include "string.h"

static inline const uint8_t *bp(void)
{
	return (const uint8_t *)boot_params_ptr;
}

static inline uint32_t bp_u32(unsigned int off)
{
	return *(const volatile uint32_t *)(bp() + off);
}

uint64_t bp_cmdline_addr(void)
{
	if (!boot_params_ptr)
		return 0;
	return (uint64_t)bp_u32(BP_CMD_LINE_PTR) | ((uint64_t)bp_u32(BP_EXT_CMD_LINE_PTR) << 32);
}

const char *bp_cmdline(void)
{
	uint64_t addr = bp_cmdline_addr();
	if (addr == 0 || addr >= GUEST_IDENTITY_MAP_END)
		return "";
	return (const char *)addr;
}

unsigned int bp_e820_count(void)
{
	if (!boot_params_ptr)
		return 0;
	unsigned int n = bp()[BP_E820_ENTRIES];
	return n > BP_E820_MAX ? BP_E820_MAX : n;
}

const struct e820_entry *bp_e820_entry(unsigned int i)
{
	return (const struct e820_entry *)(bp() + BP_E820_TABLE) + i;
}

uint64_t bp_e820_ram_bytes(void)
{
	uint64_t sum = 0;
	for (unsigned int i = 0; i < bp_e820_count(); i++) {
		const struct e820_entry *e = bp_e820_entry(i);
		if (e->type == E820_TYPE_RAM)
			sum += e->size;
	}
	return sum;
}

uint64_t bp_e820_ram_end(void)
{
	uint64_t end = 0;
	for (unsigned int i = 0; i < bp_e820_count(); i++) {
		const struct e820_entry *e = bp_e820_entry(i);
		if (e->type == E820_TYPE_RAM && e->addr + e->size > end)
			end = e->addr + e->size;
	}
	return end;
}

static int is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/*
 * Calls fn(word, len, ctx) for each word of the command line until fn returns
 * nonzero; returns that value (0 if none). Bounded to 64 KiB of command line.
 */
static int for_each_word(int (*fn)(const char *, unsigned int, void *), void *ctx)
{
	const char *p = bp_cmdline();
	const char *end = p + strnlen(p, 65536);
	while (p < end) {
		while (p < end && is_space(*p))
			p++;
		const char *w = p;
		while (p < end && !is_space(*p))
			p++;
		if (p > w) {
			int r = fn(w, (unsigned int)(p - w), ctx);
			if (r)
				return r;
		}
	}
	return 0;
}

static int match_word(const char *w, unsigned int len, void *ctx)
{
	const char *word = ctx;
	return strlen(word) == len && memcmp(w, word, len) == 0;
}

int cmdline_has_word(const char *word)
{
	return for_each_word(match_word, (void *)word);
}

struct value_ctx {
	const char *key;
	char *buf;
	unsigned int bufsize;
	int len;
};

static int match_value(const char *w, unsigned int len, void *ctx)
{
	struct value_ctx *v = ctx;
	unsigned int klen = strlen(v->key);
	if (len <= klen || w[klen] != '=' || memcmp(w, v->key, klen) != 0)
		return 0;
	unsigned int n = len - klen - 1;
	if (v->bufsize) {
		unsigned int c = n < v->bufsize - 1 ? n : v->bufsize - 1;
		memcpy(v->buf, w + klen + 1, c);
		v->buf[c] = '\0';
	}
	v->len = (int)n;
	return 1;
}

int cmdline_value(const char *key, char *buf, unsigned int bufsize)
{
	struct value_ctx v = { .key = key, .buf = buf, .bufsize = bufsize, .len = -1 };
	for_each_word(match_value, &v);
	return v.len;
}

uint64_t cmdline_u64(const char *key, uint64_t dflt)
{
	char buf[24];
	int n = cmdline_value(key, buf, sizeof(buf));
	if (n <= 0 || n >= (int)sizeof(buf))
		return dflt;
	const char *p = buf;
	unsigned int base = 10;
	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
		base = 16;
		p += 2;
	}
	if (!*p)
		return dflt;
	uint64_t v = 0;
	for (; *p; p++) {
		unsigned int d;
		if (*p >= '0' && *p <= '9')
			d = *p - '0';
		else if (base == 16 && *p >= 'a' && *p <= 'f')
			d = *p - 'a' + 10;
		else if (base == 16 && *p >= 'A' && *p <= 'F')
			d = *p - 'A' + 10;
		else
			return dflt;
		v = v * base + d;
	}
	return v;
}
