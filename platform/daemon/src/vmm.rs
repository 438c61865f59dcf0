//! Starting, talking to and cleaning up after one jailed `tartarus-vmm`.
//!
//! Every sandbox (and every template build) is `tartarus-jailer` → `tartarus-vmm` in a jail of its
//! own under `<state>/jail/tartarus-vmm/<id>/root`, as an unprivileged uid, in a PID namespace of
//! its own, with cgroup limits. Paths inside the jail are the same for every VM (`/api.sock`,
//! `/v.sock`, `/rootfs.ext4`, `/disk.ext4`, ...), which is what lets one template snapshot be
//! restored into any number of jails.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::unix::AsyncFd;

/// The VMM's API socket inside every jail.
pub const API_SOCK: &str = "api.sock";
/// The vsock device's Unix socket inside every jail.
pub const VSOCK_SOCK: &str = "v.sock";
/// The serial console's output inside every jail.
pub const SERIAL_LOG: &str = "serial.log";
/// The name the jailer gives the VMM's directory and pid file.
pub const EXEC_NAME: &str = "tartarus-vmm";
/// The agent's vsock port (tartarus-init's default).
pub const AGENT_PORT: u32 = 52;
/// The parent cgroup of every sandbox's cgroup.
pub const PARENT_CGROUP: &str = "tartarus";

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("Cannot start the jailer {path}")]
    SpawnJailer {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("The jailer failed: {0}")]
    Jailer(String),
    #[error("The VMM's pid file {0} is missing or malformed")]
    PidFile(String),
    #[error("The VMM's API socket did not appear within {0:?}")]
    SocketTimeout(Duration),
    #[error("Cannot reach the VMM's API at {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP error talking to the VMM")]
    Http(#[from] hyper::Error),
    #[error("Bad HTTP request to the VMM")]
    HttpRequest(#[from] hyper::http::Error),
    #[error("The VMM answered {method} {path} with {status}: {message}")]
    Api {
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    #[error("The VMM did not answer {0} within the time limit")]
    Timeout(String),
    #[error("I/O error")]
    Io(#[from] std::io::Error),
}

/// What the jail of one VM looks like on the host.
#[derive(Debug, Clone)]
pub struct JailPaths {
    pub id: String,
    /// `<state>/jail/tartarus-vmm/<id>`: removed as a whole.
    pub base: PathBuf,
    /// `<base>/root`: the VMM's `/`.
    pub root: PathBuf,
}

impl JailPaths {
    pub fn new(jail_dir: &Path, id: &str) -> JailPaths {
        let base = jail_dir.join(EXEC_NAME).join(id);
        let root = base.join("root");
        JailPaths {
            id: id.to_string(),
            base,
            root,
        }
    }
    pub fn api_sock(&self) -> PathBuf {
        self.root.join(API_SOCK)
    }
    pub fn vsock(&self) -> PathBuf {
        self.root.join(VSOCK_SOCK)
    }
    pub fn serial(&self) -> PathBuf {
        self.root.join(SERIAL_LOG)
    }
    pub fn pid_file(&self) -> PathBuf {
        self.root.join(format!("{EXEC_NAME}.pid"))
    }
}

/// How to start jails on this host.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub jailer: PathBuf,
    pub vmm: PathBuf,
    pub jail_dir: PathBuf,
    pub pvm_workarounds: bool,
    pub cgroup_version: u8,
}

/// Resources of one jail.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub uid: u32,
    pub vcpus: u8,
    pub memory_mib: u32,
}

impl Launcher {
    /// The cgroup settings for a VM: guest memory plus headroom for the VMM, CPU quota of its
    /// vCPUs, a pids cap.
    pub fn cgroup_args(&self, limits: Limits) -> Vec<String> {
        let mem = (limits.memory_mib as u64 + 96) << 20;
        let quota = limits.vcpus as u64 * 100_000;
        if self.cgroup_version == 2 {
            vec![
                format!("memory.max={mem}"),
                format!("cpu.max={quota} 100000"),
                "pids.max=64".to_string(),
            ]
        } else {
            vec![
                format!("memory.limit_in_bytes={mem}"),
                "cpu.cfs_period_us=100000".to_string(),
                format!("cpu.cfs_quota_us={quota}"),
                "pids.max=64".to_string(),
            ]
        }
    }

    /// Runs the jailer (which forks the VMM into its PID namespace and exits) and returns the
    /// VMM's host pid. The caller has already created `paths.root` and put the VM's files there.
    pub async fn start(
        &self,
        paths: &JailPaths,
        limits: Limits,
        netns: Option<&Path>,
    ) -> Result<i32, VmmError> {
        let mut cmd = tokio::process::Command::new(&self.jailer);
        cmd.arg("--id")
            .arg(&paths.id)
            .arg("--exec-file")
            .arg(&self.vmm)
            .arg("--uid")
            .arg(limits.uid.to_string())
            .arg("--gid")
            .arg(limits.uid.to_string())
            .arg("--chroot-base-dir")
            .arg(&self.jail_dir)
            .arg("--cgroup-version")
            .arg(self.cgroup_version.to_string())
            .arg("--parent-cgroup")
            .arg(PARENT_CGROUP)
            .arg("--resource-limit")
            .arg("no-file=4096")
            .arg("--new-pid-ns")
            .arg("--daemonize");
        if let Some(ns) = netns {
            cmd.arg("--netns").arg(ns);
        }
        for c in self.cgroup_args(limits) {
            cmd.arg("--cgroup").arg(c);
        }
        cmd.arg("--")
            .arg("--api-sock")
            .arg(format!("/{API_SOCK}"))
            .arg("--serial-out")
            .arg(format!("/{SERIAL_LOG}"))
            .arg("--pvm-workarounds")
            .arg(if self.pvm_workarounds { "on" } else { "off" });
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let out = cmd.output().await.map_err(|source| VmmError::SpawnJailer {
            path: self.jailer.display().to_string(),
            source,
        })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(VmmError::Jailer(if err.is_empty() {
                format!("exit status {}", out.status)
            } else {
                err
            }));
        }
        let pid_file = paths.pid_file();
        let text = tokio::fs::read_to_string(&pid_file)
            .await
            .map_err(|_| VmmError::PidFile(pid_file.display().to_string()))?;
        text.trim()
            .parse::<i32>()
            .ok()
            .filter(|p| *p > 1)
            .ok_or_else(|| VmmError::PidFile(pid_file.display().to_string()))
    }
}

