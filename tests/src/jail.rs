//! Running `tartarus-vmm` under `tartarus-jailer`: the static binaries (built once per process
//! with `scripts/build-static.sh`), one jail per test under a unique chroot base in /tmp, and
//! reading a jailed process from the host through /proc.
//!
//! Environment:
//! - `TARTARUS_STATIC_VMM`, `TARTARUS_JAILER`: use these binaries instead of building them.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::{self, Response};
use crate::{repo_root, TempDir, SOCKET_TIMEOUT};

/// The uid and gid the jailed VMMs run as.
pub const JAIL_UID: u32 = 12345;
pub const JAIL_GID: u32 = 12345;
/// The VMM's file name, hence its jail directory `<base>/tartarus-vmm/<id>`.
pub const EXEC_NAME: &str = "tartarus-vmm";
/// The default parent cgroup of the jailer.
pub const DEFAULT_PARENT_CGROUP: &str = "tartarus";
/// Paths inside the jail used by [`JailBuilder`].
pub const API_SOCK: &str = "/api.sock";
pub const SERIAL_OUT: &str = "/serial.log";

/// The statically linked binaries.
#[derive(Clone, Debug)]
pub struct StaticBins {
    pub vmm: PathBuf,
    pub jailer: PathBuf,
}

/// The static `tartarus-vmm` and `tartarus-jailer`, built once per process by
/// `scripts/build-static.sh` (incremental). If the build fails but binaries from an earlier
/// build exist, those are used with a loud warning; otherwise this panics.
pub fn static_bins() -> &'static StaticBins {
    static BINS: OnceLock<Result<StaticBins, String>> = OnceLock::new();
    let r = BINS.get_or_init(|| {
        if let (Some(v), Some(j)) = (
            std::env::var_os("TARTARUS_STATIC_VMM"),
            std::env::var_os("TARTARUS_JAILER"),
        ) {
            return Ok(StaticBins {
                vmm: v.into(),
                jailer: j.into(),
            });
        }
        build_static()
    });
    match r {
        Ok(b) => b,
        Err(e) => panic!("static binaries unavailable: {e}"),
    }
}

fn build_static() -> Result<StaticBins, String> {
    let script = repo_root().join("scripts").join("build-static.sh");
    let out = Command::new(&script)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The script prints the VMM path, then the jailer path.
    let default = repo_root()
        .join("target")
        .join("x86_64-unknown-linux-gnu")
        .join("release");
    let mut lines = stdout.lines().map(PathBuf::from);
    let vmm = lines.next().unwrap_or_else(|| default.join(EXEC_NAME));
    let jailer = lines
        .next()
        .unwrap_or_else(|| default.join("tartarus-jailer"));
    if out.status.success() {
        return Ok(StaticBins { vmm, jailer });
    }
    if vmm.is_file() && jailer.is_file() {
        eprintln!(
            "\n!!!!! WARNING: {} failed ({}); using the static binaries from an earlier build, \
             which may be stale:\n!!!!! {}\n!!!!! {}\n--- stderr of the build:\n{stderr}\n",
            script.display(),
            out.status,
            vmm.display(),
            jailer.display()
        );
        return Ok(StaticBins { vmm, jailer });
    }
    Err(format!(
        "{} failed ({}):\n{stderr}",
        script.display(),
        out.status
    ))
}

