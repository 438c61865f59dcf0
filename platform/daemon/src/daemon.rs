//! The daemon's shared state and the helpers every operation uses: configuration, the store,
//! events, per-sandbox locks and live handles, agent connections.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guest_init::client::{Client, ClientError};
use guest_init::protocol::ErrorCode;
use tartarus_audit::{AuditEvent, AuditLog, Outcome};
use tartarus_auth::TenantScope;
use tartarus_types::{Event, SandboxState};
use tokio::sync::broadcast;

use crate::error::{chain, ApiError};
use crate::metrics::{Metrics, StateLabel};
use crate::store::{SandboxRow, Store};
use crate::vmm::{JailPaths, Launcher, AGENT_PORT};

/// Everything the daemon is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub template_cache: PathBuf,
    pub uid_base: u32,
    pub max_sandboxes: usize,
    pub max_memory_mib: u64,
    /// Warm pools fill only while the host has more memory available than this, MiB, and
    /// drain below it.
    pub pool_reserve_mib: u64,
    pub launcher: Launcher,
    /// The kernel of templates that name none (`--kernel`).
    pub default_kernel: Option<PathBuf>,
}

impl Config {
    pub fn templates_dir(&self) -> PathBuf {
        self.state_dir.join("templates")
    }
    pub fn snapshots_dir(&self) -> PathBuf {
        self.state_dir.join("snapshots")
    }
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.state_dir.join("sandboxes")
    }
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.sandboxes_dir().join(id)
    }
    pub fn jail(&self, id: &str) -> JailPaths {
        JailPaths::new(&self.launcher.jail_dir, id)
    }
}

/// What the daemon holds for a sandbox whose VMM it started or adopted.
pub struct Live {
    /// Set before the daemon itself stops the VMM, so the exit watcher does not call it a
    /// failure.
    pub stopping: AtomicBool,
    /// Tasks to abort when the sandbox goes (exit watcher, timeout).
    pub tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Requests in progress that use the guest (execs, streams, file transfers, background
    /// processes, port forwards): a sandbox with any does not hibernate.
    pub active: AtomicUsize,
    /// When the last of them ended (or the VMM started): the idle clock.
    pub last_active: Mutex<Instant>,
}

impl Default for Live {
    fn default() -> Live {
        Live {
            stopping: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            active: AtomicUsize::new(0),
            last_active: Mutex::new(Instant::now()),
        }
    }
}

impl Live {
    /// How long the sandbox has had nothing in progress (zero while something is).
    pub fn idle_for(&self) -> Duration {
        if self.active.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        self.last_active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
}

/// One request in progress on a sandbox's guest; dropping it restarts the idle clock.
pub struct Activity(Arc<Live>);

impl Activity {
    pub fn new(live: Arc<Live>) -> Activity {
        live.active.fetch_add(1, Ordering::SeqCst);
        Activity(live)
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        *self.0.last_active.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

pub struct Daemon {
    pub cfg: Config,
    pub images: crate::images::Images,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub events: broadcast::Sender<Event>,
    /// One lock per sandbox id: state changes of one sandbox happen one at a time.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub live: Mutex<HashMap<String, Arc<Live>>>,
    /// Serialises create's admission check with the insert of the new row.
    pub admission: tokio::sync::Mutex<()>,
    /// Templates being built, as `tenant/name`.
    pub building: Mutex<std::collections::HashSet<String>>,
    /// API keys (their own SQLite file, `auth.db`).
    pub keys: Arc<tartarus_auth::keystore::KeyStore>,
    /// The audit log (issue #14): every mutating request, auth failure and state change.
    pub audit: Arc<AuditLog>,
    /// Its forwarder to syslog, if configured (health for `/metrics`).
    pub forwarder: Mutex<Option<tartarus_audit::Forwarder>>,
    /// Warm pools' live numbers.
    pub pools: crate::pool::Pools,
}

pub type Shared = Arc<Daemon>;

impl Daemon {
    pub fn new(
        cfg: Config,
        store: Store,
        images: crate::images::Images,
        keys: Arc<tartarus_auth::keystore::KeyStore>,
        audit: Arc<AuditLog>,
    ) -> Daemon {
        let (events, _) = broadcast::channel(1024);
        Daemon {
            cfg,
            images,
            store,
            metrics: Arc::new(Metrics::new()),
            events,
            locks: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            admission: tokio::sync::Mutex::new(()),
            building: Mutex::new(Default::default()),
            keys,
            audit,
            forwarder: Mutex::new(None),
            pools: Default::default(),
        }
    }

    pub fn lock_of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    pub fn forget_lock(&self, id: &str) {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    pub fn live_of(&self, id: &str) -> Option<Arc<Live>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    pub fn set_live(&self, id: &str, live: Arc<Live>) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), live);
    }

