//! The `tartarusd` REST API's request and response bodies (spec: `platform/openapi.yaml`).
//!
//! The daemon serves these as JSON over HTTP/1.1 on a Unix socket (and optionally TCP); the
//! `tartarus` CLI is a client of nothing else. Request bodies refuse unknown fields so a typo is
//! a 400 naming the field; response bodies accept unknown fields so older CLIs keep working
//! against newer daemons.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod access;
pub use access::*;

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/tartarus/tartarusd.sock";
/// Where the daemon keeps its state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tartarus";
/// The `Upgrade` token that turns `GET /sandboxes/{id}/agent` into a raw agent connection and
/// `GET /sandboxes/{id}/ports/{port}` into a raw TCP stream to a guest port.
pub const UPGRADE_PROTOCOL: &str = "tartarus";

/// Every error the API returns: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `bad_request`, `not_found`, `conflict`, `limit_exceeded`,
    /// `unavailable`, `internal`, `agent_error`, `method_not_allowed`, `registry_unauthorized`,
    /// `upstream`, `unauthorized` (401), `forbidden` (403).
    pub code: String,
    /// A sentence for people; names the field or resource at fault.
    pub message: String,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub sandboxes: u64,
    pub templates: u64,
}

/// One command a template build runs in the booted guest before its ready snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupCommand {
    pub argv: Vec<String>,
    /// Leave it running in the snapshot (a server, a warm runtime) instead of waiting for it.
    #[serde(default)]
    pub background: bool,
}

/// `POST /templates`: what a template is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// `[a-z0-9][a-z0-9_.-]{0,62}`.
    pub name: String,
    /// Host path of an uncompressed kernel (`vmlinux`) built for Tartarus (`make kernel`);
    /// absent: the daemon's `--kernel`.
    #[serde(default)]
    pub kernel: String,
    /// Host path of an ext4 root file system image with `tartarus-init` as `/sbin/init`.
    /// Exactly one of `rootfs` and `image`.
    #[serde(default)]
    pub rootfs: String,
    /// An OCI image (a reference the daemon has pulled, or pulls first: see `POST
    /// /images/pull` for the forms) made into the root file system, with its config's Env,
    /// WorkingDir and User as every exec's defaults.
    #[serde(default)]
    pub image: Option<String>,
    /// Credentials for pulling `image` when it is not in the daemon's cache yet.
    #[serde(default)]
    pub registry_auth: Option<RegistryAuth>,
    /// Extra kernel command-line words, appended to the daemon's.
    #[serde(default)]
    pub boot_args: Option<String>,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// Size of each sandbox's writable layer (a sparse ext4 image), MiB.
    #[serde(default = "default_disk_mib")]
    pub disk_mib: u32,
    /// Environment every exec in sandboxes of this template gets (a request's own env wins).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub warmup: Vec<WarmupCommand>,
    /// Replace an existing template of that name (its sandboxes keep running).
    #[serde(default)]
    pub replace: bool,
    /// A warm runtime left running in the ready snapshot (`POST /sandboxes/{id}/code`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeSpec>,
}

pub fn default_vcpus() -> u8 {
    1
}
pub fn default_memory_mib() -> u32 {
    256
}
pub fn default_disk_mib() -> u32 {
    1024
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateState {
    Building,
    Ready,
    Failed,
}

/// A template as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub name: String,
    /// The owning tenant; `*` = a host template every tenant may use (read-only to them).
    #[serde(default)]
    pub tenant: String,
    pub state: TemplateState,
    pub kernel: String,
    pub rootfs: String,
    pub boot_args: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub disk_mib: u32,
    pub env: BTreeMap<String, String>,
    pub warmup: Vec<WarmupCommand>,
    /// The OCI image the root file system was made from.
    #[serde(default)]
    pub image: Option<TemplateImage>,
    /// The warm runtime left running in the ready snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeSpec>,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// Milliseconds from the start of the build to the ready snapshot.
    pub build_ms: Option<u64>,
    /// Bytes of the ready snapshot's files (state + memory, as allocated on disk).
    pub snapshot_bytes: Option<u64>,
    /// Why the build failed.
    pub error: Option<String>,
}

/// The image behind a template, and what `docker run` would take from its config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateImage {
    /// As the template asked for it.
    pub reference: String,
    /// The image id (manifest digest).
    pub id: String,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `KEY=value`, the image's own environment (the template's `env` wins).
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
}

/// Registry credentials: `{"username", "password"}` (basic) or `{"token"}` (bearer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum RegistryAuth {
    Basic { username: String, password: String },
    Bearer { token: String },
}

