//! One exec on one agent connection: spawn, stream stdout/stderr, take stdin and signals from
//! the client, report the exit. A client that goes away mid-stream gets its process group killed.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::time::Duration;

use crate::agent::{error_code_for, AgentError, Shared};
use crate::protocol::{
    read_frame, write_frame, ErrorCode, ExecSpec, ProtocolError, Request, Response, StdinMode,
};
use crate::pty::{self, Pty};

/// How a connection goes on after an exec.
pub(crate) enum After {
    /// The exec ended (or could not start) and the client is still there.
    Continue,
    /// The client went away or broke the protocol: close the connection.
    Close,
}

const READ_CHUNK: usize = 64 * 1024;
const TICK: Duration = Duration::from_millis(10);
/// How long a tty exec's master may stay quiet after the exit before the `exit` frame goes.
const TTY_DRAIN_IDLE: Duration = Duration::from_millis(200);
/// The longest a tty exec's master is drained after the exit.
const TTY_DRAIN_MAX: Duration = Duration::from_secs(2);

pub(crate) fn run<C>(
    conn: &mut C,
    shared: &Shared,
    spec: ExecSpec,
    payload: Vec<u8>,
    version: u32,
) -> Result<After, AgentError>
where
    C: Read + Write + AsRawFd,
{
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        reply_error(
            conn,
            ErrorCode::BadRequest,
            "exec: argv must name a program".into(),
        )?;
        return Ok(After::Continue);
    }
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..]);
    if spec.clear_env {
        cmd.env_clear();
    }
    cmd.envs(&spec.env);
    // Keep glibc on SSE code when the kernel does not save wider vector state (see xstate.rs),
    // whatever environment the client asked for.
    // Without either, the process inherits PID 1's GLIBC_TUNABLES, which already start with ours.
    if let Some(ours) = crate::xstate::guard() {
        let theirs = spec.env.get("GLIBC_TUNABLES").map(String::as_str);
        if theirs.is_some() || spec.clear_env {
            cmd.env(
                "GLIBC_TUNABLES",
                crate::xstate::merge_tunables(ours, theirs),
            );
        }
    }
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    if let Some(user) = spec.user.as_deref().filter(|u| !u.is_empty()) {
        let id = match crate::user::resolve(user) {
            Ok(id) => id,
            Err(e) => {
                reply_error(conn, ErrorCode::BadRequest, format!("exec: {e}"))?;
                return Ok(After::Continue);
            }
        };
        for (k, v) in [("HOME", id.home.clone()), ("USER", id.name.clone())] {
            if let (Some(v), false) = (v, spec.env.contains_key(k)) {
                cmd.env(k, v);
            }
        }
        let groups: Vec<libc::gid_t> = id.groups.clone();
        let (uid, gid) = (id.uid, id.gid);
        // Groups, then gid, then uid, all in the child (std's own uid/gid switch would run
        // before this closure and leave no right to set the groups).
        // SAFETY: setgroups/setgid/setuid are async-signal-safe; the closure only reads data
        // the child owns a copy of, and runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                    || libc::setgid(gid) < 0
                    || libc::setuid(uid) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
    }
    let mut pty = None;
    if spec.tty {
        let p = match Pty::open(spec.rows, spec.cols) {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("exec: no pseudo-terminal: {}", crate::init::error_chain(&e));
                reply_error(conn, ErrorCode::Failed, msg)?;
                return Ok(After::Continue);
            }
        };
        let slave = |p: &Pty| p.slave.try_clone().map(Stdio::from);
        match (slave(&p), slave(&p), slave(&p)) {
            (Ok(i), Ok(o), Ok(e)) => {
                cmd.stdin(i).stdout(o).stderr(e);
            }
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                reply_error(conn, ErrorCode::Failed, format!("exec: pty slave: {e}"))?;
                return Ok(After::Continue);
            }
        }
        // A session of its own (its process group is its pid, like the others') with the
        // slave as the controlling terminal.
        // SAFETY: the closure only makes async-signal-safe calls (setsid, ioctl).
        unsafe { cmd.pre_exec(pty::make_controlling_terminal) };
        pty = Some(p);
    } else {
        cmd.stdin(match spec.stdin {
            StdinMode::Null => Stdio::null(),
            StdinMode::Data | StdinMode::Stream => Stdio::piped(),
        });
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
    }

    // The child starts with no signal blocked (PID 1's threads block the ones it waits for).
    let spawned = shared
        .reaper
        .spawn(|| crate::init::with_signals_unblocked(|| cmd.spawn()));
    // The agent must not hold the slave: the master reads EIO once the child's side is closed.
    drop(cmd);
    let pty = pty.map(|p| {
        drop(p.slave);
        p.master
    });
    let (mut child, status_rx) = match spawned {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("cannot execute '{}': {e}", spec.argv[0]);
            reply_error(conn, error_code_for(&e), msg)?;
            return Ok(After::Continue);
        }
    };
    let pid = child.id() as i32;
    shared.running_insert(pid);
    let result = (|| {
        write_frame(conn, &Response::Started { pid }, &[])?;
        let mut stream = Streams {
            stdout: child.stdout.take().map(|s| File::from(OwnedFd::from(s))),
            stderr: child.stderr.take().map(|s| File::from(OwnedFd::from(s))),
            stdin: None,
            tty: None,
            pid,
            version,
        };
        let stdin_mode = if let Some(master) = pty {
            stream.stdout = Some(File::from(master.try_clone().map_err(AgentError::Dup)?));
            let writer = File::from(master.try_clone().map_err(AgentError::Dup)?);
            stream.stdin = Some(spawn_stdin_writer(writer, pid));
            stream.tty = Some(master);
            StdinMode::Stream
        } else {
            let stdin = child.stdin.take();
            stream.stdin = stdin.map(|s| spawn_stdin_writer(s, pid));
            spec.stdin
        };
        if let Some(tx) = &stream.stdin {
            if !payload.is_empty() {
                let _ = tx.send(Some(payload));
            }
            if stdin_mode == StdinMode::Data {
                let _ = tx.send(None);
            }
        }
        stream.pump(conn, shared, &status_rx)
    })();
    shared.running_remove(pid);
    if !matches!(result, Ok(After::Continue)) {
        // The client is gone or misbehaved: do not leave its processes behind.
        kill_group(pid);
        let _ = status_rx.recv_timeout(Duration::from_secs(5));
    }
    result
}

