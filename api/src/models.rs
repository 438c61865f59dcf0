//! Request and response bodies of the API, in Firecracker's wire format.
//!
//! The same types describe the JSON configuration file accepted by `tartarus-vmm --config-file`,
//! so that a body that works over the socket works in the file and the other way round.
//! Every body rejects unknown fields: a misspelt key is an error, never silently ignored.

pub use crate::net_models::{NetworkInterfaceConfig, NetworkInterfaceUpdate};
pub use crate::snapshot_models::*;
use serde::{Deserialize, Serialize};

/// Largest number of vCPUs a microVM may have.
pub const MAX_VCPUS: u8 = 32;

/// `PUT /machine-config` body (also the `"machine-config"` key of a config file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: usize,
    #[serde(default)]
    pub smt: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Firecracker's static CPU template: only "None" (the host's CPUID as KVM filters it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    /// Firecracker's hugetlbfs backing of guest memory: only "None" (4 KiB pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<String>,
}

/// Refuses the values of Firecracker's `cpu_template` and `huge_pages` that Tartarus does not
/// implement, naming them as unsupported (not as unknown).
fn check_unsupported_machine(
    cpu_template: Option<&str>,
    huge_pages: Option<&str>,
) -> Result<(), String> {
    if let Some(t) = cpu_template.filter(|t| *t != "None") {
        return Err(format!(
            "Invalid machine-config: cpu_template '{t}' is not supported by Tartarus \
             (CPU templates are not implemented; only \"None\" is accepted)"
        ));
    }
    if let Some(h) = huge_pages.filter(|h| *h != "None") {
        return Err(format!(
            "Invalid machine-config: huge_pages '{h}' is not supported by Tartarus \
             (guest memory uses 4 KiB pages; only \"None\" is accepted)"
        ));
    }
    Ok(())
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: None,
        }
    }
}

impl MachineConfig {
    /// Checks the values, naming the field and the problem on error.
    pub fn validate(&self) -> Result<(), String> {
        check_unsupported_machine(self.cpu_template.as_deref(), self.huge_pages.as_deref())?;
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPUS {
            return Err(format!(
                "Invalid machine-config: vcpu_count must be between 1 and {MAX_VCPUS}, got {}",
                self.vcpu_count
            ));
        }
        if self.smt && self.vcpu_count > 1 && self.vcpu_count % 2 == 1 {
            return Err(format!(
                "Invalid machine-config: with smt enabled vcpu_count must be 1 or even, got {}",
                self.vcpu_count
            ));
        }
        if self.mem_size_mib == 0 {
            return Err("Invalid machine-config: mem_size_mib must be greater than 0".to_string());
        }
        // 1 TiB is far beyond what a microVM needs and keeps the address arithmetic safe.
        if self.mem_size_mib > 1024 * 1024 {
            return Err(format!(
                "Invalid machine-config: mem_size_mib must be at most 1048576, got {}",
                self.mem_size_mib
            ));
        }
        Ok(())
    }

    /// Applies a `PATCH /machine-config` body and validates the result.
    pub fn apply(&self, update: &MachineConfigUpdate) -> Result<MachineConfig, String> {
        let new = MachineConfig {
            vcpu_count: update.vcpu_count.unwrap_or(self.vcpu_count),
            mem_size_mib: update.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: update.smt.unwrap_or(self.smt),
            track_dirty_pages: update.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            cpu_template: update.cpu_template.clone().or(self.cpu_template.clone()),
            huge_pages: update.huge_pages.clone().or(self.huge_pages.clone()),
        };
        new.validate()?;
        Ok(new)
    }
}

/// `PATCH /machine-config` body: every field optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    pub vcpu_count: Option<u8>,
    pub mem_size_mib: Option<usize>,
    pub smt: Option<bool>,
    pub track_dirty_pages: Option<bool>,
    pub cpu_template: Option<String>,
    pub huge_pages: Option<String>,
}

/// `PUT /boot-source` body (also the `"boot-source"` key of a config file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    pub kernel_image_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

