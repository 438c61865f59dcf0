//! virtio-blk drives: from API configuration to devices on the MMIO bus, `PUT` and `PATCH
//! /drives`, and a drive's snapshot state ([`DriveState`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use api::models::{
    self, BlockDeviceConfig, BlockDeviceUpdate, CacheType, IoEngine, RateLimiterConfig,
};
use devices::virtio::block::{self, Block, BlockConfig};
use devices::virtio::mmio::MmioTransport;
use devices::{Bus, GuestMemoryMmap};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::limiter::{self, RateLimiterState};
use super::{Attached, DeviceConfigs, DeviceKindState, SlotDevice, Slots, VirtioDeviceError};

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("Invalid drive {id}: drive {other} is already the root device")]
    SecondRoot { id: String, other: String },
    #[error("Invalid drive {id}: path_on_host '{path}' cannot be accessed")]
    Access {
        id: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Invalid drive {id}: path_on_host '{path}' is a directory")]
    Directory { id: String, path: String },
    #[error("Invalid drive {id}: path_on_host '{path}' cannot be opened {mode}")]
    Open {
        id: String,
        path: String,
        mode: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("Invalid drive {id}: io_engine Async needs io_uring, which this host refuses")]
    NoIoUring {
        id: String,
        #[source]
        source: block::IoUringError,
    },
    #[error("Drive {id}")]
    Create {
        id: String,
        #[source]
        source: block::BlockError,
    },
    #[error("Cannot swap the backing file of drive {id}")]
    SwapBackingFile {
        id: String,
        #[source]
        source: block::BlockError,
    },
    #[error("Invalid drive: no drive with id '{0}'")]
    Unknown(String),
}

/// The device-side configuration of a drive.
pub fn block_config(d: &BlockDeviceConfig) -> BlockConfig {
    BlockConfig {
        drive_id: d.drive_id.clone(),
        path_on_host: PathBuf::from(&d.path_on_host),
        is_read_only: d.is_read_only,
        cache_type: match d.cache_type {
            models::CacheType::Unsafe => block::CacheType::Unsafe,
            models::CacheType::Writeback => block::CacheType::Writeback,
        },
        io_engine: match d.io_engine {
            models::IoEngine::Sync => block::IoEngine::Sync,
            models::IoEngine::Async => block::IoEngine::Async,
        },
        rate_limiter: limiter::limiter(d.rate_limiter.as_ref()),
    }
}

/// Checks a drive before accepting it: the backing file opens with the right access and the
/// engine works on this host.
pub fn check(d: &BlockDeviceConfig) -> Result<(), DriveError> {
    let id = || d.drive_id.clone();
    let path = || d.path_on_host.clone();
    let meta = std::fs::metadata(&d.path_on_host).map_err(|source| DriveError::Access {
        id: id(),
        path: path(),
        source,
    })?;
    if meta.is_dir() {
        return Err(DriveError::Directory {
            id: id(),
            path: path(),
        });
    }
    devices::host_file::open_regular(Path::new(&d.path_on_host), !d.is_read_only, true).map_err(
        |source| DriveError::Open {
            id: id(),
            path: path(),
            mode: if d.is_read_only {
                "for reading"
            } else {
                "for reading and writing"
            },
            source,
        },
    )?;
    if d.io_engine == models::IoEngine::Async {
        block::check_io_uring_support()
            .map_err(|source| DriveError::NoIoUring { id: id(), source })?;
    }
    Ok(())
}

/// `PUT /drives/{id}` before boot: checks the drive and adds it (or replaces the one with its id).
pub fn put(cfgs: &mut DeviceConfigs, d: BlockDeviceConfig) -> Result<(), DriveError> {
    if d.is_root_device {
        if let Some(other) = cfgs
            .drives
            .iter()
            .find(|o| o.is_root_device && o.drive_id != d.drive_id)
        {
            return Err(DriveError::SecondRoot {
                id: d.drive_id.clone(),
                other: other.drive_id.clone(),
            });
        }
    }
    check(&d)?;
    match cfgs.drives.iter_mut().find(|o| o.drive_id == d.drive_id) {
        Some(slot) => *slot = d,
        None => cfgs.drives.push(d),
    }
    Ok(())
}

/// `PATCH /drives/{id}`: a new backing file and/or new rate limits, applied to the running
/// device (when the microVM runs) and to the configuration. A bucket the PATCH leaves out keeps
/// its value.
pub fn patch(
    cfgs: &mut DeviceConfigs,
    attached: Option<&[AttachedDrive]>,
    u: &BlockDeviceUpdate,
) -> Result<(), DriveError> {
    let Some(cfg) = cfgs.drives.iter_mut().find(|d| d.drive_id == u.drive_id) else {
        return Err(DriveError::Unknown(u.drive_id.clone()));
    };
    let mut updated = cfg.clone();
    if let Some(p) = &u.path_on_host {
        updated.path_on_host = p.clone();
    }
    if let Some(r) = &u.rate_limiter {
        updated.rate_limiter = Some(RateLimiterConfig::merged(updated.rate_limiter.as_ref(), r));
    }
    match attached {
        Some(drives) => {
            let d = drives
                .iter()
                .find(|d| d.id == u.drive_id)
                .ok_or_else(|| DriveError::Unknown(u.drive_id.clone()))?;
            let mut dev = devices::bus::lock(&d.device);
            if let Some(p) = &u.path_on_host {
                dev.update_backing_file(Path::new(p)).map_err(|source| {
                    DriveError::SwapBackingFile {
                        id: u.drive_id.clone(),
                        source,
                    }
                })?;
            }
            if let Some(r) = &u.rate_limiter {
                let (b, o) = limiter::updates(Some(r));
                dev.update_rate_limiter(b, o);
            }
        }
        None => check(&updated)?,
    }
    *cfg = updated;
    Ok(())
}

