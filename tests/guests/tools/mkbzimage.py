#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Wrap a Tartarus test-guest ELF into a bzImage (Linux x86 boot protocol 2.12).

The ELF's PT_LOAD segments (linked at 0x100000, entry at 0x100200) become the flat
protected-mode part, placed after a (setup_sects + 1) * 512 byte setup area that
holds only the setup_header. A loader puts the flat part at code32_start (0x100000)
and enters 64-bit code at load address + 0x200.

usage: mkbzimage.py GUEST.elf OUT.bzImage [NAME]
"""
import struct
import sys

LOAD_ADDR = 0x100000
ENTRY_OFFSET = 0x200
SETUP_SECTS = 1  # setup area = (1 + 1) * 512 bytes
BOOT_PROTOCOL = 0x020C  # 2.12: has xloadflags; no kernel_info (2.15) needed
LOADED_HIGH = 0x01
XLF_KERNEL_64 = 0x01
PT_LOAD = 1


def die(msg):
    sys.exit(f"mkbzimage: {msg}")


def read_elf(path):
    data = open(path, "rb").read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        die(f"{path}: not a little-endian ELF64 file")
    (e_type, e_machine, _ver, e_entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize, e_phnum) = struct.unpack_from(
        "<HHIQQQIHHH", data, 16)
    if e_type != 2 or e_machine != 62:
        die(f"{path}: not an x86_64 ET_EXEC")
    segs = []
    for i in range(e_phnum):
        p_type, _pflags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == PT_LOAD:
            segs.append((p_paddr, data[p_offset:p_offset + p_filesz], p_memsz))
    if not segs:
        die(f"{path}: no PT_LOAD segments")
    return e_entry, segs


def main():
    if len(sys.argv) not in (3, 4):
        die("usage: mkbzimage.py GUEST.elf OUT.bzImage [NAME]")
    elf, out = sys.argv[1], sys.argv[2]
    name = sys.argv[3] if len(sys.argv) == 4 else elf

    entry, segs = read_elf(elf)
    if entry != LOAD_ADDR + ENTRY_OFFSET:
        die(f"entry is {entry:#x}, expected {LOAD_ADDR + ENTRY_OFFSET:#x}")
    if min(s[0] for s in segs) != LOAD_ADDR:
        die(f"lowest PT_LOAD is at {min(s[0] for s in segs):#x}, expected {LOAD_ADDR:#x}")

    # Flat image of the file contents of all PT_LOADs; gaps are zero.
    file_end = max(p + len(d) for p, d, _ in segs)
    mem_end = max(p + m for p, _, m in segs)
    payload = bytearray(file_end - LOAD_ADDR)
    for paddr, d, _ in segs:
        payload[paddr - LOAD_ADDR:paddr - LOAD_ADDR + len(d)] = d
    payload += b"\0" * (-len(payload) % 16)
    init_size = (mem_end - LOAD_ADDR + 0xFFF) & ~0xFFF

    setup = bytearray((SETUP_SECTS + 1) * 512)
    version_str_off = 0x300
    rm_stub_off = 0x280
    struct.pack_into("<B", setup, 0x1F1, SETUP_SECTS)
    struct.pack_into("<I", setup, 0x1F4, len(payload) // 16)  # syssize (16-byte units)
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)  # boot_flag
    # jump: short jmp from 0x202 to a real-mode "cli; hlt" loop (real-mode entry is unsupported)
    struct.pack_into("<BB", setup, 0x200, 0xEB, rm_stub_off - 0x202)
    struct.pack_into("<I", setup, 0x202, 0x53726448)  # "HdrS"
    struct.pack_into("<H", setup, 0x206, BOOT_PROTOCOL)
    struct.pack_into("<H", setup, 0x20E, version_str_off - 0x200)  # kernel_version
    struct.pack_into("<B", setup, 0x211, LOADED_HIGH)  # loadflags
    struct.pack_into("<I", setup, 0x214, LOAD_ADDR)  # code32_start
    struct.pack_into("<I", setup, 0x22C, 0x7FFFFFFF)  # initrd_addr_max
    struct.pack_into("<I", setup, 0x230, 0x1000)  # kernel_alignment
    struct.pack_into("<B", setup, 0x234, 0)  # relocatable_kernel: no
    struct.pack_into("<B", setup, 0x235, 12)  # min_alignment (log2)
    struct.pack_into("<H", setup, 0x236, XLF_KERNEL_64)  # xloadflags
    struct.pack_into("<I", setup, 0x238, 2047)  # cmdline_size
    struct.pack_into("<Q", setup, 0x258, LOAD_ADDR)  # pref_address
    struct.pack_into("<I", setup, 0x260, init_size)  # init_size
    setup[rm_stub_off:rm_stub_off + 4] = b"\xFA\xF4\xEB\xFD"  # cli; 1: hlt; jmp 1b
    ver = f"tartarus-guest {name}".encode()[:200] + b"\0"
    setup[version_str_off:version_str_off + len(ver)] = ver

    image = bytes(setup) + bytes(payload)
    assert image[(SETUP_SECTS + 1) * 512 + ENTRY_OFFSET:][:16] == \
        next(d for p, d, _ in segs if p == LOAD_ADDR)[ENTRY_OFFSET:ENTRY_OFFSET + 16]
    with open(out, "wb") as f:
        f.write(image)


if __name__ == "__main__":
    main()
