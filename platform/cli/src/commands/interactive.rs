//! `exec -i` / `exec -it`: the agent connection through `GET /sandboxes/{id}/agent` (an HTTP
//! upgrade), with this process's stdin streamed to the command and signals forwarded.
//!
//! The upgraded connection is async; the agent client is sync. A socketpair bridges them: one
//! end is copied both ways to the upgraded IO on the runtime, the other runs the sync
//! [`Client`] in a blocking task, which polls it together with stdin and a second socketpair
//! on which the runtime writes the signals it catches.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use guest_init::client::{Client, ClientError as AgentError, ExecEvent};
use guest_init::protocol::{ErrorCode, ExecSpec, StdinMode};
use tartarus_types::ExecRequest;
use tokio::signal::unix::{signal, SignalKind};

use super::tty::{self, RawMode};
use super::{CmdError, Ctx};
use crate::client::encode_segment;
use crate::output::exit_status;

pub async fn exec(ctx: &Ctx, id: &str, req: &ExecRequest, want_tty: bool) -> Result<i32, CmdError> {
    if want_tty && !tty::is_terminal(0) {
        return Err(tty::TtyError::NotATerminal.into());
    }
    let io = ctx
        .client
        .upgrade(&format!("/sandboxes/{}/agent", encode_segment(id)))
        .await?;
    let (ours, theirs) = UnixStream::pair().map_err(CmdError::io("socketpair"))?;
    let (sig_tx, sig_rx) = UnixStream::pair().map_err(CmdError::io("socketpair"))?;
    let to_tokio = |s: UnixStream| {
        s.set_nonblocking(true)?;
        tokio::net::UnixStream::from_std(s)
    };
    let mut ours = to_tokio(ours).map_err(CmdError::io("socketpair"))?;
    let sig_tx = to_tokio(sig_tx).map_err(CmdError::io("socketpair"))?;
    let bridge = tokio::spawn(async move {
        let mut io = io;
        let _ = tokio::io::copy_bidirectional(&mut io, &mut ours).await;
    });
    let signals = tokio::spawn(forward_signals(sig_tx));
    // The raw agent connection skips the daemon's exec defaults: apply them here, as
    // `POST /exec` does (the image's Env under the template's under ours; the image's
    // WorkingDir and User unless given).
    let (mut env, mut cwd, mut user) = (std::collections::BTreeMap::new(), None, None);
    if let Ok(sb) = ctx
        .client
        .get::<tartarus_types::Sandbox>(&format!("/sandboxes/{}", encode_segment(id)))
        .await
    {
        let path = format!("/templates/{}", encode_segment(&sb.template));
        if let Ok(t) = ctx.client.get::<tartarus_types::Template>(&path).await {
            if let Some(img) = &t.image {
                for kv in &img.env {
                    if let Some((k, v)) = kv.split_once('=') {
                        env.insert(k.to_string(), v.to_string());
                    }
                }
                cwd = Some(img.working_dir.clone()).filter(|w| !w.is_empty());
                user = Some(img.user.clone()).filter(|u| !u.is_empty());
            }
            env.extend(t.env);
        }
    }
    env.extend(req.env.clone());
    let spec = ExecSpec {
        argv: req.argv.clone(),
        env,
        clear_env: false,
        cwd: req.cwd.clone().or(cwd),
        user: req.user.clone().or(user),
        stdin: StdinMode::Stream,
        ..Default::default()
    };
    let timeout = req.timeout_s.map(std::time::Duration::from_secs);
    let result =
        tokio::task::spawn_blocking(move || session(theirs, sig_rx, spec, want_tty, timeout))
            .await
            .map_err(|e| CmdError::Failed(format!("the interactive session failed: {e}")))?;
    signals.abort();
    bridge.abort();
    result
}

