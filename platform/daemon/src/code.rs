//! Warm runtimes (issue #13): `POST /sandboxes/{id}/code` runs code in a long-running
//! interpreter inside the sandbox instead of a fresh process (a fork+exec, and for Python the
//! imports, cost seconds to minutes on an emulated guest kernel).
//!
//! The runtime is `runtime/python_runtime.py` (embedded here). A template with a `runtime`
//! option starts it at build time, after the warm-up, and waits until it answers before the
//! ready snapshot is taken, so every sandbox of the template wakes with it running and its
//! modules imported. It lives in `/run` (a tmpfs: the snapshot's memory; the root image is
//! untouched) and listens on AF_VSOCK port [`RUNTIME_PORT`]: the daemon reaches it through the
//! VMM's hybrid vsock socket (`CONNECT 53`), without the agent. Its protocol (JSON lines) is
//! described at the top of the script.
//!
//! A sandbox whose template has no runtime gets one on its first call (through the agent, as a
//! background process: slow, the interpreter and its imports start cold). A runtime that dies
//! during a call (`os._exit`, a crash) is reported to the caller as a `RuntimeDied` error and
//! started again before the call answers; its state (variables, imports) is lost.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use guest_init::client::Client;
use guest_init::protocol::ExecSpec;
use serde::Deserialize;
use serde_json::json;
use tartarus_auth::TenantScope;
use tartarus_types::{CodeError, CodeEvent, CodeRequest, CodeResult, ExecRequest, RuntimeSpec};
use tokio::sync::mpsc;

use crate::daemon::{agent_error, Daemon, Shared};
use crate::error::{chain, ApiError};

/// The guest AF_VSOCK port the runtime listens on (the agent's is 52).
pub const RUNTIME_PORT: u32 = 53;
/// The runtime itself.
pub const PYTHON_RUNTIME: &str = include_str!("../runtime/python_runtime.py");
/// Where it lives in the guest (a tmpfs: in the snapshot's memory).
const SCRIPT: &str = "/run/tartarus/runtime/python_runtime.py";
/// What the template asked it to preload.
const CONFIG: &str = "/run/tartarus/runtime/python.json";
/// Its own output (what bypasses sys.stdout) and start failures, writable by any user.
const LOG: &str = "/tmp/.tartarus-python-runtime.log";
const FAILED: &str = "/tmp/.tartarus-python-runtime.failed";
/// How long a start (the interpreter and its preloads, on an emulated guest kernel) may take.
pub const START_TIMEOUT: Duration = Duration::from_secs(1200);
/// The longest `runtime.warmup` piece a template may give, bytes.
const WARMUP_MAX: usize = 1 << 20;
/// How long the vsock handshake and the runtime's `ready` line may take.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A call without a timeout of its own may run this long.
const IDLE: Duration = Duration::from_secs(24 * 3600);
/// How long past its `timeout_s` a call may stay silent before the runtime is killed.
const GRACE: Duration = Duration::from_secs(60);
/// Longest line taken from the runtime (its frames carry at most 64 Ki characters).
const MAX_LINE: u64 = 32 << 20;
/// Most output a collected answer keeps per stream.
const MAX_COLLECT: usize = 64 << 20;

/// Errors of talking to a runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("Nothing listens on the runtime's port")]
    Absent,
    #[error("Cannot reach the runtime")]
    Io(#[source] std::io::Error),
    #[error("The runtime sent a bad line: {0}")]
    Protocol(String),
    #[error("python3 is not installed in the sandbox (no python3 in the guest's PATH)")]
    NoPython,
    #[error("The runtime did not start: {0}")]
    Start(String),
    #[error("The runtime did not answer within {} s", .0.as_secs())]
    StartTimeout(Duration),
    #[error("The guest agent failed while starting the runtime")]
    Agent(#[source] guest_init::client::ClientError),
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> ApiError {
        match e {
            RuntimeError::NoPython => ApiError::BadRequest(format!("language: {e}")),
            RuntimeError::Agent(a) => agent_error(a),
            RuntimeError::Start(_) | RuntimeError::StartTimeout(_) => {
                ApiError::Unavailable(e.to_string())
            }
            other => ApiError::Unavailable(chain(&other)),
        }
    }
}

/// The runtime's first line on every connection.
#[derive(Debug, Clone, Deserialize)]
pub struct Hello {
    pub pid: i32,
    #[serde(default)]
    pub version: String,
}

/// A live connection to a runtime.
pub struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    pub hello: Hello,
}

