/* SPDX-License-Identifier: Apache-2.0 */
/* i8042 keyboard controller: polled reads and the 0xFE reset command. */
#ifndef GUEST_I8042_H
#define GUEST_I8042_H

#include <stdint.h>

#define I8042_DATA 0x60
#define I8042_STATUS 0x64  /* read: status */
#define I8042_COMMAND 0x64 /* write: command */
#define I8042_STATUS_OBF 0x01
#define I8042_CMD_RESET 0xfe

/* Pause instructions between two polls of the status port (each poll is a VM exit). */
#define I8042_POLL_SPIN 300

/* Non-blocking: if the output buffer is full, reads one byte into *b and returns 1; else 0. */
int i8042_try_read(uint8_t *b);
/* Blocking: polls (with I8042_POLL_SPIN pauses between polls) until a byte arrives. */
uint8_t i8042_read(void);
/*
 * Blocks until the scan-code set 2 sequence the VMM injects for SendCtrlAltDel
 * has been read: 0x14 (ctrl), 0x11 (alt), 0xe0 0x71 (del). Other bytes are skipped.
 */
void i8042_wait_ctrl_alt_del(void);
/* Pulses the reset line (command 0xFE); the VMM ends the VM. Never returns. */
__attribute__((noreturn)) void i8042_reset(void);

#endif
