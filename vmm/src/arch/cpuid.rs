//! CPUID for each vCPU: what KVM supports, with the APIC id and topology of that vCPU filled in
//! and the hypervisor bit set.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Topology the guest is told about: `count` vCPUs in one socket, two threads per core with SMT.
#[derive(Clone, Copy, Debug)]
pub struct Topology {
    pub cpu_id: u8,
    pub count: u8,
    pub smt: bool,
}

impl Topology {
    fn threads_per_core(&self) -> u32 {
        if self.smt && self.count > 1 {
            2
        } else {
            1
        }
    }
}

/// Bits needed to hold `n` distinct values (ceil(log2(n))).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

fn is_amd(cpuid: &CpuId) -> bool {
    cpuid.as_slice().iter().any(|e| {
        e.function == 0 && e.ebx == u32::from_le_bytes(*b"Auth") // "AuthenticAMD"
    })
}

fn adjust(e: &mut kvm_cpuid_entry2, t: &Topology, amd: bool) {
    let apic_id = u32::from(t.cpu_id);
    let count = u32::from(t.count);
    let tpc = t.threads_per_core();
    match e.function {
        0x1 => {
            // EBX: APIC id [31:24], logical processors per package [23:16], CLFLUSH size [15:8].
            e.ebx = (apic_id << 24) | (count.next_power_of_two().min(255) << 16) | (8 << 8);
            if count > 1 {
                e.edx |= 1 << 28; // HTT: the package holds several logical processors
            } else {
                e.edx &= !(1 << 28);
            }
            e.ecx |= 1 << 31; // running under a hypervisor
        }
        0x4 if !amd => {
            // Deterministic cache parameters: cores per package and threads sharing the cache.
            let cores = count.div_ceil(tpc);
            let cache_level = (e.eax >> 5) & 0x7;
            let sharing = if cache_level >= 3 { count } else { tpc };
            e.eax &= 0x3ff;
            e.eax |= (cores.next_power_of_two() - 1) << 26;
            e.eax |= (sharing.next_power_of_two() - 1) << 14;
        }
        0x6 => {
            e.ecx &= !1; // no hardware-coordination feedback (APERF/MPERF)
        }
        0xa => {
            // No virtual PMU is offered.
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        0xb => {
            e.edx = apic_id;
            match e.index {
                0 => {
                    e.eax = bits_for(tpc);
                    e.ebx = tpc;
                    e.ecx = (1 << 8) | e.index; // level type: SMT
                }
                1 => {
                    e.eax = bits_for(count);
                    e.ebx = count;
                    e.ecx = (2 << 8) | e.index; // level type: core
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        0x8000_0008 if amd => {
            // ECX: number of cores - 1, APIC id size.
            e.ecx = (bits_for(count) << 12) | (count - 1);
        }
        0x8000_001e if amd => {
            e.eax = apic_id;
            e.ebx = ((tpc - 1) << 8) | (apic_id / tpc);
            e.ecx = 0;
        }
        _ => {}
    }
}

/// Adjusts KVM's supported CPUID for the vCPU described by `t`.
pub fn for_vcpu(supported: &CpuId, t: Topology) -> CpuId {
    let mut cpuid = supported.clone();
    let amd = is_amd(supported);
    for e in cpuid.as_mut_slice() {
        adjust(e, &t, amd);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_and_topology() {
        let base =
            CpuId::from_entries(&[entry(0, 0), entry(1, 0), entry(0xb, 0), entry(0xb, 1)]).unwrap();
        let c = for_vcpu(
            &base,
            Topology {
                cpu_id: 3,
                count: 4,
                smt: true,
            },
        );
        let s = c.as_slice();
        assert_eq!(s[1].ebx >> 24, 3);
        assert_eq!((s[1].ebx >> 16) & 0xff, 4);
        assert_ne!(s[1].ecx & (1 << 31), 0);
        assert_ne!(s[1].edx & (1 << 28), 0);
        assert_eq!(s[2].ebx, 2);
        assert_eq!(s[2].eax, 1);
        assert_eq!(s[3].ebx, 4);
        assert_eq!(s[3].eax, 2);
        assert_eq!(s[3].edx, 3);
    }

    #[test]
    fn bits() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(32), 5);
    }
}
