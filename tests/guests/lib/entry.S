/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Entry stub for Tartarus test guests.
 *
 * Image layout (guest.ld): the image is linked at 0x100000; its first 0x200 bytes
 * are the .head section below, and _start, the 64-bit entry, is at 0x100200. The
 * same image serves both formats:
 *   - ELF: e_entry = 0x100200.
 *   - bzImage: the flat image is the protected-mode part, loaded at 0x100000;
 *     the 64-bit boot protocol enters at load address + 0x200 = _start.
 *
 * State on entry (64-bit Linux boot protocol): long mode, ring 0, interrupts off,
 * paging with at least the image, the zero page, the command line and the
 * MP table identity-mapped; RSI = physical address of boot_params.
 */

/*
 * .head, at the load address: what a VMM that jumps to the load address itself
 * (the 32-bit entry, or a forgotten +0x200) runs. Only instructions that encode
 * identically in 32- and 64-bit mode, so it works in both: print a diagnostic on
 * COM1 and halt.
 */
	.section .head, "ax"
	.code32
	.globl	__head
__head:
	cli
	cld
	movl	$wrong_entry_msg, %esi
	movw	$0x3f8, %dx
1:	lodsb
	testb	%al, %al
	jz	2f
	outb	%al, %dx
	jmp	1b
2:	hlt
	jmp	2b
wrong_entry_msg:
	.asciz	"tartarus-guest: entered at the load address; the 64-bit entry is load address + 0x200\n"
	.balign	16
	.ascii	"TARTARUS-GUEST\0"
	.code64

	.section .text.entry, "ax"
	.globl	_start
	.type	_start, @function
_start:
	cli
	cld
	movq	%rsi, boot_params_ptr(%rip)
	leaq	__stack_top(%rip), %rsp
	xorl	%ebp, %ebp
	/* Zero .bss (8-byte aligned and sized by guest.ld; the stack is not in it). */
	leaq	__bss_start(%rip), %rdi
	leaq	__bss_end(%rip), %rcx
	subq	%rdi, %rcx
	shrq	$3, %rcx
	xorl	%eax, %eax
	rep stosq
	call	guest_start
	.globl	guest_halt
guest_halt:
	cli
	hlt
	jmp	guest_halt
	.size	_start, . - _start

/*
 * Exception stubs, 16 bytes apart (exceptions.c computes gate addresses from that):
 * push a dummy error code where the CPU pushes none, push the vector, go to common.
 */
.macro EXC_STUB vec, has_err
	.org	exc_stubs + 16 * \vec	/* fails ("move .org backwards") if a stub outgrows 16 bytes */
	.if \has_err == 0
	pushq	$0
	.endif
	pushq	$\vec
	jmp	exc_common
.endm

	.text
	.balign	16
	.globl	exc_stubs
exc_stubs:
	EXC_STUB 0, 0
	EXC_STUB 1, 0
	EXC_STUB 2, 0
	EXC_STUB 3, 0
	EXC_STUB 4, 0
	EXC_STUB 5, 0
	EXC_STUB 6, 0
	EXC_STUB 7, 0
	EXC_STUB 8, 1
	EXC_STUB 9, 0
	EXC_STUB 10, 1
	EXC_STUB 11, 1
	EXC_STUB 12, 1
	EXC_STUB 13, 1
	EXC_STUB 14, 1
	EXC_STUB 15, 0
	EXC_STUB 16, 0
	EXC_STUB 17, 1
	EXC_STUB 18, 0
	EXC_STUB 19, 0
	EXC_STUB 20, 0
	EXC_STUB 21, 1
	EXC_STUB 22, 0
	EXC_STUB 23, 0
	EXC_STUB 24, 0
	EXC_STUB 25, 0
	EXC_STUB 26, 0
	EXC_STUB 27, 0
	EXC_STUB 28, 0
	EXC_STUB 29, 1
	EXC_STUB 30, 1
	EXC_STUB 31, 0
	.org	exc_stubs + 16 * 32

	/* Stack: vector, error code, RIP, CS, RFLAGS, RSP, SS. */
exc_common:
	movq	0(%rsp), %rdi
	movq	8(%rsp), %rsi
	movq	16(%rsp), %rdx
	movq	%cr2, %rcx
	movq	40(%rsp), %r8
	andq	$-16, %rsp
	call	guest_exception
	jmp	guest_halt

	.data
	.balign	8
	.globl	boot_params_ptr
boot_params_ptr:
	.quad	0

	.section .note.GNU-stack, "", @progbits
