//! Host-side helpers of the snapshot suite: writing into a VMM's guest memory, file sizes, and
//! the peer baselines (mmap, file copy, process spawn) measured from the bench process.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use tartarus_tests::Vmm;

use super::PRETOUCH_FROM;
use crate::{ms, Options, GUEST_MEM_NAME, MERGE_SLACK_KIB};

/// Reads `buf.len()` bytes at `addr` in process `pid`.
fn read_remote(pid: u32, addr: u64, buf: &mut [u8]) -> bool {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` is our own buffer; the kernel checks the remote range.
    let n = unsafe { libc::process_vm_readv(pid as i32, &local, 1, &remote, 1, 0) };
    n == buf.len() as isize
}

/// Host address of guest-physical 0 in the VMM: the `[anon:tartarus-guest-mem]` mapping, or
/// (hosts without CONFIG_ANON_VMA_NAME) an unnamed writable mapping of about the guest size whose
/// bytes at the guest entry point (0x100200) are found in the guest's ELF.
fn guest_base(vmm: &Vmm, size: u64, elf: &Path) -> Result<u64, String> {
    let maps_path = format!("/proc/{}/maps", vmm.pid());
    let maps = std::fs::read_to_string(&maps_path).map_err(|e| format!("{maps_path}: {e}"))?;
    let elf = std::fs::read(elf).map_err(|e| format!("{}: {e}", elf.display()))?;
    let mut candidates = Vec::new();
    for l in maps.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let Some((a, b)) = f.first().and_then(|r| r.split_once('-')) else {
            continue;
        };
        let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        let name = f.get(5).copied().unwrap_or("");
        if name == GUEST_MEM_NAME && b - a == size {
            return Ok(a);
        }
        let slack = MERGE_SLACK_KIB << 10;
        if name.is_empty() && f[1].starts_with("rw") && b - a >= size && b - a <= size + slack {
            candidates.extend([a, b - size]);
        }
    }
    for base in candidates {
        let mut probe = [0u8; 64];
        if read_remote(vmm.pid(), base + 0x100200, &mut probe)
            && probe.iter().any(|&x| x != 0)
            && elf.windows(probe.len()).any(|w| w == probe)
        {
            return Ok(base);
        }
    }
    Err(format!(
        "guest memory ({size} bytes) not found in {maps_path}: cannot pre-touch"
    ))
}

/// Writes a distinct non-zero pattern into every guest page from [`PRETOUCH_FROM`] up, through
/// the VMM's guest mapping.
pub(super) fn pretouch(vmm: &Vmm, mib: u64, elf: &Path) -> Result<(), String> {
    let size = mib << 20;
    let base = guest_base(vmm, size, elf)?;
    const CHUNK: usize = 4 << 20;
    let mut buf = vec![0u8; CHUNK];
    let mut off = PRETOUCH_FROM;
    while off < size {
        let n = CHUNK.min((size - off) as usize);
        for (i, word) in buf[..n].chunks_exact_mut(8).enumerate() {
            let v = (off + 8 * i as u64) ^ 0xa5a5_5a5a_0f0f_f0f0;
            word.copy_from_slice(&v.to_le_bytes());
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: n,
        };
        let remote = libc::iovec {
            iov_base: (base + off) as *mut libc::c_void,
            iov_len: n,
        };
        // SAFETY: `local` is our own buffer of `n` bytes; the remote range lies inside the
        // VMM's guest mapping, which the kernel checks; nothing in this process is written.
        let done = unsafe { libc::process_vm_writev(vmm.pid() as i32, &local, 1, &remote, 1, 0) };
        if done != n as isize {
            return Err(format!(
                "process_vm_writev into the guest at {off:#x}: {}",
                std::io::Error::last_os_error()
            ));
        }
        off += n as u64;
    }
    Ok(())
}

pub(super) fn file_sizes(path: &Path) -> Result<(f64, f64), String> {
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((m.len() as f64, (m.blocks() * 512) as f64))
}

pub(super) fn baseline_mmap_us(path: &Path) -> Result<f64, String> {
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len() as usize;
    let t = Instant::now();
    // SAFETY: a fresh private mapping of our own open file; unmapped below, never accessed.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            f.as_raw_fd(),
            0,
        )
    };
    let d = t.elapsed();
    if p == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `p` is the mapping of `len` bytes made above.
    unsafe { libc::munmap(p, len) };
    Ok(d.as_secs_f64() * 1e6)
}

pub(super) fn baseline_copy_ms(path: &Path, buf: &mut Vec<u8>) -> Result<f64, String> {
    use std::io::Read;
    let t = Instant::now();
    let mut f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len() as usize;
    buf.resize(len, 0);
    f.read_exact(buf).map_err(|e| e.to_string())?;
    Ok(ms(t.elapsed()))
}

pub(super) fn baseline_spawn_ms(opts: &Options) -> Result<f64, String> {
    let t = Instant::now();
    let out = Command::new(&opts.vmm)
        .arg("--version")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("tartarus-vmm --version: {}", out.status));
    }
    Ok(ms(t.elapsed()))
}
