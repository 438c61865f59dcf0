//! Vector-register state the guest kernel does not save, and keeping glibc away from it.
//!
//! A Linux kernel saves a task's register state on a context switch with XSAVE when it uses it,
//! else with FXSAVE, which covers only x87 and SSE (XMM). User space learns what it may use from
//! CPUID and XGETBV (XCR0). On hardware the two agree: a kernel without XSAVE leaves
//! CR4.OSXSAVE clear and user space sees no AVX. Under a nested PVM hypervisor they do not: the
//! guest kernel must boot with `noxsave` (a ring-0 XRSTOR is not emulated there), yet its user
//! space runs on the host's CPU with the host's CPUID and XCR0, AVX and AVX-512 enabled. glibc
//! then picks its AVX2/EVEX string functions, processes sharing a vCPU clobber each other's
//! upper YMM/ZMM and mask registers, and now and then one of them crashes
//! (`tests/linux-progs/vecstate.c` shows both). The kernel cannot narrow XCR0 itself: the
//! hypervisor ignores the guest's XSETBV for user space.
//!
//! So tartarus-init checks at start-up whether user space may use state the kernel does not
//! save and, if so, sets `GLIBC_TUNABLES` for itself (re-executing PID 1) and every process it
//! starts (the agent's execs, also with `clear_env`, and the console shell) so that glibc
//! selects its SSE code. Programs that
//! pick AVX code by themselves (their own CPUID checks, or built with `-mavx2`) are not covered.

/// XCR0 bits that FXSAVE covers: x87 (bit 0) and SSE (bit 1).
pub const FXSAVE_STATE: u64 = 0x3;

/// The `GLIBC_TUNABLES` value that makes glibc (2.33 and later) select SSE code: AVX, AVX2 and
/// AVX-512 off, and the "fast unaligned AVX loads" preference, which alone keeps memcpy and
/// memmove on AVX, off too.
pub const GLIBC_SSE_ONLY: &str = "glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,\
-AVX512DQ,-AVX512CD,-AVX_Fast_Unaligned_Load";

/// What user space may use against what the kernel saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Xstate {
    /// XCR0 as user space sees it (XGETBV); 0 when the OS has not enabled XSAVE.
    pub user_xcr0: u64,
    /// Whether the kernel saves tasks with XSAVE (`xsave` in its /proc/cpuinfo flags).
    pub kernel_xsave: bool,
}

impl Xstate {
    /// XCR0 bits user space may use that a context switch does not preserve.
    pub fn unsaved(&self) -> u64 {
        if self.kernel_xsave {
            0
        } else {
            self.user_xcr0 & !FXSAVE_STATE
        }
    }

    /// The `GLIBC_TUNABLES` value every process should get, or None when nothing is unsaved.
    pub fn glibc_tunables(&self) -> Option<&'static str> {
        (self.unsaved() != 0).then_some(GLIBC_SSE_ONLY)
    }
}

/// Whether the first `flags` line of /proc/cpuinfo lists `xsave`.
pub fn kernel_uses_xsave(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .is_some_and(|(_, flags)| flags.split_whitespace().any(|f| f == "xsave"))
}

/// XCR0 as this process sees it, 0 when CPUID says the OS has not enabled XSAVE.
#[cfg(target_arch = "x86_64")]
pub fn user_xcr0() -> u64 {
    use std::arch::x86_64::{__cpuid, _xgetbv, CpuidResult};
    const OSXSAVE: u32 = 1 << 27;
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaf 1 exists on every x86_64 CPU and only reads identification registers.
    let leaf1: CpuidResult = unsafe { __cpuid(1) };
    if leaf1.ecx & OSXSAVE == 0 {
        return 0;
    }
    // SAFETY: OSXSAVE set means the OS enabled XGETBV for every privilege level; register 0
    // (XCR0) always exists then.
    unsafe { _xgetbv(0) }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn user_xcr0() -> u64 {
    0
}

/// This system's [`Xstate`] (reads /proc/cpuinfo, which must be mounted).
pub fn probe() -> Xstate {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    Xstate {
        user_xcr0: user_xcr0(),
        // Without /proc the kernel's choice is unknown: assume the worst (FXSAVE).
        kernel_xsave: kernel_uses_xsave(&cpuinfo),
    }
}

/// `ours` followed by the caller's own tunables (colon-separated; later entries win in glibc).
pub fn merge_tunables(ours: &str, theirs: Option<&str>) -> String {
    match theirs {
        Some(t) if !t.is_empty() => format!("{ours}:{t}"),
        _ => ours.to_string(),
    }
}

/// The tunables PID 1 decided on at start-up (see [`set_guard`]); None when none are needed.
pub fn guard() -> Option<&'static str> {
    GUARD.get().copied().flatten()
}

/// Records the start-up decision for [`guard`] (the first call wins).
pub fn set_guard(tunables: Option<&'static str>) {
    let _ = GUARD.set(tunables);
}

static GUARD: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();

#[cfg(test)]
mod tests {
    use super::*;

    const PVM_CPUINFO: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\n\
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov fxsr sse sse2 ht syscall nx\n\n";
    const XSAVE_CPUINFO: &str =
        "processor\t: 0\nflags\t\t: fpu fxsr sse sse2 xsave avx avx2 xsaveopt\nbugs\t\t: spectre_v1\n";

    #[test]
    fn reads_the_kernels_xsave_flag() {
        assert!(!kernel_uses_xsave(PVM_CPUINFO));
        assert!(kernel_uses_xsave(XSAVE_CPUINFO));
        assert!(!kernel_uses_xsave(""));
        // "xsaveopt" alone is not "xsave".
        assert!(!kernel_uses_xsave("flags\t: fxsr xsaveopt\n"));
    }

    #[test]
    fn unsaved_state_is_xcr0_beyond_fxsave_when_the_kernel_uses_fxsave() {
        let pvm = Xstate {
            user_xcr0: 0xe7,
            kernel_xsave: false,
        };
        assert_eq!(pvm.unsaved(), 0xe4);
        assert_eq!(pvm.glibc_tunables(), Some(GLIBC_SSE_ONLY));
        let hw = Xstate {
            user_xcr0: 0xe7,
            kernel_xsave: true,
        };
        assert_eq!(hw.unsaved(), 0);
        assert_eq!(hw.glibc_tunables(), None);
        // noxsave on hardware: OSXSAVE clear, XCR0 unreadable, nothing to hide.
        let noxsave_hw = Xstate {
            user_xcr0: 0,
            kernel_xsave: false,
        };
        assert_eq!(noxsave_hw.glibc_tunables(), None);
        let sse_only = Xstate {
            user_xcr0: 0x3,
            kernel_xsave: false,
        };
        assert_eq!(sse_only.glibc_tunables(), None);
    }

    #[test]
    fn merges_callers_tunables_after_ours() {
        assert_eq!(merge_tunables("a=1", None), "a=1");
        assert_eq!(merge_tunables("a=1", Some("")), "a=1");
        assert_eq!(merge_tunables("a=1", Some("b=2")), "a=1:b=2");
    }

    #[test]
    fn this_hosts_xcr0_has_x87_and_sse_when_readable() {
        let x = user_xcr0();
        assert!(x == 0 || x & FXSAVE_STATE == FXSAVE_STATE, "{x:#x}");
    }
}