/// Waits for a Unix socket file to appear.
pub async fn wait_for_socket(path: &Path, timeout: Duration) -> Result<(), VmmError> {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > timeout {
            return Err(VmmError::SocketTimeout(timeout));
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    Ok(())
}

/// One request to a VMM's Firecracker-shaped API; returns the parsed JSON body (Null if empty).
pub async fn api(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Value, VmmError> {
    let fut = api_inner(sock, method, path, body);
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(VmmError::Timeout(format!("{method} {path}"))),
    }
}

async fn api_inner(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, VmmError> {
    // A VMM binds its socket a moment before it listens: a refused connect right after the
    // file appears is retried briefly.
    let start = Instant::now();
    let stream = loop {
        match tokio::net::UnixStream::connect(sock).await {
            Ok(s) => break s,
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && start.elapsed() < Duration::from_secs(1) =>
            {
                tokio::time::sleep(Duration::from_micros(200)).await
            }
            Err(source) => {
                return Err(VmmError::Connect {
                    path: sock.display().to_string(),
                    source,
                })
            }
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("Host", "localhost")
        .header("Accept", "application/json");
    if body.is_some() {
        req = req.header("Content-Type", "application/json");
    }
    let req = req.body(Full::new(Bytes::from(bytes)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let data = resp.into_body().collect().await?.to_bytes();
    let value: Value = if data.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&data)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&data).into()))
    };
    if status >= 300 {
        let message = value
            .get("fault_message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        return Err(VmmError::Api {
            method: method.to_string(),
            path: path.to_string(),
            status,
            message,
        });
    }
    Ok(value)
}

/// Pauses (`"Paused"`) or resumes (`"Resumed"`) a VMM's vCPUs.
pub async fn set_vm_state(sock: &Path, state: &str) -> Result<(), VmmError> {
    api(
        sock,
        "PATCH",
        "/vm",
        Some(&serde_json::json!({ "state": state })),
        Duration::from_secs(30),
    )
    .await
    .map(|_| ())
}

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat), None if it
/// does not exist or is a zombie.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may contain spaces and parentheses: the fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `pid` is the very process that was started at `start` (not a reused pid).
pub fn same_process(pid: i32, start: u64) -> bool {
    process_start_time(pid) == Some(start)
}

/// Resident set size of a process, KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// A pidfd that becomes readable when the process exits.
pub struct ProcessWatch {
    fd: AsyncFd<OwnedFd>,
    pid: i32,
}

