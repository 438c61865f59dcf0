/* SPDX-License-Identifier: Apache-2.0 */
/* Printing bytes that are meant to be text. */
#ifndef GUEST_TEXT_H
#define GUEST_TEXT_H

/*
 * Prints prefix, then buf up to its first NUL (at most len bytes, at most 1024) with
 * every byte outside printable ASCII (0x20..0x7e) shown as '.', then '\n'.
 */
void print_text_line(const char *prefix, const void *buf, unsigned int len);

#endif