/// Writes the number of each caught signal (as one byte) to `tx`.
async fn forward_signals(tx: tokio::net::UnixStream) {
    let kinds = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::window_change(),
    ];
    let mut sigs = Vec::new();
    for k in kinds {
        match signal(k) {
            Ok(s) => sigs.push((k.as_raw_value(), s)),
            Err(_) => return,
        }
    }
    let [(n0, s0), (n1, s1), (n2, s2), (n3, s3), (n4, s4)] = &mut sigs[..] else {
        return;
    };
    loop {
        let n = tokio::select! {
            _ = s0.recv() => *n0,
            _ = s1.recv() => *n1,
            _ = s2.recv() => *n2,
            _ = s3.recv() => *n3,
            _ = s4.recv() => *n4,
        };
        // A full socket buffer only drops a signal; never block here.
        let _ = tx.try_write(&[n as u8]);
    }
}

fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn write_out(mut w: impl Write, data: &[u8]) -> Result<(), CmdError> {
    w.write_all(data)
        .and_then(|_| w.flush())
        .map_err(CmdError::io("cannot write the command's output"))
}

/// The sync side: hello, exec, then a poll loop over the agent, the signals and stdin. After
/// `timeout` the command gets SIGKILL.
fn session(
    sock: UnixStream,
    mut sigs: UnixStream,
    spec: ExecSpec,
    want_tty: bool,
    timeout: Option<std::time::Duration>,
) -> Result<i32, CmdError> {
    let sock_fd = sock.as_raw_fd();
    let sig_fd = sigs.as_raw_fd();
    let mut client = Client::new(sock.try_clone().map_err(CmdError::io("socketpair"))?)?;
    let spec = if want_tty {
        tty::check_support(client.version())?;
        tty::tty_spec(spec, tty::window_size(0))
    } else {
        spec
    };
    let mut exec = match client.start_exec(&spec, &[]) {
        Ok(e) => e,
        Err(AgentError::Agent {
            code: ErrorCode::NotFound,
            message,
        }) => {
            eprintln!("tartarus: {message}");
            return Ok(127);
        }
        Err(AgentError::Agent {
            code: ErrorCode::PermissionDenied,
            message,
        }) => {
            eprintln!("tartarus: {message}");
            return Ok(126);
        }
        Err(e) => return Err(e.into()),
    };
    let _raw = if want_tty {
        Some(RawMode::enter(0)?)
    } else {
        None
    };
    let mut deadline = timeout.map(|t| std::time::Instant::now() + t);
    let mut stdin_open = true;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [
            pollfd(sock_fd),
            pollfd(sig_fd),
            pollfd(if stdin_open { 0 } else { -1 }),
        ];
        let wait_ms = match deadline {
            Some(d) => d
                .saturating_duration_since(std::time::Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32,
            None => -1,
        };
        // SAFETY: fds is a valid array of pollfd of the given length.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if r == 0 && deadline.is_some() {
            exec.send_signal(libc::SIGKILL)?;
            deadline = None;
            continue;
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(CmdError::io("poll")(e));
        }
        if fds[0].revents != 0 {
            match exec.next_event()? {
                Some(ExecEvent::Stdout(d)) => write_out(std::io::stdout().lock(), &d)?,
                Some(ExecEvent::Stderr(d)) => write_out(std::io::stderr().lock(), &d)?,
                Some(ExecEvent::Exit { code, signal }) => return Ok(exit_status(code, signal)),
                None => {
                    return Err(CmdError::Failed(
                        "the agent connection ended without an exit status".into(),
                    ))
                }
            }
            continue;
        }
        if fds[1].revents != 0 {
            let mut sig = [0u8; 16];
            let n = sigs.read(&mut sig).unwrap_or(0);
            for &s in &sig[..n] {
                let s = i32::from(s);
                if s == libc::SIGWINCH {
                    if let (true, Some((rows, cols))) = (want_tty, tty::window_size(0)) {
                        tty::send_resize(&mut exec, rows, cols)?;
                    }
                } else {
                    exec.send_signal(s)?;
                }
            }
        }
        if stdin_open && fds[2].revents != 0 {
            // SAFETY: reads into a buffer of the given length.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                exec.send_stdin(&buf[..n as usize], false)?;
            } else {
                let e = std::io::Error::last_os_error();
                if n < 0
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                    )
                {
                    continue;
                }
                exec.send_stdin(&[], true)?;
                stdin_open = false;
            }
        }
    }
}
