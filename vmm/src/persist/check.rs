//! Validation of a snapshot state file before anything is built from it.
//!
//! The state file is input like an API body: a CRC only proves the file is intact, not that
//! a well-meaning VMM wrote it. Every field is checked here, each failure a message for a 400
//! that leaves the VMM `Not started` and able to load again:
//! - KVM structures are kept as byte arrays whose deserializer zero-pads short ones, so each
//!   must have exactly the length of its struct;
//! - one vCPU state per configured vCPU, in id order;
//! - the memory layout is sane (no overflowing sums, see [`snapshot::MemoryLayout::validate`])
//!   and is the layout this VMM builds for the saved machine configuration.
//!
//! Device configurations go through the API's own checks in [`crate::persist::devices::check`],
//! and the memory file is checked against the layout when it is opened.

use std::path::Path;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use serde_json::Value;
use snapshot::MemoryLayout;

use crate::arch::layout::ram_ranges;
use crate::persist::file::MicroVmState;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotCheckError {
    #[error("{0}")]
    Read(#[source] snapshot::StateError),
    #[error("Invalid snapshot state: {0}")]
    Invalid(String),
    #[error("Invalid snapshot state: cannot parse the body: {0}")]
    Parse(#[source] serde_json::Error),
}

fn invalid(msg: impl Into<String>) -> SnapshotCheckError {
    SnapshotCheckError::Invalid(msg.into())
}

/// Reads the state file at `path` and checks it (see the module documentation).
pub fn read_checked(path: &Path) -> Result<MicroVmState, SnapshotCheckError> {
    let body: Value = snapshot::read_state_file(path).map_err(SnapshotCheckError::Read)?;
    check_blobs(&body)?;
    let state: MicroVmState = serde_json::from_value(body).map_err(SnapshotCheckError::Parse)?;
    check_state(&state)?;
    Ok(state)
}

/// `v` must be an array of exactly `len` bytes.
fn blob(v: &Value, what: &str, len: usize) -> Result<(), SnapshotCheckError> {
    let got = v
        .as_array()
        .ok_or_else(|| invalid(format!("{what} is not a byte array")))?
        .len();
    if got != len {
        return Err(invalid(format!("{what} holds {got} bytes, expected {len}")));
    }
    Ok(())
}

fn blob_list(v: &Value, what: &str, len: usize) -> Result<(), SnapshotCheckError> {
    let items = v
        .as_array()
        .ok_or_else(|| invalid(format!("{what} is not a list")))?;
    for (i, item) in items.iter().enumerate() {
        blob(item, &format!("{what}[{i}]"), len)?;
    }
    Ok(())
}

fn check_blobs(body: &Value) -> Result<(), SnapshotCheckError> {
    use std::mem::size_of;
    let vm = &body["vm"];
    for (field, len) in [
        ("pic_master", size_of::<kvm_irqchip>()),
        ("pic_slave", size_of::<kvm_irqchip>()),
        ("ioapic", size_of::<kvm_irqchip>()),
        ("pit", size_of::<kvm_pit_state2>()),
        ("clock", size_of::<kvm_clock_data>()),
    ] {
        blob(&vm[field], &format!("vm.{field}"), len)?;
    }
    let vcpus = body["vcpus"]
        .as_array()
        .ok_or_else(|| invalid("vcpus is not a list"))?;
    for (i, v) in vcpus.iter().enumerate() {
        for (field, len) in [
            ("regs", size_of::<kvm_regs>()),
            ("sregs", size_of::<kvm_sregs>()),
            ("xsave", size_of::<kvm_xsave>()),
            ("xcrs", size_of::<kvm_xcrs>()),
            ("debug_regs", size_of::<kvm_debugregs>()),
            ("lapic", size_of::<kvm_lapic_state>()),
            ("mp_state", size_of::<kvm_mp_state>()),
            ("events", size_of::<kvm_vcpu_events>()),
        ] {
            blob(&v[field], &format!("vcpus[{i}].{field}"), len)?;
        }
        blob_list(
            &v["cpuid"],
            &format!("vcpus[{i}].cpuid"),
            size_of::<kvm_cpuid_entry2>(),
        )?;
        blob_list(
            &v["msrs"],
            &format!("vcpus[{i}].msrs"),
            size_of::<kvm_msr_entry>(),
        )?;
    }
    Ok(())
}

fn check_state(state: &MicroVmState) -> Result<(), SnapshotCheckError> {
    state
        .machine
        .config()
        .validate()
        .map_err(|e| invalid(format!("machine configuration: {e}")))?;
    if state.vcpus.len() != state.machine.vcpu_count as usize {
        return Err(invalid(format!(
            "{} vCPU states for {} vCPUs",
            state.vcpus.len(),
            state.machine.vcpu_count
        )));
    }
    for (i, v) in state.vcpus.iter().enumerate() {
        if usize::from(v.id) != i {
            return Err(invalid(format!("vCPU state {i} has id {}", v.id)));
        }
    }
    check_memory(&state.memory, state.machine.mem_size_mib)
}

/// The layout must be sane and be the one this VMM builds for `mem_size_mib`, packed back to
/// back in the memory file.
fn check_memory(layout: &MemoryLayout, mem_size_mib: usize) -> Result<(), SnapshotCheckError> {
    layout
        .validate()
        .map_err(|e| invalid(format!("memory layout: {e}")))?;
    let bytes = u64::try_from(mem_size_mib)
        .ok()
        .and_then(|m| m.checked_mul(1 << 20))
        .ok_or_else(|| invalid(format!("mem_size_mib {mem_size_mib} is too large")))?;
    let expected: Vec<(u64, u64)> = ram_ranges(bytes);
    let got: Vec<(u64, u64)> = layout
        .regions
        .iter()
        .map(|r| (r.guest_base, r.size))
        .collect();
    if got != expected {
        return Err(invalid(format!(
            "memory layout {got:x?} does not match mem_size_mib {mem_size_mib} (expected {expected:x?})"
        )));
    }
    let mut offset = 0u64;
    for (i, r) in layout.regions.iter().enumerate() {
        if r.file_offset != offset {
            return Err(invalid(format!(
                "memory region {i} is at file offset {:#x}, expected {offset:#x}",
                r.file_offset
            )));
        }
        offset += r.size; // cannot overflow: validate() checked the total
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshot::RegionLayout;

    fn layout(regions: &[(u64, u64, u64)]) -> MemoryLayout {
        MemoryLayout {
            regions: regions
                .iter()
                .map(|&(guest_base, size, file_offset)| RegionLayout {
                    guest_base,
                    size,
                    file_offset,
                })
                .collect(),
        }
    }

    #[test]
    fn memory_layouts_are_checked_against_the_machine() {
        let mib = 1u64 << 20;
        assert!(check_memory(&layout(&[(0, 64 * mib, 0)]), 64).is_ok());
        // Sizes whose sum overflows.
        let e = check_memory(&layout(&[(0, 1 << 63, 0), (1 << 63, 1 << 63, 0)]), 64);
        assert!(e.unwrap_err().to_string().contains("overflows"));
        // A different size than the machine's.
        assert!(check_memory(&layout(&[(0, 32 * mib, 0)]), 64).is_err());
        // Not packed in the file.
        assert!(check_memory(&layout(&[(0, 64 * mib, 4096)]), 64).is_err());
    }

    #[test]
    fn short_blobs_are_refused() {
        let v = serde_json::json!([1, 2, 3]);
        assert!(blob(&v, "x", 3).is_ok());
        assert!(blob(&v, "x", 4)
            .unwrap_err()
            .to_string()
            .contains("3 bytes, expected 4"));
    }
}
