//! virtio-net interfaces: from API configuration to devices on the MMIO bus, and run-time PATCH
//! of their rate limiters.
//!
//! `PUT /network-interfaces/{id}` checks the tap at once ([`check`]): it must exist (unless the
//! VMM runs with `--allow-tap-create`) and must be attachable. The tap is opened for real on the
//! VMM thread at InstanceStart ([`attach`]), where the device takes the next virtio slot after
//! the drives.

use std::sync::{Arc, Mutex};

use api::models::{NetworkInterfaceConfig, NetworkInterfaceUpdate, RateLimiterConfig};
use devices::rate_limiter::BucketUpdate;
use devices::virtio::mmio::MmioTransport;
use devices::virtio::net::{self, Net, NetConfig, Tap};
use devices::{Bus, GuestMemoryMmap};
use kvm_ioctls::VmFd;

use crate::drives::{bucket, limiter};
use crate::virtio_devices::{Attached, DeviceConfigs, Slots, VirtioDeviceError};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("Network interface {0}: {1}")]
    Device(String, String),
    #[error("No network interface with id '{0}'")]
    Unknown(String),
}

/// The device-side configuration of an interface.
pub fn net_config(n: &NetworkInterfaceConfig) -> NetConfig {
    NetConfig {
        iface_id: n.iface_id.clone(),
        guest_mac: n.mac(),
        rx_rate_limiter: limiter(n.rx_rate_limiter.as_ref()),
        tx_rate_limiter: limiter(n.tx_rate_limiter.as_ref()),
    }
}

/// Checks an interface before accepting it: no clash with the other interfaces, and the tap
/// exists (or may be created) and can be attached to.
pub fn check(cfgs: &DeviceConfigs, n: &NetworkInterfaceConfig) -> Result<(), String> {
    if let Some(e) = cfgs
        .nets
        .iter()
        .filter(|o| o.iface_id != n.iface_id)
        .find_map(|o| n.conflict_with(o))
    {
        return Err(e);
    }
    let invalid = |e: &dyn std::error::Error| {
        format!(
            "Invalid network interface {}: {}",
            n.iface_id,
            crate::controller::error_chain(e)
        )
    };
    let exists = net::tap::exists(&n.host_dev_name).map_err(|e| invalid(&e))?;
    if !exists {
        if cfgs.allow_tap_create {
            return Ok(());
        }
        return Err(invalid(&net::TapError::Missing(n.host_dev_name.clone())));
    }
    // Attach once and let go, so a tap that is busy or not ours is reported now, not at start.
    Tap::open(&n.host_dev_name, false)
        .map(drop)
        .map_err(|e| invalid(&e))
}

/// Adds or replaces an interface in the configuration after [`check`].
pub fn put(cfgs: &mut DeviceConfigs, n: NetworkInterfaceConfig) -> Result<(), String> {
    check(cfgs, &n)?;
    match cfgs.nets.iter_mut().find(|o| o.iface_id == n.iface_id) {
        Some(slot) => *slot = n,
        None => cfgs.nets.push(n),
    }
    Ok(())
}

/// 204 for Ok, 400 with the message for Err.
pub fn empty_or_400(r: Result<(), String>) -> api::models::VmmResponse {
    match r {
        Ok(()) => api::models::VmmResponse::Empty,
        Err(e) => api::models::VmmResponse::bad_request(e),
    }
}

