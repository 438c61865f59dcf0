//! What a snapshot's state file holds: the machine configuration, the KVM state of the VM and
//! every vCPU, and each device's state. Fields added later carry `#[serde(default)]` so older
//! files still load (see the snapshot crate for the versioning rules).

use api::models::{BootSourceConfig, MachineConfig};
use devices::legacy::i8042::I8042State;
use devices::legacy::serial::SerialDeviceState;
use serde::{Deserialize, Serialize};

use crate::persist::{VcpuState, VmArchState};

/// One guest memory region and where its bytes sit in the memory file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegionState {
    pub guest_addr: u64,
    pub size: u64,
    pub file_offset: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MicroVmState {
    /// The VMM version that wrote the snapshot.
    pub vmm_version: String,
    /// The id of the microVM that was snapshotted.
    pub id: String,
    pub machine: MachineConfig,
    /// How the guest was booted (informational: a restore loads no kernel).
    #[serde(default)]
    pub boot: Option<BootSourceConfig>,
    pub cmdline: String,
    pub memory: Vec<MemoryRegionState>,
    pub vm: VmArchState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialDeviceState,
    pub i8042: I8042State,
}

impl MicroVmState {
    /// Total guest memory in bytes.
    pub fn mem_bytes(&self) -> u64 {
        self.memory.iter().map(|r| r.size).sum()
    }
}
