//! virtio-net interfaces: from API configuration to devices on the MMIO bus, `PUT` and `PATCH
//! /network-interfaces`, and an interface's snapshot state ([`NetState`]).
//!
//! `PUT /network-interfaces/{id}` checks the tap at once ([`check`]): it must exist (unless the
//! VMM runs with `--allow-tap-create`) and must be attachable. The tap is opened for real on the
//! VMM thread at InstanceStart ([`attach`]), where the device takes the next virtio slot after
//! the drives.

use std::sync::{Arc, Mutex};

use api::models::{NetworkInterfaceConfig, NetworkInterfaceUpdate, RateLimiterConfig};
use devices::virtio::mmio::MmioTransport;
use devices::virtio::net::{self, Net, NetConfig, Tap, TapError};
use devices::{Bus, GuestMemoryMmap};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::limiter::{self, RateLimiterState};
use super::{Attached, DeviceConfigs, DeviceKindState, SlotDevice, Slots, VirtioDeviceError};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A clash with another interface (the API's own message).
    #[error("{0}")]
    Conflict(String),
    #[error("Invalid network interface {id}")]
    Tap {
        id: String,
        #[source]
        source: TapError,
    },
    #[error("Network interface {id}")]
    Create {
        id: String,
        #[source]
        source: net::NetError,
    },
    #[error("Network interface {id}")]
    Open {
        id: String,
        #[source]
        source: TapError,
    },
    #[error("Invalid network interface: no network interface with id '{0}'")]
    Unknown(String),
}

/// The device-side configuration of an interface.
pub fn net_config(n: &NetworkInterfaceConfig) -> NetConfig {
    NetConfig {
        iface_id: n.iface_id.clone(),
        guest_mac: n.mac(),
        rx_rate_limiter: limiter::limiter(n.rx_rate_limiter.as_ref()),
        tx_rate_limiter: limiter::limiter(n.tx_rate_limiter.as_ref()),
    }
}

/// Checks an interface before accepting it: no clash with the other interfaces, and the tap
/// exists (or may be created) and can be attached to.
pub fn check(cfgs: &DeviceConfigs, n: &NetworkInterfaceConfig) -> Result<(), NetError> {
    if let Some(e) = cfgs
        .nets
        .iter()
        .filter(|o| o.iface_id != n.iface_id)
        .find_map(|o| n.conflict_with(o))
    {
        return Err(NetError::Conflict(e));
    }
    let invalid = |source| NetError::Tap {
        id: n.iface_id.clone(),
        source,
    };
    let exists = net::tap::exists(&n.host_dev_name).map_err(invalid)?;
    if !exists {
        if cfgs.allow_tap_create {
            return Ok(());
        }
        return Err(invalid(TapError::Missing(n.host_dev_name.clone())));
    }
    // Attach once and let go, so a tap that is busy or not ours is reported now, not at start.
    Tap::open(&n.host_dev_name, false)
        .map(drop)
        .map_err(invalid)
}

