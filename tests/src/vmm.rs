//! A handle on one running `tartarus-vmm` process.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::{self, Response};
use crate::{vmm_binary, TempDir};

/// How long to wait for the API socket to appear.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a test guest may take from start to reset (the host is nested and slow).
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Serial output collected by the reader thread.
#[derive(Default)]
struct Serial {
    bytes: Vec<u8>,
    first_byte: Option<Instant>,
    eof: bool,
}

type SharedSerial = Arc<(Mutex<Serial>, Condvar)>;

/// Options for spawning a VMM.
#[derive(Clone, Debug)]
pub struct VmmBuilder {
    binary: Option<PathBuf>,
    api: bool,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

impl Default for VmmBuilder {
    fn default() -> Self {
        VmmBuilder {
            binary: None,
            api: true,
            args: Vec::new(),
            envs: Vec::new(),
        }
    }
}

impl VmmBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses this binary instead of the one found by [`vmm_binary`].
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Whether to pass `--api-sock <tmp>/api.sock` (default: yes).
    pub fn api(mut self, api: bool) -> Self {
        self.api = api;
        self
    }

    /// Appends one command-line argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// Appends command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the VMM.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Spawns the VMM in a fresh temporary directory. Panics if it cannot be started.
    pub fn spawn(self) -> Vmm {
        self.spawn_in(TempDir::new("vmm"))
    }

    /// Spawns the VMM with `dir` as its temporary directory (files that arguments refer to may
    /// already be in it). The directory is removed when the handle is dropped. Panics if the
    /// VMM cannot be started.
    pub fn spawn_in(self, dir: TempDir) -> Vmm {
        self.try_spawn_in(dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`VmmBuilder::spawn_in`], returning an error instead of panicking.
    ///
    /// The VMM gets SIGKILL when the thread that spawned it exits (PR_SET_PDEATHSIG), so a
    /// test process that dies without unwinding leaves no VMM behind; keep the handle on the
    /// spawning thread.
    pub fn try_spawn_in(self, dir: TempDir) -> Result<Vmm, String> {
        let binary = match self.binary {
            Some(b) => b,
            None => vmm_binary(),
        };
        // The VMM runs in `dir`, so a relative binary path must not be resolved from there.
        let binary = std::path::absolute(&binary).unwrap_or(binary);
        let socket = dir.path().join("api.sock");
        let log_path = dir.path().join("vmm.stderr");
        let log =
            File::create(&log_path).map_err(|e| format!("create {}: {e}", log_path.display()))?;
        let mut cmd = Command::new(&binary);
        if self.api {
            cmd.arg("--api-sock").arg(&socket);
        }
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
        // which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned_at = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot spawn {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let serial: SharedSerial = Arc::new((Mutex::new(Serial::default()), Condvar::new()));
        let reader = {
            let serial = serial.clone();
            std::thread::Builder::new()
                .name("vmm-stdout".into())
                .spawn(move || read_serial(stdout, serial))
                .expect("spawn reader thread")
        };
        let mut command_line = vec![binary.display().to_string()];
        if self.api {
            command_line.push("--api-sock".into());
            command_line.push(socket.display().to_string());
        }
        command_line.extend(self.args.iter().map(|a| a.to_string_lossy().into_owned()));
        Ok(Vmm {
            child,
            exit: None,
            dir,
            socket,
            log_path,
            serial,
            reader: Some(reader),
            spawned_at,
            command_line: command_line.join(" "),
        })
    }
}

fn read_serial(mut stdout: impl Read, serial: SharedSerial) {
    let mut buf = [0u8; 4096];
    loop {
        let r = stdout.read(&mut buf);
        let now = Instant::now();
        let (lock, cvar) = &*serial;
        let mut s = lock.lock().unwrap();
        match r {
            Ok(0) | Err(_) => {
                s.eof = true;
                cvar.notify_all();
                return;
            }
            Ok(n) => {
                if s.first_byte.is_none() {
                    s.first_byte = Some(now);
                }
                s.bytes.extend_from_slice(&buf[..n]);
                cvar.notify_all();
            }
        }
    }
}

/// One `tartarus-vmm` process, killed and cleaned up on drop.
///
/// When the handle is dropped during a panic (a failed test), the VMM's command line, stderr
/// log and serial output are printed, so the test output shows what the VMM did.
pub struct Vmm {
    child: Child,
    exit: Option<ExitStatus>,
    dir: TempDir,
    socket: PathBuf,
    log_path: PathBuf,
    serial: SharedSerial,
    reader: Option<JoinHandle<()>>,
    spawned_at: Instant,
    command_line: String,
}

impl Vmm {
    /// A builder with default options (API socket in the temporary directory).
    pub fn builder() -> VmmBuilder {
        VmmBuilder::new()
    }