/// The static `tartarus-vmm` with the `seccomp-test-trigger` feature (hidden flag
/// `--seccomp-test-trigger KIND`), built once per process into `<target>/seccomp-trigger-static`
/// the way `scripts/build-static.sh` builds the normal one; `$TARTARUS_STATIC_TRIGGER_VMM`
/// overrides it. Test-only: never jail this binary in production.
pub fn static_trigger_vmm() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("TARTARUS_STATIC_TRIGGER_VMM") {
            return p.into();
        }
        // static_bins().vmm is <target>/x86_64-unknown-linux-gnu/release/tartarus-vmm.
        let normal = &static_bins().vmm;
        let target = normal
            .ancestors()
            .nth(3)
            .expect("the static VMM's target directory");
        let target_dir = target.join("seccomp-trigger-static");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let rustflags = format!(
            "{} -C target-feature=+crt-static",
            std::env::var("RUSTFLAGS").unwrap_or_default()
        );
        let out = Command::new(cargo)
            .args(["build", "--release", "-p", "vmm", "--bin", EXEC_NAME])
            .args(["--features", "seccomp-test-trigger"])
            .args(["--target", "x86_64-unknown-linux-gnu", "--target-dir"])
            .arg(&target_dir)
            .env("RUSTFLAGS", rustflags)
            .current_dir(repo_root())
            .output()
            .expect("run cargo build");
        assert!(
            out.status.success(),
            "building the static trigger VMM failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target_dir
            .join("x86_64-unknown-linux-gnu")
            .join("release")
            .join(EXEC_NAME)
    })
}

/// Makes this process a child subreaper, so a VMM that the jailer forked (and then left)
/// becomes our child and can be waited for.
pub fn become_subreaper() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer; it only changes how orphans are
        // reparented.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(
            rc,
            0,
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        );
    });
}

/// A unique jail id: `<tag>-<pid>-<n>`.
pub fn unique_id(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs the jailer to completion with exactly `args` (for bad-input tests).
pub fn run_jailer<I, S>(args: I) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(&static_bins().jailer)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tartarus-jailer")
}

/// Options for one jailed VMM.
#[derive(Clone, Debug)]
pub struct JailBuilder {
    id: String,
    parent_cgroup: String,
    jailer_args: Vec<OsString>,
    vmm_args: Vec<OsString>,
    files: Vec<(PathBuf, String)>,
    exec_file: Option<PathBuf>,
}

impl JailBuilder {
    /// A jail with a unique id derived from `tag`; the VMM gets `--api-sock /api.sock
    /// --serial-out /serial.log`.
    pub fn new(tag: &str) -> JailBuilder {
        JailBuilder {
            id: unique_id(tag),
            parent_cgroup: DEFAULT_PARENT_CGROUP.into(),
            jailer_args: Vec::new(),
            vmm_args: vec![
                "--api-sock".into(),
                API_SOCK.into(),
                "--serial-out".into(),
                SERIAL_OUT.into(),
            ],
            files: Vec::new(),
            exec_file: None,
        }
    }

    /// Jails this VMM binary instead of the static one (it must be static too, and named
    /// `tartarus-vmm`).
    pub fn exec_file(mut self, path: &Path) -> Self {
        self.exec_file = Some(path.to_path_buf());
        self
    }