/// Adds or replaces an interface in the configuration after [`check`].
pub fn put(cfgs: &mut DeviceConfigs, n: NetworkInterfaceConfig) -> Result<(), NetError> {
    check(cfgs, &n)?;
    match cfgs.nets.iter_mut().find(|o| o.iface_id == n.iface_id) {
        Some(slot) => *slot = n,
        None => cfgs.nets.push(n),
    }
    Ok(())
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
        let tap = Tap::open(&n.host_dev_name, cfgs.allow_tap_create).map_err(|source| {
            NetError::Open {
                id: id.clone(),
                source,
            }
        })?;
        let device = Net::new(net_config(n), Box::new(tap)).map_err(|source| NetError::Create {
            id: id.clone(),
            source,
        })?;
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

/// Applies a PATCH: to the configuration, and to the device when the microVM runs. A bucket
/// the PATCH leaves out keeps its value.
pub fn patch(
    cfgs: &mut DeviceConfigs,
    attached: Option<&[AttachedNet]>,
    u: &NetworkInterfaceUpdate,
) -> Result<(), NetError> {
    let Some(cfg) = cfgs.nets.iter_mut().find(|n| n.iface_id == u.iface_id) else {
        return Err(NetError::Unknown(u.iface_id.clone()));
    };
    if let Some(nets) = attached {
        let d = nets
            .iter()
            .find(|d| d.id == u.iface_id)
            .ok_or_else(|| NetError::Unknown(u.iface_id.clone()))?;
        devices::bus::lock(&d.device).update_rate_limiters(
            limiter::updates(u.rx_rate_limiter.as_ref()),
            limiter::updates(u.tx_rate_limiter.as_ref()),
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

/// A network interface's configuration as saved in a snapshot (the `PUT /network-interfaces`
/// body's fields). The tap is opened again by name on restore.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default)]
    pub guest_mac: Option<String>,
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterState>,
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterState>,
    /// The features the driver accepted (informational: the transport state restores them).
    #[serde(default)]
    pub acked_features: u64,
}

impl NetState {
    /// Saves an interface's configuration.
    pub fn new(cfg: &NetworkInterfaceConfig, acked_features: u64) -> Self {
        NetState {
            iface_id: cfg.iface_id.clone(),
            host_dev_name: cfg.host_dev_name.clone(),
            guest_mac: cfg.guest_mac.clone(),
            rx_rate_limiter: limiter::to_state(cfg.rx_rate_limiter.as_ref()),
            tx_rate_limiter: limiter::to_state(cfg.tx_rate_limiter.as_ref()),
            acked_features,
        }
    }

    /// The `PUT /network-interfaces` configuration that creates this interface again.
    pub fn config(&self) -> NetworkInterfaceConfig {
        NetworkInterfaceConfig {
            iface_id: self.iface_id.clone(),
            host_dev_name: self.host_dev_name.clone(),
            guest_mac: self.guest_mac.clone(),
            rx_rate_limiter: limiter::from_state(self.rx_rate_limiter.as_ref()),
            tx_rate_limiter: limiter::from_state(self.tx_rate_limiter.as_ref()),
        }
    }

    /// Checks, before anything is built, that the interface can be created on this host next
    /// to those already checked (`cfgs`, which it joins).
    pub fn check_host(&self, cfgs: &mut DeviceConfigs) -> Result<(), NetError> {
        let cfg = self.config();
        check(cfgs, &cfg)?;
        cfgs.nets.push(cfg);
        Ok(())
    }
}

impl SlotDevice for AttachedNet {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        "net"
    }

    fn transport(&self) -> &Arc<Mutex<MmioTransport>> {
        &self.transport
    }

    fn save_kind(&self, cfgs: &DeviceConfigs) -> Option<DeviceKindState> {
        let cfg = cfgs.nets.iter().find(|c| c.iface_id == self.id)?;
        let acked = devices::bus::lock(&self.device).acked_features();
        Some(DeviceKindState::Net(NetState::new(cfg, acked)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(e: NetError) -> String {
        crate::error::error_chain(&e)
    }

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
        let e = chain(put(&mut cfgs, iface("eth0", "tartarus-nx0", None)).unwrap_err());
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
        let e = chain(put(&mut cfgs, iface("eth1", "tartarus-nx0", None)).unwrap_err());
        assert!(e.contains("already used by interface eth0"), "{e}");
        let e = chain(
            put(
                &mut cfgs,
                iface("eth1", "tartarus-nx1", Some("06:00:00:00:00:01")),
            )
            .unwrap_err(),
        );
        assert!(e.contains("guest_mac"), "{e}");
        assert_eq!(cfgs.nets.len(), 1);
        let u = NetworkInterfaceUpdate {
            iface_id: "eth9".into(),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        assert!(chain(patch(&mut cfgs, None, &u).unwrap_err()).contains("eth9"));
    }
}
