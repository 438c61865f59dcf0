//! The host-side client of the agent. It runs over any `Read + Write` stream; in production that
//! is the VMM's hybrid vsock Unix socket after the `CONNECT <port>` handshake
//! ([`connect_hybrid_vsock`]).

use std::io::{self, BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::protocol::{
    read_frame, write_frame, AgentInfo, ErrorCode, ExecSpec, Frame, ProtocolError, Request,
    Response, StdinMode, MAX_CHUNK, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("Agent protocol error")]
    Protocol(#[from] ProtocolError),
    #[error("Cannot connect to the vsock socket {path}")]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("Hybrid vsock handshake failed: {0}")]
    Handshake(String),
    #[error("The agent refused the request ({code:?}): {message}")]
    Agent { code: ErrorCode, message: String },
    #[error("Unexpected reply from the agent: {0}")]
    Unexpected(String),
    #[error("The agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{what} needs agent protocol version {need}, but the agent only speaks {agreed}")]
    Unsupported {
        what: &'static str,
        need: u32,
        agreed: u32,
    },
}

/// One event of a streaming exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// The collected result of an exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub pid: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Exit code, when the process exited.
    pub code: Option<i32>,
    /// The signal that killed the process, when one did.
    pub signal: Option<i32>,
}

/// A connection to the agent, after version negotiation.
pub struct Client<S: Read + Write> {
    stream: S,
    version: u32,
    agent: String,
}

fn unexpected(r: Response) -> ClientError {
    match r {
        Response::Error { code, message } => ClientError::Agent { code, message },
        other => ClientError::Unexpected(format!("{other:?}")),
    }
}

impl<S: Read + Write> Client<S> {
    /// Greets the agent on `stream` and agrees on a protocol version (the highest both speak,
    /// up to [`PROTOCOL_VERSION`]).
    pub fn new(stream: S) -> Result<Self, ClientError> {
        Self::with_max_version(stream, PROTOCOL_VERSION)
    }