    /// Appends jailer arguments (before `--`).
    pub fn jailer_args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        if let Some(i) = args.iter().position(|a| a == "--parent-cgroup") {
            if let Some(p) = args.get(i + 1) {
                self.parent_cgroup = p.to_string_lossy().into_owned();
            }
        }
        self.jailer_args.extend(args);
        self
    }

    /// Appends VMM arguments (after `--`).
    pub fn vmm_args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.vmm_args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Copies `src` into the jail root as `name` before the jailer starts.
    pub fn copy_in(mut self, src: &Path, name: &str) -> Self {
        self.files.push((src.to_path_buf(), name.to_string()));
        self
    }

    /// Prepares the jail root, starts the jailer and waits for the VMM's pid file.
    pub fn spawn(self) -> Jail {
        become_subreaper();
        let bins = static_bins();
        let base = TempDir::new("jail");
        let logs = TempDir::new("jail-logs");
        let root = base.path().join(EXEC_NAME).join(&self.id).join("root");
        fs::create_dir_all(&root).unwrap_or_else(|e| panic!("create {}: {e}", root.display()));
        for (src, name) in &self.files {
            fs::copy(src, root.join(name))
                .unwrap_or_else(|e| panic!("copy {} into the jail: {e}", src.display()));
        }
        let mut cmd = Command::new(&bins.jailer);
        cmd.arg("--id")
            .arg(&self.id)
            .arg("--exec-file")
            .arg(self.exec_file.as_deref().unwrap_or(&bins.vmm))
            .arg("--uid")
            .arg(JAIL_UID.to_string())
            .arg("--gid")
            .arg(JAIL_GID.to_string())
            .arg("--chroot-base-dir")
            .arg(base.path())
            .args(&self.jailer_args)
            .arg("--")
            .args(&self.vmm_args)
            .stdin(Stdio::null())
            .stdout(File::create(logs.join("stdout")).expect("stdout log"))
            .stderr(File::create(logs.join("stderr")).expect("stderr log"));
        let command_line = format!("{cmd:?}");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bins.jailer.display()));
        let mut jail = Jail {
            id: self.id,
            parent_cgroup: self.parent_cgroup,
            root,
            jailer: child,
            jailer_exit: None,
            vmm_pid: None,
            vmm_exit: None,
            vmm_signal: None,
            command_line,
            logs,
            base,
        };
        jail.vmm_pid = Some(jail.wait_for_pid_file());
        jail
    }
}

/// One jailed VMM; on drop the VMM is killed, its cgroups removed and the jail deleted.
pub struct Jail {
    pub id: String,
    parent_cgroup: String,
    root: PathBuf,
    jailer: Child,
    jailer_exit: Option<ExitStatus>,
    vmm_pid: Option<i32>,
    vmm_exit: Option<i32>,
    /// The signal that killed the VMM, once it has been waited for.
    vmm_signal: Option<i32>,
    command_line: String,
    logs: TempDir,
    base: TempDir,
}

impl Jail {
    /// The chroot base directory of this jail.
    pub fn base(&self) -> &Path {
        self.base.path()
    }

    /// The jail root on the host (`<base>/tartarus-vmm/<id>/root`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path inside the jail, seen from the host.
    pub fn host_path(&self, in_jail: &str) -> PathBuf {
        self.root.join(in_jail.trim_start_matches('/'))
    }

    pub fn socket(&self) -> PathBuf {
        self.host_path(API_SOCK)
    }

    /// The VMM's pid as seen from the host.
    pub fn pid(&self) -> i32 {
        self.vmm_pid.expect("VMM pid")
    }

    /// The jailer's own pid (equal to [`Jail::pid`] unless the jailer forked).
    pub fn jailer_pid(&self) -> i32 {
        self.jailer.id() as i32
    }

    /// The jailer's stdout and stderr so far.
    pub fn jailer_output(&self) -> (String, String) {
        let read = |n| fs::read_to_string(self.logs.join(n)).unwrap_or_default();
        (read("stdout"), read("stderr"))
    }

    /// The guest's serial output (the `--serial-out` file) so far.
    pub fn serial(&self) -> String {
        fs::read_to_string(self.host_path(SERIAL_OUT)).unwrap_or_default()
    }

    /// Command line, jailer output and serial output, for failure messages.
    pub fn diagnostics(&self) -> String {
        let (out, err) = self.jailer_output();
        format!(
            "=== jailer: {}\n=== jailer exit: {:?}, vmm pid {:?} exit {:?}\n=== stdout:\n{out}\n\
             === stderr:\n{err}\n=== serial:\n{}\n=== end",
            self.command_line,
            self.jailer_exit,
            self.vmm_pid,
            self.vmm_exit,
            self.serial()
        )
    }

