//! The platform lane's harness: a real `tartarusd` on a temporary state directory, the real
//! `tartarus` CLI, and curl for raw API checks.
//!
//! The `base` template is built from the project's kernel and busybox root fs; its ready
//! snapshot is cached under `$TARTARUS_CACHE/templates` (default `~/.cache/tartarus`) by a key of
//! everything that makes it, so the Linux boot happens once per cache key, not once per run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::jail::static_bins;
use crate::{bin_path, script_output, TempDir};

/// The kernel and root fs of the `base` template (built by the kernels/ scripts, cached).
/// Built once per test process: the tests of one binary run in parallel threads, and two runs
/// of the build scripts at once would race on their outputs.
pub fn base_images() -> (PathBuf, PathBuf) {
    static IMAGES: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    IMAGES
        .get_or_init(|| {
            let vmlinux = script_output("kernels/build-kernel.sh", &[], "vmlinux");
            let rootfs = script_output("kernels/build-rootfs.sh", &["--variant", "base"], "rootfs");
            (vmlinux, rootfs)
        })
        .clone()
}

pub fn template_cache() -> PathBuf {
    let root = std::env::var_os("TARTARUS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache")
                .join("tartarus")
        });
    root.join("templates")
}

/// One daemon process and its state directory.
pub struct Daemon {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub state: PathBuf,
    extra: Vec<String>,
    /// Whether sandboxes can run (the static VMM and jailer are built and given); without,
    /// the daemon serves its API only (auth, keys, audit, templates list...).
    vms: bool,
    child: Option<Child>,
    /// Each daemon of a test process gets uids of its own (sandboxes of two daemons never
    /// share one).
    uid_base: u32,
}

impl Daemon {
    /// Starts `tartarusd` with its own state directory and socket; `extra` flags are added.
    pub fn start(tag: &str, extra: &[&str]) -> Daemon {
        Daemon::start_with(tag, extra, true)
    }

    /// Starts `tartarusd` for tests of its API that run no sandbox (auth, keys, audit): the
    /// static VMM and jailer are neither built nor given; `--vmm` and `--jailer` name a stub
    /// that fails saying so, should a sandbox be started after all.
    pub fn start_without_vms(tag: &str, extra: &[&str]) -> Daemon {
        Daemon::start_with(tag, extra, false)
    }

    /// Starts `tartarusd` (without VMs, as [`start_without_vms`](Self::start_without_vms))
    /// expecting it to give up at start: its exit status and log. Panics if it starts.
    pub fn start_fails(tag: &str, extra: &[&str]) -> (std::process::ExitStatus, String) {
        let mut d = Daemon::new(tag, extra, false);
        match d.try_spawn() {
            Err(status) => (status, d.log()),
            Ok(()) => panic!("tartarusd started with {extra:?}"),
        }
    }

    fn start_with(tag: &str, extra: &[&str], vms: bool) -> Daemon {
        let mut d = Daemon::new(tag, extra, vms);
        d.spawn();
        d
    }

    fn new(tag: &str, extra: &[&str], vms: bool) -> Daemon {
        let dir = TempDir::new(tag);
        let socket = dir.join("tartarusd.sock");
        let state = dir.join("state");
        Daemon {
            dir,
            socket,
            state,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            vms,
            child: None,
            uid_base: {
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                700_000 + (std::process::id() % 1000) * 1000 + n * 100
            },
        }
    }

    /// Starts the daemon process (again) on the same state directory.
    pub fn spawn(&mut self) {
        if let Err(status) = self.try_spawn() {
            panic!(
                "tartarusd exited at start ({status}):\n{}",
                tail(&self.log(), 30)
            );
        }
    }

