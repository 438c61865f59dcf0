//! The built-in allow-lists of the three thread kinds, found by running tartarus-vmm under
//! `strace -f` through every path (API boot, serial output, Ctrl-Alt-Del reset, pause/resume,
//! config-file boot, log and metrics files, FlushMetrics) and by reading the code.
//!
//! Each list covers what its thread does *after* installing its filter. Filters stack: a thread
//! started after the VMM thread installed its filter runs under the VMM filter as well as its
//! own. vCPU threads are started by `InstanceStart`, usually after the VMM filter is in place,
//! so the VMM list includes the vCPU list and what a new thread does before its own filter
//! (set_robust_list, rseq, naming itself, installing its filter).

use crate::ioctls::*;
use crate::rules::{AllowList, Cond};
use crate::sys;

/// The syscall the test trigger calls: on none of the lists.
pub const FORBIDDEN_FOR_TESTS: i64 = libc::SYS_getppid;

fn named(pairs: &[(&'static str, u32)]) -> Vec<(&'static str, u64)> {
    pairs.iter().map(|(n, v)| (*n, u64::from(*v))).collect()
}

/// Syscalls any thread of a Rust program may need whatever its workload did while traced
/// (allocation, lock contention, signals, exit); added to generated profiles.
pub fn runtime_baseline() -> Vec<&'static str> {
    let (any, checked) = common().names();
    any.into_iter().chain(checked).collect()
}

/// What every thread may do: allocate, lock, log, take signals, end itself or the process
/// (including `abort()` after a panic, which raises SIGABRT through tgkill).
fn common() -> AllowList {
    let mut l = AllowList::new();
    l.any(&[
        sys!(SYS_brk),
        sys!(SYS_munmap),
        sys!(SYS_mremap),
        sys!(SYS_madvise),
        sys!(SYS_futex),
        sys!(SYS_clock_gettime),
        sys!(SYS_getrandom),
        sys!(SYS_write),
        sys!(SYS_close),
        sys!(SYS_rt_sigreturn),
        sys!(SYS_rt_sigprocmask),
        sys!(SYS_sigaltstack),
        sys!(SYS_getpid),
        sys!(SYS_gettid),
        sys!(SYS_exit),
        sys!(SYS_exit_group),
        // std's channels back off with sched_yield under contention (seen killing the API
        // thread of a loaded host).
        sys!(SYS_sched_yield),
    ]);
    // Memory may be mapped or re-protected, never as executable code.
    let no_exec = || {
        vec![Cond::masked(
            2,
            libc::PROT_EXEC as u64,
            0,
            "prot without PROT_EXEC",
        )]
    };
    l.when(sys!(SYS_mmap), no_exec());
    l.when(sys!(SYS_mprotect), no_exec());
    l.one_of(sys!(SYS_tgkill), 2, &[("SIGABRT", libc::SIGABRT as u64)]);
    // Rust's standard library checks, in debug builds, that an fd is open before closing it
    // (F_GETFD only reads the fd's flags); a vCPU thread dropping its fds at exit does this.
    l.one_of(sys!(SYS_fcntl), 1, &[("F_GETFD", libc::F_GETFD as u64)]);
    l
}

fn fcntl_cmds() -> Vec<(&'static str, u64)> {
    vec![
        ("F_GETFD", libc::F_GETFD as u64),
        ("F_SETFD", libc::F_SETFD as u64),
        ("F_GETFL", libc::F_GETFL as u64),
        ("F_SETFL", libc::F_SETFL as u64),
        ("F_DUPFD_CLOEXEC", libc::F_DUPFD_CLOEXEC as u64),
    ]
}

/// The API thread: poll the listening socket and its connections, read requests, write
/// responses, wake the VMM thread through an EventFd (write).
pub fn api() -> AllowList {
    let mut l = common();
    l.any(&[
        sys!(SYS_accept4),
        sys!(SYS_poll),
        sys!(SYS_recvfrom),
        sys!(SYS_sendto),
        sys!(SYS_shutdown),
        sys!(SYS_read),
    ]);
    l.one_of(sys!(SYS_fcntl), 1, &fcntl_cmds());
    l.one_of(sys!(SYS_ioctl), 1, &named(&[("FIONBIO", FIONBIO)]));
    l
}

/// The vCPU state ioctls (get and set), for snapshot and restore.
const VCPU_STATE_IOCTLS: &[(&str, u32)] = &[
    ("KVM_GET_REGS", KVM_GET_REGS),
    ("KVM_SET_REGS", KVM_SET_REGS),
    ("KVM_GET_SREGS", KVM_GET_SREGS),
    ("KVM_SET_SREGS", KVM_SET_SREGS),
    ("KVM_GET_FPU", KVM_GET_FPU),
    ("KVM_SET_FPU", KVM_SET_FPU),
    ("KVM_GET_LAPIC", KVM_GET_LAPIC),
    ("KVM_SET_LAPIC", KVM_SET_LAPIC),
    ("KVM_GET_MSRS", KVM_GET_MSRS),
    ("KVM_SET_MSRS", KVM_SET_MSRS),
    ("KVM_GET_CPUID2", KVM_GET_CPUID2),
    ("KVM_SET_CPUID2", KVM_SET_CPUID2),
    ("KVM_GET_XCRS", KVM_GET_XCRS),
    ("KVM_SET_XCRS", KVM_SET_XCRS),
    ("KVM_GET_XSAVE", KVM_GET_XSAVE),
    ("KVM_GET_XSAVE2", KVM_GET_XSAVE2),
    ("KVM_SET_XSAVE", KVM_SET_XSAVE),
    ("KVM_GET_VCPU_EVENTS", KVM_GET_VCPU_EVENTS),
    ("KVM_SET_VCPU_EVENTS", KVM_SET_VCPU_EVENTS),
    ("KVM_GET_MP_STATE", KVM_GET_MP_STATE),
    ("KVM_SET_MP_STATE", KVM_SET_MP_STATE),
    ("KVM_GET_DEBUGREGS", KVM_GET_DEBUGREGS),
    ("KVM_SET_DEBUGREGS", KVM_SET_DEBUGREGS),
    ("KVM_GET_TSC_KHZ", KVM_GET_TSC_KHZ),
    ("KVM_SET_TSC_KHZ", KVM_SET_TSC_KHZ),
    ("KVM_KVMCLOCK_CTRL", KVM_KVMCLOCK_CTRL),
];

/// A vCPU thread: `KVM_RUN` and its vCPU's state ioctls; device emulation on exits writes
/// serial output and EventFds; the kick signal interrupts KVM_RUN.
pub fn vcpu() -> AllowList {
    let mut l = common();
    l.any(&[sys!(SYS_restart_syscall)]);
    l.one_of(sys!(SYS_ioctl), 1, &named(&[("KVM_RUN", KVM_RUN)]));
    l.one_of(sys!(SYS_ioctl), 1, &named(VCPU_STATE_IOCTLS));
    l
}

/// The VM-wide and system KVM ioctls the VMM thread uses to build (InstanceStart, snapshot
/// load), snapshot and run a microVM.
const VMM_KVM_IOCTLS: &[(&str, u32)] = &[
    ("KVM_GET_API_VERSION", KVM_GET_API_VERSION),
    ("KVM_CREATE_VM", KVM_CREATE_VM),
    ("KVM_CHECK_EXTENSION", KVM_CHECK_EXTENSION),
    ("KVM_GET_VCPU_MMAP_SIZE", KVM_GET_VCPU_MMAP_SIZE),
    ("KVM_GET_SUPPORTED_CPUID", KVM_GET_SUPPORTED_CPUID),
    ("KVM_GET_MSR_INDEX_LIST", KVM_GET_MSR_INDEX_LIST),
    (
        "KVM_GET_MSR_FEATURE_INDEX_LIST",
        KVM_GET_MSR_FEATURE_INDEX_LIST,
    ),
    ("KVM_CREATE_VCPU", KVM_CREATE_VCPU),
    ("KVM_SET_USER_MEMORY_REGION", KVM_SET_USER_MEMORY_REGION),
    ("KVM_GET_DIRTY_LOG", KVM_GET_DIRTY_LOG),
    ("KVM_SET_TSS_ADDR", KVM_SET_TSS_ADDR),
    ("KVM_SET_IDENTITY_MAP_ADDR", KVM_SET_IDENTITY_MAP_ADDR),
    ("KVM_CREATE_IRQCHIP", KVM_CREATE_IRQCHIP),
    ("KVM_GET_IRQCHIP", KVM_GET_IRQCHIP),
    ("KVM_SET_IRQCHIP", KVM_SET_IRQCHIP),
    ("KVM_IRQ_LINE", KVM_IRQ_LINE),
    ("KVM_SET_GSI_ROUTING", KVM_SET_GSI_ROUTING),
    ("KVM_IRQFD", KVM_IRQFD),
    ("KVM_IOEVENTFD", KVM_IOEVENTFD),
    ("KVM_CREATE_PIT2", KVM_CREATE_PIT2),
    ("KVM_GET_PIT2", KVM_GET_PIT2),
    ("KVM_SET_PIT2", KVM_SET_PIT2),
    ("KVM_GET_CLOCK", KVM_GET_CLOCK),
    ("KVM_SET_CLOCK", KVM_SET_CLOCK),
];

/// The VMM thread: the event loop (epoll, EventFds, timers), the controller (log, metrics and
/// serial files, the terminal), and the builder (open kernel and initrd, /dev/kvm and its
/// ioctls, guest memory, vCPU threads and their kick signal). Includes the vCPU list, see the
/// module documentation.
pub fn vmm() -> AllowList {
    let mut l = common();
    l.any(&[
        // Event loop.
        sys!(SYS_epoll_create1),
        sys!(SYS_epoll_ctl),
        sys!(SYS_epoll_wait),
        sys!(SYS_epoll_pwait),
        sys!(SYS_eventfd2),
        sys!(SYS_timerfd_create),
        sys!(SYS_timerfd_settime),
        sys!(SYS_timerfd_gettime),
        sys!(SYS_read),
        // Files: kernel, initrd, /dev/kvm, /dev/net/tun, log, metrics and serial output; the API socket is
        // removed at exit.
        sys!(SYS_openat),
        sys!(SYS_statx),
        sys!(SYS_newfstatat),
        sys!(SYS_fstat),
        sys!(SYS_lseek),
        sys!(SYS_unlink),
        sys!(SYS_unlinkat),
        // Resolving a relative --api-sock path when removing the socket at exit.
        sys!(SYS_getcwd),
        // Snapshots: memory and state files (written whole, renamed into place, synced), the
        // page-server thread (poll on the uffd, pread of sparse files).
        sys!(SYS_ftruncate),
        sys!(SYS_fsync),
        sys!(SYS_fdatasync),
        sys!(SYS_pread64),
        sys!(SYS_pwrite64),
        sys!(SYS_rename),
        sys!(SYS_renameat),
        sys!(SYS_renameat2),
        sys!(SYS_poll),
        sys!(SYS_ppoll),
        sys!(SYS_userfaultfd),
        // The external page-fault handler: connect and pass the uffd over a Unix socket.
        sys!(SYS_connect),
        sys!(SYS_sendmsg),
        sys!(SYS_recvmsg),
        // virtio-vsock: the Unix listener at uds_path, accepted and connected streams (std reads
        // sockets with recv and writes them with send(MSG_NOSIGNAL)), half-closes.
        sys!(SYS_bind),
        sys!(SYS_listen),
        sys!(SYS_accept4),
        sys!(SYS_recvfrom),
        sys!(SYS_sendto),
        sys!(SYS_shutdown),
        // virtio-blk: vectored I/O (Sync engine) and io_uring (Async engine).
        sys!(SYS_preadv),
        sys!(SYS_pwritev),
        sys!(SYS_io_uring_setup),
        sys!(SYS_io_uring_enter),
        sys!(SYS_io_uring_register),
        // vCPU threads (glibc's pthread_create uses clone3, whose flags BPF cannot see) and
        // what a new thread does before installing its own filter.
        sys!(SYS_clone3),
        sys!(SYS_set_robust_list),
        sys!(SYS_rseq),
        sys!(SYS_sched_getaffinity),
        sys!(SYS_rt_sigaction),
    ]);
    l.when(
        sys!(SYS_clone),
        vec![Cond::masked(
            0,
            libc::CLONE_THREAD as u64,
            libc::CLONE_THREAD as u64,
            "threads only",
        )],
    );
    l.one_of(
        sys!(SYS_prctl),
        0,
        &[
            ("PR_SET_NAME", libc::PR_SET_NAME as u64),
            ("PR_SET_VMA", libc::PR_SET_VMA as u64),
            ("PR_SET_NO_NEW_PRIVS", libc::PR_SET_NO_NEW_PRIVS as u64),
        ],
    );
    l.one_of(
        sys!(SYS_seccomp),
        0,
        &[(
            "SECCOMP_SET_MODE_FILTER",
            libc::SECCOMP_SET_MODE_FILTER as u64,
        )],
    );
    l.one_of(
        sys!(SYS_tgkill),
        2,
        &[("vCPU kick (SIGRTMIN)", libc::SIGRTMIN() as u64)],
    );
    l.one_of(sys!(SYS_fcntl), 1, &fcntl_cmds());
    // Unix sockets only (the external userfaultfd handler, vsock).
    l.one_of(sys!(SYS_socket), 0, &[("AF_UNIX", libc::AF_UNIX as u64)]);
    l.one_of(sys!(SYS_ioctl), 1, &named(VMM_KVM_IOCTLS));
    l.one_of(sys!(SYS_ioctl), 1, &named(UFFD_IOCTLS));
    // virtio-net: attach to a tap at InstanceStart, set its offloads after the guest negotiated
    // them, look an interface up (on a Unix socket) for PUT /network-interfaces.
    l.one_of(sys!(SYS_ioctl), 1, &named(NET_IOCTLS));
    l.one_of(
        sys!(SYS_ioctl),
        1,
        &named(&[
            ("TCGETS", TCGETS),
            ("TCSETS", TCSETS),
            ("TCSETSW", TCSETSW),
            ("TCSETSF", TCSETSF),
            ("FIONBIO", FIONBIO),
            ("FIOCLEX", FIOCLEX),
        ]),
    );
    l.merge(&vcpu());
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_compile() {
        for l in [api(), vmm(), vcpu()] {
            assert!(!l.to_bpf().unwrap().is_empty());
        }
    }

    #[test]
    fn the_test_trigger_is_forbidden_everywhere() {
        for l in [api(), vmm(), vcpu()] {
            assert!(!l.mentions(FORBIDDEN_FOR_TESTS));
        }
    }

    #[test]
    fn vmm_list_covers_vcpu_threads() {
        let mut vmm = vmm();
        let before = vmm.clone();
        vmm.merge(&vcpu());
        assert_eq!(vmm, before);
    }

    #[test]
    fn every_thread_may_allocate_and_free() {
        // What glibc's malloc and free use on any thread (issue 10: the VMM limits itself to
        // one arena, so no thread needs the /proc read behind non-main heap trimming).
        for l in [api(), vmm(), vcpu()] {
            for nr in [
                libc::SYS_brk,
                libc::SYS_munmap,
                libc::SYS_mremap,
                libc::SYS_madvise,
                libc::SYS_futex,
            ] {
                assert!(l.allows_unconditionally(nr), "syscall {nr}");
            }
            for nr in [libc::SYS_mmap, libc::SYS_mprotect] {
                assert!(l.mentions(nr), "syscall {nr}");
            }
        }
    }

    #[test]
    fn dangerous_syscalls_are_absent() {
        for l in [api(), vmm(), vcpu()] {
            for nr in [
                libc::SYS_execve,
                libc::SYS_fork,
                libc::SYS_ptrace,
                libc::SYS_open,
                libc::SYS_mount,
                libc::SYS_kill,
            ] {
                assert!(!l.mentions(nr), "syscall {nr}");
            }
        }
        // Only the VMM thread opens sockets (to an external page-fault handler), and only Unix ones.
        assert!(!api().mentions(libc::SYS_socket));
        assert!(!vcpu().mentions(libc::SYS_socket));
        assert!(vmm().mentions(libc::SYS_socket));
        assert!(!vmm().allows_unconditionally(libc::SYS_socket));
        assert!(!api().mentions(libc::SYS_openat));
        assert!(!vcpu().mentions(libc::SYS_openat));
        assert!(!vcpu().mentions(libc::SYS_clone3));
    }
}
