//! Just enough ELF to tell whether `--exec-file` can run in the jail: the jail has no dynamic
//! loader and no shared libraries, so a binary with a `PT_INTERP` segment would fail at `execve`
//! with a misleading "No such file or directory" (the missing file is the loader). Reading the
//! program headers lets the jailer refuse it up front, before anything is created.
//!
//! Every read is bounds-checked against the file size; nothing here trusts a count or an offset
//! from the file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ELFDATA2MSB: u8 = 2;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const PT_INTERP: u32 = 3;
/// `e_phnum` value meaning "the real count is in section header 0" (more than 0xfffe headers).
const PN_XNUM: u16 = 0xffff;
/// The longest interpreter path accepted (PATH_MAX).
const MAX_INTERP: u64 = 4096;

/// How an executable is linked.
#[derive(Debug, PartialEq, Eq)]
pub enum Linkage {
    /// No `PT_INTERP`: runs without a loader (static or static-pie).
    Static,
    /// Needs this program interpreter (the dynamic loader).
    Dynamic { interp: String },
}

/// Why a file is not a usable ELF executable.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file (no \\x7fELF magic)")]
    NotElf,
    #[error("truncated ELF file: {0}")]
    Truncated(&'static str),
    #[error("malformed ELF file: {0}")]
    Malformed(String),
    #[error("not an executable (ELF type {0}, not ET_EXEC or ET_DYN)")]
    NotExecutable(u16),
}

/// Random access to the bytes of a file (or of a buffer, for tests).
pub trait Bytes {
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; false if that range is not entirely inside the file or the
    /// read fails.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> bool;
}

impl Bytes for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> bool {
        let Ok(start) = usize::try_from(offset) else {
            return false;
        };
        match start.checked_add(buf.len()) {
            Some(end) if end <= self.len() => {
                buf.copy_from_slice(&self[start..end]);
                true
            }
            _ => false,
        }
    }
}

struct SizedFile {
    file: File,
    len: u64,
}

impl Bytes for SizedFile {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> bool {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len => self.file.read_exact_at(buf, offset).is_ok(),
            _ => false,
        }
    }
}

/// Reads the linkage of the ELF file at `path`.
pub fn file_linkage(path: &Path) -> std::io::Result<Result<Linkage, ElfError>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    Ok(linkage(&SizedFile { file, len }))
}

/// Decodes fixed-width fields in the file's byte order.
#[derive(Clone, Copy)]
struct Endian {
    big: bool,
}

impl Endian {
    fn u16(self, b: &[u8], at: usize) -> u16 {
        let a = [b[at], b[at + 1]];
        if self.big {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        }
    }

    fn u32(self, b: &[u8], at: usize) -> u32 {
        let a: [u8; 4] = b[at..at + 4].try_into().expect("4 bytes");
        if self.big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    }

    fn u64(self, b: &[u8], at: usize) -> u64 {
        let a: [u8; 8] = b[at..at + 8].try_into().expect("8 bytes");
        if self.big {
            u64::from_be_bytes(a)
        } else {
            u64::from_le_bytes(a)
        }
    }
}

/// The layout of one ELF class: where the header fields are and how big a program header is.
struct Layout {
    ehdr_size: usize,
    /// Offsets of e_phoff, e_phentsize, e_phnum.
    phoff_at: usize,
    phentsize_at: usize,
    phnum_at: usize,
    /// Smallest valid e_phentsize, and the offsets of p_offset and p_filesz in a header.
    phdr_min: usize,
    p_offset_at: usize,
    p_filesz_at: usize,
    wide: bool,
}

const LAYOUT32: Layout = Layout {
    ehdr_size: 52,
    phoff_at: 0x1c,
    phentsize_at: 0x2a,
    phnum_at: 0x2c,
    phdr_min: 32,
    p_offset_at: 4,
    p_filesz_at: 16,
    wide: false,
};

const LAYOUT64: Layout = Layout {
    ehdr_size: 64,
    phoff_at: 0x20,
    phentsize_at: 0x36,
    phnum_at: 0x38,
    phdr_min: 56,
    p_offset_at: 8,
    p_filesz_at: 0x20,
    wide: true,
};