    pub fn drop_live(&self, id: &str) -> Option<Arc<Live>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
    }

    pub fn mark_stopping(&self, id: &str) {
        if let Some(l) = self.live_of(id) {
            l.stopping.store(true, Ordering::SeqCst);
        }
    }

    /// Records an event of `tenant` and hands it to the `/events` followers.
    pub fn event(&self, tenant: &str, kind: &str, f: impl FnOnce(&mut Event)) {
        let mut e = Event {
            id: 0,
            time: String::new(),
            kind: kind.to_string(),
            tenant: tenant.to_string(),
            sandbox: None,
            template: None,
            snapshot: None,
            state: None,
            message: None,
        };
        f(&mut e);
        match self.store.add_event(e) {
            Ok(e) => {
                let _ = self.events.send(e);
            }
            Err(err) => tracing::warn!("cannot record an event: {}", chain(&err)),
        }
    }

    /// Sets a sandbox's state, records the event and the audit record, refreshes the gauges.
    pub fn set_state(&self, id: &str, state: SandboxState, reason: Option<&str>) {
        if let Err(e) = self.store.set_sandbox_state(id, state, reason) {
            tracing::warn!("cannot store the state of {id}: {}", chain(&e));
        }
        let tenant = self
            .store
            .sandbox(&TenantScope::All, id)
            .ok()
            .flatten()
            .map(|r| r.tenant)
            .unwrap_or_else(|| crate::store::HOST_TENANT.to_string());
        self.audit_state(&tenant, &format!("sandbox/{id}"), state.as_str(), reason);
        self.event(&tenant, "sandbox.state", |e| {
            e.sandbox = Some(id.to_string());
            e.state = Some(state.as_str().to_string());
            e.message = reason.map(str::to_string);
        });
        self.refresh_gauges();
    }

    /// Queues an audit record of a state change the daemon itself made (`principal`
    /// `tartarusd`): on disk with the next group commit.
    pub fn audit_state(&self, tenant: &str, resource: &str, state: &str, reason: Option<&str>) {
        let result = match state {
            "failed" => Outcome::Error(reason.unwrap_or("failed").to_string()),
            _ => Outcome::Ok,
        };
        let ev = AuditEvent::now(
            "-",
            tenant,
            "tartarusd",
            format!("sandbox.state.{state}"),
            resource,
            result,
            "daemon",
        );
        if let Err(e) = self.audit.submit(ev) {
            tracing::error!("audit log: cannot record a state change: {e}");
        }
    }

    pub fn refresh_gauges(&self) {
        let rows = self.store.sandboxes(&TenantScope::All).unwrap_or_default();
        for s in SandboxState::ALL {
            let n = rows.iter().filter(|r| r.state == s).count() as i64;
            self.metrics
                .sandboxes
                .get_or_create(&StateLabel {
                    state: s.as_str().to_string(),
                })
                .set(n);
        }
    }

    /// The sandbox `id` as `scope` sees it: another tenant's is "No sandbox", as a missing one.
    /// Sandboxes waiting in a warm pool are nobody's yet: "No sandbox" too.
    pub fn sandbox_row(&self, scope: &TenantScope, id: &str) -> Result<SandboxRow, ApiError> {
        self.store
            .sandbox(scope, id)?
            .filter(|r| r.pool.is_none())
            .ok_or_else(|| ApiError::NotFound(format!("No sandbox '{id}'")))
    }

    /// A sandbox that must be running (exec, files, ports, ...).
    pub fn running_row(&self, scope: &TenantScope, id: &str) -> Result<SandboxRow, ApiError> {
        let row = self.sandbox_row(scope, id)?;
        match row.state {
            SandboxState::Running => Ok(row),
            s => Err(ApiError::Conflict(format!(
                "Sandbox '{id}' is {}, not running",
                s.as_str()
            ))),
        }
    }

    /// The host path of the sandbox's vsock socket.
    pub fn vsock_of(&self, id: &str) -> PathBuf {
        self.cfg.jail(id).vsock()
    }