    /// Like [`Client::new`], offering at most `max_version` (a v1 client: 1).
    pub fn with_max_version(mut stream: S, max_version: u32) -> Result<Self, ClientError> {
        let hello = Request::Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version,
            client: format!("tartarus guest-init client {}", env!("CARGO_PKG_VERSION")),
        };
        write_frame(&mut stream, &hello, &[])?;
        match read_frame::<Response, _>(&mut stream)?.msg {
            Response::Hello { version, agent, .. } => Ok(Client {
                stream,
                version,
                agent,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The agent's name and version, from its hello.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// The underlying stream.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Fails with [`ClientError::Unsupported`] unless the agreed version has `req`.
    fn require(&self, req: &Request) -> Result<(), ClientError> {
        let need = req.min_version();
        if need > self.version {
            let what = match req {
                Request::Exec(_) => "a tty exec",
                other => other.kind(),
            };
            return Err(ClientError::Unsupported {
                what,
                need,
                agreed: self.version,
            });
        }
        Ok(())
    }

    fn call(&mut self, req: &Request, payload: &[u8]) -> Result<Frame<Response>, ClientError> {
        write_frame(&mut self.stream, req, payload)?;
        Ok(read_frame(&mut self.stream)?)
    }

    pub fn ping(&mut self) -> Result<(), ClientError> {
        match self.call(&Request::Ping, &[])?.msg {
            Response::Pong => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub fn info(&mut self) -> Result<AgentInfo, ClientError> {
        match self.call(&Request::Info, &[])?.msg {
            Response::Info(info) => Ok(info),
            other => Err(unexpected(other)),
        }
    }

    /// Starts `spec`; `stdin` is the exec frame's payload (see [`StdinMode`]). A tty spec
    /// ([`ExecSpec::with_tty`], version 2) always streams stdin; its output comes as stdout.
    pub fn start_exec(
        &mut self,
        spec: &ExecSpec,
        stdin: &[u8],
    ) -> Result<ExecStream<'_, S>, ClientError> {
        let req = Request::Exec(spec.clone());
        self.require(&req)?;
        match self.call(&req, stdin)?.msg {
            Response::Started { pid } => Ok(ExecStream {
                client: self,
                pid,
                done: false,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Runs `argv` with stdin from /dev/null and collects its output.
    pub fn exec<I, A>(&mut self, argv: I) -> Result<ExecOutput, ClientError>
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        self.start_exec(&ExecSpec::new(argv), &[])?.collect()
    }

    /// Runs `spec` with all of `stdin` and collects its output.
    pub fn exec_with_input(
        &mut self,
        spec: &ExecSpec,
        stdin: &[u8],
    ) -> Result<ExecOutput, ClientError> {
        let mut spec = spec.clone();
        spec.stdin = StdinMode::Data;
        self.start_exec(&spec, stdin)?.collect()
    }

    /// Sends `signal` to a process an exec started (possibly on another connection).
    pub fn signal(&mut self, pid: i32, signal: i32) -> Result<(), ClientError> {
        match self
            .call(
                &Request::Signal {
                    pid: Some(pid),
                    signal,
                },
                &[],
            )?
            .msg
        {
            Response::Ok { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Writes `data` to `path` (replacing it), in frames of at most [`MAX_CHUNK`] bytes.
    pub fn write_file(
        &mut self,
        path: &str,
        data: &[u8],
        mode: Option<u32>,
    ) -> Result<(), ClientError> {
        let mut chunks = data.chunks(MAX_CHUNK);
        let first = chunks.next().unwrap_or(&[]);
        let req = Request::WriteFile {
            path: path.into(),
            mode,
            append: false,
            create_dirs: true,
        };
        self.expect_ok(&req, first)?;
        for chunk in chunks {
            let req = Request::WriteFile {
                path: path.into(),
                mode,
                append: true,
                create_dirs: false,
            };
            self.expect_ok(&req, chunk)?;
        }
        Ok(())
    }

    /// Port forwarding (version 2): the agent connects to 127.0.0.1:`port` in the guest, and
    /// the stream returned is a raw byte pipe to that socket (no more frames). A refused
    /// connection is [`ClientError::Agent`] with [`ErrorCode::NotFound`]; the client stays
    /// usable then only through a new connection, since this call consumes it.
    pub fn connect_port(mut self, port: u16) -> Result<S, ClientError> {
        self.expect_ok(&Request::Connect { port }, &[])?;
        Ok(self.stream)
    }

    /// Like [`Client::connect_port`], but on failure the client comes back, still usable.
    pub fn try_connect_port(mut self, port: u16) -> Result<S, (Self, ClientError)> {
        match self.expect_ok(&Request::Connect { port }, &[]) {
            Ok(()) => Ok(self.stream),
            Err(e) => Err((self, e)),
        }
    }

    /// Asks tartarus-init to stop every process (SIGTERM, up to `grace_ms`, SIGKILL), sync and
    /// power off (version 2). Returns once the agent acknowledged; the VM ends soon after.
    pub fn shutdown(&mut self, grace_ms: u32) -> Result<(), ClientError> {
        let req = Request::Shutdown {
            grace_ms: Some(grace_ms),
        };
        self.expect_ok(&req, &[])
    }

    fn expect_ok(&mut self, req: &Request, payload: &[u8]) -> Result<(), ClientError> {
        self.require(req)?;
        match self.call(req, payload)?.msg {
            Response::Ok { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Reads all of `path`, in ranges of at most [`MAX_CHUNK`] bytes.
    pub fn read_file(&mut self, path: &str) -> Result<Vec<u8>, ClientError> {
        let mut data = Vec::new();
        loop {
            let req = Request::ReadFile {
                path: path.into(),
                offset: data.len() as u64,
                max_len: None,
            };
            let frame = self.call(&req, &[])?;
            match frame.msg {
                Response::FileData { size, .. } => {
                    let empty = frame.payload.is_empty();
                    data.extend_from_slice(&frame.payload);
                    if empty || data.len() as u64 >= size {
                        return Ok(data);
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
    }
}

/// A running exec: read its events, feed stdin, send signals.
pub struct ExecStream<'a, S: Read + Write> {
    client: &'a mut Client<S>,
    pid: i32,
    done: bool,
}

impl<S: Read + Write> ExecStream<'_, S> {
    /// The process id in the guest.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The next output chunk or the exit; None after the exit.
    pub fn next_event(&mut self) -> Result<Option<ExecEvent>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let frame = read_frame::<Response, _>(&mut self.client.stream)?;
        Ok(Some(match frame.msg {
            Response::Stdout => ExecEvent::Stdout(frame.payload),
            Response::Stderr => ExecEvent::Stderr(frame.payload),
            Response::Exit { code, signal } => {
                self.done = true;
                ExecEvent::Exit { code, signal }
            }
            other => return Err(unexpected(other)),
        }))
    }

    /// Sends more stdin (StdinMode::Stream); `eof` closes it.
    pub fn send_stdin(&mut self, data: &[u8], eof: bool) -> Result<(), ClientError> {
        write_frame(&mut self.client.stream, &Request::Stdin { eof }, data)?;
        Ok(())
    }

    /// New window size of a tty exec (version 2; the process gets SIGWINCH). Ignored by the
    /// agent for an exec without a terminal.
    pub fn resize(&mut self, rows: u16, cols: u16) -> Result<(), ClientError> {
        let req = Request::Resize { rows, cols };
        self.client.require(&req)?;
        write_frame(&mut self.client.stream, &req, &[])?;
        Ok(())
    }

    /// Sends `signal` to the process.
    pub fn send_signal(&mut self, signal: i32) -> Result<(), ClientError> {
        write_frame(
            &mut self.client.stream,
            &Request::Signal { pid: None, signal },
            &[],
        )?;
        Ok(())
    }

    /// Reads the remaining events and returns everything collected.
    pub fn collect(mut self) -> Result<ExecOutput, ClientError> {
        let mut out = ExecOutput {
            pid: self.pid,
            ..Default::default()
        };
        while let Some(ev) = self.next_event()? {
            match ev {
                ExecEvent::Stdout(d) => out.stdout.extend_from_slice(&d),
                ExecEvent::Stderr(d) => out.stderr.extend_from_slice(&d),
                ExecEvent::Exit { code, signal } => {
                    out.code = code;
                    out.signal = signal;
                }
            }
        }
        Ok(out)
    }
}

/// Connects to a guest vsock port through a VMM's hybrid vsock Unix socket (Firecracker's
/// scheme): connect to `uds_path`, send `CONNECT <port>\n`, expect `OK <host_port>\n`.
pub fn connect_hybrid_vsock(uds_path: &Path, port: u32) -> Result<UnixStream, ClientError> {
    let connect_err = |source| ClientError::Connect {
        path: uds_path.display().to_string(),
        source,
    };
    let mut stream = UnixStream::connect(uds_path).map_err(connect_err)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| ClientError::Handshake(format!("cannot send CONNECT: {e}")))?;
    // Read the answer byte by byte: what follows the newline already belongs to the agent.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 64 {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => {
                let text = String::from_utf8_lossy(&line).into_owned();
                return match text.strip_prefix("OK ") {
                    Some(p) if p.trim().parse::<u32>().is_ok() => Ok(stream),
                    _ => Err(ClientError::Handshake(format!(
                        "unexpected answer '{text}'"
                    ))),
                };
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(ClientError::Handshake(format!(
                    "cannot read the answer: {e}"
                )))
            }
        }
    }
    Err(ClientError::Handshake(format!(
        "connection closed or answer too long after '{}'",
        String::from_utf8_lossy(&line)
    )))
}

/// Retries [`connect_hybrid_vsock`] and the hello until the agent answers or `timeout` passes.
pub fn wait_for_agent(
    uds_path: &Path,
    port: u32,
    timeout: Duration,
) -> Result<Client<UnixStream>, ClientError> {
    let start = Instant::now();
    loop {
        let attempt = connect_hybrid_vsock(uds_path, port).and_then(Client::new);
        match attempt {
            Ok(c) => return Ok(c),
            Err(_) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(100)),
            Err(_) => return Err(ClientError::Timeout(timeout)),
        }
    }
}

/// Reads a `CONNECT <port>` line like a hybrid vsock device does (for tests of the handshake).
pub fn read_connect_line<R: BufRead>(r: &mut R) -> io::Result<Option<u32>> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    Ok(line
        .trim_end()
        .strip_prefix("CONNECT ")
        .and_then(|p| p.parse().ok()))
}
