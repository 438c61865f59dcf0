//! One exec on one agent connection: spawn, stream stdout/stderr, take stdin and signals from
//! the client, report the exit. A client that goes away mid-stream gets its process group killed.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::time::Duration;

use crate::agent::{error_code_for, AgentError, Shared};
use crate::protocol::{
    read_frame, write_frame, ErrorCode, ExecSpec, ProtocolError, Request, Response, StdinMode,
};

/// How a connection goes on after an exec.
pub(crate) enum After {
    /// The exec ended (or could not start) and the client is still there.
    Continue,
    /// The client went away or broke the protocol: close the connection.
    Close,
}

const READ_CHUNK: usize = 64 * 1024;
const TICK: Duration = Duration::from_millis(10);

pub(crate) fn run<C>(
    conn: &mut C,
    shared: &Shared,
    spec: ExecSpec,
    payload: Vec<u8>,
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
    cmd.stdin(match spec.stdin {
        StdinMode::Null => Stdio::null(),
        StdinMode::Data | StdinMode::Stream => Stdio::piped(),
    });
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);

    let (mut child, status_rx) = match shared.reaper.spawn(|| cmd.spawn()) {
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
        let stdin_tx = child
            .stdin
            .take()
            .map(|stdin| spawn_stdin_writer(stdin, pid));
        if let Some(tx) = &stdin_tx {
            if !payload.is_empty() {
                let _ = tx.send(Some(payload));
            }
            if spec.stdin == StdinMode::Data {
                let _ = tx.send(None);
            }
        }
        let mut stream = Streams {
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            stdin: stdin_tx,
            pid,
        };
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
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    stdin: Option<Sender<Option<Vec<u8>>>>,
    pid: i32,
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

    /// Forwards whatever the pipes hold right now, without blocking.
    fn drain<C: Write>(&mut self, conn: &mut C, buf: &mut [u8]) -> Result<(), AgentError> {
        for out in [true, false] {
            loop {
                let fd = if out {
                    self.stdout.as_ref().map(|s| s.as_raw_fd())
                } else {
                    self.stderr.as_ref().map(|s| s.as_raw_fd())
                };
                let Some(fd) = fd else { break };
                if !poll_in(&[Some(fd)], Duration::ZERO)?[0] {
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
                let msg = format!("{} is not allowed while an exec is streaming", kind(&other));
                let _ = reply_error(conn, ErrorCode::Protocol, msg);
                Ok(After::Close)
            }
        }
    }
}

fn kind(r: &Request) -> &'static str {
    match r {
        Request::Hello { .. } => "hello",
        Request::Ping => "ping",
        Request::Info => "info",
        Request::Exec(_) => "exec",
        Request::Stdin { .. } => "stdin",
        Request::Signal { .. } => "signal",
        Request::WriteFile { .. } => "write_file",
        Request::ReadFile { .. } => "read_file",
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
fn spawn_stdin_writer(mut stdin: std::process::ChildStdin, pid: i32) -> Sender<Option<Vec<u8>>> {
    let (tx, rx) = channel::<Option<Vec<u8>>>();
    let _ = std::thread::Builder::new()
        .name(format!("stdin-{pid}"))
        .spawn(move || {
            while let Ok(Some(data)) = rx.recv() {
                if stdin.write_all(&data).is_err() {
                    break;
                }
            }
            // Dropping `stdin` closes the pipe.
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
