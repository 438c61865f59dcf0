//! Where things live in guest physical memory (the 64-bit Linux boot protocol's conventions).

/// The boot GDT and an empty IDT.
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
/// The Linux "zero page" (struct boot_params); RSI points here at entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables for the first GiB: PML4, PDPT, PD.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line and its largest size (x86 Linux's COMMAND_LINE_SIZE).
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Extended BIOS data area: the MP table goes here; RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// Kernels load at or above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// 768 MiB below 4 GiB stay free of RAM for device MMIO (IOAPIC, LAPIC, virtio-mmio).
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// KVM's TSS pages, inside the MMIO gap above the device window (KVM's default identity-map
/// page, 0xfffb_c000, sits just below them).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Interrupt controllers.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Number of IOAPIC pins (GSIs) of KVM's in-kernel IOAPIC.
pub const IOAPIC_PINS: u8 = 24;
/// Legacy IRQs.
pub const IRQ_KEYBOARD: u32 = 1;
pub const IRQ_COM1: u32 = 4;

/// Guest RAM ranges for `mem_bytes` of memory: below the MMIO gap, and the rest above 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_bytes - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_around_the_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_ranges(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (0, MMIO_GAP_START));
        assert_eq!(r[1], (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START));
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 4 << 30);
    }
}