    /// A fresh agent connection to a running sandbox (blocking: call from spawn_blocking);
    /// later reads and writes on it time out after `timeout`.
    pub fn agent_blocking(uds: &Path, timeout: Duration) -> Result<Client<UnixStream>, ApiError> {
        let (c, s) = agent_handshake_clone(uds, HANDSHAKE_TIMEOUT).map_err(agent_error)?;
        // The clone shares the socket: its timeouts are the client's.
        s.set_read_timeout(Some(timeout))
            .and_then(|_| s.set_write_timeout(Some(timeout)))
            .map_err(|e| ApiError::internal("agent socket", &e))?;
        Ok(c)
    }
}

/// How long the vsock handshake and the agent's hello may take on a live guest.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// CONNECT + hello with every read bounded by `timeout` (a connection the guest accepted and
/// then lost fails instead of hanging); also returns a clone of the socket, to change its
/// timeouts later. The agent's hello is its answer: no ping follows (on a PVM host each round
/// trip through the guest kernel costs ~10 ms).
fn agent_handshake_clone(
    uds: &Path,
    timeout: Duration,
) -> Result<(Client<UnixStream>, UnixStream), ClientError> {
    let stream = connect_hybrid_vsock_bounded(uds, timeout)?;
    let clone = stream.try_clone().map_err(|source| ClientError::Connect {
        path: uds.display().to_string(),
        source,
    })?;
    let c = Client::new(stream)?;
    Ok((c, clone))
}

/// [`connect_hybrid_vsock`] with read and write timeouts set before the handshake.
fn connect_hybrid_vsock_bounded(uds: &Path, timeout: Duration) -> Result<UnixStream, ClientError> {
    use std::io::{Read, Write};
    let err = |source| ClientError::Connect {
        path: uds.display().to_string(),
        source,
    };
    let mut s = UnixStream::connect(uds).map_err(err)?;
    s.set_read_timeout(Some(timeout)).map_err(err)?;
    s.set_write_timeout(Some(timeout)).map_err(err)?;
    s.write_all(format!("CONNECT {AGENT_PORT}\n").as_bytes())
        .map_err(|e| ClientError::Handshake(format!("cannot send CONNECT: {e}")))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => return Err(ClientError::Handshake("closed during CONNECT".into())),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if line.len() < 64 => line.push(b[0]),
            Ok(_) => return Err(ClientError::Handshake("answer too long".into())),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ClientError::Handshake(format!("no answer to CONNECT: {e}"))),
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(ClientError::Handshake(format!(
            "unexpected answer '{}'",
            String::from_utf8_lossy(&line)
        )));
    }
    Ok(s)
}

/// Retries [`agent_handshake_clone`] until the agent answers or `deadline` passes; reads and
/// writes on the connection then time out after `then` (not after the last try's short
/// handshake bound: a template's warm-up command may run for minutes).
pub fn wait_for_agent(
    uds: &Path,
    deadline: Duration,
    then: Duration,
) -> Result<Client<UnixStream>, ClientError> {
    let start = std::time::Instant::now();
    let mut attempt = 0u32;
    loop {
        // A restored guest answers within ~100 ms here (a restore resets only the
        // connections the snapshot had, on fresh host ports, so a new one is not lost); a
        // booting guest refuses until its agent listens. A try that gets no answer is given
        // up on after 1 s, then 2 s, ... up to HANDSHAKE_TIMEOUT.
        attempt += 1;
        let left = deadline.saturating_sub(start.elapsed());
        let per_try = Duration::from_secs(attempt.into())
            .min(HANDSHAKE_TIMEOUT)
            .min(left.max(Duration::from_millis(100)));
        match agent_handshake_clone(uds, per_try) {
            Ok((c, s)) => {
                s.set_read_timeout(Some(then))
                    .and_then(|_| s.set_write_timeout(Some(then)))
                    .map_err(|source| ClientError::Connect {
                        path: uds.display().to_string(),
                        source,
                    })?;
                return Ok(c);
            }
            Err(e) if start.elapsed() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Maps an agent client error to the API's: refusals are the request's fault, transport
/// failures mean the sandbox is not answering.
pub fn agent_error(e: ClientError) -> ApiError {
    match e {
        ClientError::Agent { code, message } => match code {
            ErrorCode::NotFound
            | ErrorCode::BadRequest
            | ErrorCode::PermissionDenied
            | ErrorCode::NoSuchProcess => ApiError::Agent(message),
            _ => ApiError::Internal(format!("The guest agent failed: {message}")),
        },
        other => ApiError::Unavailable(format!(
            "The sandbox's agent is not answering: {}",
            chain(&other)
        )),
    }
}
