/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Everything a Tartarus test guest gets from lib/. A guest provides
 *     void guest_main(void);
 * which runs in 64-bit ring 0 with interrupts off, on a 16 KiB stack, with .bss
 * zeroed, boot_params_ptr set from RSI and an IDT that reports exceptions.
 */
#ifndef GUEST_GUEST_H
#define GUEST_GUEST_H

#include <stdint.h>
#include <stddef.h>

#include "io.h"
#include "serial.h"
#include "print.h"
#include "string.h"
#include "bootparams.h"
#include "mptable.h"
#include "i8042.h"

void guest_main(void);

void exceptions_init(void);

/* Image bounds from guest.ld. */
extern char __image_start[], __image_end[], __stack_bottom[], __stack_top[];

#endif
