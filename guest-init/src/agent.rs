//! The agent: serves the protocol of [`crate::protocol`] on every connection of a listener, one
//! thread per connection (threads are kept for later connections). A connection that breaks the protocol is answered with an `error`
//! frame (when possible) and closed; other connections and the agent carry on.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::exec::{self, reply_error, After};
use crate::forward::{self, ForwardError};
use crate::protocol::{
    read_frame, write_frame, AgentInfo, ErrorCode, ProtocolError, Request, Response,
    DEFAULT_SHUTDOWN_GRACE_MS, MAX_CHUNK, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use crate::reaper::Reaper;
use crate::vsock::{VsockListener, VsockStream};

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("Cannot accept a connection")]
    Accept(#[source] io::Error),
    #[error("Protocol error")]
    Protocol(#[from] ProtocolError),
    #[error("poll failed")]
    Poll(#[source] io::Error),
    #[error("Cannot duplicate a descriptor")]
    Dup(#[source] io::Error),
}

/// What the agent does on a `shutdown` request, after answering `ok`: tartarus-init's stop
/// sequence (SIGTERM to everything, the grace period, SIGKILL, sync, power off); tests inject
/// their own.
pub type ShutdownAction = Arc<dyn Fn(Duration) + Send + Sync>;

/// A stream the agent can serve: readable, writable and pollable.
pub trait Connection: Read + Write + AsRawFd + Send + 'static {}
impl<T: Read + Write + AsRawFd + Send + 'static> Connection for T {}

/// Anything the agent can accept connections from.
pub trait Listener {
    type Conn: Connection;
    fn accept_conn(&self) -> io::Result<Self::Conn>;
}

impl Listener for UnixListener {
    type Conn = UnixStream;
    fn accept_conn(&self) -> io::Result<UnixStream> {
        self.accept().map(|(s, _)| s)
    }
}

impl Listener for TcpListener {
    type Conn = TcpStream;
    fn accept_conn(&self) -> io::Result<TcpStream> {
        self.accept().map(|(s, _)| s)
    }
}

impl Listener for VsockListener {
    type Conn = VsockStream;
    fn accept_conn(&self) -> io::Result<VsockStream> {
        self.accept()
    }
}

/// State shared by all connections.
pub(crate) struct Shared {
    pub(crate) reaper: Reaper,
    running: Mutex<HashSet<i32>>,
    started: Instant,
    shutdown: Option<ShutdownAction>,
}

impl Shared {
    pub(crate) fn running_insert(&self, pid: i32) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid);
    }
    pub(crate) fn running_remove(&self, pid: i32) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
    }
    pub(crate) fn running_contains(&self, pid: i32) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&pid)
    }
}

/// The agent. Cheap to clone; clones share the set of running execs.
#[derive(Clone)]
pub struct Agent {
    shared: Arc<Shared>,
}

impl Agent {
    /// An agent that waits for its children with `reaper`.
    pub fn new(reaper: Reaper) -> Self {
        Agent {
            shared: Arc::new(Shared {
                reaper,
                running: Mutex::new(HashSet::new()),
                started: Instant::now(),
                shutdown: None,
            }),
        }
    }

    /// An agent that answers `shutdown` and then runs `action` with the grace period. Without
    /// one, `shutdown` is answered with `error` `failed`.
    pub fn with_shutdown(reaper: Reaper, action: ShutdownAction) -> Self {
        Agent {
            shared: Arc::new(Shared {
                reaper,
                running: Mutex::new(HashSet::new()),
                started: Instant::now(),
                shutdown: Some(action),
            }),
        }
    }