    fn wait_for_pid_file(&mut self) -> i32 {
        let path = self.host_path(&format!("{EXEC_NAME}.pid"));
        let deadline = Instant::now() + SOCKET_TIMEOUT;
        loop {
            if let Some(pid) = fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return pid;
            }
            if let Ok(Some(s)) = self.jailer.try_wait() {
                self.jailer_exit = Some(s);
                if !s.success() {
                    panic!(
                        "the jailer failed ({s}) before writing its pid file\n{}",
                        self.diagnostics()
                    );
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "no pid file {} after {SOCKET_TIMEOUT:?}\n{}",
                    path.display(),
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the jailer process to exit (it does at once when it forked the VMM).
    pub fn wait_jailer(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.jailer_exit {
            return s;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.jailer.try_wait() {
                self.jailer_exit = Some(s);
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "the jailer did not exit within {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the API socket accepts connections.
    pub fn wait_for_socket(&self) {
        let deadline = Instant::now() + SOCKET_TIMEOUT;
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            if Instant::now() > deadline || !self.vmm_alive() {
                panic!(
                    "API socket {} not ready\n{}",
                    self.socket().display(),
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the VMM process exists and is not a zombie.
    pub fn vmm_alive(&self) -> bool {
        self.vmm_exit.is_none()
            && proc_status(self.pid())
                .is_some_and(|s| s.get("State").is_some_and(|st| !st.starts_with('Z')))
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        let body = body.map(|b| b.to_string());
        http::request(
            &self.socket(),
            method,
            path,
            body.as_deref().map(str::as_bytes),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.diagnostics()))
    }

    pub fn put_ok(&self, path: &str, body: &Value) {
        let r = self.request("PUT", path, Some(body));
        assert_eq!(
            r.status,
            204,
            "PUT {path} {body} -> {r}\n{}",
            self.diagnostics()
        );
    }

    /// `PUT /machine-config`, `PUT /boot-source` (kernel path inside the jail), `InstanceStart`.
    pub fn boot(&self, vcpus: u32, mem_mib: u64, kernel_in_jail: &str, boot_args: &str) {
        self.put_ok(
            "/machine-config",
            &json!({"vcpu_count": vcpus, "mem_size_mib": mem_mib}),
        );
        self.put_ok(
            "/boot-source",
            &json!({"kernel_image_path": kernel_in_jail, "boot_args": boot_args}),
        );
        self.put_ok("/actions", &json!({"action_type": "InstanceStart"}));
    }

    /// Waits until the serial output contains `needle`.
    pub fn wait_for_serial(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.serial();
            if s.contains(needle) {
                return s;
            }
            if Instant::now() > deadline || !self.vmm_alive() {
                panic!("serial output has no {needle:?}\n{}", self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the VMM to exit and returns its exit code (None if killed by a signal).
    pub fn wait_vmm_exit(&mut self, timeout: Duration) -> Option<i32> {
        if self.vmm_exit.is_some() {
            return self.vmm_exit.filter(|c| *c >= 0);
        }
        let deadline = Instant::now() + timeout;
        let pid = self.pid();
        loop {
            if pid == self.jailer_pid() {
                if let Ok(Some(s)) = self.jailer.try_wait() {
                    self.jailer_exit = Some(s);
                    self.vmm_exit = Some(s.code().unwrap_or(-1));
                    self.vmm_signal = std::os::unix::process::ExitStatusExt::signal(&s);
                    return s.code();
                }
            } else {
                // The jailer forked: once it has exited, the VMM is our child (subreaper).
                if let Ok(Some(s)) = self.jailer.try_wait() {
                    self.jailer_exit = Some(s);
                }
                let mut status = 0;
                // SAFETY: waitpid on a specific pid with a valid status pointer.
                let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                if r == pid {
                    let code = if libc::WIFEXITED(status) {
                        libc::WEXITSTATUS(status)
                    } else {
                        -1
                    };
                    if libc::WIFSIGNALED(status) {
                        self.vmm_signal = Some(libc::WTERMSIG(status));
                    }
                    self.vmm_exit = Some(code);
                    return (code >= 0).then_some(code);
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "the VMM did not exit within {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The signal that killed the VMM (after [`Jail::wait_vmm_exit`] saw it exit).
    pub fn vmm_signal(&self) -> Option<i32> {
        self.vmm_signal
    }

    /// The cgroup directories of this jail that exist now (any hierarchy).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_dirs_of(&self.parent_cgroup, &self.id)
    }
}

/// `<mount>/<parent>/<id>` in every cgroup hierarchy where it exists.
pub fn cgroup_dirs_of(parent: &str, id: &str) -> Vec<PathBuf> {
    cgroup_mounts()
        .into_iter()
        .map(|m| m.point.join(parent).join(id))
        .filter(|p| p.is_dir())
        .collect()
}

impl Drop for Jail {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        if let Some(pid) = self.vmm_pid {
            if self.vmm_exit.is_none() {
                // SAFETY: a pid we started (or were given by our jailer); not yet reaped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if self.jailer_exit.is_none() {
            let _ = self.jailer.kill();
            let _ = self.jailer.wait();
        }
        if let (Some(pid), None) = (self.vmm_pid, self.vmm_exit) {
            if pid != self.jailer_pid() {
                let mut status = 0;
                // SAFETY: as in wait_vmm_exit; blocking is fine after SIGKILL.
                unsafe { libc::waitpid(pid, &mut status, 0) };
            }
        }
        // Cgroups may stay busy for a moment after the last task exits.
        for dir in self.cgroup_dirs() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while let Err(e) = fs::remove_dir(&dir) {
                if Instant::now() > deadline {
                    eprintln!("cannot remove cgroup {}: {e}", dir.display());
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A cgroup hierarchy from /proc/mounts.
#[derive(Clone, Debug)]
pub struct CgroupMount {
    /// 1 or 2.
    pub version: u32,
    pub point: PathBuf,
    pub options: Vec<String>,
}

/// The cgroup v1 and v2 mounts of this host.
pub fn cgroup_mounts() -> Vec<CgroupMount> {
    let text = fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let version = match *f.get(2)? {
                "cgroup" => 1,
                "cgroup2" => 2,
                _ => return None,
            };
            Some(CgroupMount {
                version,
                point: PathBuf::from(f[1]),
                options: f[3].split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// The v1 hierarchy of `controller`, if mounted.
pub fn v1_mount(controller: &str) -> Option<PathBuf> {
    cgroup_mounts()
        .into_iter()
        .find(|m| m.version == 1 && m.options.iter().any(|o| o == controller))
        .map(|m| m.point)
}

/// The v2 hierarchy and its available controllers, if mounted.
pub fn v2_mount() -> Option<(PathBuf, Vec<String>)> {
    let m = cgroup_mounts().into_iter().find(|m| m.version == 2)?;
    let c = fs::read_to_string(m.point.join("cgroup.controllers")).unwrap_or_default();
    Some((m.point, c.split_whitespace().map(str::to_string).collect()))
}

/// `/proc/<pid>/status` as a map (None if the process is gone).
pub fn proc_status(pid: i32) -> Option<HashMap<String, String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect(),
    )
}

/// One row of `/proc/<pid>/limits` by its name ("Max open files"): (soft, hard).
pub fn proc_limit(pid: i32, name: &str) -> Option<(String, String)> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    let mut f = line[name.len()..].split_whitespace();
    Some((f.next()?.to_string(), f.next()?.to_string()))
}

/// `/proc/<pid>/cgroup`: (hierarchy id, controllers, path).
pub fn proc_cgroups(pid: i32) -> Vec<(String, Vec<String>, String)> {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let id = f.next()?.to_string();
            let ctl = f
                .next()?
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            Some((id, ctl, f.next()?.to_string()))
        })
        .collect()
}

/// (device, inode) of a path, following symlinks (for `/proc/<pid>/root`).
pub fn dev_ino(p: &Path) -> Option<(u64, u64)> {
    fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}