/// `POST /images/pull`: fetch an image into the daemon's cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullImage {
    /// `[docker://]host[:port]/repo[:tag][@digest]` (no host: Docker Hub), `oci:DIR[:TAG]`
    /// (an OCI layout directory on the daemon's host), `docker-archive:FILE[:NAME:TAG]` (a
    /// `docker save` tarball on the daemon's host).
    pub reference: String,
    /// Store it under this name instead (`name[:tag]`).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub auth: Option<RegistryAuth>,
    /// Also build its root file system now (otherwise the first template build does).
    #[serde(default)]
    pub build: bool,
}

/// One line of the NDJSON stream `POST /images/pull` answers with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PullEvent {
    /// The manifest is known: `layers` layers, `bytes` compressed bytes in all.
    Resolved {
        image: String,
        digest: String,
        layers: usize,
        bytes: u64,
    },
    /// Bytes of one layer downloaded so far.
    Progress {
        digest: String,
        done: u64,
        total: u64,
    },
    /// One layer is in the cache (`cached`: it already was).
    Layer {
        digest: String,
        bytes: u64,
        cached: bool,
    },
    /// A request failed and is tried again.
    Retry {
        what: String,
        attempt: u32,
        error: String,
    },
    /// A step of making the root file system (unpack, mkfs).
    Build {
        message: String,
    },
    Done {
        image: Box<Image>,
    },
    Error {
        error: ErrorDetail,
    },
}

/// An image in the daemon's cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The manifest digest.
    pub id: String,
    /// `registry/repo:tag` names; empty for a dangling image.
    pub names: Vec<String>,
    /// Where it was pulled from.
    pub source: String,
    /// Compressed bytes (layers + config + manifest).
    pub size: u64,
    pub layers: Vec<String>,
    pub created: Option<String>,
    /// RFC 3339, UTC.
    pub pulled_at: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub labels: BTreeMap<String, String>,
    pub exposed_ports: Vec<String>,
    /// The built ext4 root file system, once built: its size in bytes.
    pub rootfs_bytes: Option<u64>,
    /// Templates made from it.
    pub templates: Vec<String>,
}

/// `DELETE /images/{name}` and `POST /images/prune`: what was freed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagesFreed {
    /// Ids of images removed.
    pub images: Vec<String>,
    pub blobs: usize,
    pub rootfs: usize,
    pub bytes: u64,
}

/// One line of the NDJSON stream `POST /templates` answers with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuildEvent {
    /// A step started; `step` of `steps`.
    Progress {
        step: u32,
        steps: u32,
        message: String,
    },
    /// A line the guest printed on its console while building.
    Log { line: String },
    /// The build finished: the template is ready.
    Done { template: Box<Template> },
    /// The build failed; the template is `failed` with this error.
    Error { error: ErrorDetail },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// No network interface at all.
    #[default]
    None,
    /// A NIC in the sandbox's own network namespace with NAT egress through the host.
    Nat,
}

/// `POST /sandboxes`. Exactly one of `template` and `snapshot`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    #[serde(default)]
    pub template: Option<String>,
    /// Start from a sandbox snapshot instead (a fork).
    #[serde(default)]
    pub snapshot: Option<String>,
    /// Kill the sandbox this many seconds after it was created (0 or absent: never).
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// Hibernate the sandbox after this many seconds without an exec, file transfer, code run
    /// or open stream (absent: never); any later request wakes it.
    #[serde(default)]
    pub idle_timeout_s: Option<u64>,
    #[serde(default)]
    pub network: NetworkMode,
    /// Free-form labels, shown by inspect and list.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Creating,
    Running,
    Paused,
    /// Snapshotted to disk with its VMM gone; any request wakes it.
    Hibernated,
    Stopped,
    Failed,
}

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Hibernated => "hibernated",
            SandboxState::Stopped => "stopped",
            SandboxState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => SandboxState::Creating,
            "running" => SandboxState::Running,
            "paused" => SandboxState::Paused,
            "hibernated" => SandboxState::Hibernated,
            "stopped" => SandboxState::Stopped,
            "failed" => SandboxState::Failed,
            _ => return None,
        })
    }

    pub const ALL: [SandboxState; 6] = [
        SandboxState::Creating,
        SandboxState::Running,
        SandboxState::Paused,
        SandboxState::Hibernated,
        SandboxState::Stopped,
        SandboxState::Failed,
    ];
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sandbox {
    /// `sb-` + 12 hex digits.
    pub id: String,
    /// The owning tenant (`*` for the host's own).
    #[serde(default)]
    pub tenant: String,
    pub state: SandboxState,
    pub template: String,
    /// The snapshot it was started from, for forks.
    pub snapshot: Option<String>,
    /// Host pid of the sandbox's VMM while it runs.
    pub pid: Option<i32>,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub network: NetworkMode,
    /// Guest address with `nat` networking.
    pub guest_ip: Option<String>,
    pub timeout_s: Option<u64>,
    pub labels: BTreeMap<String, String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub age_s: u64,
    /// Milliseconds from the create request to the agent's first answer.
    pub create_ms: Option<f64>,
    /// Milliseconds the VMM took to load the snapshot.
    pub restore_ms: Option<f64>,
    /// Resident memory of the VMM process, KiB (guest memory included), while it runs.
    pub rss_kib: Option<u64>,
    /// Why the sandbox failed or stopped.
    pub reason: Option<String>,
    /// Seconds without activity after which the sandbox hibernates.
    #[serde(default)]
    pub idle_timeout_s: Option<u64>,
    /// When it last hibernated (RFC 3339, UTC), while it is hibernated.
    #[serde(default)]
    pub hibernated_at: Option<String>,
    /// Disk its hibernation snapshot takes (memory + state + writable layer), bytes.
    #[serde(default)]
    pub hibernated_bytes: Option<u64>,
    /// Resident memory its VMM gave back at the last hibernation, KiB.
    #[serde(default)]
    pub memory_freed_kib: Option<u64>,
    /// Milliseconds from the last wake request to the agent's first answer.
    #[serde(default)]
    pub wake_ms: Option<f64>,
    /// How many times it was woken.
    #[serde(default)]
    pub wakes: u64,
    /// Whether the create took it, already restored, from the template's warm pool.
    #[serde(default)]
    pub from_pool: bool,
}

