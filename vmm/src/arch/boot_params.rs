//! The Linux zero page (struct boot_params): setup header, command line, initrd and e820 map.

use devices::GuestMemoryMmap;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress};

use super::layout::*;

#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    #[error("Too many e820 entries")]
    E820Full,
    #[error("Failed to write boot_params to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

/// What goes into the zero page.
pub struct BootInfo {
    /// The kernel's own setup header (bzImage), or None for an ELF kernel.
    pub setup_header: Option<setup_header>,
    pub cmdline_size: usize,
    pub initrd: Option<(u64, u64)>,
    pub mem_bytes: u64,
}

fn add_e820(p: &mut boot_params, addr: u64, size: u64) -> Result<(), BootParamsError> {
    let i = p.e820_entries as usize;
    if i >= p.e820_table.len() {
        return Err(BootParamsError::E820Full);
    }
    p.e820_table[i] = boot_e820_entry {
        addr,
        size,
        r#type: E820_RAM,
    };
    p.e820_entries += 1;
    Ok(())
}

/// Builds the zero page.
pub fn build(info: &BootInfo) -> Result<boot_params, BootParamsError> {
    let mut p = boot_params::default();
    match info.setup_header {
        Some(h) => p.hdr = h,
        None => {
            p.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            p.hdr.header = KERNEL_HDR_MAGIC;
            p.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
        }
    }
    p.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    p.hdr.cmd_line_ptr = CMDLINE_START as u32;
    p.hdr.cmdline_size = info.cmdline_size as u32;
    if let Some((addr, size)) = info.initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.hdr.ramdisk_size = size as u32;
    }
    // Low RAM up to the EBDA, then everything from 1 MiB up, split around the MMIO gap.
    add_e820(&mut p, 0, EBDA_START)?;
    for (start, size) in ram_ranges(info.mem_bytes) {
        let (start, size) = if start == 0 {
            (HIMEM_START, size.saturating_sub(HIMEM_START))
        } else {
            (start, size)
        };
        if size > 0 {
            add_e820(&mut p, start, size)?;
        }
    }
    Ok(p)
}

pub fn write(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), BootParamsError> {
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_START))
        .map_err(BootParamsError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_covers_ram() {
        let p = build(&BootInfo {
            setup_header: None,
            cmdline_size: 10,
            initrd: Some((0x100_0000, 0x1000)),
            mem_bytes: 128 << 20,
        })
        .unwrap();
        assert_eq!(p.e820_entries, 2);
        let e1 = p.e820_table[1];
        assert_eq!({ e1.addr }, HIMEM_START);
        assert_eq!({ e1.size }, (128 << 20) - HIMEM_START);
        assert_eq!({ p.hdr.ramdisk_image }, 0x100_0000);
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);

        let big = build(&BootInfo {
            setup_header: None,
            cmdline_size: 10,
            initrd: None,
            mem_bytes: 4 << 30,
        })
        .unwrap();
        assert_eq!(big.e820_entries, 3);
        let e2 = big.e820_table[2];
        assert_eq!({ e2.addr }, MMIO_GAP_END);
    }
}
