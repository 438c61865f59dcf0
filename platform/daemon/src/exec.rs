//! Work inside a running sandbox through its agent: exec (collected, streamed, background),
//! files, logs, and raw upgraded connections (the agent itself, guest TCP ports).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use std::os::unix::net::UnixStream;

use guest_init::client::{Client, ExecEvent as AgentEvent, ExecStream};
use guest_init::protocol::{ExecSpec, StdinMode};
use tartarus_auth::TenantScope;
use tartarus_types::{ExecEvent, ExecRequest, ExecResult, ExecStarted};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::daemon::{agent_error, Activity, Daemon, Shared};
use crate::error::{chain, ApiError};
use crate::hibernate::awake;
use crate::store::SandboxRow;
use crate::vmm;

/// How long an agent connection may stay silent before the daemon gives up on it, for requests
/// without a timeout of their own.
const IDLE: Duration = Duration::from_secs(24 * 3600);

pub(crate) fn spec_of(
    d: &Daemon,
    row: &SandboxRow,
    req: &ExecRequest,
) -> Result<(ExecSpec, Vec<u8>), ApiError> {
    if req.argv.is_empty() || req.argv[0].is_empty() {
        return Err(ApiError::BadRequest("argv: must name a program".into()));
    }
    if req.background && req.stream {
        return Err(ApiError::BadRequest(
            "background, stream: a background exec cannot stream".into(),
        ));
    }
    // The sandbox's template: its tenant's own, else the host's of that name.
    let t = crate::template::lookup(d, &row.tenant, &row.template)?.map(|t| t.api);
    // Docker's order: the image's Env, then the template's, then the request's.
    let mut env = std::collections::BTreeMap::new();
    let image = t.as_ref().and_then(|t| t.image.clone()).unwrap_or_default();
    for kv in &image.env {
        if let Some((k, v)) = kv.split_once('=') {
            env.insert(k.to_string(), v.to_string());
        }
    }
    env.extend(t.map(|t| t.env).unwrap_or_default());
    env.extend(req.env.clone());
    let mut spec = ExecSpec::new(req.argv.clone());
    spec.env = env;
    spec.cwd = req
        .cwd
        .clone()
        .or_else(|| (!image.working_dir.is_empty()).then(|| image.working_dir.clone()));
    spec.user = req
        .user
        .clone()
        .or_else(|| (!image.user.is_empty()).then(|| image.user.clone()));
    let stdin = req.stdin.clone().unwrap_or_default().into_bytes();
    spec.stdin = if req.stdin.is_some() {
        StdinMode::Data
    } else {
        StdinMode::Null
    };
    Ok((spec, stdin))
}

fn timeout_of(req: &ExecRequest) -> Duration {
    req.timeout_s.map(Duration::from_secs).unwrap_or(IDLE)
}

/// `POST /sandboxes/{id}/exec` without streaming.
pub async fn exec(
    d: &Shared,
    scope: &TenantScope,
    id: &str,
    req: ExecRequest,
) -> Result<ExecResult, ApiError> {
    let (row, activity) = awake(d, scope, id).await?;
    let (spec, stdin) = spec_of(d, &row, &req)?;
    let uds = d.vsock_of(id);
    let timeout = timeout_of(&req);
    let t0 = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        let _activity = activity;
        let mut c = Daemon::agent_blocking(&uds, timeout)?;
        c.start_exec(&spec, &stdin)
            .and_then(|s| s.collect())
            .map_err(|e| timed_out(e, timeout))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("exec task: {e}")))??;
    let elapsed = t0.elapsed();
    d.metrics.exec_seconds.observe(elapsed.as_secs_f64());
    Ok(ExecResult {
        exit_code: out.code,
        signal: out.signal,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        duration_ms: elapsed.as_millis() as u64,
    })
}

fn timed_out(e: guest_init::client::ClientError, timeout: Duration) -> ApiError {
    use guest_init::client::ClientError;
    use guest_init::protocol::ProtocolError;
    if let ClientError::Protocol(ProtocolError::Io(io)) = &e {
        if matches!(
            io.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            return ApiError::Unavailable(format!(
                "The command did not finish within {} s and was killed",
                timeout.as_secs()
            ));
        }
    }
    agent_error(e)
}

