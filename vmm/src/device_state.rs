//! virtio devices in snapshots.
//!
//! Each attached device is saved as one [`VirtioDeviceState`]: its id, the MMIO slot it sat in,
//! the transport's state (registers, interrupt state, queues with their ring positions; see
//! `devices::virtio::mmio::TransportState`) and a per-kind payload ([`DeviceKindState`]) holding
//! what the VMM needs to create the same device again (for a drive: its configuration, whose
//! backing file must still exist). The list is in slot order.
//!
//! Restore turns the payloads back into the API configurations ([`configs`]), lets the builder
//! attach those devices exactly as at boot (same order, so the same MMIO windows and GSIs), and
//! then applies each saved transport state ([`restore_all`]), which re-activates running
//! devices on their saved queues.
//!
//! Adding a kind (net, vsock): a variant in [`DeviceKindState`] with the kind's configuration,
//! a loop in [`save_all`] (in slot order: after the drives), its arms in [`configs`], [`check`]
//! and [`restore_all`]; the transport side is generic. Until then, a VM with a device of that
//! kind is refused by [`save_all`], which names the first slot it could not save. The device model must implement
//! `VirtioDevice::queue_states` (and `quiesce` if it has work in flight).

use api::models::{
    BlockDeviceConfig, CacheType, IoEngine, NetworkInterfaceConfig, RateLimiterConfig, TokenBucket,
    VsockDeviceConfig,
};
use devices::virtio::mmio::{MmioTransport, TransportState};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

use crate::virtio_devices::{slot_address, AttachedDevices, DeviceConfigs};

#[derive(Debug, thiserror::Error)]
pub enum DeviceStateError {
    #[error("snapshots of microVMs with this virtio device are not supported yet: {0}")]
    Unsupported(String),
    #[error("{kind} device {id}: {source}")]
    Transport {
        kind: &'static str,
        id: String,
        #[source]
        source: devices::virtio::mmio::TransportPersistError,
    },
    #[error("device {0} is attached but has no configuration")]
    MissingConfig(String),
    #[error(
        "{kind} device {id} was in MMIO slot {saved_base:#x} (GSI {saved_irq}), the restored \
         microVM placed it at {base:#x} (GSI {irq})"
    )]
    Placement {
        kind: &'static str,
        id: String,
        saved_base: u64,
        saved_irq: u32,
        base: u64,
        irq: u32,
    },
    #[error("the snapshot's {kind} device {id} was not attached on restore")]
    NotAttached { kind: &'static str, id: String },
}

/// One virtio device in a snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VirtioDeviceState {
    /// The device's id (drive_id for drives).
    pub id: String,
    /// Its MMIO window and interrupt line (checked on restore).
    pub mmio_base: u64,
    pub irq: u32,
    pub transport: TransportState,
    /// What the device is, and how to create it again.
    pub kind: DeviceKindState,
}

/// The per-kind part of a device's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeviceKindState {
    Block(DriveState),
    Net(NetState),
    Vsock(VsockState),
}

impl DeviceKindState {
    pub fn name(&self) -> &'static str {
        match self {
            DeviceKindState::Block(_) => "block",
            DeviceKindState::Net(_) => "net",
            DeviceKindState::Vsock(_) => "vsock",
        }
    }
}

/// A drive's configuration as saved (the `PUT /drives` body's fields, kept separate from the API
/// type so that the API can refuse unknown fields while snapshot files stay extensible).
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

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimiterState {
    #[serde(default)]
    pub bandwidth: Option<TokenBucketState>,
    #[serde(default)]
    pub ops: Option<TokenBucketState>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucketState {
    pub size: u64,
    #[serde(default)]
    pub one_time_burst: Option<u64>,
    pub refill_time: u64,
}

impl From<&TokenBucket> for TokenBucketState {
    fn from(b: &TokenBucket) -> Self {
        TokenBucketState {
            size: b.size,
            one_time_burst: b.one_time_burst,
            refill_time: b.refill_time,
        }
    }
}

impl From<&TokenBucketState> for TokenBucket {
    fn from(b: &TokenBucketState) -> Self {
        TokenBucket {
            size: b.size,
            one_time_burst: b.one_time_burst,
            refill_time: b.refill_time,
        }
    }
}

impl DriveState {
    fn new(cfg: &BlockDeviceConfig, acked_features: u64) -> Self {
        DriveState {
            drive_id: cfg.drive_id.clone(),
            path_on_host: cfg.path_on_host.clone(),
            is_root_device: cfg.is_root_device,
            is_read_only: cfg.is_read_only,
            partuuid: cfg.partuuid.clone(),
            cache_type: cfg.cache_type,
            io_engine: cfg.io_engine,
            rate_limiter: limiter_state(cfg.rate_limiter.as_ref()),
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
            rate_limiter: limiter_config(self.rate_limiter.as_ref()),
            socket: None,
        }
    }
}

/// A network interface's configuration as saved (the `PUT /network-interfaces` body's fields).
/// The tap is opened again by name on restore.
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

/// The vsock device's configuration as saved. Connections are not: after a restore the device
/// sends the guest a transport reset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    pub guest_cid: u32,
    pub uds_path: String,
    #[serde(default)]
    pub vsock_id: Option<String>,
}