struct Streams {
    stdout: Option<File>,
    stderr: Option<File>,
    stdin: Option<Sender<Option<Vec<u8>>>>,
    /// A tty exec's pty master (its output is `stdout`, its input the stdin writer's).
    tty: Option<OwnedFd>,
    pid: i32,
    /// The connection's protocol version.
    version: u32,
}

impl Streams {
    fn pump<C>(
        &mut self,
        conn: &mut C,
        shared: &Shared,
        status_rx: &Receiver<ExitStatus>,
    ) -> Result<After, AgentError>
    where
        C: Read + Write + AsRawFd,
    {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match status_rx.try_recv() {
                Ok(status) => {
                    // The process is gone; send what its pipes still hold without waiting for
                    // grandchildren that may keep them open.
                    self.drain(conn, &mut buf)?;
                    // Closing the master hangs up the terminal's session (SIGHUP to leftovers).
                    self.tty = None;
                    let exit = Response::Exit {
                        code: status.code(),
                        signal: status.signal(),
                    };
                    write_frame(conn, &exit, &[])?;
                    return Ok(After::Continue);
                }
                Err(TryRecvError::Disconnected) => {
                    let exit = Response::Exit {
                        code: None,
                        signal: None,
                    };
                    write_frame(conn, &exit, &[])?;
                    return Ok(After::Continue);
                }
                Err(TryRecvError::Empty) => {}
            }
            let fds = [
                self.stdout.as_ref().map(|s| s.as_raw_fd()),
                self.stderr.as_ref().map(|s| s.as_raw_fd()),
                Some(conn.as_raw_fd()),
            ];
            let ready = poll_in(&fds, TICK)?;
            if ready[0] {
                self.forward(conn, &mut buf, true)?;
            }
            if ready[1] {
                self.forward(conn, &mut buf, false)?;
            }
            if ready[2] {
                match read_frame::<Request, _>(conn) {
                    Ok(frame) => {
                        if let After::Close =
                            self.control(conn, shared, frame.msg, frame.payload)?
                        {
                            return Ok(After::Close);
                        }
                    }
                    Err(ProtocolError::Closed) | Err(ProtocolError::Io(_)) => {
                        return Ok(After::Close)
                    }
                    Err(e) => {
                        let _ = reply_error(conn, ErrorCode::Protocol, e.to_string());
                        return Ok(After::Close);
                    }
                }
            }
        }
    }

    /// Reads one chunk from stdout or stderr and forwards it; EOF closes that pipe.
    fn forward<C: Write>(
        &mut self,
        conn: &mut C,
        buf: &mut [u8],
        out: bool,
    ) -> Result<(), AgentError> {
        let n = {
            let pipe: &mut dyn Read = match (out, &mut self.stdout, &mut self.stderr) {
                (true, Some(s), _) => s,
                (false, _, Some(s)) => s,
                _ => return Ok(()),
            };
            match pipe.read(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(_) => 0,
            }
        };
        if n == 0 {
            if out {
                self.stdout = None;
            } else {
                self.stderr = None;
            }
            return Ok(());
        }
        let msg = if out {
            Response::Stdout
        } else {
            Response::Stderr
        };
        write_frame(conn, &msg, &buf[..n])?;
        Ok(())
    }

    /// Forwards whatever the pipes hold right now, without blocking. A pty master is read until
    /// EIO (every holder of the slave closed it; the kernel pushes pending output first) or
    /// until it stays quiet for [`TTY_DRAIN_IDLE`] (a leftover process holds the slave), for
    /// at most [`TTY_DRAIN_MAX`] (a leftover process that keeps writing).
    fn drain<C: Write>(&mut self, conn: &mut C, buf: &mut [u8]) -> Result<(), AgentError> {
        let wait = if self.tty.is_some() {
            TTY_DRAIN_IDLE
        } else {
            Duration::ZERO
        };
        let start = std::time::Instant::now();
        for out in [true, false] {
            loop {
                if self.tty.is_some() && start.elapsed() > TTY_DRAIN_MAX {
                    break;
                }
                let fd = if out {
                    self.stdout.as_ref().map(|s| s.as_raw_fd())
                } else {
                    self.stderr.as_ref().map(|s| s.as_raw_fd())
                };
                let Some(fd) = fd else { break };
                if !poll_in(&[Some(fd)], wait)?[0] {
                    break;
                }
                self.forward(conn, buf, out)?;
            }
        }
        Ok(())
    }

    /// A frame the client sent while the process runs.
    fn control<C: Write>(
        &mut self,
        conn: &mut C,
        shared: &Shared,
        msg: Request,
        payload: Vec<u8>,
    ) -> Result<After, AgentError> {
        match msg {
            Request::Stdin { eof } => {
                if let Some(tx) = &self.stdin {
                    if !payload.is_empty() {
                        let _ = tx.send(Some(payload));
                    }
                    if eof {
                        let _ = tx.send(None);
                        self.stdin = None;
                    }
                }
                Ok(After::Continue)
            }
            Request::Resize { .. } if self.version < 2 => {
                let msg = "resize needs protocol version 2".to_string();
                reply_error(conn, ErrorCode::BadRequest, msg)?;
                Ok(After::Continue)
            }
            Request::Resize { rows, cols } => {
                // Not answered; ignored unless the exec has a terminal.
                if let Some(master) = &self.tty {
                    let _ = pty::set_window_size(master.as_raw_fd(), rows, cols);
                }
                Ok(After::Continue)
            }
            Request::Signal { pid, signal } => {
                // Failures are not reported inside a stream: the process may just have exited.
                let target = pid.unwrap_or(self.pid);
                if target == self.pid || shared.running_contains(target) {
                    // SAFETY: kill has no memory effects; the target is a process we started.
                    unsafe { libc::kill(target, signal) };
                }
                Ok(After::Continue)
            }
            other => {
                let msg = format!("{} is not allowed while an exec is streaming", other.kind());
                let _ = reply_error(conn, ErrorCode::Protocol, msg);
                Ok(After::Close)
            }
        }
    }
}

