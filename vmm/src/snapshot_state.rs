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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::VmArchState;
    use devices::legacy::{EventFdTrigger, I8042};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    fn state() -> MicroVmState {
        let trigger = || EventFdTrigger::new(EventFd::new(0).unwrap());
        MicroVmState {
            vmm_version: "0.1.0".into(),
            id: "vm".into(),
            machine: MachineConfig::default(),
            boot: None,
            cmdline: "console=ttyS0".into(),
            memory: MemoryLayout::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap(),
            vm: VmArchState {
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
                clock: Default::default(),
            },
            vcpus: Vec::new(),
            serial: SerialDeviceState::default(),
            i8042: I8042::new(trigger(), trigger()).save(),
            devices: Vec::new(),
        }
    }

    #[test]
    fn a_state_without_the_devices_field_loads_with_no_devices() {
        let mut body = serde_json::to_value(state()).unwrap();
        assert!(body["devices"].is_array());
        body.as_object_mut().unwrap().remove("devices");
        let back: MicroVmState = serde_json::from_value(body).unwrap();
        assert!(back.devices.is_empty());
        assert_eq!(back.cmdline, "console=ttyS0");
    }

    #[test]
    fn devices_round_trip() {
        use crate::device_state::{DeviceKindState, DriveState, VirtioDeviceState};
        let mut s = state();
        s.devices.push(VirtioDeviceState {
            id: "d".into(),
            mmio_base: 0xd000_0000,
            irq: 5,
            transport: Default::default(),
            kind: DeviceKindState::Block(DriveState {
                drive_id: "d".into(),
                path_on_host: "/d.img".into(),
                ..Default::default()
            }),
        });
        let json = serde_json::to_string(&s).unwrap();
        let back: MicroVmState = serde_json::from_str(&json).unwrap();
        assert_eq!(back.devices.len(), 1);
        assert_eq!(back.devices[0].mmio_base, 0xd000_0000);
    }
}