impl Conn {
    fn send(&mut self, v: &serde_json::Value) -> Result<(), RuntimeError> {
        let mut line = serde_json::to_vec(v).map_err(|e| RuntimeError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line).map_err(RuntimeError::Io)
    }

    /// The next line as JSON; None at the end of the stream.
    fn next(&mut self) -> Result<Option<serde_json::Value>, RuntimeError> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .map_err(RuntimeError::Io)?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(None);
        }
        serde_json::from_slice(&line)
            .map(Some)
            .map_err(|e| RuntimeError::Protocol(e.to_string()))
    }

    fn set_timeout(&self, t: Duration) {
        let _ = self.writer.set_read_timeout(Some(t));
        let _ = self.writer.set_write_timeout(Some(t));
    }
}

/// Opens `stream` to guest port `port` through a hybrid vsock socket (`CONNECT`, `OK ...`).
fn hybrid_connect(
    stream: UnixStream,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, RuntimeError> {
    let mut s = stream;
    s.set_read_timeout(Some(timeout))
        .map_err(RuntimeError::Io)?;
    s.set_write_timeout(Some(timeout))
        .map_err(RuntimeError::Io)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(RuntimeError::Io)?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            // The guest answered with a reset: nothing listens there.
            Ok(0) => return Err(RuntimeError::Absent),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if line.len() < 64 => line.push(b[0]),
            Ok(_) => return Err(RuntimeError::Protocol("CONNECT answer too long".into())),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(RuntimeError::Io(e)),
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(RuntimeError::Protocol(format!(
            "CONNECT answered '{}'",
            String::from_utf8_lossy(&line)
        )));
    }
    Ok(s)
}

/// Connects to a runtime: through the sandbox's vsock socket (`vsock`), or straight to a
/// Unix socket it listens on (`--unix`, tests). Reads its `ready` line.
pub fn connect(path: &Path, vsock: bool) -> Result<Conn, RuntimeError> {
    connect_with(path, vsock, None)
}

/// [`connect`], writing `first` (a request) before the `ready` line is read: the runtime
/// finds it waiting when it has sent that line, which saves the guest a round trip.
pub fn connect_with(
    path: &Path,
    vsock: bool,
    first: Option<&serde_json::Value>,
) -> Result<Conn, RuntimeError> {
    let s = UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused if !vsock => {
            RuntimeError::Absent
        }
        _ => RuntimeError::Io(e),
    })?;
    let s = if vsock {
        hybrid_connect(s, RUNTIME_PORT, HELLO_TIMEOUT)?
    } else {
        s.set_read_timeout(Some(HELLO_TIMEOUT))
            .map_err(RuntimeError::Io)?;
        s
    };
    let writer = s.try_clone().map_err(RuntimeError::Io)?;
    let mut c = Conn {
        reader: BufReader::new(s),
        writer,
        hello: Hello {
            pid: 0,
            version: String::new(),
        },
    };
    if let Some(frame) = first {
        c.send(frame)?;
    }
    let first = match c.next() {
        Ok(Some(v)) => v,
        // Accepted, then closed at once: a runtime on its way out.
        Ok(None) => return Err(RuntimeError::Absent),
        Err(RuntimeError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            return Err(RuntimeError::Absent)
        }
        Err(e) => return Err(e),
    };
    if first["type"] != "ready" {
        return Err(RuntimeError::Protocol(format!(
            "expected ready, got {first}"
        )));
    }
    c.hello = serde_json::from_value(first).map_err(|e| RuntimeError::Protocol(e.to_string()))?;
    Ok(c)
}