impl ProcessWatch {
    pub fn new(pid: i32) -> std::io::Result<ProcessWatch> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is
        // passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a fresh fd that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: `owned` is an open pidfd that the AsyncFd owns from here on and never
        // replaces, so its raw fd stays valid and the same for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register(owned) }.map_err(|e| e.into_parts().1)?;
        Ok(ProcessWatch { fd, pid })
    }

    /// Resolves when the process has exited; reaps it when it is our child (we are the
    /// sub-reaper of every VMM we start) and returns a description of how it ended.
    pub async fn exited(&self) -> String {
        loop {
            match self.fd.readable().await {
                Ok(mut g) => {
                    g.retain_ready();
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let mut status = 0;
        // SAFETY: waitpid on a specific pid with WNOHANG writes only to `status`.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        if r == self.pid {
            if libc::WIFSIGNALED(status) {
                format!("killed by signal {}", libc::WTERMSIG(status))
            } else {
                format!("exited with code {}", libc::WEXITSTATUS(status))
            }
        } else {
            "exited".to_string()
        }
    }
}

/// SIGKILLs a process if it is still the one started at `start`.
pub fn kill_if_same(pid: i32, start: Option<u64>) {
    if start.is_none_or(|s| same_process(pid, s)) {
        // SAFETY: kill sends a signal; no memory involved.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// The mount points of each cgroup v1 controller (or the v2 mount under the key "").
fn cgroup_mounts() -> Vec<(String, PathBuf)> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut out = Vec::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        match f[2] {
            "cgroup" => {
                for opt in f[3].split(',') {
                    if ["memory", "cpu", "pids"].contains(&opt) {
                        out.push((opt.to_string(), PathBuf::from(f[1])));
                    }
                }
            }
            "cgroup2" => out.push((String::new(), PathBuf::from(f[1]))),
            _ => {}
        }
    }
    out
}

/// 1 when the controllers the daemon uses are mounted as cgroup v1, else 2.
pub fn detect_cgroup_version() -> u8 {
    let m = cgroup_mounts();
    if ["memory", "cpu", "pids"]
        .iter()
        .all(|c| m.iter().any(|(k, _)| k == c))
    {
        1
    } else {
        2
    }
}

/// The cgroup directories the jailer made for jail `id`.
pub fn cgroup_dirs(id: &str, version: u8) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = cgroup_mounts()
        .into_iter()
        .filter(|(k, _)| {
            if version == 1 {
                !k.is_empty()
            } else {
                k.is_empty()
            }
        })
        .map(|(_, p)| p.join(PARENT_CGROUP).join(id))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Removes a dead VM's cgroups and jail directory. Idempotent.
pub fn cleanup_jail(paths: &JailPaths, cgroup_version: u8) -> std::io::Result<()> {
    for dir in cgroup_dirs(&paths.id, cgroup_version) {
        // A cgroup directory goes with rmdir once its last process has exited; the kernel may
        // need a moment after the exit.
        for _ in 0..50 {
            match std::fs::remove_dir(&dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => break,
            }
        }
    }
    match std::fs::remove_dir_all(&paths.base) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether this host's KVM is PVM (the VMM must add the guest kernel work-arounds).
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_stable() {
        let me = std::process::id() as i32;
        let t = process_start_time(me).unwrap();
        assert!(same_process(me, t));
        assert!(!same_process(me, t + 1));
        assert!(process_start_time(i32::MAX).is_none());
        assert!(rss_kib(me).unwrap() > 0);
    }

    #[test]
    fn cgroup_limits_follow_the_version() {
        let mut l = Launcher {
            jailer: "/j".into(),
            vmm: "/v".into(),
            jail_dir: "/s".into(),
            pvm_workarounds: false,
            cgroup_version: 1,
        };
        let lim = Limits {
            uid: 1,
            vcpus: 2,
            memory_mib: 128,
        };
        let a = l.cgroup_args(lim);
        assert!(a.contains(&format!("memory.limit_in_bytes={}", 224u64 << 20)));
        assert!(a.contains(&"cpu.cfs_quota_us=200000".to_string()));
        l.cgroup_version = 2;
        assert!(l
            .cgroup_args(lim)
            .contains(&"cpu.max=200000 100000".to_string()));
    }

    #[tokio::test]
    async fn process_watch_sees_an_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.1")
            .spawn()
            .unwrap();
        let w = ProcessWatch::new(child.id() as i32).unwrap();
        let how = w.exited().await;
        assert_eq!(how, "exited with code 0");
        // Reaped by the watch: wait finds nothing left (or the status, if it raced).
        let _ = child.try_wait();
    }
}
