//! Where Tartarus follows Firecracker's semantics rather than its own: the version clients gate
//! on, no-op state changes, per-bucket rate-limiter updates and the overrides of a snapshot load.

use api::models::{RequestedVmState, SnapshotCreateParams, SnapshotLoadParams, VmmAction};

use crate::lifecycle::VmState;
use crate::persist::devices::VirtioDeviceState;
use crate::virtio::DeviceKindState;

/// The Firecracker API version whose wire format Tartarus speaks, reported by `GET /version` as
/// `firecracker_version` so that clients gating features on it work. Tartarus's own version is
/// `tartarus_version`.
pub const FIRECRACKER_API_VERSION: &str = "1.10.0";

/// Whether `action` asks for the state the microVM is already in (`Paused` while paused,
/// `Resumed` while running): Firecracker answers those 204 without doing anything.
pub fn is_noop_state_change(state: VmState, action: &VmmAction) -> bool {
    matches!(
        (state, action),
        (
            VmState::Paused,
            VmmAction::PatchVmState(RequestedVmState::Paused)
        ) | (
            VmState::Running,
            VmmAction::PatchVmState(RequestedVmState::Resumed)
        )
    )
}

/// Firecracker's `version` of a snapshot create (the format version to write) is accepted and
/// ignored: Tartarus writes its own format.
pub fn log_create_version(p: &SnapshotCreateParams) {
    if let Some(v) = &p.version {
        tracing::info!("snapshot/create: version {v} ignored (Tartarus writes its own format)");
    }
}

/// Applies a load's `network_overrides` and `vsock_override` to the snapshot's devices, before
/// they are checked and created. An override naming an interface the snapshot does not have, or
/// a vsock override for a snapshot without vsock, is an error.
pub fn apply_load_overrides(
    devices: &mut [VirtioDeviceState],
    p: &SnapshotLoadParams,
) -> Result<(), String> {
    for o in &p.network_overrides {
        let net = devices.iter_mut().find_map(|d| match &mut d.kind {
            DeviceKindState::Net(n) if n.iface_id == o.iface_id => Some(n),
            _ => None,
        });
        let Some(net) = net else {
            return Err(format!(
                "network_overrides names interface '{}', which the snapshot does not have",
                o.iface_id
            ));
        };
        tracing::info!(
            "snapshot load: interface {} moves from tap {} to tap {}",
            o.iface_id,
            net.host_dev_name,
            o.host_dev_name
        );
        net.host_dev_name = o.host_dev_name.clone();
    }
    if let Some(v) = &p.vsock_override {
        let vsock = devices.iter_mut().find_map(|d| match &mut d.kind {
            DeviceKindState::Vsock(v) => Some(v),
            _ => None,
        });
        let Some(vsock) = vsock else {
            return Err("vsock_override is given but the snapshot has no vsock device".into());
        };
        tracing::info!(
            "snapshot load: vsock moves from {} to {}",
            vsock.uds_path,
            v.uds_path
        );
        vsock.uds_path = v.uds_path.clone();
    }
    if p.clock_realtime {
        tracing::info!(
            "snapshot load: clock_realtime accepted; the guest's kvmclock is restored as saved"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noop_state_changes() {
        let pause = VmmAction::PatchVmState(RequestedVmState::Paused);
        let resume = VmmAction::PatchVmState(RequestedVmState::Resumed);
        assert!(is_noop_state_change(VmState::Paused, &pause));
        assert!(is_noop_state_change(VmState::Running, &resume));
        assert!(!is_noop_state_change(VmState::Running, &pause));
        assert!(!is_noop_state_change(VmState::NotStarted, &pause));
        assert!(!is_noop_state_change(VmState::NotStarted, &resume));
    }
}