/// Reads the ELF header and program headers of `bytes`: `Dynamic` when one of them is
/// `PT_INTERP`.
pub fn linkage<B: Bytes + ?Sized>(bytes: &B) -> Result<Linkage, ElfError> {
    let mut ident = [0u8; 16];
    if !bytes.read_at(0, &mut ident[..4]) || ident[..4] != ELF_MAGIC {
        return Err(ElfError::NotElf);
    }
    if !bytes.read_at(0, &mut ident) {
        return Err(ElfError::Truncated("identification"));
    }
    let layout = match ident[4] {
        ELFCLASS32 => &LAYOUT32,
        ELFCLASS64 => &LAYOUT64,
        c => return Err(ElfError::Malformed(format!("unknown class {c}"))),
    };
    let e = match ident[5] {
        ELFDATA2LSB => Endian { big: false },
        ELFDATA2MSB => Endian { big: true },
        d => return Err(ElfError::Malformed(format!("unknown byte order {d}"))),
    };
    let mut ehdr = [0u8; 64];
    let ehdr = &mut ehdr[..layout.ehdr_size];
    if !bytes.read_at(0, ehdr) {
        return Err(ElfError::Truncated("ELF header"));
    }
    let e_type = e.u16(ehdr, 16);
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(ElfError::NotExecutable(e_type));
    }
    let word = |b: &[u8], at: usize| {
        if layout.wide {
            e.u64(b, at)
        } else {
            u64::from(e.u32(b, at))
        }
    };
    let phoff = word(ehdr, layout.phoff_at);
    let phentsize = e.u16(ehdr, layout.phentsize_at);
    let phnum = e.u16(ehdr, layout.phnum_at);
    if phnum == PN_XNUM {
        return Err(ElfError::Malformed(
            "more than 65534 program headers".into(),
        ));
    }
    if phnum == 0 {
        // No program headers: nothing to load, not an executable the kernel would run.
        return Err(ElfError::Malformed("no program headers".into()));
    }
    if usize::from(phentsize) < layout.phdr_min {
        return Err(ElfError::Malformed(format!(
            "program header size {phentsize} (at least {} expected)",
            layout.phdr_min
        )));
    }
    // phnum and phentsize are u16: the product cannot overflow a u64, the sum can.
    let table = u64::from(phnum) * u64::from(phentsize);
    match phoff.checked_add(table) {
        Some(end) if end <= bytes.size() => {}
        _ => {
            return Err(ElfError::Truncated(
                "program headers past the end of the file",
            ))
        }
    }
    let mut phdr = vec![0u8; layout.phdr_min];
    for i in 0..u64::from(phnum) {
        let at = phoff + i * u64::from(phentsize);
        if !bytes.read_at(at, &mut phdr) {
            return Err(ElfError::Truncated("program header"));
        }
        if e.u32(&phdr, 0) != PT_INTERP {
            continue;
        }
        let offset = word(&phdr, layout.p_offset_at);
        let size = word(&phdr, layout.p_filesz_at);
        if size == 0 || size > MAX_INTERP {
            return Err(ElfError::Malformed(format!("PT_INTERP of {size} bytes")));
        }
        let mut interp = vec![0u8; size as usize];
        if !bytes.read_at(offset, &mut interp) {
            return Err(ElfError::Truncated("PT_INTERP past the end of the file"));
        }
        let end = interp.iter().position(|&b| b == 0).unwrap_or(interp.len());
        interp.truncate(end);
        return Ok(Linkage::Dynamic {
            interp: String::from_utf8_lossy(&interp).into_owned(),
        });
    }
    Ok(Linkage::Static)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian ELF64 executable header with `phnum` program headers at 64, each 56
    /// bytes, all PT_LOAD; room for them is included.
    fn elf64(phnum: u16) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56 * usize::from(phnum)];
        b[..4].copy_from_slice(&ELF_MAGIC);
        b[4] = ELFCLASS64;
        b[5] = ELFDATA2LSB;
        b[6] = 1;
        b[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&phnum.to_le_bytes());
        for i in 0..usize::from(phnum) {
            let at = 64 + 56 * i;
            b[at..at + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        }
        b
    }

    /// Makes program header `i` a PT_INTERP pointing at `offset`, `size` bytes.
    fn set_interp(b: &mut [u8], i: usize, offset: u64, size: u64) {
        let at = 64 + 56 * i;
        b[at..at + 4].copy_from_slice(&PT_INTERP.to_le_bytes());
        b[at + 8..at + 16].copy_from_slice(&offset.to_le_bytes());
        b[at + 0x20..at + 0x28].copy_from_slice(&size.to_le_bytes());
    }

    fn with_interp(path: &[u8]) -> Vec<u8> {
        let mut b = elf64(3);
        let off = b.len() as u64;
        b.extend_from_slice(path);
        b.push(0);
        set_interp(&mut b, 1, off, path.len() as u64 + 1);
        b
    }

    #[test]
    fn static_and_dynamic() {
        assert_eq!(linkage(&elf64(2)[..]), Ok(Linkage::Static));
        assert_eq!(
            linkage(&with_interp(b"/lib64/ld-linux-x86-64.so.2")[..]),
            Ok(Linkage::Dynamic {
                interp: "/lib64/ld-linux-x86-64.so.2".into()
            })
        );
        // ET_DYN without PT_INTERP is a static-pie: fine.
        let mut pie = elf64(1);
        pie[16..18].copy_from_slice(&ET_DYN.to_le_bytes());
        assert_eq!(linkage(&pie[..]), Ok(Linkage::Static));
    }

    #[test]
    fn big_endian_and_32_bit() {
        // ELF32 big-endian, one PT_INTERP header at 52 pointing at "/ld".
        let mut b = vec![0u8; 52 + 32];
        b[..4].copy_from_slice(&ELF_MAGIC);
        b[4] = ELFCLASS32;
        b[5] = ELFDATA2MSB;
        b[16..18].copy_from_slice(&ET_EXEC.to_be_bytes());
        b[0x1c..0x20].copy_from_slice(&52u32.to_be_bytes());
        b[0x2a..0x2c].copy_from_slice(&32u16.to_be_bytes());
        b[0x2c..0x2e].copy_from_slice(&1u16.to_be_bytes());
        b[52..56].copy_from_slice(&PT_INTERP.to_be_bytes());
        b[56..60].copy_from_slice(&84u32.to_be_bytes());
        b[68..72].copy_from_slice(&4u32.to_be_bytes());
        b.extend_from_slice(b"/ld\0");
        assert_eq!(
            linkage(&b[..]),
            Ok(Linkage::Dynamic {
                interp: "/ld".into()
            })
        );
    }

    #[test]
    fn not_elf() {
        assert_eq!(linkage(&b""[..]), Err(ElfError::NotElf));
        assert_eq!(linkage(&b"\x7fEL"[..]), Err(ElfError::NotElf));
        assert_eq!(linkage(&b"#!/bin/sh\necho hi\n"[..]), Err(ElfError::NotElf));
        assert_eq!(linkage(&[0u8; 4096][..]), Err(ElfError::NotElf));
    }

    #[test]
    fn truncated_headers() {
        let full = with_interp(b"/lib/ld.so");
        // Every prefix shorter than the whole file is refused, never read past its end.
        for n in 4..full.len() {
            let r = linkage(&full[..n]);
            assert!(
                matches!(r, Err(ElfError::Truncated(_))),
                "prefix of {n}: {r:?}"
            );
        }
        assert_eq!(
            linkage(&elf64(0)[..40]),
            Err(ElfError::Truncated("ELF header"))
        );
        assert_eq!(
            linkage(&elf64(0)[..10]),
            Err(ElfError::Truncated("identification"))
        );
    }

    #[test]
    fn huge_counts_and_offsets() {
        // A phnum far beyond the file.
        let mut b = elf64(1);
        b[0x38..0x3a].copy_from_slice(&0xfff0u16.to_le_bytes());
        assert!(matches!(linkage(&b[..]), Err(ElfError::Truncated(_))));
        // PN_XNUM.
        b[0x38..0x3a].copy_from_slice(&PN_XNUM.to_le_bytes());
        assert!(matches!(linkage(&b[..]), Err(ElfError::Malformed(_))));
        // The largest phentsize.
        let mut b = elf64(1);
        b[0x36..0x38].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(linkage(&b[..]), Err(ElfError::Truncated(_))));
        // A phentsize too small to hold a header.
        b[0x36..0x38].copy_from_slice(&8u16.to_le_bytes());
        assert!(matches!(linkage(&b[..]), Err(ElfError::Malformed(_))));
        // A phoff near u64::MAX: the sum overflows and must not wrap around.
        let mut b = elf64(1);
        b[0x20..0x28].copy_from_slice(&(u64::MAX - 10).to_le_bytes());
        assert!(matches!(linkage(&b[..]), Err(ElfError::Truncated(_))));
        // No program headers.
        assert!(matches!(
            linkage(&elf64(0)[..]),
            Err(ElfError::Malformed(_))
        ));
    }

    #[test]
    fn bad_interp_segments() {
        let mut b = elf64(2);
        // Offset past the end.
        set_interp(&mut b, 0, 1 << 40, 10);
        assert!(matches!(linkage(&b[..]), Err(ElfError::Truncated(_))));
        // Offset + size overflows.
        set_interp(&mut b, 0, u64::MAX - 2, 10);
        assert!(matches!(linkage(&b[..]), Err(ElfError::Truncated(_))));
        // Empty or huge.
        set_interp(&mut b, 0, 0, 0);
        assert!(matches!(linkage(&b[..]), Err(ElfError::Malformed(_))));
        set_interp(&mut b, 0, 0, u64::MAX);
        assert!(matches!(linkage(&b[..]), Err(ElfError::Malformed(_))));
        // Without a terminating NUL: the whole segment is the path.
        let mut b = elf64(1);
        let off = b.len() as u64;
        b.extend_from_slice(b"/ld");
        set_interp(&mut b, 0, off, 3);
        assert_eq!(
            linkage(&b[..]),
            Ok(Linkage::Dynamic {
                interp: "/ld".into()
            })
        );
    }

    #[test]
    fn not_an_executable() {
        let mut b = elf64(1);
        b[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        assert_eq!(linkage(&b[..]), Err(ElfError::NotExecutable(1)));
    }

    #[test]
    fn real_files() {
        // The test binary itself is an ELF executable; /bin/sh (when dynamic) needs a loader.
        let me = std::env::current_exe().unwrap();
        assert!(file_linkage(&me).unwrap().is_ok());
        if let Ok(Ok(Linkage::Dynamic { interp })) = file_linkage(Path::new("/bin/sh")) {
            assert!(interp.starts_with('/'), "{interp}");
        }
        let dir = std::env::temp_dir().join(format!("jailer-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("script");
        std::fs::write(&script, b"#!/bin/sh\n").unwrap();
        assert_eq!(file_linkage(&script).unwrap(), Err(ElfError::NotElf));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