/// `POST /sandboxes/{id}/exec` with `stream`: NDJSON lines of [`ExecEvent`].
pub async fn exec_stream(
    d: &Shared,
    scope: &TenantScope,
    id: &str,
    req: ExecRequest,
) -> Result<Body, ApiError> {
    let (row, activity) = awake(d, scope, id).await?;
    let (spec, stdin) = spec_of(d, &row, &req)?;
    let uds = d.vsock_of(id);
    let timeout = timeout_of(&req);
    // Connect and start before answering, so a missing program is a plain 400.
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let d2 = d.clone();
    std::thread::spawn(move || {
        let _activity = activity;
        let t0 = Instant::now();
        let line = |e: &ExecEvent| {
            let mut s = serde_json::to_vec(e).unwrap_or_default();
            s.push(b'\n');
            Bytes::from(s)
        };
        let mut c = None;
        let Some(mut s) = start_exec(&mut c, &uds, timeout, &spec, &stdin, started_tx, |_| ())
        else {
            return;
        };
        if tx
            .blocking_send(line(&ExecEvent::Started { pid: s.pid() }))
            .is_err()
        {
            return; // client gone: dropping the connection kills the process group
        }
        loop {
            let ev = match s.next_event() {
                Ok(Some(AgentEvent::Stdout(b))) => ExecEvent::Stdout {
                    data: String::from_utf8_lossy(&b).into_owned(),
                },
                Ok(Some(AgentEvent::Stderr(b))) => ExecEvent::Stderr {
                    data: String::from_utf8_lossy(&b).into_owned(),
                },
                Ok(Some(AgentEvent::Exit { code, signal })) => {
                    d2.metrics.exec_seconds.observe(t0.elapsed().as_secs_f64());
                    ExecEvent::Exit {
                        exit_code: code,
                        signal,
                        duration_ms: t0.elapsed().as_millis() as u64,
                    }
                }
                Ok(None) => return,
                Err(e) => ExecEvent::Error {
                    error: timed_out(e, timeout).detail(),
                },
            };
            let last = matches!(ev, ExecEvent::Exit { .. } | ExecEvent::Error { .. });
            if tx.blocking_send(line(&ev)).is_err() || last {
                return;
            }
        }
    });
    started_rx
        .await
        .map_err(|_| ApiError::Internal("exec thread ended early".into()))??;
    let stream = futures_stream(rx);
    Ok(Body::from_stream(stream))
}

/// An mpsc receiver as a body stream.
pub fn futures_stream(
    mut rx: mpsc::Receiver<Bytes>,
) -> impl futures_core::Stream<Item = Result<Bytes, std::io::Error>> {
    async_stream(move |y| async move {
        while let Some(b) = rx.recv().await {
            if y.send(Ok(b)).await.is_err() {
                break;
            }
        }
    })
}

/// A tiny generator: `f` sends items into a channel the stream reads.
fn async_stream<F, Fut>(f: F) -> ChannelStream
where
    F: FnOnce(mpsc::Sender<Result<Bytes, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(f(tx));
    ChannelStream(rx)
}