    /// Spawns a VMM with an API socket and waits until the socket accepts connections.
    pub fn start_api() -> Vmm {
        let vmm = VmmBuilder::new().spawn();
        vmm.wait_for_socket();
        vmm
    }

    /// The temporary directory of this VMM.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When `spawn()` was called.
    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// When the first byte of serial output arrived, if it has.
    pub fn first_output_at(&self) -> Option<Instant> {
        self.serial.0.lock().unwrap().first_byte
    }

    /// The serial output so far (lossy UTF-8).
    /// The serial output once it has stopped changing for `quiet` (at most 5 s): bytes the VMM
    /// wrote before a pause may still sit in the pipe when the pause is acknowledged.
    pub fn output_when_quiet(&self, quiet: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut last = self.output();
        loop {
            std::thread::sleep(quiet);
            let now = self.output();
            if now == last || std::time::Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.serial.0.lock().unwrap().bytes).into_owned()
    }

    /// The VMM's stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The command line, stderr log and serial output, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "=== tartarus-vmm: {}\n=== exit: {}\n=== stderr ({}):\n{}\n=== serial output:\n{}\n=== end",
            self.command_line,
            self.exit.map_or_else(|| "still running".to_string(), |s| s.to_string()),
            self.log_path.display(),
            self.log(),
            self.output()
        )
    }

    /// Waits until a connection to the API socket succeeds. Panics after [`SOCKET_TIMEOUT`] or if
    /// the VMM exits first.
    pub fn wait_for_socket(&self) -> Duration {
        self.try_wait_for_socket(SOCKET_TIMEOUT, Duration::from_millis(2))
            .unwrap_or_else(|e| panic!("API socket {}: {e}", self.socket.display()))
    }

    /// Polls `connect()` on the API socket, sleeping `poll` between attempts (zero: only yield).
    /// Returns the time from spawn to the first successful connect.
    pub fn try_wait_for_socket(
        &self,
        timeout: Duration,
        poll: Duration,
    ) -> Result<Duration, String> {
        let deadline = Instant::now() + timeout;
        let mut attempts = 0u64;
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(self.spawned_at.elapsed());
            }
            attempts += 1;
            if attempts.is_multiple_of(64) {
                if let Some(status) = self.peek_exit() {
                    return Err(format!(
                        "the VMM exited ({status}) before the socket was ready"
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("not ready after {timeout:?}"));
            }
            if poll.is_zero() {
                std::thread::yield_now();
            } else {
                std::thread::sleep(poll);
            }
        }
    }

    fn peek_exit(&self) -> Option<ExitStatus> {
        // try_wait needs &mut; use waitid with WNOWAIT so the status is left for later.
        // SAFETY: siginfo_t is plain data, valid when all zero.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid siginfo_t; WNOWAIT leaves the child waitable.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.child.id() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid is valid to read for a waitid result.
        if rc == 0 && unsafe { info.si_pid() } != 0 {
            use std::os::unix::process::ExitStatusExt;
            // SAFETY: as above.
            let (code, status) = unsafe { (info.si_code, info.si_status()) };
            let raw = if code == libc::CLD_EXITED {
                (status & 0xff) << 8
            } else {
                status & 0x7f
            };
            return Some(ExitStatus::from_raw(raw));
        }
        self.exit
    }

    /// Sends a request and returns the response, or the I/O error as text.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, String> {
        http::request(&self.socket, method, path, body)
            .map_err(|e| format!("{method} {path}: I/O error: {e}"))
    }

    /// Sends a request and returns the response. Panics on I/O errors.
    pub fn request(&self, method: &str, path: &str, body: Option<&[u8]>) -> Response {
        http::request(&self.socket, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: I/O error: {e}"))
    }

    /// Sends raw bytes on a fresh connection and reads the response. Panics on I/O errors.
    pub fn raw_request(&self, raw: &[u8]) -> Response {
        http::raw_request(&self.socket, raw)
            .unwrap_or_else(|e| panic!("raw request: I/O error: {e}"))
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, None)
    }

    pub fn put(&self, path: &str, body: &Value) -> Response {
        self.request("PUT", path, Some(body.to_string().as_bytes()))
    }

    pub fn patch(&self, path: &str, body: &Value) -> Response {
        self.request("PATCH", path, Some(body.to_string().as_bytes()))
    }

    /// PUT with a raw (possibly malformed) body.
    pub fn put_raw(&self, path: &str, body: &str) -> Response {
        self.request("PUT", path, Some(body.as_bytes()))
    }

    /// PUT that must answer 204.
    pub fn put_ok(&self, path: &str, body: &Value) {
        let r = self.put(path, body);
        assert_eq!(r.status, 204, "PUT {path} {body} -> {r}");
    }

    /// PATCH that must answer 204.
    pub fn patch_ok(&self, path: &str, body: &Value) {
        let r = self.patch(path, body);
        assert_eq!(r.status, 204, "PATCH {path} {body} -> {r}");
    }

    /// GET that must answer 200 with a JSON body, which is returned.
    pub fn get_json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path} -> {r}");
        r.body
            .unwrap_or_else(|| panic!("GET {path}: 200 without a JSON body: {:?}", r.text))
    }

    /// `GET /` state ("Not started", "Running", "Paused").
    pub fn state(&self) -> String {
        let v = self.get_json("/");
        v["state"]
            .as_str()
            .unwrap_or_else(|| panic!("GET / has no string `state`: {v}"))
            .to_string()
    }

    /// `PUT /machine-config` + `PUT /boot-source`.
    pub fn configure(&self, vcpus: u32, mem_mib: u64, kernel: &Path, boot_args: &str) {
        self.put_ok(
            "/machine-config",
            &json!({"vcpu_count": vcpus, "mem_size_mib": mem_mib}),
        );
        self.put_ok(
            "/boot-source",
            &json!({"kernel_image_path": kernel, "boot_args": boot_args}),
        );
    }

    /// `PUT /actions` with this action type, returning the response.
    pub fn action(&self, action_type: &str) -> Response {
        self.put("/actions", &json!({ "action_type": action_type }))
    }

    /// `InstanceStart`, which must answer 204.
    pub fn start(&self) {
        let r = self.action("InstanceStart");
        assert_eq!(r.status, 204, "InstanceStart -> {r}");
    }

    /// Waits until the serial output contains `needle`; returns the whole output.
    /// Panics on timeout or if the output ends (the VMM exited) without it.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> String {
        self.try_wait_for_output(needle, timeout)
            .unwrap_or_else(|e| panic!("waiting for serial output {needle:?}: {e}"))
    }

    /// Like [`Vmm::wait_for_output`], returning an error instead of panicking.
    pub fn try_wait_for_output(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.serial;
        let mut s = lock.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&s.bytes);
            if text.contains(needle) {
                return Ok(text.into_owned());
            }
            if s.eof {
                return Err("the VMM closed its stdout (exited?) first".into());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("not seen after {timeout:?}"));
            }
            s = cvar.wait_timeout(s, deadline - now).unwrap().0;
        }
    }

    /// Waits for the process to exit; panics after `timeout` (the VMM is then killed on drop).
    /// After exit, the serial reader has collected all output.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.try_wait_exit(timeout, Duration::from_millis(5)) {
            Some(s) => s,
            None => panic!("tartarus-vmm did not exit within {timeout:?}"),
        }
    }

    /// Polls for exit every `poll`; `None` on timeout.
    pub fn try_wait_exit(&mut self, timeout: Duration, poll: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exit {
            return Some(s);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exit = Some(status);
                    self.join_reader();
                    return Some(status);
                }
                Ok(None) => {}
                Err(e) => panic!("waitpid: {e}"),
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(poll);
        }
    }

    /// Waits for exit and asserts exit code 0 (the guest reset); returns the serial output.
    pub fn wait_success(&mut self) -> String {
        let status = self.wait_exit(GUEST_TIMEOUT);
        assert_eq!(
            status.code(),
            Some(0),
            "expected exit code 0 (guest reset), got {status}"
        );
        self.output()
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            if let Ok(s) = self.child.wait() {
                self.exit = Some(s);
            }
        }
        self.join_reader();
    }

    fn join_reader(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
            }
        }
        let running = self.exit.is_none();
        self.kill();
        if std::thread::panicking() {
            if running {
                eprintln!("(tartarus-vmm was still running and has been killed)");
            }
            eprintln!("{}", self.diagnostics());
            self.dir.keep_if_requested();
        }
    }
}