impl BootSourceConfig {
    /// Checks the values, naming the field and the problem on error.
    pub fn validate(&self) -> Result<(), String> {
        if self.kernel_image_path.is_empty() {
            return Err("Invalid boot-source: kernel_image_path must not be empty".to_string());
        }
        if self.initrd_path.as_deref() == Some("") {
            return Err(
                "Invalid boot-source: initrd_path must not be empty when given".to_string(),
            );
        }
        Ok(())
    }
}

/// Log levels, spelt as Firecracker spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Off,
    Error,
    Warning,
    Info,
    Debug,
    Trace,
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "off" => Ok(LogLevel::Off),
            "error" => Ok(LogLevel::Error),
            "warning" | "warn" => Ok(LogLevel::Warning),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            "trace" => Ok(LogLevel::Trace),
            other => Err(format!(
                "Invalid log level '{other}': expected one of Off, Error, Warning, Info, Debug, Trace"
            )),
        }
    }
}

/// `PUT /logger` body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl LoggerConfig {
    /// Checks the values, naming the field and the problem on error.
    pub fn validate(&self) -> Result<(), String> {
        if self.log_path.as_deref() == Some("") {
            return Err("Invalid logger: log_path must not be empty when given".to_string());
        }
        Ok(())
    }
}

/// `PUT /metrics` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub metrics_path: String,
}

impl MetricsConfig {
    /// Checks the values, naming the field and the problem on error.
    pub fn validate(&self) -> Result<(), String> {
        if self.metrics_path.is_empty() {
            return Err("Invalid metrics: metrics_path must not be empty".to_string());
        }
        Ok(())
    }
}

/// `PUT /actions` action types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

/// `PUT /actions` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionInfo {
    pub action_type: ActionType,
}

/// `GET /` response body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    /// "Not started", "Running" or "Paused".
    pub state: String,
    pub vmm_version: String,
    pub app_name: String,
}

/// `GET /version` response body. The field keeps Firecracker's name so existing clients parse it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub firecracker_version: String,
    pub tartarus_version: String,
}

/// The whole configuration: `GET /vm/config` response and the `--config-file` format.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(rename = "boot-source", default)]
    pub boot_source: Option<BootSourceConfig>,
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfig>,
    #[serde(default)]
    pub drives: Vec<BlockDeviceConfig>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    #[serde(default)]
    pub logger: Option<LoggerConfig>,
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    #[serde(default)]
    pub vsock: Option<VsockDeviceConfig>,
    /// Firecracker devices Tartarus does not have yet: accepted when null (as `GET /vm/config`
    /// shows them), refused otherwise.
    #[serde(default)]
    pub balloon: Option<serde_json::Value>,
    #[serde(rename = "mmds-config", default)]
    pub mmds_config: Option<serde_json::Value>,
    #[serde(default)]
    pub entropy: Option<serde_json::Value>,
    #[serde(rename = "cpu-config", default)]
    pub cpu_config: Option<serde_json::Value>,
    #[serde(default)]
    pub serial: Option<serde_json::Value>,
}

impl VmConfig {
    /// Validates every section that is present, with the same messages as the API routes.
    pub fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("balloon", &self.balloon),
            ("mmds-config", &self.mmds_config),
            ("entropy", &self.entropy),
            ("cpu-config", &self.cpu_config),
            ("serial", &self.serial),
        ] {
            if value.is_some() {
                return Err(format!(
                    "the \"{key}\" key configures a device Tartarus does not support yet: \
                     leave it out or set it to null"
                ));
            }
        }
        if let Some(b) = &self.boot_source {
            b.validate()?;
        }
        if let Some(m) = &self.machine_config {
            m.validate()?;
        }
        let mut ids = std::collections::HashSet::new();
        for d in &self.drives {
            d.validate()?;
            if !ids.insert(d.drive_id.as_str()) {
                return Err(format!(
                    "Invalid drives: duplicate drive_id '{}'",
                    d.drive_id
                ));
            }
        }
        if self.drives.iter().filter(|d| d.is_root_device).count() > 1 {
            return Err("Invalid drives: more than one root device".into());
        }
        crate::net_models::validate_list(&self.network_interfaces)?;
        if let Some(l) = &self.logger {
            l.validate()?;
        }
        if let Some(m) = &self.metrics {
            m.validate()?;
        }
        if let Some(v) = &self.vsock {
            v.validate()?;
        }
        Ok(())
    }
}