pub(crate) fn reply_error<C: Write + ?Sized>(
    conn: &mut C,
    code: ErrorCode,
    message: String,
) -> Result<(), AgentError> {
    write_frame(conn, &Response::Error { code, message }, &[])?;
    Ok(())
}

/// Feeds stdin on its own thread so a child that does not read cannot block the stream.
fn spawn_stdin_writer<W: Write + Send + 'static>(
    mut stdin: W,
    pid: i32,
) -> Sender<Option<Vec<u8>>> {
    let (tx, rx) = channel::<Option<Vec<u8>>>();
    let _ = std::thread::Builder::new()
        .name(format!("stdin-{pid}"))
        .spawn(move || {
            while let Ok(Some(data)) = rx.recv() {
                if stdin.write_all(&data).is_err() {
                    break;
                }
            }
            // Dropping `stdin` closes the pipe (or this handle of a pty master).
        });
    tx
}

fn kill_group(pgid: i32) {
    // SAFETY: kill has no memory effects; a negative pid names the exec's own process group.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

/// poll(2) for readability (or hang-up) on up to three optional fds.
fn poll_in(fds: &[Option<RawFd>], timeout: Duration) -> Result<Vec<bool>, AgentError> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `pfds` is a valid array of pollfd of the length passed; negative fds are
        // ignored by poll.
        let r = unsafe {
            libc::poll(
                pfds.as_mut_ptr(),
                pfds.len() as libc::nfds_t,
                timeout.as_millis() as i32,
            )
        };
        if r >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(AgentError::Poll(e));
        }
    }
    Ok(pfds
        .iter()
        .map(|p| p.fd >= 0 && p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
        .collect())
}