impl VsockState {
    fn new(cfg: &VsockDeviceConfig) -> Self {
        VsockState {
            guest_cid: cfg.guest_cid,
            uds_path: cfg.uds_path.clone(),
            vsock_id: cfg.vsock_id.clone(),
        }
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

fn limiter_state(r: Option<&RateLimiterConfig>) -> Option<RateLimiterState> {
    r.map(|r| RateLimiterState {
        bandwidth: r.bandwidth.as_ref().map(Into::into),
        ops: r.ops.as_ref().map(Into::into),
    })
}

fn limiter_config(r: Option<&RateLimiterState>) -> Option<RateLimiterConfig> {
    r.map(|r| RateLimiterConfig {
        bandwidth: r.bandwidth.as_ref().map(Into::into),
        ops: r.ops.as_ref().map(Into::into),
    })
}

impl NetState {
    fn new(cfg: &NetworkInterfaceConfig, acked_features: u64) -> Self {
        NetState {
            iface_id: cfg.iface_id.clone(),
            host_dev_name: cfg.host_dev_name.clone(),
            guest_mac: cfg.guest_mac.clone(),
            rx_rate_limiter: limiter_state(cfg.rx_rate_limiter.as_ref()),
            tx_rate_limiter: limiter_state(cfg.tx_rate_limiter.as_ref()),
            acked_features,
        }
    }

    /// The `PUT /network-interfaces` configuration that creates this interface again.
    pub fn config(&self) -> NetworkInterfaceConfig {
        NetworkInterfaceConfig {
            iface_id: self.iface_id.clone(),
            host_dev_name: self.host_dev_name.clone(),
            guest_mac: self.guest_mac.clone(),
            rx_rate_limiter: limiter_config(self.rx_rate_limiter.as_ref()),
            tx_rate_limiter: limiter_config(self.tx_rate_limiter.as_ref()),
        }
    }
}

fn save_transport(
    kind: &'static str,
    id: &str,
    transport: &Arc<Mutex<MmioTransport>>,
) -> Result<TransportState, DeviceStateError> {
    devices::bus::lock(transport)
        .save_state()
        .map_err(|source| DeviceStateError::Transport {
            kind,
            id: id.to_string(),
            source,
        })
}

/// Quiesces every attached device and captures its state, in slot order. `cfgs` are the VMM's
/// current device configurations (updated by PATCH). Call with the vCPUs paused, before the
/// vCPU, irqchip and memory state are read: finishing in-flight requests writes guest memory
/// and may raise interrupts.
pub fn save_all(
    attached: &AttachedDevices,
    cfgs: &DeviceConfigs,
) -> Result<Vec<VirtioDeviceState>, DeviceStateError> {
    let mut out = Vec::new();
    for d in &attached.drives {
        let cfg = cfgs
            .drives
            .iter()
            .find(|c| c.drive_id == d.id)
            .ok_or_else(|| DeviceStateError::MissingConfig(d.id.clone()))?;
        let transport = save_transport("block", &d.id, &d.transport)?;
        let acked = devices::bus::lock(&d.device).acked_features();
        let (mmio_base, irq) = slot_address(out.len() as u32);
        out.push(VirtioDeviceState {
            id: d.id.clone(),
            mmio_base,
            irq,
            transport,
            kind: DeviceKindState::Block(DriveState::new(cfg, acked)),
        });
    }
    for n in &attached.nets {
        let cfg = cfgs
            .nets
            .iter()
            .find(|c| c.iface_id == n.id)
            .ok_or_else(|| DeviceStateError::MissingConfig(n.id.clone()))?;
        let transport = save_transport("net", &n.id, &n.transport)?;
        let acked = devices::bus::lock(&n.device).acked_features();
        let (mmio_base, irq) = slot_address(out.len() as u32);
        out.push(VirtioDeviceState {
            id: n.id.clone(),
            mmio_base,
            irq,
            transport,
            kind: DeviceKindState::Net(NetState::new(cfg, acked)),
        });
    }
    if let Some(v) = &attached.vsock {
        let cfg = cfgs
            .vsock
            .as_ref()
            .ok_or_else(|| DeviceStateError::MissingConfig("vsock".into()))?;
        let transport = save_transport("vsock", "vsock", &v.transport)?;
        let (mmio_base, irq) = slot_address(out.len() as u32);
        out.push(VirtioDeviceState {
            id: "vsock".into(),
            mmio_base,
            irq,
            transport,
            kind: DeviceKindState::Vsock(VsockState::new(cfg)),
        });
    }
    // Slots are filled kind by kind; the first one not saved above is of a kind without
    // snapshot support.
    if let Some(name) = attached.slots.get(out.len()) {
        return Err(DeviceStateError::Unsupported(name.clone()));
    }
    Ok(out)
}

/// The device configurations a snapshot's devices were created from; `allow_tap_create` is
/// the restoring VMM's `--allow-tap-create`.
pub fn configs(states: &[VirtioDeviceState], allow_tap_create: bool) -> DeviceConfigs {
    let mut cfgs = DeviceConfigs {
        allow_tap_create,
        ..Default::default()
    };
    for s in states {
        match &s.kind {
            DeviceKindState::Block(d) => cfgs.drives.push(d.config()),
            DeviceKindState::Net(n) => cfgs.nets.push(n.config()),
            DeviceKindState::Vsock(v) => cfgs.vsock = Some(v.config()),
        }
    }
    cfgs
}

/// Checks, before anything is built, that every saved device can be created here (for drives:
/// the backing file exists and opens with the access the drive needs; for interfaces: the tap
/// exists, or may be created, and can be attached to).
pub fn check(states: &[VirtioDeviceState], allow_tap_create: bool) -> Result<(), String> {
    let mut cfgs = DeviceConfigs {
        allow_tap_create,
        ..Default::default()
    };
    for s in states {
        // The API's own validation first (ids, names, CIDs, rate limits), then the host checks.
        let valid = match &s.kind {
            DeviceKindState::Block(d) => d.config().validate(),
            DeviceKindState::Net(n) => n.config().validate(),
            DeviceKindState::Vsock(v) => v.config().validate(),
        };
        valid.map_err(|e| format!("Invalid snapshot device {}: {e}", s.id))?;
        match &s.kind {
            DeviceKindState::Block(d) => crate::drives::check(&d.config())
                .map_err(|e| format!("{e} (the snapshot's drive {} needs it)", d.drive_id))?,
            DeviceKindState::Net(n) => {
                let cfg = n.config();
                crate::net::check(&cfgs, &cfg).map_err(|e| {
                    format!(
                        "{e} (the snapshot's network interface {} needs it)",
                        n.iface_id
                    )
                })?;
                cfgs.nets.push(cfg);
            }
            DeviceKindState::Vsock(v) => crate::vsock::check(&v.config())
                .map_err(|e| format!("{e} (the snapshot's vsock device needs it)"))?,
        }
    }
    Ok(())
}

/// Applies the saved transport states to the devices the builder attached from [`configs`].
/// Call after the VM's irqchip state is restored and before the vCPUs run.
pub fn restore_all(
    attached: &AttachedDevices,
    states: &[VirtioDeviceState],
) -> Result<(), DeviceStateError> {
    let mut drives = attached.drives.iter();
    let mut nets = attached.nets.iter();
    for (slot, s) in states.iter().enumerate() {
        let kind = s.kind.name();
        let (id, transport) = match &s.kind {
            DeviceKindState::Block(_) => match drives.next() {
                Some(d) if d.id == s.id => (&d.id, &d.transport),
                _ => {
                    return Err(DeviceStateError::NotAttached {
                        kind,
                        id: s.id.clone(),
                    })
                }
            },
            DeviceKindState::Net(_) => match nets.next() {
                Some(n) if n.id == s.id => (&n.id, &n.transport),
                _ => {
                    return Err(DeviceStateError::NotAttached {
                        kind,
                        id: s.id.clone(),
                    })
                }
            },
            DeviceKindState::Vsock(_) => match &attached.vsock {
                Some(v) => (&s.id, &v.transport),
                None => {
                    return Err(DeviceStateError::NotAttached {
                        kind,
                        id: s.id.clone(),
                    })
                }
            },
        };
        let (base, irq) = slot_address(slot as u32);
        if (base, irq) != (s.mmio_base, s.irq) {
            return Err(DeviceStateError::Placement {
                kind,
                id: id.clone(),
                saved_base: s.mmio_base,
                saved_irq: s.irq,
                base,
                irq,
            });
        }
        devices::bus::lock(transport)
            .restore_state(&s.transport)
            .map_err(|source| DeviceStateError::Transport {
                kind,
                id: id.clone(),
                source,
            })?;
    }
    // The guest's vsock connections had host ends in the snapshotted process: reset them all
    // (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET), so guest sockets fail and reconnect instead of hanging.
    if let Some(v) = &attached.vsock {
        devices::bus::lock(&v.device).transport_reset();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_state_round_trips_the_api_configuration() {
        let cfg = BlockDeviceConfig {
            drive_id: "root".into(),
            path_on_host: "/images/root.ext4".into(),
            is_root_device: true,
            is_read_only: true,
            partuuid: Some("0eaa91a0-01".into()),
            cache_type: CacheType::Writeback,
            io_engine: IoEngine::Async,
            rate_limiter: Some(RateLimiterConfig {
                bandwidth: Some(TokenBucket {
                    size: 1 << 20,
                    one_time_burst: Some(4096),
                    refill_time: 100,
                }),
                ops: None,
            }),
            socket: None,
        };
        let s = DriveState::new(&cfg, 1 << 32);
        assert_eq!(s.config(), cfg);
        let state = VirtioDeviceState {
            id: "root".into(),
            mmio_base: 0xd000_0000,
            irq: 5,
            transport: TransportState::default(),
            kind: DeviceKindState::Block(s.clone()),
        };
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json["kind"]["type"], "block");
        let back: VirtioDeviceState = serde_json::from_value(json).unwrap();
        let DeviceKindState::Block(b) = back.kind else {
            panic!("not a drive")
        };
        assert_eq!(b, s);
        assert_eq!(
            configs(std::slice::from_ref(&state), false).drives,
            vec![cfg]
        );
    }

    #[test]
    fn net_state_round_trips_the_api_configuration() {
        let cfg = NetworkInterfaceConfig {
            iface_id: "eth0".into(),
            host_dev_name: "tap7".into(),
            guest_mac: Some("06:00:ac:10:00:02".into()),
            rx_rate_limiter: None,
            tx_rate_limiter: Some(RateLimiterConfig {
                bandwidth: None,
                ops: Some(TokenBucket {
                    size: 100,
                    one_time_burst: None,
                    refill_time: 1000,
                }),
            }),
        };
        let s = NetState::new(&cfg, 1 << 32 | 1 << 5);
        let state = VirtioDeviceState {
            id: "eth0".into(),
            mmio_base: 0xd000_1000,
            irq: 6,
            transport: TransportState::default(),
            kind: DeviceKindState::Net(s.clone()),
        };
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json["kind"]["type"], "net");
        let back: VirtioDeviceState = serde_json::from_value(json).unwrap();
        assert!(matches!(back.kind, DeviceKindState::Net(ref n) if *n == s));
        let cfgs = configs(std::slice::from_ref(&state), true);
        assert_eq!(cfgs.nets, vec![cfg]);
        assert!(cfgs.allow_tap_create);
    }

    #[test]
    fn a_missing_tap_is_named() {
        let state = VirtioDeviceState {
            id: "eth0".into(),
            mmio_base: 0xd000_0000,
            irq: 5,
            transport: TransportState::default(),
            kind: DeviceKindState::Net(NetState {
                iface_id: "eth0".into(),
                host_dev_name: "tt-no-such-tap".into(),
                ..Default::default()
            }),
        };
        let e = check(&[state], false).unwrap_err();
        assert!(e.contains("tt-no-such-tap"), "{e}");
        assert!(e.contains("eth0"), "{e}");
    }

    #[test]
    fn older_and_newer_drive_states_parse() {
        // Only the required fields (what an older writer may have produced) ...
        let minimal: DriveState =
            serde_json::from_str(r#"{"drive_id": "d", "path_on_host": "/d"}"#).unwrap();
        assert_eq!(minimal.cache_type, CacheType::Unsafe);
        assert!(minimal.rate_limiter.is_none());
        // ... and fields a newer writer added are ignored.
        let newer: DriveState = serde_json::from_str(
            r#"{"drive_id": "d", "path_on_host": "/d", "some_future_field": 1}"#,
        )
        .unwrap();
        assert_eq!(newer, minimal);
    }

    #[test]
    fn a_device_kind_without_snapshot_support_is_refused_by_name() {
        let attached = AttachedDevices {
            slots: vec!["Vsock vsock".into()],
            ..Default::default()
        };
        let e = save_all(&attached, &DeviceConfigs::default()).unwrap_err();
        assert!(matches!(e, DeviceStateError::Unsupported(_)));
        assert!(e.to_string().contains("Vsock vsock"), "{e}");
        assert!(
            save_all(&AttachedDevices::default(), &DeviceConfigs::default())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_missing_backing_file_is_named() {
        let state = VirtioDeviceState {
            id: "data".into(),
            mmio_base: 0xd000_0000,
            irq: 5,
            transport: TransportState::default(),
            kind: DeviceKindState::Block(DriveState {
                drive_id: "data".into(),
                path_on_host: "/nonexistent/tartarus-disk.img".into(),
                ..Default::default()
            }),
        };
        let e = check(&[state], false).unwrap_err();
        assert!(e.contains("/nonexistent/tartarus-disk.img"), "{e}");
        assert!(e.contains("data"), "{e}");
    }
}
