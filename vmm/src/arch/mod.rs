//! x86_64 specifics: guest memory layout, boot-time CPU state, CPUID, MSRs, the MP table and
//! the Linux zero page.

pub mod boot_params;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
