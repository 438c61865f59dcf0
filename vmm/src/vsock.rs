//! virtio-vsock: from the `PUT /vsock` configuration to a device on the MMIO bus.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use api::models::{VmmResponse, VsockDeviceConfig};
use devices::virtio::mmio::MmioTransport;
use devices::virtio::vsock::{Vsock, VsockConfig};
use devices::{Bus, GuestMemoryMmap};
use kvm_ioctls::VmFd;

use crate::virtio_devices::{Attached, DeviceConfigs, Slots, VirtioDeviceError};

#[derive(Debug, thiserror::Error)]
pub enum VsockSetupError {
    #[error("Vsock: {0}")]
    Device(String),
}

/// Checks a configuration before accepting it: the socket's directory exists and the socket
/// does not (the VMM creates it at InstanceStart).
pub fn check(v: &VsockDeviceConfig) -> Result<(), String> {
    let path = Path::new(&v.uds_path);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "Invalid vsock: the directory of uds_path '{}' is not a directory",
                v.uds_path
            ))
        }
        Err(e) => {
            return Err(format!(
                "Invalid vsock: the directory of uds_path '{}' cannot be accessed: {e}",
                v.uds_path
            ))
        }
    }
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(format!(
            "Invalid vsock: uds_path '{}' already exists (remove it first)",
            v.uds_path
        ));
    }
    Ok(())
}

/// `PUT /vsock` before boot: checks and stores (replacing an earlier one).
pub fn put(devices: &mut DeviceConfigs, v: VsockDeviceConfig) -> VmmResponse {
    match check(&v) {
        Ok(()) => {
            devices.vsock = Some(v);
            VmmResponse::Empty
        }
        Err(e) => VmmResponse::bad_request(e),
    }
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
    .map_err(|e| VsockSetupError::Device(crate::controller::error_chain(&e)))?;
    let device = Arc::new(Mutex::new(dev));
    let transport = out.attach(vm, mem, mmio_bus, slots, "Vsock", device.clone())?;
    out.devices.vsock = Some(AttachedVsock { device, transport });
    Ok(())
}

/// Removes the socket file the device listens on, when the VMM ends (the process exits without
/// dropping the device).
pub fn remove_socket(vm: Option<&crate::builder::MicroVm>) {
    if let Some(v) = vm.and_then(|vm| vm.devices.vsock.as_ref()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(path: &str) -> VsockDeviceConfig {
        VsockDeviceConfig {
            vsock_id: None,
            guest_cid: 3,
            uds_path: path.into(),
        }
    }

    #[test]
    fn checks_name_the_problem() {
        let e = check(&cfg("/no/such/dir/v.sock")).unwrap_err();
        assert!(e.contains("cannot be accessed"), "{e}");
        let dir = std::env::temp_dir();
        let existing = dir.join(format!("vsock-check-{}", std::process::id()));
        std::fs::write(&existing, b"").unwrap();
        let e = check(&cfg(existing.to_str().unwrap())).unwrap_err();
        assert!(e.contains("already exists"), "{e}");
        let e = check(&cfg(&format!("{}/x", existing.display()))).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        std::fs::remove_file(&existing).unwrap();
        assert!(check(&cfg(existing.to_str().unwrap())).is_ok());
        let mut d = DeviceConfigs::default();
        assert_eq!(
            put(&mut d, cfg(existing.to_str().unwrap())),
            VmmResponse::Empty
        );
        assert!(d.vsock.is_some());
    }
}