pub struct ChannelStream(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_core::Stream for ChannelStream {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// A stream from a plain receiver of results.
pub fn channel_body(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Body {
    Body::from_stream(ChannelStream(rx))
}

/// Connects to the agent (kept in `slot`) and starts `spec`; tells `started` the outcome
/// (`what` of the running exec, or the error). None when it could not start.
fn start_exec<'c, T>(
    slot: &'c mut Option<Client<UnixStream>>,
    uds: &std::path::Path,
    timeout: Duration,
    spec: &ExecSpec,
    stdin: &[u8],
    started: tokio::sync::oneshot::Sender<Result<T, ApiError>>,
    what: impl FnOnce(&ExecStream<'c, UnixStream>) -> T,
) -> Option<ExecStream<'c, UnixStream>> {
    let c = match Daemon::agent_blocking(uds, timeout) {
        Ok(c) => slot.insert(c),
        Err(e) => {
            let _ = started.send(Err(e));
            return None;
        }
    };
    match c.start_exec(spec, stdin) {
        Ok(s) => {
            let _ = started.send(Ok(what(&s)));
            Some(s)
        }
        Err(e) => {
            let _ = started.send(Err(agent_error(e)));
            None
        }
    }
}

/// The sandbox's log of background processes' output.
pub fn exec_log(d: &Daemon, id: &str) -> PathBuf {
    d.cfg.sandbox_dir(id).join("exec.log")
}

/// `POST /sandboxes/{id}/exec` with `background`: the daemon holds the agent connection (so the
/// process lives on after the client leaves) and appends its output to the sandbox's logs.
pub async fn exec_background(
    d: &Shared,
    scope: &TenantScope,
    id: &str,
    req: ExecRequest,
) -> Result<ExecStarted, ApiError> {
    let (row, activity) = awake(d, scope, id).await?;
    let (spec, stdin) = spec_of(d, &row, &req)?;
    let uds = d.vsock_of(id);
    let log = exec_log(d, id);
    let timeout = timeout_of(&req);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let argv0 = req.argv.join(" ");
    std::thread::spawn(move || {
        // A background process keeps the sandbox from hibernating while it runs.
        let _activity = activity;
        let mut c = None;
        let Some(mut s) = start_exec(&mut c, &uds, timeout, &spec, &stdin, started_tx, |s| {
            s.pid()
        }) else {
            return;
        };
        let pid = s.pid();
        let mut f = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
        {
            Ok(f) => f,
            Err(_) => return,
        };
        loop {
            match s.next_event() {
                Ok(Some(AgentEvent::Stdout(b))) | Ok(Some(AgentEvent::Stderr(b))) => {
                    let _ = f.write_all(&b);
                }
                Ok(Some(AgentEvent::Exit { code, signal })) => {
                    let _ = writeln!(
                        f,
                        "[tartarusd] background process {pid} ({argv0}) ended: code {code:?} signal {signal:?}"
                    );
                    return;
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = writeln!(
                        f,
                        "[tartarusd] lost background process {pid} ({argv0}): {}",
                        chain(&e)
                    );
                    return;
                }
            }
        }
    });
    let pid = started_rx
        .await
        .map_err(|_| ApiError::Internal("exec thread ended early".into()))??;
    Ok(ExecStarted { pid })
}

/// `PUT /sandboxes/{id}/files?path=`.
pub async fn put_file(
    d: &Shared,
    scope: &TenantScope,
    id: &str,
    path: String,
    mode: Option<u32>,
    data: Bytes,
) -> Result<(), ApiError> {
    check_path(&path)?;
    let (_, activity) = awake(d, scope, id).await?;
    let uds = d.vsock_of(id);
    tokio::task::spawn_blocking(move || {
        let _activity = activity;
        let mut c = Daemon::agent_blocking(&uds, Duration::from_secs(300))?;
        c.write_file(&path, &data, mode).map_err(agent_error)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("file task: {e}")))?
}

/// `GET /sandboxes/{id}/files?path=`.
pub async fn get_file(
    d: &Shared,
    scope: &TenantScope,
    id: &str,
    path: String,
) -> Result<Vec<u8>, ApiError> {
    check_path(&path)?;
    let (_, activity) = awake(d, scope, id).await?;
    let uds = d.vsock_of(id);
    tokio::task::spawn_blocking(move || {
        let _activity = activity;
        let mut c = Daemon::agent_blocking(&uds, Duration::from_secs(300))?;
        c.read_file(&path).map_err(|e| match agent_error(e) {
            ApiError::Agent(m) if m.contains("No such file") || m.contains("not found") => {
                ApiError::NotFound(format!("{path}: no such file in the sandbox ({m})"))
            }
            other => other,
        })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("file task: {e}")))?
}

fn check_path(path: &str) -> Result<(), ApiError> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(ApiError::BadRequest(format!(
            "path: '{path}' is not an absolute guest path"
        )));
    }
    Ok(())
}

/// The files `logs` reads: the console of earlier VMMs (a hibernated sandbox's are kept), the
/// console of the running one, then background processes' output.
fn log_files(d: &Daemon, id: &str) -> [PathBuf; 3] {
    [
        d.cfg.sandbox_dir(id).join("serial.log"),
        d.cfg.jail(id).serial(),
        exec_log(d, id),
    ]
}

