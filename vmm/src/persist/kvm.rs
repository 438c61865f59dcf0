//! Saving and restoring the KVM side of a microVM: every vCPU's architectural state and the
//! VM-wide interrupt controllers, timer and clock. Devices save their own state (see
//! `devices::legacy::*State`); the snapshot crate writes it all to disk.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use crate::arch::msr::MSR_IA32_TSC;

/// Deadline timer MSR: restored after the TSC so it is not compared against a stale counter.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// KVM_GET_MSRS takes at most this many entries per call.
const MSR_CHUNK: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("KVM failed to {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("Cannot build a KVM list for {0}")]
    Fam(&'static str, #[source] vmm_sys_util::fam::Error),
    #[error("KVM restored only {0} of {1} MSRs (the first refused is {2:#x})")]
    PartialMsrs(usize, usize, u32),
}

type Result<T> = std::result::Result<T, PersistError>;

/// Everything KVM holds for one vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub msrs: Vec<kvm_msr_entry>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
    /// The guest TSC frequency, when KVM reports it.
    #[serde(default)]
    pub tsc_khz: Option<u32>,
}

/// The VM-wide in-kernel devices and the clock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmArchState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// KVM's list of MSR indices (from /dev/kvm).
pub fn msr_index_list(kvm: &Kvm) -> Result<Vec<u32>> {
    Ok(kvm
        .get_msr_index_list()
        .map_err(|e| PersistError::Kvm("list MSRs", e))?
        .as_slice()
        .to_vec())
}

/// Reads the MSRs `indices` (at most MSR_CHUNK); KVM stops at the first one it cannot read, so
/// the result may be shorter than `indices`.
fn read_msr_chunk(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>> {
    let entries: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = Msrs::from_entries(&entries).map_err(|e| PersistError::Fam("MSRs", e))?;
    let n = vcpu
        .get_msrs(&mut msrs)
        .map_err(|e| PersistError::Kvm("read MSRs", e))?;
    Ok(msrs.as_slice()[..n].to_vec())
}

/// The MSRs worth saving: every index of `list` that this vCPU can actually read.
pub fn readable_msrs(list: &[u32], vcpu: &VcpuFd) -> Result<Vec<u32>> {
    let mut readable = Vec::new();
    for chunk in list.chunks(MSR_CHUNK) {
        let mut pending: Vec<u32> = chunk.to_vec();
        // KVM_GET_MSRS stops at the first MSR it cannot read: drop that one and go on.
        while !pending.is_empty() {
            let n = read_msr_chunk(vcpu, &pending)?.len();
            readable.extend_from_slice(&pending[..n]);
            pending.drain(..(n + 1).min(pending.len()));
        }
    }
    Ok(readable)
}

fn get_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>> {
    let mut out = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(MSR_CHUNK) {
        out.extend(read_msr_chunk(vcpu, chunk)?);
    }
    Ok(out)
}

/// Saves a (paused) vCPU. `msr_indices` comes from [`readable_msrs`].
pub fn save_vcpu(id: u8, vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState> {
    // MP state first: reading it makes KVM settle pending events (e.g. a halted vCPU's wakeup).
    let mp_state = vcpu
        .get_mp_state()
        .map_err(|e| PersistError::Kvm("read MP state", e))?;
    let regs = vcpu
        .get_regs()
        .map_err(|e| PersistError::Kvm("read registers", e))?;
    let sregs = vcpu
        .get_sregs()
        .map_err(|e| PersistError::Kvm("read special registers", e))?;
    let xsave = vcpu
        .get_xsave()
        .map_err(|e| PersistError::Kvm("read XSAVE", e))?;
    let xcrs = vcpu
        .get_xcrs()
        .map_err(|e| PersistError::Kvm("read XCRs", e))?;
    let debug_regs = vcpu
        .get_debug_regs()
        .map_err(|e| PersistError::Kvm("read debug registers", e))?;
    let lapic = vcpu
        .get_lapic()
        .map_err(|e| PersistError::Kvm("read LAPIC", e))?;
    let msrs = get_msrs(vcpu, msr_indices)?;
    let events = vcpu
        .get_vcpu_events()
        .map_err(|e| PersistError::Kvm("read vCPU events", e))?;
    let cpuid = vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| PersistError::Kvm("read CPUID", e))?
        .as_slice()
        .to_vec();
    let tsc_khz = vcpu.get_tsc_khz().ok();
    Ok(VcpuState {
        id,
        cpuid,
        msrs,
        regs,
        sregs,
        xsave,
        xcrs,
        debug_regs,
        lapic,
        mp_state,
        events,
        tsc_khz,
    })
}

/// MSRs in the order they must be written back: TSC first, the deadline timer last.
fn restore_order(msrs: &[kvm_msr_entry]) -> Vec<kvm_msr_entry> {
    let rank = |e: &kvm_msr_entry| match e.index {
        MSR_IA32_TSC => 0,
        MSR_IA32_TSC_DEADLINE => 2,
        _ => 1,
    };
    let mut v = msrs.to_vec();
    v.sort_by_key(rank);
    v
}

/// Applies a saved state to a freshly created vCPU, in the order KVM needs.
pub fn restore_vcpu(vcpu: &VcpuFd, s: &VcpuState) -> Result<()> {
    if let Some(khz) = s.tsc_khz {
        if vcpu.get_tsc_khz().ok() != Some(khz) {
            if let Err(e) = vcpu.set_tsc_khz(khz) {
                tracing::warn!("vCPU {}: cannot scale the TSC to {khz} kHz: {e}", s.id);
            }
        }
    }
    let cpuid = CpuId::from_entries(&s.cpuid).map_err(|e| PersistError::Fam("CPUID", e))?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| PersistError::Kvm("set CPUID", e))?;
    vcpu.set_mp_state(s.mp_state)
        .map_err(|e| PersistError::Kvm("set MP state", e))?;
    vcpu.set_regs(&s.regs)
        .map_err(|e| PersistError::Kvm("set registers", e))?;
    vcpu.set_sregs(&s.sregs)
        .map_err(|e| PersistError::Kvm("set special registers", e))?;
    // SAFETY: `xsave` is a complete kvm_xsave read back by KVM_GET_XSAVE on the same kind of
    // host; KVM validates its contents.
    unsafe { vcpu.set_xsave(&s.xsave) }.map_err(|e| PersistError::Kvm("set XSAVE", e))?;
    vcpu.set_xcrs(&s.xcrs)
        .map_err(|e| PersistError::Kvm("set XCRs", e))?;
    vcpu.set_debug_regs(&s.debug_regs)
        .map_err(|e| PersistError::Kvm("set debug registers", e))?;
    vcpu.set_lapic(&s.lapic)
        .map_err(|e| PersistError::Kvm("set LAPIC", e))?;
    let ordered = restore_order(&s.msrs);
    for chunk in ordered.chunks(MSR_CHUNK) {
        let msrs = Msrs::from_entries(chunk).map_err(|e| PersistError::Fam("MSRs", e))?;
        let n = vcpu
            .set_msrs(&msrs)
            .map_err(|e| PersistError::Kvm("set MSRs", e))?;
        if n != chunk.len() {
            return Err(PersistError::PartialMsrs(n, chunk.len(), chunk[n].index));
        }
    }
    vcpu.set_vcpu_events(&s.events)
        .map_err(|e| PersistError::Kvm("set vCPU events", e))?;
    Ok(())
}

