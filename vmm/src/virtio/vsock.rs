//! virtio-vsock: from the `PUT /vsock` configuration to a device on the MMIO bus, and the
//! device's snapshot state ([`VsockState`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use api::models::VsockDeviceConfig;
use devices::virtio::mmio::MmioTransport;
use devices::virtio::vsock::{SavedVsock, Vsock, VsockConfig};
use devices::{Bus, GuestMemoryMmap};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::{Attached, DeviceConfigs, DeviceKindState, SlotDevice, Slots, VirtioDeviceError};

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("Invalid vsock: the directory of uds_path '{0}' is not a directory")]
    NotADirectory(String),
    #[error("Invalid vsock: the directory of uds_path '{path}' cannot be accessed")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Invalid vsock: uds_path '{0}' already exists (remove it first)")]
    Exists(String),
    #[error("Vsock")]
    Create(#[source] devices::virtio::vsock::VsockError),
}

/// Checks a configuration before accepting it: the socket's directory exists and the socket
/// does not (the VMM creates it at InstanceStart).
pub fn check(v: &VsockDeviceConfig) -> Result<(), VsockError> {
    let path = Path::new(&v.uds_path);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(VsockError::NotADirectory(v.uds_path.clone())),
        Err(source) => {
            return Err(VsockError::Directory {
                path: v.uds_path.clone(),
                source,
            })
        }
    }
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(VsockError::Exists(v.uds_path.clone()));
    }
    Ok(())
}

/// `PUT /vsock` before boot: checks and stores (replacing an earlier one).
pub fn put(devices: &mut DeviceConfigs, v: VsockDeviceConfig) -> Result<(), VsockError> {
    check(&v)?;
    devices.vsock = Some(v);
    Ok(())
}

/// The vsock device of a running microVM.
pub struct AttachedVsock {
    pub device: Arc<Mutex<Vsock>>,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// Creates the device (binding `uds_path`) and attaches it in the next slot.
pub fn attach(
    out: &mut Attached,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    slots: &mut Slots,
    cfg: Option<&VsockDeviceConfig>,
) -> Result<(), VirtioDeviceError> {
    let Some(cfg) = cfg else {
        return Ok(());
    };
    let dev = Vsock::new(VsockConfig {
        guest_cid: u64::from(cfg.guest_cid),
        uds_path: PathBuf::from(&cfg.uds_path),
    })
    .map_err(VsockError::Create)?;
    let device = Arc::new(Mutex::new(dev));
    let transport = out.attach(vm, mem, mmio_bus, slots, "Vsock", device.clone())?;
    out.devices.vsock = Some(AttachedVsock { device, transport });
    Ok(())
}

/// Removes the socket file the device listens on, when the VMM ends (the process exits without
/// dropping the device).
pub fn remove_socket(vsock: Option<&AttachedVsock>) {
    if let Some(v) = vsock {
        let path = devices::bus::lock(&v.device).uds_path().to_owned();
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::debug!("cannot remove {}: {e}", path.display());
        }
    }
}

/// The `"vsock"` section of a metrics record.
pub fn metrics_json(m: &devices::virtio::vsock::VsockMetrics) -> serde_json::Value {
    // Every counter the device keeps, from its own list (devices::counters!).
    serde_json::json!(m)
}

/// The vsock device's configuration as saved in a snapshot, with its next host port and the
/// ports of its connections: after a restore the device resets those (their host ends are gone).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    pub guest_cid: u32,
    pub uds_path: String,
    #[serde(default)]
    pub vsock_id: Option<String>,
    /// The device's next host port (format 1.4; older files: the first one).
    #[serde(default)]
    pub next_host_port: Option<u32>,
    /// (host port, guest port) of the connections the device had, which a restore resets one
    /// by one (format 1.4; older files have none and a restore resets the whole transport).
    #[serde(default)]
    pub open_connections: Option<Vec<(u32, u32)>>,
}

impl VsockState {
    /// Saves the device's configuration, and what the device keeps (`saved`).
    pub fn new(cfg: &VsockDeviceConfig, saved: Option<SavedVsock>) -> Self {
        VsockState {
            guest_cid: cfg.guest_cid,
            uds_path: cfg.uds_path.clone(),
            vsock_id: cfg.vsock_id.clone(),
            next_host_port: saved.as_ref().map(|s| s.next_host_port),
            open_connections: saved.map(|s| s.open),
        }
    }

    /// What the device keeps across a snapshot, if the file has it (format 1.4).
    pub fn saved(&self) -> Option<SavedVsock> {
        Some(SavedVsock {
            next_host_port: self.next_host_port?,
            open: self.open_connections.clone()?,
        })
    }

    /// The `PUT /vsock` configuration that creates this device again.
    pub fn config(&self) -> VsockDeviceConfig {
        VsockDeviceConfig {
            vsock_id: self.vsock_id.clone(),
            guest_cid: self.guest_cid,
            uds_path: self.uds_path.clone(),
        }
    }
}

impl SlotDevice for AttachedVsock {
    fn id(&self) -> &str {
        "vsock"
    }

    fn kind(&self) -> &'static str {
        "vsock"
    }

    fn transport(&self) -> &Arc<Mutex<MmioTransport>> {
        &self.transport
    }

    fn save_kind(&self, cfgs: &DeviceConfigs) -> Option<DeviceKindState> {
        let saved = devices::bus::lock(&self.device).save();
        cfgs.vsock
            .as_ref()
            .map(|c| DeviceKindState::Vsock(VsockState::new(c, Some(saved))))
    }

    /// The guest's connections had host ends in the snapshotted process: reset each (OP_RST;
    /// with an older file that does not list them, the whole transport:
    /// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET), so guest sockets fail and reconnect instead of
    /// hanging. Host ports go on from the saved one.
    fn after_restore(&self, saved: &DeviceKindState) {
        let saved = match saved {
            DeviceKindState::Vsock(v) => v.saved(),
            _ => None,
        };
        devices::bus::lock(&self.device).after_restore(saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(e: VsockError) -> String {
        crate::error::error_chain(&e)
    }

    fn cfg(path: &str) -> VsockDeviceConfig {
        VsockDeviceConfig {
            vsock_id: None,
            guest_cid: 3,
            uds_path: path.into(),
        }
    }

    #[test]
    fn checks_name_the_problem() {
        let e = chain(check(&cfg("/no/such/dir/v.sock")).unwrap_err());
        assert!(e.contains("cannot be accessed"), "{e}");
        let dir = std::env::temp_dir();
        let existing = dir.join(format!("vsock-check-{}", std::process::id()));
        std::fs::write(&existing, b"").unwrap();
        let e = chain(check(&cfg(existing.to_str().unwrap())).unwrap_err());
        assert!(e.contains("already exists"), "{e}");
        let e = chain(check(&cfg(&format!("{}/x", existing.display()))).unwrap_err());
        assert!(e.contains("not a directory"), "{e}");
        std::fs::remove_file(&existing).unwrap();
        assert!(check(&cfg(existing.to_str().unwrap())).is_ok());
        let mut d = DeviceConfigs::default();
        put(&mut d, cfg(existing.to_str().unwrap())).unwrap();
        assert!(d.vsock.is_some());
    }
}
