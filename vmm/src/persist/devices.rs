//! virtio devices in snapshots: the one loop over MMIO slots.
//!
//! Each attached device is saved as one [`VirtioDeviceState`]: its id, the MMIO slot it sat in,
//! the transport's state (registers, interrupt state, queues with their ring positions; see
//! `devices::virtio::mmio::TransportState`) and its kind's own state ([`DeviceKindState`], kept
//! beside each kind in `crate::virtio`), which creates the same device again. The list is in
//! slot order.
//!
//! Restore turns the kinds' states back into API configurations ([`configs`]), lets the builder
//! attach those devices exactly as at boot (same order, so the same MMIO windows and GSIs), and
//! then applies each saved transport state ([`restore_all`]), which re-activates running
//! devices on their saved queues. Nothing here knows a device kind: see
//! [`crate::virtio::SlotDevice`].

use devices::virtio::mmio::TransportState;
use serde::{Deserialize, Serialize};

use crate::virtio::{
    slot_address, AttachedDevices, DeviceConfigs, DeviceKindState, SlotDevice, VirtioDeviceError,
};

#[derive(Debug, thiserror::Error)]
pub enum DeviceStateError {
    #[error("snapshots of microVMs with this virtio device are not supported yet: {0}")]
    Unsupported(String),
    #[error("{kind} device {id}")]
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
    #[error("Invalid snapshot device {id}: {reason}")]
    Invalid { id: String, reason: String },
    #[error("the snapshot's {kind} device {id} cannot be created on this host")]
    Host {
        kind: &'static str,
        id: String,
        #[source]
        source: VirtioDeviceError,
    },
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

fn transport_error(
    d: &dyn SlotDevice,
) -> impl FnOnce(devices::virtio::mmio::TransportPersistError) -> DeviceStateError + '_ {
    move |source| DeviceStateError::Transport {
        kind: d.kind(),
        id: d.id().to_string(),
        source,
    }
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
    for (slot, d) in attached.in_slot_order().into_iter().enumerate() {
        let kind = d
            .save_kind(cfgs)
            .ok_or_else(|| DeviceStateError::MissingConfig(d.id().to_string()))?;
        let transport = devices::bus::lock(d.transport())
            .save_state()
            .map_err(transport_error(d))?;
        let (mmio_base, irq) = slot_address(slot as u32);
        out.push(VirtioDeviceState {
            id: d.id().to_string(),
            mmio_base,
            irq,
            transport,
            kind,
        });
    }
    // A slot the loop did not reach holds a device of a kind without snapshot support.
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
        s.kind.add_config(&mut cfgs);
    }
    cfgs
}

/// Checks, before anything is built, that every saved device can be created here: the API's
/// own validation first, then the host (for drives: the backing file exists and opens with the
/// access the drive needs; for interfaces: the tap exists, or may be created, and can be
/// attached to; for vsock: the socket can be created).
pub fn check(states: &[VirtioDeviceState], allow_tap_create: bool) -> Result<(), DeviceStateError> {
    let mut cfgs = DeviceConfigs {
        allow_tap_create,
        ..Default::default()
    };
    for s in states {
        s.kind
            .validate()
            .map_err(|reason| DeviceStateError::Invalid {
                id: s.id.clone(),
                reason,
            })?;
        s.kind
            .check_host(&mut cfgs)
            .map_err(|source| DeviceStateError::Host {
                kind: s.kind.name(),
                id: s.id.clone(),
                source,
            })?;
    }
    Ok(())
}

/// Applies the saved transport states to the devices the builder attached from [`configs`].
/// Call after the VM's irqchip state is restored and before the vCPUs run.
pub fn restore_all(
    attached: &AttachedDevices,
    states: &[VirtioDeviceState],
) -> Result<(), DeviceStateError> {
    let devices = attached.in_slot_order();
    for (slot, s) in states.iter().enumerate() {
        let kind = s.kind.name();
        let d = match devices.get(slot) {
            Some(d) if d.kind() == kind && d.id() == s.id => *d,
            _ => {
                return Err(DeviceStateError::NotAttached {
                    kind,
                    id: s.id.clone(),
                })
            }
        };
        let (base, irq) = slot_address(slot as u32);
        if (base, irq) != (s.mmio_base, s.irq) {
            return Err(DeviceStateError::Placement {
                kind,
                id: s.id.clone(),
                saved_base: s.mmio_base,
                saved_irq: s.irq,
                base,
                irq,
            });
        }
        devices::bus::lock(d.transport())
            .restore_state(&s.transport)
            .map_err(transport_error(d))?;
    }
    for (d, s) in devices.iter().zip(states) {
        d.after_restore(&s.kind);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::error_chain;
    use crate::virtio::block::DriveState;
    use crate::virtio::net::NetState;
    use api::models::{
        BlockDeviceConfig, CacheType, IoEngine, NetworkInterfaceConfig, RateLimiterConfig,
        TokenBucket,
    };

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
        let e = error_chain(&check(&[state], false).unwrap_err());
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
        let e = error_chain(&check(&[state], false).unwrap_err());
        assert!(e.contains("/nonexistent/tartarus-disk.img"), "{e}");
        assert!(e.contains("data"), "{e}");
    }
}
