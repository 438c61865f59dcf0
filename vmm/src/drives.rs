//! virtio-blk drives: from API configuration to devices on the MMIO bus, and run-time PATCH.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use api::models::{self, BlockDeviceConfig, BlockDeviceUpdate, RateLimiterConfig, TokenBucket};
use devices::rate_limiter::{self, BucketUpdate, TokenBucketConfig};
use devices::virtio::block::{self, Block, BlockConfig};
use devices::virtio::mmio::MmioTransport;
use devices::{Bus, GuestMemoryMmap};
use kvm_ioctls::VmFd;

use crate::virtio_devices::{Attached, Slots, VirtioDeviceError};

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("Drive {0}: {1}")]
    Block(String, String),
    #[error("No drive with id '{0}'")]
    Unknown(String),
}

pub(crate) fn bucket(b: &TokenBucket) -> TokenBucketConfig {
    TokenBucketConfig {
        size: b.size,
        one_time_burst: b.one_time_burst.unwrap_or(0),
        refill_time: b.refill_time,
    }
}

pub(crate) fn limiter(cfg: Option<&RateLimiterConfig>) -> rate_limiter::RateLimiterConfig {
    rate_limiter::RateLimiterConfig {
        bandwidth: cfg.and_then(|c| c.bandwidth.as_ref()).map(bucket),
        ops: cfg.and_then(|c| c.ops.as_ref()).map(bucket),
    }
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
        rate_limiter: limiter(d.rate_limiter.as_ref()),
    }
}

/// Checks a drive before accepting it: the backing file opens with the right access and the
/// engine works on this host.
pub fn check(d: &BlockDeviceConfig) -> Result<(), String> {
    let meta = std::fs::metadata(&d.path_on_host).map_err(|e| {
        format!(
            "Invalid drive {}: path_on_host '{}' cannot be accessed: {e}",
            d.drive_id, d.path_on_host
        )
    })?;
    if meta.is_dir() {
        return Err(format!(
            "Invalid drive {}: path_on_host '{}' is a directory",
            d.drive_id, d.path_on_host
        ));
    }
    devices::host_file::open_regular(Path::new(&d.path_on_host), !d.is_read_only, true).map_err(
        |e| {
            format!(
                "Invalid drive {}: path_on_host '{}' cannot be opened {}: {e}",
                d.drive_id,
                d.path_on_host,
                if d.is_read_only {
                    "for reading"
                } else {
                    "for reading and writing"
                }
            )
        },
    )?;
    if d.io_engine == models::IoEngine::Async {
        block::check_io_uring_support().map_err(|e| {
            format!(
                "Invalid drive {}: io_engine Async needs io_uring, which this host refuses: {e}",
                d.drive_id
            )
        })?;
    }
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
        let device = Arc::new(Mutex::new(
            Block::new(block_config(d))
                .map_err(|e| DriveError::Block(id.clone(), e.to_string()))?,
        ));
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

/// Applies a PATCH to an attached drive: new backing file and/or new rate limits.
pub fn patch(drives: &[AttachedDrive], upd: &BlockDeviceUpdate) -> Result<(), String> {
    let d = drives
        .iter()
        .find(|d| d.id == upd.drive_id)
        .ok_or_else(|| DriveError::Unknown(upd.drive_id.clone()).to_string())?;
    let mut dev = devices::bus::lock(&d.device);
    if let Some(p) = &upd.path_on_host {
        dev.update_backing_file(Path::new(p)).map_err(|e| {
            format!(
                "Cannot swap the backing file of drive {}: {e}",
                upd.drive_id
            )
        })?;
    }
    if let Some(r) = &upd.rate_limiter {
        let b: BucketUpdate = r.bandwidth.as_ref().map(bucket).into();
        let o: BucketUpdate = r.ops.as_ref().map(bucket).into();
        dev.update_rate_limiter(b, o);
    }
    Ok(())
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