/// How the runtime is started: as the sandbox's execs run (the image's and template's env,
/// working directory and user), detached from the agent connection (the shell exits at once;
/// the runtime leaves its session), output to [`LOG`]. Exit 127: no python3.
fn start_spec(mut base: ExecSpec) -> ExecSpec {
    let script = "rm -f \"$1\"; command -v \"$3\" >/dev/null 2>&1 || exit 127; \
                  log=$2; shift 2; \"$@\" </dev/null >>\"$log\" 2>&1 &";
    base.argv = [
        "/bin/sh",
        "-c",
        script,
        "tartarus-runtime",
        FAILED,
        LOG,
        "python3",
        SCRIPT,
        "--vsock",
        &RUNTIME_PORT.to_string(),
        "--config",
        CONFIG,
        "--failed-file",
        FAILED,
        "--detach",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    base.stdin = guest_init::protocol::StdinMode::Null;
    base
}

/// Writes the runtime (and, for a template's, its preload list) into the guest and starts it
/// in the background. Blocking.
pub fn start(
    agent: &mut Client<UnixStream>,
    base: ExecSpec,
    rt: Option<&RuntimeSpec>,
) -> Result<(), RuntimeError> {
    agent
        .write_file(SCRIPT, PYTHON_RUNTIME.as_bytes(), Some(0o644))
        .map_err(RuntimeError::Agent)?;
    if let Some(rt) = rt {
        let cfg = json!({"language": rt.language, "preload": rt.preload});
        agent
            .write_file(CONFIG, cfg.to_string().as_bytes(), Some(0o644))
            .map_err(RuntimeError::Agent)?;
    }
    let out = agent
        .start_exec(&start_spec(base), &[])
        .and_then(|s| s.collect())
        .map_err(RuntimeError::Agent)?;
    match out.code {
        Some(0) => Ok(()),
        Some(127) => Err(RuntimeError::NoPython),
        _ => Err(RuntimeError::Start(format!(
            "its launcher failed with {:?}/{:?}: {}",
            out.code,
            out.signal,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// Waits until the runtime behind `uds` answers; a start failure it wrote down (a preload
/// that does not import) ends the wait early. Blocking.
pub fn wait_ready(
    uds: &Path,
    agent: &mut Client<UnixStream>,
    deadline: Duration,
) -> Result<Conn, RuntimeError> {
    let t0 = Instant::now();
    loop {
        match connect(uds, true) {
            Ok(c) => return Ok(c),
            Err(RuntimeError::Absent) => {}
            Err(RuntimeError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => return Err(e),
        }
        if let Ok(why) = agent.read_file(FAILED) {
            let log = agent.read_file(LOG).unwrap_or_default();
            let log = String::from_utf8_lossy(&log);
            let tail: Vec<&str> = log.lines().rev().take(6).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(RuntimeError::Start(format!(
                "{} ({})",
                String::from_utf8_lossy(&why).trim(),
                tail.join(" | ")
            )));
        }
        if t0.elapsed() >= deadline {
            return Err(RuntimeError::StartTimeout(deadline));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A template's `runtime` option, checked at build time.
pub fn validate_runtime(rt: &RuntimeSpec) -> Result<(), ApiError> {
    if rt.language != "python" {
        return Err(ApiError::BadRequest(format!(
            "runtime.language: '{}' is not supported (python is)",
            rt.language
        )));
    }
    for (i, m) in rt.preload.iter().enumerate() {
        let ok = !m.is_empty()
            && m.split('.').all(|part| {
                let b = part.as_bytes();
                !b.is_empty()
                    && !b[0].is_ascii_digit()
                    && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
            });
        if !ok {
            return Err(ApiError::BadRequest(format!(
                "runtime.preload[{i}]: '{m}' is not a module name"
            )));
        }
    }
    for (i, code) in rt.warmup.iter().enumerate() {
        if code.trim().is_empty() {
            return Err(ApiError::BadRequest(format!("runtime.warmup[{i}]: empty")));
        }
        if code.len() > WARMUP_MAX {
            return Err(ApiError::BadRequest(format!(
                "runtime.warmup[{i}]: {} bytes, more than {WARMUP_MAX}",
                code.len()
            )));
        }
    }
    Ok(())
}

/// Runs a template's warm-up piece `i` in the runtime behind `conn` (a namespace of its own,
/// see the script); its output goes to the daemon's log, an error fails it. Blocking.
fn warm_up(conn: &mut Conn, i: usize, code: &str) -> Result<(), String> {
    conn.set_timeout(START_TIMEOUT);
    conn.send(&json!({"code": code, "warmup": true}))
        .map_err(|e| chain(&e))?;
    let mut error = None;
    loop {
        let v = match conn.next() {
            Ok(Some(v)) => v,
            Ok(None) => return Err("the runtime closed the connection (it exited?)".into()),
            Err(e) => return Err(chain(&e)),
        };
        match v["type"].as_str() {
            Some("done") => return error.map_or(Ok(()), Err),
            Some("error") => {
                let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                let tb = field("traceback");
                error = Some(if tb.is_empty() {
                    format!("{}: {}", field("name"), field("value"))
                } else {
                    tb.trim_end().to_string()
                });
            }
            _ => tracing::debug!("template build: runtime.warmup[{i}]: {v}"),
        }
    }
}

/// The template build's step (after the warm-up, before the snapshot): the runtime started
/// with the template's preloads and answering. Blocking.
pub fn start_for_template(
    agent: &mut Client<UnixStream>,
    uds: &Path,
    rt: &RuntimeSpec,
    env: &std::collections::BTreeMap<String, String>,
    image: Option<&tartarus_types::TemplateImage>,
) -> Result<(), ApiError> {
    let mut base = ExecSpec::new(vec!["python3".to_string()]);
    base.env = env.clone();
    if let Some(img) = image {
        base.cwd = (!img.working_dir.is_empty()).then(|| img.working_dir.clone());
        base.user = (!img.user.is_empty()).then(|| img.user.clone());
    }
    let fail = |e: RuntimeError| ApiError::BadRequest(format!("runtime: {}", chain(&e)));
    start(agent, base, Some(rt)).map_err(fail)?;
    let mut conn = wait_ready(uds, agent, START_TIMEOUT).map_err(fail)?;
    for (i, code) in rt.warmup.iter().enumerate() {
        warm_up(&mut conn, i, code)
            .map_err(|e| ApiError::BadRequest(format!("runtime.warmup[{i}] failed: {e}")))?;
    }
    tracing::info!(
        "template build: python runtime {} ready (python {}, {} warm-up pieces run)",
        conn.hello.pid,
        conn.hello.version,
        rt.warmup.len()
    );
    Ok(())
}

/// One lock per sandbox: a start (or restart) happens once, and other calls wait for it.
fn start_lock(id: &str) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<Mutex<()>>>>> = OnceLock::new();
    LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(id.to_string())
        .or_default()
        .clone()
}

/// What a sandbox needs to (re)start its runtime.
struct Target {
    id: String,
    uds: PathBuf,
    base: ExecSpec,
    /// Keeps the sandbox from hibernating while the code runs.
    _activity: crate::daemon::Activity,
}

/// A connection to the sandbox's runtime, started first when nothing answers, and whether
/// `frame` went out on it already (it does when the runtime was there). Blocking.
fn ensure(t: &Target, frame: Option<&serde_json::Value>) -> Result<(Conn, bool), RuntimeError> {
    let lock = start_lock(&t.id);
    let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
    match connect_with(&t.uds, true, frame) {
        Err(RuntimeError::Absent) => {}
        other => return other.map(|c| (c, frame.is_some())),
    }
    tracing::info!("sandbox {}: starting its python runtime", t.id);
    let mut agent = Daemon::agent_blocking(&t.uds, Duration::from_secs(60))
        .map_err(|e| RuntimeError::Start(e.to_string()))?;
    start(&mut agent, t.base.clone(), None)?;
    wait_ready(&t.uds, &mut agent, START_TIMEOUT).map(|c| (c, false))
}

/// Kills a runtime that stopped answering (through the agent). Blocking.
fn kill(t: &Target, pid: i32) {
    if let Ok(mut a) = Daemon::agent_blocking(&t.uds, Duration::from_secs(10)) {
        let _ = a.signal(pid, libc::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(200));
}

fn died(value: String) -> CodeEvent {
    CodeEvent::Error {
        name: "RuntimeDied".into(),
        value,
        traceback: String::new(),
    }
}

/// The runtime's request frame for `req`.
fn frame(req: &CodeRequest) -> serde_json::Value {
    let mut frame = json!({"code": req.code});
    if let Some(s) = req.timeout_s {
        frame["timeout_s"] = json!(s);
    }
    frame
}

/// Runs one request, on `opened` (from [`ensure`]) or a new connection; every event goes to
/// `emit` (false: the client left). Fails, before any event, when no runtime can be started.
/// Blocking.
fn run(
    t: &Target,
    req: &CodeRequest,
    opened: Option<(Conn, bool)>,
    emit: &mut dyn FnMut(CodeEvent) -> bool,
) -> Result<(), RuntimeError> {
    let t0 = Instant::now();
    let done = |ok: bool, restarted: bool| CodeEvent::Done {
        ok,
        duration_ms: t0.elapsed().as_millis() as u64,
        restarted,
    };
    let frame = frame(req);
    let (mut conn, sent) = match opened {
        Some(c) => c,
        None => ensure(t, Some(&frame))?,
    };
    let limit = req.timeout_s.map(|s| Duration::from_secs(s) + GRACE);
    conn.set_timeout(limit.unwrap_or(IDLE));
    let pid = conn.hello.pid;
    let sending = if sent { Ok(()) } else { conn.send(&frame) };
    let lost = match sending {
        Ok(()) => loop {
            match conn.next() {
                Ok(Some(v)) => match serde_json::from_value::<CodeEvent>(v.clone()) {
                    Ok(CodeEvent::Done { ok, .. }) => {
                        emit(done(ok, false));
                        return Ok(());
                    }
                    Ok(ev) => {
                        if !emit(ev) {
                            return Ok(()); // the client left; the code runs on
                        }
                    }
                    Err(e) => break RuntimeError::Protocol(format!("{e}: {v}")),
                },
                Ok(None) => break RuntimeError::Absent,
                Err(e) => break e,
            }
        },
        Err(e) => e,
    };
    drop(conn);
    // The connection ended without `done`: the runtime died, or stopped answering.
    let timed_out = matches!(&lost, RuntimeError::Io(e)
        if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
    if timed_out {
        tracing::warn!("sandbox {}: python runtime {pid} stopped answering", t.id);
        kill(t, pid);
    } else if let Ok(c) = connect(&t.uds, true) {
        // Still there (a lost connection, not a crash).
        if c.hello.pid == pid {
            emit(CodeEvent::Error {
                name: "RuntimeConnectionLost".into(),
                value: format!("The connection to the runtime was lost: {}", chain(&lost)),
                traceback: String::new(),
            });
            emit(done(false, false));
            return Ok(());
        }
    }
    let why = if timed_out {
        "The python runtime did not answer within timeout_s + 60 s and was killed"
    } else {
        "The python runtime died while running this code (os._exit, a crash, or the kernel's \
         OOM killer)"
    };
    tracing::info!("sandbox {}: python runtime {pid} died; restarting it", t.id);
    let again = ensure(t, None);
    let text = match &again {
        Ok(_) => {
            format!("{why}; tartarusd started it again: its state (variables, imports) is lost")
        }
        Err(e) => format!("{why}; starting it again failed: {}", chain(e)),
    };
    emit(died(text));
    emit(done(false, again.is_ok()));
    Ok(())
}

/// Checks the request, wakes a hibernated sandbox, and gathers what a (re)start needs.
async fn target(
    d: &Shared,
    scope: &TenantScope,
    id: &str,
    req: &CodeRequest,
) -> Result<Target, ApiError> {
    if req.language != "python" {
        return Err(ApiError::BadRequest(format!(
            "language: '{}' is not supported (python is)",
            req.language
        )));
    }
    let (row, activity) = crate::hibernate::awake(d, scope, id).await?;
    let probe = ExecRequest {
        argv: vec!["python3".into()],
        ..Default::default()
    };
    let (base, _) = crate::exec::spec_of(d, &row, &probe)?;
    Ok(Target {
        id: id.to_string(),
        uds: d.vsock_of(id),
        base,
        _activity: activity,
    })
}

/// `POST /sandboxes/{id}/code` without `stream`: the collected answer.
pub async fn code(
    d: &Shared,
    scope: &TenantScope,
    id: &str,
    req: CodeRequest,
) -> Result<CodeResult, ApiError> {
    let t = target(d, scope, id, &req).await?;
    let (r, ran) = tokio::task::spawn_blocking(move || {
        let mut r = CodeResult::default();
        let ran = run(&t, &req, None, &mut |ev| {
            match ev {
                CodeEvent::Stdout { data } if r.stdout.len() < MAX_COLLECT => {
                    r.stdout.push_str(&data)
                }
                CodeEvent::Stderr { data } if r.stderr.len() < MAX_COLLECT => {
                    r.stderr.push_str(&data)
                }
                CodeEvent::Stdout { .. } | CodeEvent::Stderr { .. } => {}
                CodeEvent::Result { text } => r.result = Some(text),
                CodeEvent::Error {
                    name,
                    value,
                    traceback,
                } => {
                    r.error = Some(CodeError {
                        name,
                        value,
                        traceback,
                    })
                }
                CodeEvent::Done {
                    duration_ms,
                    restarted,
                    ..
                } => {
                    r.duration_ms = duration_ms;
                    r.restarted = restarted;
                }
            }
            true
        });
        (r, ran)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("code task: {e}")))?;
    ran?;
    Ok(r)
}

/// `POST /sandboxes/{id}/code` with `stream`: NDJSON lines of [`CodeEvent`]. A runtime that
/// cannot be started is a plain error status, before any line.
pub async fn code_stream(
    d: &Shared,
    scope: &TenantScope,
    id: &str,
    req: CodeRequest,
) -> Result<Body, ApiError> {
    let t = target(d, scope, id, &req).await?;
    // Start (or find) the runtime before answering, so that a failure is a status.
    let opened = {
        let req = req.clone();
        tokio::task::spawn_blocking(move || ensure(&t, Some(&frame(&req))).map(|c| (t, c)))
    };
    let (t, opened) = opened
        .await
        .map_err(|e| ApiError::Internal(format!("code task: {e}")))??;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    std::thread::spawn(move || {
        let mut emit = |ev: CodeEvent| {
            let mut line = serde_json::to_vec(&ev).unwrap_or_default();
            line.push(b'\n');
            tx.blocking_send(Bytes::from(line)).is_ok()
        };
        // Started a moment ago; gone again (or unreachable) since.
        if let Err(e) = run(&t, &req, Some(opened), &mut emit) {
            emit(CodeEvent::Error {
                name: "RuntimeUnavailable".into(),
                value: chain(&e),
                traceback: String::new(),
            });
            emit(CodeEvent::Done {
                ok: false,
                duration_ms: 0,
                restarted: false,
            });
        }
    });
    Ok(Body::from_stream(crate::exec::futures_stream(rx)))
}

#[cfg(test)]
#[path = "code_tests.rs"]
mod tests;