fn get_chip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(|e| PersistError::Kvm("read the irqchip", e))?;
    Ok(chip)
}

/// Saves the in-kernel PICs, IOAPIC, PIT and the kvmclock.
pub fn save_vm(vm: &VmFd) -> Result<VmArchState> {
    Ok(VmArchState {
        pic_master: get_chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: get_chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: get_chip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm
            .get_pit2()
            .map_err(|e| PersistError::Kvm("read the PIT", e))?,
        clock: vm
            .get_clock()
            .map_err(|e| PersistError::Kvm("read the clock", e))?,
    })
}

/// Applies a saved VM state to a VM whose irqchip and PIT exist already.
pub fn restore_vm(vm: &VmFd, s: &VmArchState) -> Result<()> {
    for chip in [&s.pic_master, &s.pic_slave, &s.ioapic] {
        vm.set_irqchip(chip)
            .map_err(|e| PersistError::Kvm("set the irqchip", e))?;
    }
    vm.set_pit2(&s.pit)
        .map_err(|e| PersistError::Kvm("set the PIT", e))?;
    // Only the clock value travels; flags describing the old host's clock do not apply here.
    let clock = kvm_clock_data {
        clock: s.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock)
        .map_err(|e| PersistError::Kvm("set the clock", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_order_puts_tsc_first_and_deadline_last() {
        let e = |index| kvm_msr_entry {
            index,
            ..Default::default()
        };
        let v = restore_order(&[
            e(MSR_IA32_TSC_DEADLINE),
            e(0x174),
            e(MSR_IA32_TSC),
            e(0x175),
        ]);
        let idx: Vec<u32> = v.iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![MSR_IA32_TSC, 0x174, 0x175, MSR_IA32_TSC_DEADLINE]);
    }

    #[test]
    fn vcpu_and_vm_state_round_trip_on_kvm() {
        // A real VM: save a vCPU, restore into another and compare.
        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        vm.create_pit2(Default::default()).unwrap();
        let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let a = vm.create_vcpu(0).unwrap();
        a.set_cpuid2(&supported).unwrap();
        let mut regs = a.get_regs().unwrap();
        regs.rax = 0x1234_5678;
        regs.rip = 0x10_0000;
        a.set_regs(&regs).unwrap();
        let msrs = readable_msrs(&msr_index_list(&kvm).unwrap(), &a).unwrap();
        assert!(!msrs.is_empty());
        let s = save_vcpu(0, &a, &msrs).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        let back: VcpuState = serde_json::from_str(&json).unwrap();
        let b = vm.create_vcpu(1).unwrap();
        restore_vcpu(&b, &back).unwrap();
        assert_eq!(b.get_regs().unwrap().rax, 0x1234_5678);
        assert_eq!(b.get_regs().unwrap().rip, 0x10_0000);

        let vs = save_vm(&vm).unwrap();
        let json = serde_json::to_string(&vs).unwrap();
        let back: VmArchState = serde_json::from_str(&json).unwrap();
        restore_vm(&vm, &back).unwrap();
    }
}
