//! What a snapshot's state file holds: the machine configuration, the KVM state of the VM and
//! every vCPU, and each device's state. Fields added later carry `#[serde(default)]` so older
//! files still load (see the snapshot crate for the versioning rules).

use api::models::{BootSourceConfig, MachineConfig};
use devices::legacy::i8042::I8042State;
use devices::legacy::serial::SerialDeviceState;
use serde::{Deserialize, Serialize};
use snapshot::MemoryLayout;

use crate::device_state::VirtioDeviceState;
use crate::persist::{VcpuState, VmArchState};

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
    /// Guest memory regions and where each sits in the memory file.
    pub memory: MemoryLayout,
    pub vm: VmArchState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialDeviceState,
    pub i8042: I8042State,
    /// The virtio devices in slot order (transport, queues, per-kind configuration). Files
    /// written before devices were saved have none.
    #[serde(default)]
    pub devices: Vec<VirtioDeviceState>,
}