    /// [`spawn`](Self::spawn), or how the daemon exited when it gave up starting.
    pub fn try_spawn(&mut self) -> Result<(), std::process::ExitStatus> {
        let (vmm, jailer) = if self.vms {
            let bins = static_bins();
            (bins.vmm.clone(), bins.jailer.clone())
        } else {
            let stub = self.dir.join("no-vms.sh");
            std::fs::write(
                &stub,
                "#!/bin/sh\necho 'Daemon::start_without_vms: this daemon runs no sandbox' >&2\nexit 1\n",
            )
            .expect("write the VMM stub");
            std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod the VMM stub");
            (stub.clone(), stub)
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .expect("daemon log");
        let child = Command::new(bin_path("tartarusd"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--template-cache")
            .arg(template_cache())
            .arg("--vmm")
            .arg(&vmm)
            .arg("--jailer")
            .arg(&jailer)
            .arg("--uid-base")
            .arg(self.uid_base.to_string())
            .arg("--log")
            .arg("tartarusd=debug,info")
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start tartarusd");
        self.child = Some(child);
        let t = Instant::now();
        while self.curl("GET", "/health", None).0 != 200 {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(status);
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "tartarusd did not answer:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// SIGKILLs the daemon (its sandboxes' VMMs live on).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// `tartarus ARGS` against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_stdin(args, None)
    }

    pub fn cli_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(bin_path("tartarus"));
        cmd.args(args)
            .env("TARTARUS_HOST", format!("unix://{}", self.socket.display()))
            .env("HOME", self.dir.path())
            .env_remove("TARTARUS_PROFILE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn().expect("run tartarus");
        if let Some(data) = stdin {
            use std::io::Write;
            let mut s = child.stdin.take().expect("stdin");
            s.write_all(data).expect("write stdin");
        }
        child.wait_with_output().expect("tartarus output")
    }

    /// `tartarus ARGS` left running (port-forward, logs -f).
    pub fn cli_spawn(&self, args: &[&str]) -> Child {
        Command::new(bin_path("tartarus"))
            .args(args)
            .env("TARTARUS_HOST", format!("unix://{}", self.socket.display()))
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run tartarus")
    }

    /// `tartarus ARGS`, which must succeed; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "tartarus {args:?} failed ({}):\nstdout: {}\nstderr: {}\n--- daemon log tail:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A raw request with curl: (status, body).
    pub fn curl(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.arg("-sS")
            .arg("--max-time")
            .arg("120")
            .arg("--unix-socket")
            .arg(&self.socket)
            .arg("-X")
            .arg(method)
            .arg("-o")
            .arg("-")
            .arg("-w")
            .arg("\n%{http_code}");
        if let Some(b) = body {
            cmd.arg("-H")
                .arg("Content-Type: application/json")
                .arg("--data-binary")
                .arg(b);
        }
        cmd.arg(format!("http://localhost{path}"));
        let out = cmd.output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// A JSON request that must answer `status`.
    pub fn json(&self, method: &str, path: &str, body: Option<&str>, status: u16) -> Value {
        let (code, text) = self.curl(method, path, body);
        assert_eq!(
            code,
            status,
            "{method} {path} answered {code}: {text}\n--- daemon log tail:\n{}",
            tail(&self.log(), 30)
        );
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// A gauge or counter of `GET /metrics` without labels, e.g. `tartarus_audit_forward_lag`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        // `name value`, or `name_total value` for a counter.
        self.metrics_text().lines().find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name || n.strip_suffix("_total") == Some(name))
                .then(|| v.trim().parse().ok())
                .flatten()
        })
    }

    /// `GET /metrics` (empty when the daemon does not answer).
    pub fn metrics_text(&self) -> String {
        match self.curl("GET", "/metrics", None) {
            (200, text) => text,
            _ => String::new(),
        }
    }

    /// The daemon's audit log and the public key of its checkpoints (the defaults under the
    /// state directory).
    pub fn audit_files(&self) -> (PathBuf, PathBuf) {
        let dir = self.state.join("audit");
        (dir.join("audit.log"), dir.join("audit.key.pub"))
    }

    pub fn sandbox(&self, id: &str) -> Value {
        self.json("GET", &format!("/sandboxes/{id}"), None, 200)
    }

    /// Builds the `base` template (instant when its ready snapshot is cached).
    pub fn build_base(&self, name: &str) -> String {
        let (k, r) = base_images();
        self.cli_ok(&[
            "template",
            "build",
            "--name",
            name,
            "--kernel",
            k.to_str().unwrap(),
            "--rootfs",
            r.to_str().unwrap(),
            "--memory",
            "128",
            "--disk",
            "256",
        ])
    }

    /// Jail directories, cgroups and VMM processes of this daemon still on the host.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        let jails = self.state.join("jail").join("tartarus-vmm");
        if let Ok(rd) = std::fs::read_dir(&jails) {
            out.extend(rd.flatten().map(|e| format!("jail {}", e.path().display())));
        }
        for ctl in ["memory", "cpu", "pids"] {
            let base = Path::new("/sys/fs/cgroup").join(ctl).join("tartarus");
            if let Ok(rd) = std::fs::read_dir(&base) {
                for e in rd.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if e.path().is_dir() && self.owns(&n) {
                        out.push(format!("cgroup {}", e.path().display()));
                    }
                }
            }
        }
        out
    }

