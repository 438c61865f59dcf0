//! ioctl request numbers the filters check, and their names (for the profile generator, which
//! reads strace's decoded names such as `KVM_RUN` or `TCGETS`).

use std::mem::size_of;

use kvm_bindings::*;

const IOC_NONE: u32 = 0;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)` from `<asm-generic/ioctl.h>`.
pub const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (ty << 8) | nr
}
const fn io(nr: u32) -> u32 {
    ioc(IOC_NONE, KVMIO, nr, 0)
}
const fn ior<T>(nr: u32) -> u32 {
    ioc(IOC_READ, KVMIO, nr, size_of::<T>())
}
const fn iow<T>(nr: u32) -> u32 {
    ioc(IOC_WRITE, KVMIO, nr, size_of::<T>())
}
const fn iowr<T>(nr: u32) -> u32 {
    ioc(IOC_READ | IOC_WRITE, KVMIO, nr, size_of::<T>())
}

macro_rules! ioctls {
    ($table:ident: $($name:ident = $value:expr;)*) => {
        $(pub const $name: u32 = $value;)*
        /// Every request number above, by name.
        pub const $table: &[(&str, u32)] = &[$((stringify!($name), $name)),*];
    };
}

// The KVM ioctls (x86_64), as kvm-ioctls defines them.
ioctls! { KVM_IOCTLS:
    KVM_GET_API_VERSION = io(0x00);
    KVM_CREATE_VM = io(0x01);
    KVM_GET_MSR_INDEX_LIST = iowr::<kvm_msr_list>(0x02);
    KVM_CHECK_EXTENSION = io(0x03);
    KVM_GET_VCPU_MMAP_SIZE = io(0x04);
    KVM_GET_SUPPORTED_CPUID = iowr::<kvm_cpuid2>(0x05);
    KVM_GET_MSR_FEATURE_INDEX_LIST = iowr::<kvm_msr_list>(0x0a);
    KVM_CREATE_VCPU = io(0x41);
    KVM_GET_DIRTY_LOG = iow::<kvm_dirty_log>(0x42);
    KVM_SET_USER_MEMORY_REGION = iow::<kvm_userspace_memory_region>(0x46);
    KVM_SET_TSS_ADDR = io(0x47);
    KVM_SET_IDENTITY_MAP_ADDR = iow::<u64>(0x48);
    KVM_CREATE_IRQCHIP = io(0x60);
    KVM_IRQ_LINE = iow::<kvm_irq_level>(0x61);
    KVM_GET_IRQCHIP = iowr::<kvm_irqchip>(0x62);
    KVM_SET_IRQCHIP = ior::<kvm_irqchip>(0x63);
    KVM_SET_GSI_ROUTING = iow::<kvm_irq_routing>(0x6a);
    KVM_IRQFD = iow::<kvm_irqfd>(0x76);
    KVM_CREATE_PIT2 = iow::<kvm_pit_config>(0x77);
    KVM_IOEVENTFD = iow::<kvm_ioeventfd>(0x79);
    KVM_SET_CLOCK = iow::<kvm_clock_data>(0x7b);
    KVM_GET_CLOCK = ior::<kvm_clock_data>(0x7c);
    KVM_GET_PIT2 = ior::<kvm_pit_state2>(0x9f);
    KVM_SET_PIT2 = iow::<kvm_pit_state2>(0xa0);
    KVM_RUN = io(0x80);
    KVM_GET_REGS = ior::<kvm_regs>(0x81);
    KVM_SET_REGS = iow::<kvm_regs>(0x82);
    KVM_GET_SREGS = ior::<kvm_sregs>(0x83);
    KVM_SET_SREGS = iow::<kvm_sregs>(0x84);
    KVM_GET_MSRS = iowr::<kvm_msrs>(0x88);
    KVM_SET_MSRS = iow::<kvm_msrs>(0x89);
    KVM_GET_FPU = ior::<kvm_fpu>(0x8c);
    KVM_SET_FPU = iow::<kvm_fpu>(0x8d);
    KVM_GET_LAPIC = ior::<kvm_lapic_state>(0x8e);
    KVM_SET_LAPIC = iow::<kvm_lapic_state>(0x8f);
    KVM_SET_CPUID2 = iow::<kvm_cpuid2>(0x90);
    KVM_GET_CPUID2 = iowr::<kvm_cpuid2>(0x91);
    KVM_GET_MP_STATE = ior::<kvm_mp_state>(0x98);
    KVM_SET_MP_STATE = iow::<kvm_mp_state>(0x99);
    KVM_GET_VCPU_EVENTS = ior::<kvm_vcpu_events>(0x9f);
    KVM_SET_VCPU_EVENTS = iow::<kvm_vcpu_events>(0xa0);
    KVM_GET_DEBUGREGS = ior::<kvm_debugregs>(0xa1);
    KVM_SET_DEBUGREGS = iow::<kvm_debugregs>(0xa2);
    KVM_SET_TSC_KHZ = io(0xa2);
    KVM_GET_TSC_KHZ = io(0xa3);
    KVM_GET_XSAVE = ior::<kvm_xsave>(0xa4);
    KVM_SET_XSAVE = iow::<kvm_xsave>(0xa5);
    KVM_GET_XCRS = ior::<kvm_xcrs>(0xa6);
    KVM_SET_XCRS = iow::<kvm_xcrs>(0xa7);
    KVM_KVMCLOCK_CTRL = io(0xad);
    KVM_GET_XSAVE2 = ior::<kvm_xsave>(0xcf);
}

// Terminal and file ioctls (x86_64 numbers from <asm-generic/ioctls.h>).
ioctls! { OTHER_IOCTLS:
    TCGETS = 0x5401;
    TCSETS = 0x5402;
    TCSETSW = 0x5403;
    TCSETSF = 0x5404;
    TIOCGWINSZ = 0x5413;
    FIONREAD = 0x541b;
    FIONBIO = 0x5421;
    FIONCLEX = 0x5450;
    FIOCLEX = 0x5451;
}

// userfaultfd (<linux/userfaultfd.h>, type 0xAA): snapshot restore with a Uffd backend.
const UFFDIO: u32 = 0xaa;
ioctls! { UFFD_IOCTLS:
    USERFAULTFD_IOC_NEW = ioc(IOC_NONE, UFFDIO, 0x00, 0);
    UFFDIO_REGISTER = ioc(IOC_READ | IOC_WRITE, UFFDIO, 0x00, 32);
    UFFDIO_UNREGISTER = ioc(IOC_READ, UFFDIO, 0x01, 16);
    UFFDIO_WAKE = ioc(IOC_READ, UFFDIO, 0x02, 16);
    UFFDIO_COPY = ioc(IOC_READ | IOC_WRITE, UFFDIO, 0x03, 40);
    UFFDIO_ZEROPAGE = ioc(IOC_READ | IOC_WRITE, UFFDIO, 0x04, 32);
    UFFDIO_API = ioc(IOC_READ | IOC_WRITE, UFFDIO, 0x3f, 24);
}

// tun/tap (<linux/if_tun.h>, type 'T') and the interface lookup (<linux/sockios.h>): virtio-net.
ioctls! { NET_IOCTLS:
    TUNSETIFF = ioc(IOC_WRITE, b'T' as u32, 202, 4);
    TUNSETOFFLOAD = ioc(IOC_WRITE, b'T' as u32, 208, 4);
    TUNSETVNETHDRSZ = ioc(IOC_WRITE, b'T' as u32, 216, 4);
    SIOCGIFINDEX = 0x8933;
}

/// The request number strace prints as `name`, if known.
pub fn by_name(name: &str) -> Option<u32> {
    KVM_IOCTLS
        .iter()
        .chain(OTHER_IOCTLS)
        .chain(UFFD_IOCTLS)
        .chain(NET_IOCTLS)
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
}

/// The name of a request number, if known (for comments in generated JSON).
pub fn name_of(value: u32) -> Option<&'static str> {
    KVM_IOCTLS
        .iter()
        .chain(OTHER_IOCTLS)
        .chain(UFFD_IOCTLS)
        .chain(NET_IOCTLS)
        .find(|(_, v)| *v == value)
        .map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uffd_numbers_match_the_kernel_headers() {
        // Values printed by a C program including <linux/userfaultfd.h> on x86_64.
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_aa01);
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE, 0xc020_aa04);
        assert_eq!(USERFAULTFD_IOC_NEW, 0xaa00);
    }

    #[test]
    fn net_numbers_match_the_kernel_headers() {
        // Values printed by a C program including <linux/if_tun.h> and <linux/sockios.h>.
        assert_eq!(TUNSETIFF, 0x4004_54ca);
        assert_eq!(TUNSETOFFLOAD, 0x4004_54d0);
        assert_eq!(TUNSETVNETHDRSZ, 0x4004_54d8);
        assert_eq!(SIOCGIFINDEX, 0x8933);
    }

    #[test]
    fn numbers_match_the_kernel_headers() {
        // Values from <linux/kvm.h> as compiled on x86_64.
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_CREATE_VM, 0xae01);
        assert_eq!(KVM_SET_USER_MEMORY_REGION, 0x4020_ae46);
        assert_eq!(KVM_IRQFD, 0x4020_ae76);
        assert_eq!(KVM_IOEVENTFD, 0x4040_ae79);
        assert_eq!(KVM_GET_SUPPORTED_CPUID, 0xc008_ae05);
        assert_eq!(KVM_SET_CPUID2, 0x4008_ae90);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_SET_MSRS, 0x4008_ae89);
        assert_eq!(KVM_GET_DIRTY_LOG, 0x4010_ae42);
        assert_eq!(KVM_GET_IRQCHIP, 0xc208_ae62);
        assert_eq!(FIONBIO, libc::FIONBIO as u32);
        assert_eq!(TCGETS, libc::TCGETS as u32);
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(by_name("KVM_RUN"), Some(KVM_RUN));
        assert_eq!(name_of(KVM_RUN), Some("KVM_RUN"));
        assert_eq!(by_name("NOT_AN_IOCTL"), None);
    }
}
