//! What a snapshot's state file holds: the machine configuration, the KVM state of the VM and
//! every vCPU, and each device's state. Fields added later carry `#[serde(default)]` so older
//! files still load, and no struct here refuses unknown fields, so newer-minor files load too
//! (see the snapshot crate for the versioning rules). The configurations are snapshot-owned
//! copies of the API types ([`MachineState`], [`BootState`], each device kind's state), because
//! the API types refuse unknown fields.

use api::models::{BootSourceConfig, MachineConfig};
use devices::legacy::i8042::I8042State;
use devices::legacy::serial::SerialDeviceState;
use serde::{Deserialize, Serialize};
use snapshot::MemoryLayout;

use crate::persist::devices::VirtioDeviceState;
use crate::persist::kvm::{VcpuState, VmArchState};

#[derive(Debug, Serialize, Deserialize)]
pub struct MicroVmState {
    /// The VMM version that wrote the snapshot.
    pub vmm_version: String,
    /// The id of the microVM that was snapshotted.
    pub id: String,
    pub machine: MachineState,
    /// How the guest was booted (informational: a restore loads no kernel).
    #[serde(default)]
    pub boot: Option<BootState>,
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

/// The machine configuration as saved (the `PUT /machine-config` body's fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineState {
    pub vcpu_count: u8,
    pub mem_size_mib: usize,
    #[serde(default)]
    pub smt: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<String>,
}

impl From<&MachineConfig> for MachineState {
    fn from(m: &MachineConfig) -> Self {
        MachineState {
            vcpu_count: m.vcpu_count,
            mem_size_mib: m.mem_size_mib,
            smt: m.smt,
            track_dirty_pages: m.track_dirty_pages,
            cpu_template: m.cpu_template.clone(),
            huge_pages: m.huge_pages.clone(),
        }
    }
}

impl MachineState {
    /// The API configuration this state was saved from.
    pub fn config(&self) -> MachineConfig {
        MachineConfig {
            vcpu_count: self.vcpu_count,
            mem_size_mib: self.mem_size_mib,
            smt: self.smt,
            track_dirty_pages: self.track_dirty_pages,
            cpu_template: self.cpu_template.clone(),
            huge_pages: self.huge_pages.clone(),
        }
    }
}

/// The boot source as saved (the `PUT /boot-source` body's fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootState {
    pub kernel_image_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

impl From<&BootSourceConfig> for BootState {
    fn from(b: &BootSourceConfig) -> Self {
        BootState {
            kernel_image_path: b.kernel_image_path.clone(),
            initrd_path: b.initrd_path.clone(),
            boot_args: b.boot_args.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::kvm::VmArchState;
    use devices::legacy::{EventFdTrigger, I8042};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    fn state() -> MicroVmState {
        let trigger = || EventFdTrigger::new(EventFd::new(0).unwrap());
        MicroVmState {
            vmm_version: "0.1.0".into(),
            id: "vm".into(),
            machine: (&MachineConfig::default()).into(),
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
        use crate::persist::devices::VirtioDeviceState;
        use crate::virtio::block::DriveState;
        use crate::virtio::DeviceKindState;
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

    #[test]
    fn fields_a_newer_writer_added_are_ignored() {
        let mut body = serde_json::to_value(state()).unwrap();
        body["machine"]["some_future_field"] = serde_json::json!(1);
        body["some_future_section"] = serde_json::json!({"x": 1});
        body["boot"] = serde_json::json!({
            "kernel_image_path": "/k",
            "boot_args": "console=ttyS0",
            "another_future_field": true
        });
        let back: MicroVmState = serde_json::from_value(body).unwrap();
        assert_eq!(back.machine.config(), MachineConfig::default());
        assert_eq!(back.boot.unwrap().kernel_image_path, "/k");
    }

    /// A state file as an older build wrote it: `body` under format 1.`minor`.
    fn write_with_minor(path: &std::path::Path, body: &serde_json::Value, minor: u16) {
        let body = serde_json::to_vec(body).unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(&snapshot::state::STATE_MAGIC);
        out.extend_from_slice(&snapshot::FORMAT_MAJOR.to_le_bytes());
        out.extend_from_slice(&minor.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&body);
        let crc = snapshot::crc64::crc64(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(path, out).unwrap();
    }

    #[test]
    fn older_minor_files_load() {
        use crate::persist::devices::VirtioDeviceState;
        use crate::virtio::net::NetState;
        use crate::virtio::vsock::VsockState;
        use crate::virtio::DeviceKindState;
        let dir = std::env::temp_dir().join(format!("tartarus-minor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // 1.0: no devices field at all.
        let mut v10 = serde_json::to_value(state()).unwrap();
        v10.as_object_mut().unwrap().remove("devices");
        // 1.1 as builds before the 1.2/1.3 bumps wrote it: net and vsock kinds already inside.
        let mut s11 = state();
        let device = |id: &str, kind| VirtioDeviceState {
            id: id.into(),
            mmio_base: 0xd000_0000,
            irq: 5,
            transport: Default::default(),
            kind,
        };
        s11.devices.push(device(
            "eth0",
            DeviceKindState::Net(NetState {
                iface_id: "eth0".into(),
                host_dev_name: "tap0".into(),
                ..Default::default()
            }),
        ));
        s11.devices.push(device(
            "vsock",
            DeviceKindState::Vsock(VsockState {
                guest_cid: 3,
                uds_path: "/v.sock".into(),
                ..Default::default()
            }),
        ));
        let mut v11 = serde_json::to_value(&s11).unwrap();
        // 1.3 and earlier wrote no next_host_port / open_connections for the vsock.
        let vsock = &mut v11["devices"][1]["kind"];
        let vsock = vsock.as_object_mut().unwrap();
        assert!(vsock.remove("next_host_port").is_some());
        assert!(vsock.remove("open_connections").is_some());
        for (minor, body, devices) in [
            (0u16, v10, 0usize),
            (1, v11.clone(), 2),
            (2, v11.clone(), 2),
            (3, v11, 2),
        ] {
            let path = dir.join(format!("state-1.{minor}"));
            write_with_minor(&path, &body, minor);
            let summary = snapshot::describe(&path).unwrap();
            assert!(summary.supported && !summary.newer_minor, "1.{minor}");
            let back: MicroVmState = snapshot::read_state_file(&path).unwrap();
            assert_eq!(back.devices.len(), devices, "1.{minor}");
            if let Some(DeviceKindState::Vsock(v)) = back.devices.get(1).map(|d| &d.kind) {
                // Nothing saved: the restore resets the transport, as those builds did.
                assert_eq!(v.saved(), None, "1.{minor}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