    /// Whether a jail id belongs to this daemon (it made a directory for it under its state).
    fn owns(&self, id: &str) -> bool {
        self.state.join("sandboxes").join(id).exists() || self.known_ids().iter().any(|k| k == id)
    }

    /// SIGKILL for every process in the pids cgroup of a sandbox of this daemon's state.
    fn kill_own_vmms(&self) {
        let base = Path::new("/sys/fs/cgroup/pids/tartarus");
        let Ok(rd) = std::fs::read_dir(base) else {
            return;
        };
        for e in rd.flatten() {
            if !self.state.join("sandboxes").join(e.file_name()).exists() {
                continue;
            }
            let procs = std::fs::read_to_string(e.path().join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill sends a signal to a pid and touches no memory.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    fn known_ids(&self) -> Vec<String> {
        let v = self.json("GET", "/sandboxes", None, 200);
        v["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Remove every sandbox through the API, then stop the daemon.
        if self.child.is_some() {
            for id in self.known_ids() {
                let _ = self.curl("DELETE", &format!("/sandboxes/{id}"), None);
            }
        }
        self.kill9();
        // What the API did not list (a pool's ready sandboxes) or did not get to remove (a
        // panic mid-test) would outlive the test: its VMMs are in the cgroups of the
        // sandboxes this daemon made.
        self.kill_own_vmms();
        if std::thread::panicking() {
            eprintln!("--- tartarusd log:\n{}", tail(&self.log(), 80));
            self.dir.keep_if_requested();
        }
    }
}

/// The python-ds template as the Linux lane (tests/tests/images.rs) and the code bench build
/// it from the image `image` (a registry reference): one spec, so that both hit the same
/// template cache entry. Its warm runtime imports numpy and pandas, then runs a warm-up
/// through the paths a first small computation takes (construction, arithmetic, reductions,
/// repr, groupby): pandas loads much of itself lazily on first use.
pub fn python_ds_template(image: &str) -> serde_json::Value {
    serde_json::json!({
        "name": "python-ds", "image": image, "memory_mib": 512,
        "runtime": {
            "language": "python",
            "preload": ["numpy", "pandas"],
            "warmup": [PYTHON_DS_WARMUP],
        },
    })
}

/// [`python_ds_template`]'s runtime warm-up.
pub const PYTHON_DS_WARMUP: &str = "import numpy as np, pandas as pd\n\
df = pd.DataFrame({'a': np.arange(1, 4), 'b': [4.0, 5.0, 6.0]})\n\
assert int((df.a * df.b).sum()) == 32 and df.b.mean() == 5.0\n\
repr(df); str(df.dtypes); df.groupby('a').b.sum(); df.describe(); df.shape\n\
int(pd.DataFrame({'a': [1, 2, 3]}).a.sum())";

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let rest = &s[s.rfind(')').unwrap_or(0) + 2..];
            !rest.starts_with('Z') && !rest.starts_with('X')
        })
        .unwrap_or(false)
}

/// Waits until `f` holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// A free TCP port of 127.0.0.1 (for `--listen`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An HTTP/1.1 client of the daemon's TCP listener that keeps its connection alive between
/// requests (and opens a new one when the daemon closed it).
pub struct TcpClient {
    addr: String,
    conn: Option<std::net::TcpStream>,
}

impl TcpClient {
    pub fn new(addr: &str) -> TcpClient {
        TcpClient {
            addr: addr.to_string(),
            conn: None,
        }
    }

    /// One request with these extra headers; an error when the daemon cannot be reached or
    /// the connection broke (the next request reconnects).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> std::io::Result<crate::Response> {
        use std::io::Write;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() || method != "GET" {
            req.push_str("Content-Type: application/json\r\n");
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        req.push_str(body);
        let conn = match &mut self.conn {
            Some(c) => c,
            None => {
                let c = std::net::TcpStream::connect(&self.addr)?;
                c.set_read_timeout(Some(crate::http::REQUEST_TIMEOUT))?;
                c.set_nodelay(true)?;
                self.conn.insert(c)
            }
        };
        let r = conn
            .write_all(req.as_bytes())
            .and_then(|_| crate::http::read_response(conn));
        let close = match &r {
            Ok(resp) => resp
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close")),
            Err(_) => true,
        };
        if close {
            self.conn = None;
        }
        r
    }

    /// A request on a fresh connection (no earlier request's connection state involved).
    pub fn once(
        addr: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> crate::Response {
        TcpClient::new(addr)
            .request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} over TCP {addr}: {e}"))
    }
}