    /// Accepts connections forever, serving each on its own thread. Threads are kept:
    /// [`SPARE_WORKERS`] wait before the first connection and up to [`MAX_IDLE_WORKERS`] wait
    /// after theirs ended, so a connection is handed to a waiting thread (one wake-up) instead of paying a
    /// thread spawn in the guest kernel first; on a PVM host that spawn costs more than the
    /// agent's answer.
    pub fn serve<L: Listener>(&self, listener: L) -> Result<(), AgentError> {
        let pool = Workers::new(self.clone());
        loop {
            let conn = match listener.accept_conn() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
                Err(e) => return Err(AgentError::Accept(e)),
            };
            pool.dispatch(conn);
        }
    }

    /// Serves one connection until the client closes it or breaks the protocol.
    pub fn handle_connection<C: Connection>(&self, mut conn: C) {
        let _ = self.connection(&mut conn);
    }

    fn connection<C: Connection>(&self, conn: &mut C) -> Result<(), AgentError> {
        // The agreed protocol version; 0 until the hello.
        let mut version = 0;
        loop {
            let frame = match read_frame::<Request, _>(conn) {
                Ok(f) => f,
                Err(ProtocolError::Closed) | Err(ProtocolError::Io(_)) => return Ok(()),
                Err(e) => {
                    // Oversized, truncated, bad JSON or unknown type: say so, then close.
                    let _ = reply_error(conn, ErrorCode::Protocol, e.to_string());
                    return Ok(());
                }
            };
            if version == 0 {
                let Request::Hello {
                    min_version,
                    max_version,
                    ..
                } = frame.msg
                else {
                    let msg = "the first frame must be a hello".to_string();
                    let _ = reply_error(conn, ErrorCode::Protocol, msg);
                    return Ok(());
                };
                let agreed = max_version.min(PROTOCOL_VERSION);
                if agreed < min_version.max(MIN_PROTOCOL_VERSION) || agreed == 0 {
                    let msg = format!(
                        "no common protocol version: client {min_version}..={max_version}, \
                         agent {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"
                    );
                    let _ = reply_error(conn, ErrorCode::UnsupportedVersion, msg);
                    return Ok(());
                }
                let hello = Response::Hello {
                    version: agreed,
                    min_version: MIN_PROTOCOL_VERSION,
                    max_version: PROTOCOL_VERSION,
                    agent: agent_name(),
                };
                write_frame(conn, &hello, &[])?;
                version = agreed;
                continue;
            }
            let need = frame.msg.min_version();
            if need > version {
                let what = match &frame.msg {
                    Request::Exec(_) => "exec with tty",
                    other => other.kind(),
                };
                let msg = format!(
                    "{what} needs protocol version {need}; this connection agreed on {version}"
                );
                reply_error(conn, ErrorCode::BadRequest, msg)?;
                continue;
            }
            match frame.msg {
                Request::Hello { .. } => {
                    let _ = reply_error(conn, ErrorCode::Protocol, "hello sent twice".into());
                    return Ok(());
                }
                Request::Ping => write_frame(conn, &Response::Pong, &[])?,
                Request::Info => write_frame(conn, &Response::Info(self.info()), &[])?,
                Request::Exec(spec) => {
                    let after = exec::run(conn, &self.shared, spec, frame.payload, version)?;
                    if let After::Close = after {
                        return Ok(());
                    }
                }
                Request::Stdin { .. } => {
                    let msg = "stdin without a running exec".to_string();
                    let _ = reply_error(conn, ErrorCode::Protocol, msg);
                    return Ok(());
                }
                Request::Signal { pid, signal } => self.signal(conn, pid, signal)?,
                Request::WriteFile {
                    path,
                    mode,
                    append,
                    create_dirs,
                } => {
                    let r = write_file(Path::new(&path), &frame.payload, mode, append, create_dirs);
                    match r {
                        Ok(()) => {
                            let ok = Response::Ok {
                                bytes: frame.payload.len() as u64,
                            };
                            write_frame(conn, &ok, &[])?
                        }
                        Err(e) => reply_error(
                            conn,
                            error_code_for(&e),
                            format!("write_file {path}: {e}"),
                        )?,
                    }
                }
                Request::ReadFile {
                    path,
                    offset,
                    max_len,
                } => match read_file(Path::new(&path), offset, max_len) {
                    Ok((size, data)) => {
                        write_frame(conn, &Response::FileData { offset, size }, &data)?
                    }
                    Err(e) => {
                        reply_error(conn, error_code_for(&e), format!("read_file {path}: {e}"))?
                    }
                },
                // Not answered; outside a tty exec there is no terminal to resize.
                Request::Resize { .. } => {}
                Request::Connect { port } => match forward::connect(port) {
                    Ok(tcp) => {
                        write_frame(conn, &Response::Ok { bytes: 0 }, &[])?;
                        // From here on the connection is a raw byte pipe, never framed again.
                        if let Err(e) = forward::pipe(conn, tcp) {
                            crate::init::log(&format!(
                                "connect {port}: {}",
                                crate::init::error_chain(&e)
                            ));
                        }
                        return Ok(());
                    }
                    Err(e) => {
                        let code = match e {
                            ForwardError::Refused(_) => ErrorCode::NotFound,
                            _ => ErrorCode::Failed,
                        };
                        reply_error(conn, code, crate::init::error_chain(&e))?
                    }
                },
                Request::Shutdown { grace_ms } => {
                    let grace = grace_ms.unwrap_or(DEFAULT_SHUTDOWN_GRACE_MS);
                    match &self.shared.shutdown {
                        Some(action) => {
                            write_frame(conn, &Response::Ok { bytes: 0 }, &[])?;
                            action(Duration::from_millis(grace.into()));
                        }
                        None => reply_error(
                            conn,
                            ErrorCode::Failed,
                            "this agent cannot shut the guest down".into(),
                        )?,
                    }
                }
            }
        }
    }

    fn signal<C: Write>(
        &self,
        conn: &mut C,
        pid: Option<i32>,
        signal: i32,
    ) -> Result<(), AgentError> {
        let Some(pid) = pid else {
            let msg = "signal without a pid needs a running exec on this connection".into();
            return reply_error(conn, ErrorCode::BadRequest, msg);
        };
        if !self.shared.running_contains(pid) {
            let msg = format!("no running exec with pid {pid}");
            return reply_error(conn, ErrorCode::NoSuchProcess, msg);
        }
        // SAFETY: kill has no memory effects; pid is a process one of our execs started.
        if unsafe { libc::kill(pid, signal) } < 0 {
            let e = io::Error::last_os_error();
            // The process can end (and be reaped) between the table check and kill: the client
            // may already hold its exit status. That is "no such process", not a failure.
            let code = if e.raw_os_error() == Some(libc::ESRCH) {
                ErrorCode::NoSuchProcess
            } else {
                ErrorCode::Failed
            };
            return reply_error(conn, code, format!("signal {signal} to {pid}: {e}"));
        }
        write_frame(conn, &Response::Ok { bytes: 0 }, &[])?;
        Ok(())
    }

    fn info(&self) -> AgentInfo {
        let read = |p: &str| {
            fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        AgentInfo {
            agent: agent_name(),
            protocol_version: PROTOCOL_VERSION,
            hostname: read("/proc/sys/kernel/hostname"),
            kernel: read("/proc/sys/kernel/osrelease"),
            uptime_ms: self.shared.started.elapsed().as_millis() as u64,
            pid: std::process::id(),
        }
    }
}