/// `POST /sandboxes/{id}/exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments; the program is looked up in the guest's `PATH`.
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Run as this user: `name`, `uid`, `name:group` or `uid:gid`, looked up in the guest's
    /// /etc/passwd and /etc/group (default: the image's `User`, else root).
    #[serde(default)]
    pub user: Option<String>,
    /// All of stdin, as UTF-8 text (use the agent connection for binary or streamed stdin).
    #[serde(default)]
    pub stdin: Option<String>,
    /// Answer with an NDJSON stream of [`ExecEvent`]s instead of one [`ExecResult`].
    #[serde(default)]
    pub stream: bool,
    /// Start it and answer at once with its pid (202); its output goes to the sandbox's logs
    /// and it keeps running after the client goes away.
    #[serde(default)]
    pub background: bool,
    /// Kill it (SIGKILL) after this many seconds.
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

/// The answer to a non-streaming exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Output as UTF-8 (invalid sequences replaced).
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: u64,
}

/// The answer to a background exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStarted {
    pub pid: i32,
}

/// One line of a streaming exec's NDJSON answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    Started {
        pid: i32,
    },
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    Exit {
        exit_code: Option<i32>,
        signal: Option<i32>,
        duration_ms: u64,
    },
    Error {
        error: ErrorDetail,
    },
}

/// `DELETE /sandboxes/{id}` query: `?grace_s=N` (default 0: SIGKILL at once).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteQuery {
    #[serde(default)]
    pub grace_s: Option<u64>,
}

/// `POST /sandboxes/{id}/snapshots`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// Keep the sandbox paused afterwards instead of resuming it.
    #[serde(default)]
    pub leave_paused: bool,
}

/// A sandbox snapshot: memory, device state and the writable layer at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// `snap-` + 12 hex digits.
    pub id: String,
    /// The owning tenant (its sandbox's).
    #[serde(default)]
    pub tenant: String,
    pub sandbox: String,
    pub template: String,
    pub created_at: String,
    pub size_bytes: u64,
}

/// One line of `GET /events` (NDJSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub time: String,
    /// `sandbox.created`, `sandbox.state`, `sandbox.deleted`, `template.building`,
    /// `template.ready`, `template.failed`, `template.deleted`, `snapshot.created`,
    /// `snapshot.deleted`.
    pub kind: String,
    /// The tenant the event belongs to; `GET /events` shows a tenant only its own.
    #[serde(default)]
    pub tenant: String,
    pub sandbox: Option<String>,
    pub template: Option<String>,
    pub snapshot: Option<String>,
    pub state: Option<String>,
    pub message: Option<String>,
}

/// Lists come wrapped so fields can be added later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct List<T> {
    pub items: Vec<T>,
}

/// `PUT /templates/{name}/pool`: keep between `min` and `max` sandboxes of the template
/// restored and paused, ready for creates to take.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    #[serde(default)]
    pub min: u32,
    pub max: u32,
    /// Most guest memory the pool's ready sandboxes may hold together, MiB.
    #[serde(default)]
    pub max_memory_mib: Option<u64>,
}

