//! Snapshot bodies: `PUT /snapshot/create` and `PUT /snapshot/load` (Firecracker's wire
//! format, plus Tartarus's `prefetch`).

use serde::{Deserialize, Serialize};

use crate::net_models::NetworkInterfaceConfig;

/// Kinds of snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    #[default]
    Full,
    /// Only the pages written since the last snapshot, written in place onto that snapshot's
    /// memory file (needs `track_dirty_pages`).
    Diff,
}

/// `PUT /snapshot/create` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    pub snapshot_path: String,
    pub mem_file_path: String,
    /// Accepted for compatibility with older Firecracker clients and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Where restored guest memory comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    /// `mmap(MAP_PRIVATE)` of the memory file.
    File,
    /// Anonymous memory filled on demand through userfaultfd.
    Uffd,
}

/// `mem_backend` of a `PUT /snapshot/load` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    pub backend_type: MemBackendType,
    /// File: the memory file. Uffd: the memory file (served by the VMM itself) or the Unix
    /// socket of an external page-fault handler.
    pub backend_path: String,
}

/// `prefetch` of a `PUT /snapshot/load` body (a Tartarus extension; needs a Uffd backend served
/// by the VMM).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefetchConfig {
    /// The working-set file: written when recording, read when prefetching.
    pub working_set_path: String,
    /// true: record the pages the guest touches into `working_set_path`; false: copy the pages
    /// listed there before the vCPUs resume.
    #[serde(default)]
    pub record: bool,
    /// How long to record after the vCPUs resume; recording also stops at the next pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_ms: Option<u64>,
}

/// `PUT /snapshot/load` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    pub snapshot_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemBackend>,
    /// Older Firecracker spelling of a File backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<String>,
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Older Firecracker spelling of `track_dirty_pages`.
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    #[serde(default)]
    pub resume_vm: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<PrefetchConfig>,
    /// Back these network interfaces with other tap devices than the snapshotted ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
    /// Serve the vsock device on another Unix socket than the snapshotted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// Accepted for Firecracker clients; Tartarus restores the guest's kvmclock as it was saved
    /// either way (see README "Snapshots").
    #[serde(default)]
    pub clock_realtime: bool,
}

/// An element of `network_overrides` in a `PUT /snapshot/load` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// `vsock_override` of a `PUT /snapshot/load` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    pub uds_path: String,
}

impl SnapshotLoadParams {
    /// The memory backend, from `mem_backend` or the older `mem_file_path`.
    pub fn backend(&self) -> Result<MemBackend, String> {
        match (&self.mem_backend, &self.mem_file_path) {
            (Some(_), Some(_)) => Err(
                "Invalid snapshot/load body: give either mem_backend or mem_file_path, not both"
                    .into(),
            ),
            (None, None) => {
                Err("Invalid snapshot/load body: mem_backend (or mem_file_path) is required".into())
            }
            (Some(b), None) => Ok(b.clone()),
            (None, Some(p)) => Ok(MemBackend {
                backend_type: MemBackendType::File,
                backend_path: p.clone(),
            }),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.snapshot_path.is_empty() {
            return Err("Invalid snapshot/load body: snapshot_path must not be empty".into());
        }
        let backend = self.backend()?;
        if backend.backend_path.is_empty() {
            return Err("Invalid snapshot/load body: backend_path must not be empty".into());
        }
        for o in &self.network_overrides {
            let probe = NetworkInterfaceConfig {
                iface_id: o.iface_id.clone(),
                host_dev_name: o.host_dev_name.clone(),
                guest_mac: None,
                rx_rate_limiter: None,
                tx_rate_limiter: None,
            };
            probe
                .validate()
                .map_err(|e| format!("Invalid snapshot/load body: network_overrides: {e}"))?;
        }
        if self
            .vsock_override
            .as_ref()
            .is_some_and(|v| v.uds_path.is_empty())
        {
            return Err(
                "Invalid snapshot/load body: vsock_override.uds_path must not be empty".into(),
            );
        }
        if let Some(p) = &self.prefetch {
            if p.working_set_path.is_empty() {
                return Err(
                    "Invalid snapshot/load body: prefetch.working_set_path must not be empty"
                        .into(),
                );
            }
            if backend.backend_type != MemBackendType::Uffd {
                return Err("Invalid snapshot/load body: prefetch needs a Uffd mem_backend".into());
            }
        }
        Ok(())
    }
}

impl SnapshotCreateParams {
    pub fn validate(&self) -> Result<(), String> {
        if self.snapshot_path.is_empty() {
            return Err("Invalid snapshot/create body: snapshot_path must not be empty".into());
        }
        if self.mem_file_path.is_empty() {
            return Err("Invalid snapshot/create body: mem_file_path must not be empty".into());
        }
        if self.snapshot_path == self.mem_file_path {
            return Err(
                "Invalid snapshot/create body: snapshot_path and mem_file_path must differ".into(),
            );
        }
        Ok(())
    }
}