/// Most threads kept waiting for a connection once theirs ended.
pub const MAX_IDLE_WORKERS: usize = 4;
/// Threads started with the agent, before any connection: two, so that one still waits when
/// a snapshot is taken while a client's connection is being closed (its thread is busy until
/// the guest has seen the close), and the first connection after the restore finds it.
pub const SPARE_WORKERS: usize = 2;

/// The connection threads of [`Agent::serve`]: a connection goes to a waiting thread when one
/// is free, else to a new one.
struct Workers<C: Connection> {
    agent: Agent,
    tx: mpsc::Sender<C>,
    rx: Arc<Mutex<mpsc::Receiver<C>>>,
    /// Threads waiting for a connection and not yet promised one.
    idle: Arc<AtomicUsize>,
}

impl<C: Connection> Workers<C> {
    fn new(agent: Agent) -> Self {
        let (tx, rx) = mpsc::channel();
        let pool = Workers {
            agent,
            tx,
            rx: Arc::new(Mutex::new(rx)),
            idle: Arc::new(AtomicUsize::new(0)),
        };
        for _ in 0..SPARE_WORKERS {
            if pool.spawn() {
                pool.idle.fetch_add(1, Ordering::SeqCst);
            }
        }
        pool
    }

    /// Starts a thread that serves connections from the channel; false if it cannot start.
    fn spawn(&self) -> bool {
        let (agent, rx, idle) = (self.agent.clone(), self.rx.clone(), self.idle.clone());
        std::thread::Builder::new()
            .name("agent-conn".into())
            .spawn(move || loop {
                let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                let Ok(conn) = next else { return };
                agent.handle_connection(conn);
                // Wait for another connection, unless enough threads already do.
                let waiting = idle.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < MAX_IDLE_WORKERS).then_some(n + 1)
                });
                if waiting.is_err() {
                    return;
                }
            })
            .is_ok()
    }

    /// Hands `conn` to a waiting thread (claimed here, so two connections never count on the
    /// same one), or to a new thread when none waits.
    fn dispatch(&self, conn: C) {
        let claimed = self
            .idle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !claimed && !self.spawn() {
            // No thread for it: dropping the connection closes it.
            return;
        }
        let _ = self.tx.send(conn);
    }
}

fn agent_name() -> String {
    format!("tartarus-init {}", env!("CARGO_PKG_VERSION"))
}

/// Maps an I/O error to the protocol's error code.
pub(crate) fn error_code_for(e: &io::Error) -> ErrorCode {
    match e.kind() {
        io::ErrorKind::NotFound => ErrorCode::NotFound,
        io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
        _ => ErrorCode::Failed,
    }
}

fn write_file(
    path: &Path,
    data: &[u8],
    mode: Option<u32>,
    append: bool,
    create_dirs: bool,
) -> io::Result<()> {
    if create_dirs {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
    }
    let mut opts = OpenOptions::new();
    opts.write(true).create(true);
    if append {
        opts.append(true);
    } else {
        opts.truncate(true);
    }
    if let Some(mode) = mode {
        opts.mode(mode);
    }
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    if let Some(mode) = mode {
        f.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

fn read_file(path: &Path, offset: u64, max_len: Option<u64>) -> io::Result<(u64, Vec<u8>)> {
    let mut f = fs::File::open(path)?;
    let size = f.metadata()?.len();
    let want = max_len.unwrap_or(MAX_CHUNK as u64).min(MAX_CHUNK as u64);
    f.seek(SeekFrom::Start(offset))?;
    let mut data = Vec::new();
    f.take(want).read_to_end(&mut data)?;
    Ok((size, data))
}