/// `PUT /vsock` body (also the config file's `"vsock"`): the guest's CID and the Unix socket
/// host processes connect to (`CONNECT <port>`); guest connections to port P reach
/// `<uds_path>_<P>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockDeviceConfig {
    /// Accepted for compatibility with Firecracker clients; unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    pub guest_cid: u32,
    pub uds_path: String,
}

impl VsockDeviceConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.guest_cid < 3 {
            return Err(format!(
                "Invalid vsock: guest_cid {} is reserved (0 hypervisor, 1 local, 2 host): \
                 use 3 or more",
                self.guest_cid
            ));
        }
        if self.uds_path.is_empty() {
            return Err("Invalid vsock: uds_path must not be empty".into());
        }
        Ok(())
    }
}

/// The state a `PATCH /vm` request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestedVmState {
    Paused,
    Resumed,
}

/// `PATCH /vm` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateUpdate {
    pub state: RequestedVmState,
}

/// A token bucket (Firecracker's `TokenBucket`): `size` tokens, refilled over `refill_time`
/// milliseconds, plus an initial `one_time_burst`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    pub refill_time: u64,
}

/// A rate limiter: a bandwidth bucket (bytes) and an operations bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

impl RateLimiterConfig {
    /// Applies a PATCH the way Firecracker does: a bucket the update names replaces ours, a
    /// bucket it leaves out is kept.
    pub fn merged(current: Option<&RateLimiterConfig>, update: &RateLimiterConfig) -> Self {
        RateLimiterConfig {
            bandwidth: update
                .bandwidth
                .clone()
                .or_else(|| current.and_then(|c| c.bandwidth.clone())),
            ops: update
                .ops
                .clone()
                .or_else(|| current.and_then(|c| c.ops.clone())),
        }
    }