/// An interface attached to a running microVM.
pub struct AttachedNet {
    pub id: String,
    pub device: Arc<Mutex<Net>>,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// Opens each interface's tap and attaches its device in the next slots.
pub fn attach(
    out: &mut Attached,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    slots: &mut Slots,
    cfgs: &DeviceConfigs,
) -> Result<(), VirtioDeviceError> {
    for n in &cfgs.nets {
        let id = n.iface_id.clone();
        let err = |e: &dyn std::error::Error| {
            NetError::Device(id.clone(), crate::controller::error_chain(e))
        };
        let tap = Tap::open(&n.host_dev_name, cfgs.allow_tap_create).map_err(|e| err(&e))?;
        let device = Net::new(net_config(n), Box::new(tap)).map_err(|e| err(&e))?;
        let device = Arc::new(Mutex::new(device));
        let transport = out.attach(
            vm,
            mem,
            mmio_bus,
            slots,
            &format!("Network interface {id}"),
            device.clone(),
        )?;
        out.devices.nets.push(AttachedNet {
            id,
            device,
            transport,
        });
    }
    Ok(())
}

/// The `"net"` metrics object: counters per interface id.
pub fn metrics(nets: &[AttachedNet]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for n in nets {
        let m = devices::bus::lock(&n.device).metrics();
        // Every counter the device keeps, from its own list (devices::counters!).
        out.insert(n.id.clone(), serde_json::json!(&*m));
    }
    serde_json::Value::Object(out)
}

fn updates(r: Option<&api::models::RateLimiterConfig>) -> (BucketUpdate, BucketUpdate) {
    match r {
        None => (BucketUpdate::None, BucketUpdate::None),
        Some(r) => (
            r.bandwidth.as_ref().map(bucket).into(),
            r.ops.as_ref().map(bucket).into(),
        ),
    }
}

/// Applies a PATCH: to the configuration, and to the device when the microVM runs.
pub fn patch(
    cfgs: &mut DeviceConfigs,
    attached: Option<&[AttachedNet]>,
    u: &NetworkInterfaceUpdate,
) -> Result<(), String> {
    let Some(cfg) = cfgs.nets.iter_mut().find(|n| n.iface_id == u.iface_id) else {
        return Err(format!(
            "Invalid network interface: {}",
            NetError::Unknown(u.iface_id.clone())
        ));
    };
    if let Some(nets) = attached {
        let d = nets
            .iter()
            .find(|d| d.id == u.iface_id)
            .ok_or_else(|| NetError::Unknown(u.iface_id.clone()).to_string())?;
        devices::bus::lock(&d.device).update_rate_limiters(
            updates(u.rx_rate_limiter.as_ref()),
            updates(u.tx_rate_limiter.as_ref()),
        );
    }
    if let Some(r) = &u.rx_rate_limiter {
        cfg.rx_rate_limiter = Some(RateLimiterConfig::merged(cfg.rx_rate_limiter.as_ref(), r));
    }
    if let Some(r) = &u.tx_rate_limiter {
        cfg.tx_rate_limiter = Some(RateLimiterConfig::merged(cfg.tx_rate_limiter.as_ref(), r));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(id: &str, dev: &str, mac: Option<&str>) -> NetworkInterfaceConfig {
        NetworkInterfaceConfig {
            iface_id: id.into(),
            host_dev_name: dev.into(),
            guest_mac: mac.map(String::from),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        }
    }

    #[test]
    fn missing_taps_and_clashes() {
        let mut cfgs = DeviceConfigs::default();
        let e = put(&mut cfgs, iface("eth0", "tartarus-nx0", None)).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        assert!(e.contains("ip tuntap add dev tartarus-nx0 mode tap"), "{e}");
        cfgs.allow_tap_create = true;
        put(
            &mut cfgs,
            iface("eth0", "tartarus-nx0", Some("06:00:00:00:00:01")),
        )
        .unwrap();
        // Replacing the same id is fine; clashing with another is not.
        put(
            &mut cfgs,
            iface("eth0", "tartarus-nx0", Some("06:00:00:00:00:01")),
        )
        .unwrap();
        let e = put(&mut cfgs, iface("eth1", "tartarus-nx0", None)).unwrap_err();
        assert!(e.contains("already used by interface eth0"), "{e}");
        let e = put(
            &mut cfgs,
            iface("eth1", "tartarus-nx1", Some("06:00:00:00:00:01")),
        )
        .unwrap_err();
        assert!(e.contains("guest_mac"), "{e}");
        assert_eq!(cfgs.nets.len(), 1);
        let u = NetworkInterfaceUpdate {
            iface_id: "eth9".into(),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        assert!(patch(&mut cfgs, None, &u).unwrap_err().contains("eth9"));
    }
}