/// A warm pool as `GET /templates/{name}/pool` and `GET /pools` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub template: String,
    /// The template's tenant (`*`: a shared template, whose pool serves every tenant).
    pub tenant: String,
    pub min: u32,
    pub max: u32,
    pub max_memory_mib: Option<u64>,
    /// The size the pool is steered to now: `min`, plus the demand (creates per second,
    /// moving average) times the time a refill takes, within `max`, the memory cap and the
    /// host's free memory.
    pub target: u32,
    /// Restored, paused and ready.
    pub ready: u32,
    /// Being restored.
    pub filling: u32,
    /// Creates served from the pool, and creates that found it empty.
    pub claims: u64,
    pub misses: u64,
    /// Creates of the template per minute (moving average).
    pub demand_per_min: f64,
    /// Set while the host is short of memory (`--pool-reserve-mib`): the pool is drained.
    pub memory_pressure: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_sandbox_refuses_unknown_fields() {
        let err = serde_json::from_str::<CreateSandbox>(r#"{"template":"base","tmeout_s":3}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tmeout_s"), "{err}");
    }

    #[test]
    fn template_spec_defaults() {
        let s: TemplateSpec =
            serde_json::from_str(r#"{"name":"base","kernel":"/k","rootfs":"/r"}"#).unwrap();
        assert_eq!((s.vcpus, s.memory_mib, s.disk_mib), (1, 256, 1024));
        assert!(s.warmup.is_empty() && !s.replace);
    }

    #[test]
    fn events_are_tagged() {
        let e = ExecEvent::Exit {
            exit_code: Some(3),
            signal: None,
            duration_ms: 5,
        };
        let j = serde_json::to_string(&e).unwrap();
        assert_eq!(
            j,
            r#"{"type":"exit","exit_code":3,"signal":null,"duration_ms":5}"#
        );
        let b: BuildEvent =
            serde_json::from_str(r#"{"type":"progress","step":1,"steps":5,"message":"x"}"#)
                .unwrap();
        assert!(matches!(b, BuildEvent::Progress { step: 1, .. }));
    }

    #[test]
    fn states_round_trip() {
        for s in SandboxState::ALL {
            assert_eq!(SandboxState::parse(s.as_str()), Some(s));
        }
    }
}

/// A template's warm runtime (issue #13): a long-running interpreter started at build time,
/// after the warm-up, and kept in the ready snapshot; `POST /sandboxes/{id}/code` runs code
/// in it without a fork+exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSpec {
    /// `python` (the only one so far).
    pub language: String,
    /// Modules imported before the snapshot (`["numpy", "pandas"]`).
    #[serde(default)]
    pub preload: Vec<String>,
    /// Code run inside the runtime after the preloads, before the snapshot, each piece in a
    /// namespace of its own: what it imports, compiles or caches is warm in every sandbox
    /// (a first `DataFrame` costs pandas many lazy imports), its variables are dropped.
    /// A piece that raises fails the build with its traceback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warmup: Vec<String>,
}

/// `POST /sandboxes/{id}/code`: code for the sandbox's warm runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    /// `python` (the default).
    #[serde(default = "default_language")]
    pub language: String,
    pub code: String,
    /// Answer with an NDJSON stream of [`CodeEvent`]s instead of one [`CodeResult`].
    #[serde(default)]
    pub stream: bool,
    /// Interrupt the code (a `TimeoutError` inside it) after this many seconds.
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

pub fn default_language() -> String {
    "python".into()
}

/// One line of a streamed `POST /sandboxes/{id}/code`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CodeEvent {
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    /// The repr of the code's last expression, when it is one and not None.
    Result {
        text: String,
    },
    /// The code raised (or the runtime died: `RuntimeDied`).
    Error {
        name: String,
        value: String,
        traceback: String,
    },
    /// The last line.
    Done {
        ok: bool,
        duration_ms: u64,
        /// The runtime died during this call and was started again: its state is gone.
        #[serde(default)]
        restarted: bool,
    },
}

/// The error of a collected `POST /sandboxes/{id}/code`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeError {
    pub name: String,
    pub value: String,
    pub traceback: String,
}

/// The answer to a `POST /sandboxes/{id}/code` without `stream`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeResult {
    pub stdout: String,
    pub stderr: String,
    /// The repr of the code's last expression, when it is one and not None.
    pub result: Option<String>,
    pub error: Option<CodeError>,
    /// The runtime died during this call and was started again: its state is gone.
    #[serde(default)]
    pub restarted: bool,
    pub duration_ms: u64,
}