    pub fn validate(&self, what: &str) -> Result<(), String> {
        for (name, b) in [("bandwidth", &self.bandwidth), ("ops", &self.ops)] {
            if let Some(b) = b {
                if b.size > 0 && b.refill_time == 0 {
                    return Err(format!(
                        "Invalid {what}: rate_limiter.{name}.refill_time must be greater than 0"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// virtio-blk caching mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Writes stay in the host page cache; FLUSH is not offered.
    #[default]
    Unsafe,
    /// FLUSH is offered and honoured with fdatasync.
    Writeback,
}

/// virtio-blk I/O engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    #[default]
    Sync,
    /// io_uring.
    Async,
}

/// `PUT /drives/{drive_id}` body (also an element of the config file's `"drives"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDeviceConfig {
    pub drive_id: String,
    /// Required; a default only so that a vhost-user body (`socket`, no path) gets the
    /// "not supported" answer rather than "missing field".
    #[serde(default)]
    pub path_on_host: String,
    pub is_root_device: bool,
    #[serde(default)]
    pub is_read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    #[serde(default)]
    pub cache_type: CacheType,
    #[serde(default)]
    pub io_engine: IoEngine,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// Firecracker's vhost-user backend socket: refused (no vhost-user in Tartarus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

fn valid_drive_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl BlockDeviceConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !valid_drive_id(&self.drive_id) {
            return Err(format!(
                "Invalid drive: drive_id '{}' must be 1-64 characters from [A-Za-z0-9_-]",
                self.drive_id
            ));
        }
        if let Some(sock) = &self.socket {
            return Err(format!(
                "Invalid drive: socket '{sock}': vhost-user drives are not supported by Tartarus \
                 (give path_on_host for a virtio-blk drive backed by a file)"
            ));
        }
        if self.path_on_host.is_empty() {
            return Err("Invalid drive: path_on_host must not be empty".into());
        }
        if let Some(p) = &self.partuuid {
            if !self.is_root_device {
                return Err(
                    "Invalid drive: partuuid is only meaningful for the root device".into(),
                );
            }
            if p.is_empty() || !p.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return Err(format!(
                    "Invalid drive: partuuid '{p}' is not a partition UUID"
                ));
            }
        }
        if let Some(r) = &self.rate_limiter {
            r.validate("drive")?;
        }
        Ok(())
    }
}

/// `PATCH /drives/{drive_id}` body: swap the backing file and/or the rate limiter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDeviceUpdate {
    pub drive_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// A typed request handed from the API thread to the VMM thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmmAction {
    GetInstanceInfo,
    GetVersion,
    GetMachineConfig,
    PutMachineConfig(MachineConfig),
    PatchMachineConfig(MachineConfigUpdate),
    PutBootSource(BootSourceConfig),
    PutLogger(LoggerConfig),
    PutMetrics(MetricsConfig),
    Action(ActionType),
    GetVmConfig,
    PatchVmState(RequestedVmState),
    CreateSnapshot(SnapshotCreateParams),
    LoadSnapshot(SnapshotLoadParams),
    PutDrive(BlockDeviceConfig),
    PatchDrive(BlockDeviceUpdate),
    PutNetworkInterface(NetworkInterfaceConfig),
    PatchNetworkInterface(NetworkInterfaceUpdate),
    PutVsock(VsockDeviceConfig),
}

/// The VMM thread's answer to a [`VmmAction`].
#[derive(Clone, Debug, PartialEq)]
pub enum VmmResponse {
    /// 204 No Content.
    Empty,
    /// 200 OK with this JSON body.
    Json(serde_json::Value),
    /// An error: HTTP status (400 for bad requests) and the fault message.
    Error(u16, String),
}

impl VmmResponse {
    /// A 400 Bad Request with `msg` as the fault message.
    pub fn bad_request(msg: impl Into<String>) -> Self {
        VmmResponse::Error(400, msg.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_config_limits() {
        let mut m = MachineConfig::default();
        assert!(m.validate().is_ok());
        m.vcpu_count = 0;
        assert!(m.validate().unwrap_err().contains("vcpu_count"));
        m.vcpu_count = 33;
        assert!(m.validate().unwrap_err().contains("vcpu_count"));
        m.vcpu_count = 32;
        assert!(m.validate().is_ok());
        m.mem_size_mib = 0;
        assert!(m.validate().unwrap_err().contains("mem_size_mib"));
        let m = MachineConfig {
            vcpu_count: 3,
            smt: true,
            ..Default::default()
        };
        assert!(m.validate().unwrap_err().contains("smt"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e =
            serde_json::from_str::<MachineConfig>(r#"{"vcpu_count":1,"mem_size_mib":1,"foo":1}"#)
                .unwrap_err();
        assert!(e.to_string().contains("foo"));
    }

    #[test]
    fn path_fields_must_not_be_empty() {
        let b = BootSourceConfig {
            kernel_image_path: String::new(),
            initrd_path: None,
            boot_args: None,
        };
        assert!(b.validate().unwrap_err().contains("kernel_image_path"));
        let b = BootSourceConfig {
            kernel_image_path: "vmlinux".into(),
            initrd_path: Some(String::new()),
            boot_args: None,
        };
        assert!(b.validate().unwrap_err().contains("initrd_path"));
        let l = LoggerConfig {
            log_path: Some(String::new()),
            ..Default::default()
        };
        assert!(l.validate().unwrap_err().contains("log_path"));
        assert!(LoggerConfig::default().validate().is_ok());
        let m = MetricsConfig {
            metrics_path: String::new(),
        };
        assert!(m.validate().unwrap_err().contains("metrics_path"));
        let c = VmConfig {
            metrics: Some(m),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("metrics_path"));
        assert!(VmConfig::default().validate().is_ok());
        let v = VsockDeviceConfig {
            vsock_id: None,
            guest_cid: 2,
            uds_path: "/v.sock".into(),
        };
        assert!(v
            .validate()
            .unwrap_err()
            .contains("guest_cid 2 is reserved"));
        let c = VmConfig {
            vsock: Some(v),
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn patch_applies_and_validates() {
        let m = MachineConfig::default();
        let u = MachineConfigUpdate {
            vcpu_count: Some(4),
            ..Default::default()
        };
        assert_eq!(m.apply(&u).unwrap().vcpu_count, 4);
        let u = MachineConfigUpdate {
            mem_size_mib: Some(0),
            ..Default::default()
        };
        assert!(m.apply(&u).is_err());
    }
}