/// Drives in the order the guest will see them: the root device first (/dev/vda).
pub fn boot_order(drives: &[BlockDeviceConfig]) -> Vec<&BlockDeviceConfig> {
    let mut v: Vec<&BlockDeviceConfig> = drives.iter().filter(|d| d.is_root_device).collect();
    v.extend(drives.iter().filter(|d| !d.is_root_device));
    v
}

/// The kernel command-line words for the root device, if there is one.
pub fn root_args(drives: &[BlockDeviceConfig]) -> Option<String> {
    let root = drives.iter().find(|d| d.is_root_device)?;
    let dev = match &root.partuuid {
        Some(u) => format!("root=PARTUUID={u}"),
        None => "root=/dev/vda".to_string(),
    };
    Some(format!(
        "{dev} {}",
        if root.is_read_only { "ro" } else { "rw" }
    ))
}

/// A drive attached to a running microVM.
pub struct AttachedDrive {
    pub id: String,
    pub device: Arc<Mutex<Block>>,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// Creates each drive's device (root device first) and attaches it in the next slots.
pub fn attach(
    out: &mut Attached,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    slots: &mut Slots,
    drives: &[BlockDeviceConfig],
) -> Result<(), VirtioDeviceError> {
    for d in boot_order(drives) {
        let id = d.drive_id.clone();
        let device = Block::new(block_config(d)).map_err(|source| DriveError::Create {
            id: id.clone(),
            source,
        })?;
        let device = Arc::new(Mutex::new(device));
        let transport = out.attach(
            vm,
            mem,
            mmio_bus,
            slots,
            &format!("Drive {id}"),
            device.clone(),
        )?;
        out.devices.drives.push(AttachedDrive {
            id,
            device,
            transport,
        });
    }
    Ok(())
}

/// A drive's configuration as saved in a snapshot (the `PUT /drives` body's fields, kept apart
/// from the API type so the API can refuse unknown fields while state files stay extensible).
/// The backing file must still exist at restore.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveState {
    pub drive_id: String,
    pub path_on_host: String,
    #[serde(default)]
    pub is_root_device: bool,
    #[serde(default)]
    pub is_read_only: bool,
    #[serde(default)]
    pub partuuid: Option<String>,
    #[serde(default)]
    pub cache_type: CacheType,
    #[serde(default)]
    pub io_engine: IoEngine,
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterState>,
    /// The features the driver accepted (informational: the transport state restores them).
    #[serde(default)]
    pub acked_features: u64,
}

impl DriveState {
    /// Saves a drive's configuration.
    pub fn new(cfg: &BlockDeviceConfig, acked_features: u64) -> Self {
        DriveState {
            drive_id: cfg.drive_id.clone(),
            path_on_host: cfg.path_on_host.clone(),
            is_root_device: cfg.is_root_device,
            is_read_only: cfg.is_read_only,
            partuuid: cfg.partuuid.clone(),
            cache_type: cfg.cache_type,
            io_engine: cfg.io_engine,
            rate_limiter: limiter::to_state(cfg.rate_limiter.as_ref()),
            acked_features,
        }
    }

    /// The `PUT /drives` configuration that creates this drive again.
    pub fn config(&self) -> BlockDeviceConfig {
        BlockDeviceConfig {
            drive_id: self.drive_id.clone(),
            path_on_host: self.path_on_host.clone(),
            is_root_device: self.is_root_device,
            is_read_only: self.is_read_only,
            partuuid: self.partuuid.clone(),
            cache_type: self.cache_type,
            io_engine: self.io_engine,
            rate_limiter: limiter::from_state(self.rate_limiter.as_ref()),
            socket: None,
        }
    }

    /// Checks, before anything is built, that the drive can be created on this host.
    pub fn check_host(&self) -> Result<(), DriveError> {
        check(&self.config())
    }
}

impl SlotDevice for AttachedDrive {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        "block"
    }

    fn transport(&self) -> &Arc<Mutex<MmioTransport>> {
        &self.transport
    }

    fn save_kind(&self, cfgs: &DeviceConfigs) -> Option<DeviceKindState> {
        let cfg = cfgs.drives.iter().find(|c| c.drive_id == self.id)?;
        let acked = devices::bus::lock(&self.device).acked_features();
        Some(DeviceKindState::Block(DriveState::new(cfg, acked)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(id: &str, root: bool) -> BlockDeviceConfig {
        BlockDeviceConfig {
            drive_id: id.into(),
            path_on_host: "/x".into(),
            is_root_device: root,
            is_read_only: false,
            partuuid: None,
            cache_type: Default::default(),
            io_engine: Default::default(),
            rate_limiter: None,
            socket: None,
        }
    }

    #[test]
    fn root_first_and_root_args() {
        let ds = vec![drive("a", false), drive("root", true), drive("b", false)];
        let order: Vec<&str> = boot_order(&ds)
            .iter()
            .map(|d| d.drive_id.as_str())
            .collect();
        assert_eq!(order, vec!["root", "a", "b"]);
        assert_eq!(root_args(&ds).unwrap(), "root=/dev/vda rw");
        let mut ro = drive("r", true);
        ro.is_read_only = true;
        ro.partuuid = Some("0eaa91a0-01".into());
        assert_eq!(root_args(&[ro]).unwrap(), "root=PARTUUID=0eaa91a0-01 ro");
        assert!(root_args(&[drive("a", false)]).is_none());
    }
}