/// `GET /sandboxes/{id}/logs`.
pub async fn logs(
    d: &Shared,
    scope: &TenantScope,
    id: &str,
    follow: bool,
    tail: Option<usize>,
) -> Result<Body, ApiError> {
    d.sandbox_row(scope, id)?;
    let files = log_files(d, id);
    let mut offsets = vec![0u64; files.len()];
    let mut first = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let data = tokio::fs::read(f).await.unwrap_or_default();
        offsets[i] = data.len() as u64;
        first.extend_from_slice(&data);
    }
    if let Some(n) = tail {
        let text = String::from_utf8_lossy(&first).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(n);
        let mut s = lines[start..].join("\n");
        if !s.is_empty() {
            s.push('\n');
        }
        first = s.into_bytes();
    }
    if !follow {
        return Ok(Body::from(first));
    }
    let (tx, rx) = mpsc::channel(16);
    let d2 = d.clone();
    let id2 = id.to_string();
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(first))).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            // The console file moves out of the jail when the VMM goes (appended to the
            // kept console): what was already sent from it is not sent again.
            let files = log_files(&d2, &id2);
            if offsets[1] > 0 && !files[1].exists() {
                offsets[0] += offsets[1];
                offsets[1] = 0;
            }
            for (i, f) in files.iter().enumerate() {
                let Ok(data) = tokio::fs::read(f).await else {
                    continue;
                };
                let len = data.len() as u64;
                if len > offsets[i] {
                    let chunk = Bytes::copy_from_slice(&data[offsets[i] as usize..]);
                    offsets[i] = len;
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
            }
            match d2.store.sandbox(&TenantScope::All, &id2) {
                Ok(Some(r))
                    if matches!(
                        r.state,
                        tartarus_types::SandboxState::Running
                            | tartarus_types::SandboxState::Paused
                            | tartarus_types::SandboxState::Hibernated
                            | tartarus_types::SandboxState::Creating
                    ) => {}
                _ => return,
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(channel_body(rx))
}

/// Connects to the guest agent's port through the hybrid vsock socket, asynchronously.
async fn connect_vsock(
    uds: &std::path::Path,
    port: u32,
) -> std::io::Result<tokio::net::UnixStream> {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::UnixStream::connect(uds).await?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "vsock handshake"))??;
        if n == 0 || line.len() > 64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "the guest refused the vsock connection",
            ));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    if !line.starts_with(b"OK ") {
        return Err(std::io::Error::other(format!(
            "vsock handshake: {}",
            String::from_utf8_lossy(&line)
        )));
    }
    Ok(s)
}

/// Pipes an upgraded client connection to the guest agent, byte for byte.
pub async fn pipe_agent(
    d: Shared,
    id: String,
    upgraded: hyper::upgrade::Upgraded,
    _activity: Activity,
) {
    let uds = d.vsock_of(&id);
    let mut client = hyper_util::rt::TokioIo::new(upgraded);
    match connect_vsock(&uds, vmm::AGENT_PORT).await {
        Ok(mut agent) => {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
        }
        Err(e) => {
            tracing::info!("sandbox {id}: agent connection failed: {e}");
            let _ = client.shutdown().await;
        }
    }
}

/// Pipes an upgraded client connection to a TCP port on the guest's loopback, through the
/// agent's `connect` request.
pub async fn pipe_port(
    d: Shared,
    id: String,
    port: u16,
    upgraded: hyper::upgrade::Upgraded,
    _activity: Activity,
) {
    let uds = d.vsock_of(&id);
    let mut client = hyper_util::rt::TokioIo::new(upgraded);
    let opened = tokio::task::spawn_blocking(
        move || -> Result<std::os::unix::net::UnixStream, ApiError> {
            let c = Daemon::agent_blocking(&uds, Duration::from_secs(10))?;
            let s = crate::ports::open(c, port)?;
            s.set_read_timeout(None).ok();
            s.set_write_timeout(None).ok();
            s.set_nonblocking(true)
                .map_err(|e| ApiError::internal("port stream", &e))?;
            Ok(s)
        },
    )
    .await;
    match opened {
        Ok(Ok(s)) => match tokio::net::UnixStream::from_std(s) {
            Ok(mut guest) => {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut guest).await;
            }
            Err(e) => tracing::info!("sandbox {id}: port {port}: {e}"),
        },
        Ok(Err(e)) => {
            tracing::info!("sandbox {id}: port {port}: {e}");
            let _ = client.shutdown().await;
        }
        Err(e) => tracing::warn!("sandbox {id}: port task: {e}"),
    }
}
