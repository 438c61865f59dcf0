//! The HTTP/1.1 server on a Unix socket.
//!
//! One thread serves every client: a `poll(2)` loop over the listener and all open connections,
//! all non-blocking, each connection with its own read and write buffers. Request heads are
//! parsed by `httparse`; bodies are framed by `Content-Length` only (chunked bodies are refused).
//! A complete request is routed with [`router::parse_request`]; a routing error is answered here
//! with a 400, anything else goes to the VMM thread over a channel (waking it through an
//! `EventFd`) and the thread blocks until the VMM answers. Requests are therefore applied one at
//! a time, in the order they complete, while a slow or silent client never holds up the others.
//!
//! Any fault in a request's framing (malformed head, oversized head or body, unsupported
//! encoding) is answered with a 400 carrying `Connection: close`, after which the connection is
//! closed: its byte stream can no longer be trusted to start on a request boundary.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::models::{VmmAction, VmmResponse};
use crate::router;

/// Largest request head (request line and headers) accepted, in bytes.
pub const MAX_HEADER_SIZE: usize = 8 * 1024;
/// Most connections open at once; further clients get a 503 and are disconnected.
pub const MAX_CONNECTIONS: usize = 64;
/// Firecracker's default body limit, a sensible `max_payload` for [`ApiServer::bind`].
pub const DEFAULT_MAX_PAYLOAD: usize = 51_200;

/// Most header lines in one request.
const MAX_HEADERS: usize = 64;
/// Bytes read from a connection per readiness event.
const READ_CHUNK: usize = 16 * 1024;
/// How long the unread body of a refused request is drained before the connection is dropped.
const LINGER: Duration = Duration::from_secs(2);
/// How long to stop accepting after `accept` fails for lack of resources (e.g. `EMFILE`).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Errors of the API server.
#[derive(thiserror::Error, Debug)]
pub enum ServerError {
    #[error("API socket path {0} already exists")]
    SocketExists(PathBuf),
    #[error("Cannot bind the API socket at {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot configure the API socket")]
    Configure(#[source] io::Error),
    #[error("Cannot poll the API socket and its connections")]
    Poll(#[source] io::Error),
    #[error("Cannot wake the VMM thread")]
    Wake(#[source] io::Error),
}

/// The API server: a bound, listening Unix socket.
///
/// Dropping it (including when [`ApiServer::run`] returns) removes the socket file, if the path
/// still names the socket this server created, unless [`ApiServer::take_socket_file`] handed
/// that job to another thread.
#[derive(Debug)]
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    /// Removes the socket file on drop, while this server owns that job.
    socket_file: Option<SocketFile>,
    max_payload: usize,
}

/// The API socket's file: dropping it removes the file if the path still names the socket the
/// server created (same device and inode), so a newer socket at the same path survives.
///
/// Removing needs `statx` and `unlink`, which the api thread's seccomp filter does not allow:
/// the VMM thread holds this and drops it at exit.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    file_id: Option<(u64, u64)>,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let current = self
            .path
            .symlink_metadata()
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if current.is_some() && current == self.file_id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl ApiServer {
    /// Binds the socket. Fails with a clear error if the path already exists or cannot be bound.
    pub fn bind(path: &Path, max_payload: usize) -> Result<ApiServer, ServerError> {
        if path.symlink_metadata().is_ok() {
            return Err(ServerError::SocketExists(path.to_path_buf()));
        }
        let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        let file_id = path.symlink_metadata().ok().map(|m| (m.dev(), m.ino()));
        let server = ApiServer {
            listener,
            path: path.to_path_buf(),
            socket_file: Some(SocketFile {
                path: path.to_path_buf(),
                file_id,
            }),
            max_payload,
        };
        server
            .listener
            .set_nonblocking(true)
            .map_err(ServerError::Configure)?;
        Ok(server)
    }

    /// The path the server is bound to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands the removal of the socket file to the caller: the server's own drop (on the api
    /// thread, when the VMM thread is gone) then makes no file-system calls.
    pub fn take_socket_file(&mut self) -> Option<SocketFile> {
        self.socket_file.take()
    }

    /// Serves until the process exits. For each request: route it with router::parse_request;
    /// on Err write 400 {"fault_message": ...} itself; on Ok send the VmmAction on `to_vmm`,
    /// call `wake.write(1)`, block on `from_vmm.recv()` and write the response.
    /// If the channel is closed (VMM thread gone), return Ok(()).
    pub fn run(
        self,
        to_vmm: Sender<VmmAction>,
        from_vmm: Receiver<VmmResponse>,
        wake: EventFd,
    ) -> Result<(), ServerError> {
        let vmm = VmmLink {
            to_vmm,
            from_vmm,
            wake,
        };
        match self.serve(&vmm) {
            Err(Halt::VmmGone) => Ok(()),
            Err(Halt::Fatal(e)) => Err(e),
        }
    }

    fn serve(&self, vmm: &VmmLink) -> Result<std::convert::Infallible, Halt> {
        let mut conns: Vec<Connection> = Vec::new();
        let mut accept_paused_until: Option<Instant> = None;
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(MAX_CONNECTIONS + 1);
        loop {
            let now = Instant::now();
            if accept_paused_until.is_some_and(|t| now >= t) {
                accept_paused_until = None;
            }
            fds.clear();
            fds.push(libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: if accept_paused_until.is_none() {
                    libc::POLLIN
                } else {
                    0
                },
                revents: 0,
            });
            fds.extend(conns.iter().map(|c| libc::pollfd {
                fd: c.fd(),
                events: c.interest(),
                revents: 0,
            }));
            let deadline = conns
                .iter()
                .filter_map(|c| c.linger_until)
                .chain(accept_paused_until)
                .min();
            let timeout = match deadline {
                None => -1,
                Some(t) => {
                    let ms = t.saturating_duration_since(now).as_millis() + 1;
                    i32::try_from(ms).unwrap_or(i32::MAX)
                }
            };
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Halt::Fatal(ServerError::Poll(e))),
            }

            for (conn, pfd) in conns.iter_mut().zip(&fds[1..]) {
                if pfd.revents != 0 {
                    conn.on_ready(pfd.revents, vmm, self.max_payload)?;
                }
            }
            let now = Instant::now();
            conns.retain(|c| !c.is_done(now));

            if fds[0].revents != 0 {
                self.accept_all(&mut conns, &mut accept_paused_until);
            }
        }
    }

    /// Accepts every pending client, refusing those beyond [`MAX_CONNECTIONS`].
    fn accept_all(&self, conns: &mut Vec<Connection>, paused_until: &mut Option<Instant>) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if conns.len() >= MAX_CONNECTIONS {
                        turn_away(stream);
                    } else if stream.set_nonblocking(true).is_ok() {
                        conns.push(Connection::new(stream));
                    }
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => return,
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
                    // Out of descriptors or memory: back off instead of spinning on a listener
                    // that stays readable.
                    _ => {
                        *paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                        return;
                    }
                },
            }
        }
    }
}

/// Why the serving loop stopped.
enum Halt {
    /// The VMM side of a channel is gone: a normal shutdown.
    VmmGone,
    Fatal(ServerError),
}

/// The API thread's end of the VMM channels.
struct VmmLink {
    to_vmm: Sender<VmmAction>,
    from_vmm: Receiver<VmmResponse>,
    wake: EventFd,
}

impl VmmLink {
    fn call(&self, action: VmmAction) -> Result<VmmResponse, Halt> {
        self.to_vmm.send(action).map_err(|_| Halt::VmmGone)?;
        self.wake
            .write(1)
            .map_err(|e| Halt::Fatal(ServerError::Wake(e)))?;
        self.from_vmm.recv().map_err(|_| Halt::VmmGone)
    }
}

/// The parsed head of a request whose body may still be arriving.
#[derive(Debug)]
struct Head {
    method: String,
    path: String,
    header_len: usize,
    body_len: usize,
    keep_alive: bool,
    expect_continue: bool,
    continue_sent: bool,
}

/// Outcome of parsing the start of a connection's read buffer.
#[derive(Debug)]
enum Parsed {
    /// More bytes are needed.
    Partial,
    /// The head is complete.
    Head(Head),
    /// The request cannot be served: answer with this status and message, then close.
    Refused(u16, String),
}

/// One client connection.
struct Connection {
    stream: UnixStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    /// Head of the request being received, once complete.
    head: Option<Head>,
    /// The client sent EOF.
    eof: bool,
    /// No further requests are served: close once `wbuf` is flushed.
    closing: bool,
    /// Our write side is shut down (after the final response).
    shut: bool,
    /// Bytes of a refused body still to read and drop before closing.
    discard: u64,
    /// While draining a refused body: when to give up and close.
    linger_until: Option<Instant>,
    dead: bool,
}

impl Connection {
    fn new(stream: UnixStream) -> Self {
        Connection {
            stream,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            head: None,
            eof: false,
            closing: false,
            shut: false,
            discard: 0,
            linger_until: None,
            dead: false,
        }
    }

    fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    fn has_output(&self) -> bool {
        self.wpos < self.wbuf.len()
    }

    /// The poll events this connection waits for.
    fn interest(&self) -> libc::c_short {
        if self.dead {
            0
        } else if self.has_output() {
            // Reading waits until the client has taken its responses, which bounds our buffers.
            libc::POLLOUT
        } else if self.linger_until.is_some() || (!self.closing && !self.eof) {
            libc::POLLIN
        } else {
            0
        }
    }

    fn is_done(&self, now: Instant) -> bool {
        self.dead || self.linger_until.is_some_and(|t| now >= t)
    }

    fn on_ready(
        &mut self,
        revents: libc::c_short,
        vmm: &VmmLink,
        max_payload: usize,
    ) -> Result<(), Halt> {
        if self.has_output() {
            self.flush();
        } else if self.linger_until.is_some() {
            self.drain();
            return Ok(());
        } else if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            self.read();
        }
        self.advance(vmm, max_payload)
    }

    /// Reads what is available (at most one chunk) into the read buffer.
    fn read(&mut self) {
        let old = self.rbuf.len();
        self.rbuf.resize(old + READ_CHUNK, 0);
        let result = self.stream.read(&mut self.rbuf[old..]);
        self.rbuf.truncate(old + *result.as_ref().unwrap_or(&0));
        match result {
            Ok(0) => self.eof = true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => self.dead = true,
        }
    }

    /// Reads and drops the body of a refused request, so that a client still sending it does
    /// not fail with a broken pipe before reading our answer.
    fn drain(&mut self) {
        let mut scratch = [0u8; READ_CHUNK];
        let want = usize::try_from(self.discard)
            .unwrap_or(usize::MAX)
            .min(scratch.len());
        match self.stream.read(&mut scratch[..want]) {
            Ok(0) => self.dead = true,
            Ok(n) => {
                self.discard = self.discard.saturating_sub(n as u64);
                if self.discard == 0 {
                    self.dead = true;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => self.dead = true,
        }
    }

    /// Writes as much of the write buffer as the socket takes.
    fn flush(&mut self) {
        while self.has_output() {
            match send(self.fd(), &self.wbuf[self.wpos..]) {
                Ok(0) => {
                    self.dead = true;
                    return;
                }
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
    }

    /// Serves the complete requests in the read buffer, as long as their answers can be written.
    fn advance(&mut self, vmm: &VmmLink, max_payload: usize) -> Result<(), Halt> {
        while !self.dead && !self.closing && !self.has_output() {
            if !self.step(vmm, max_payload)? {
                break;
            }
            self.flush();
        }
        if self.dead || self.has_output() {
            return Ok(());
        }
        if self.closing && !self.shut {
            // The final answer is out: the client sees EOF after it.
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            self.shut = true;
            if self.discard > 0 && !self.eof {
                self.linger_until = Some(Instant::now() + LINGER);
            } else {
                self.dead = true;
            }
        } else if !self.closing && self.eof {
            // The client is gone; an incomplete request dies with it.
            self.dead = true;
        }
        Ok(())
    }

    /// Takes one step on the request at the front of the read buffer. Returns whether it queued
    /// output (an answer or a `100 Continue`); `false` means more input is needed.
    fn step(&mut self, vmm: &VmmLink, max_payload: usize) -> Result<bool, Halt> {
        if self.head.is_none() {
            match parse_head(&self.rbuf) {
                Parsed::Partial if self.rbuf.len() > MAX_HEADER_SIZE => {
                    self.refuse(400, header_too_large());
                    return Ok(true);
                }
                Parsed::Partial => return Ok(false),
                Parsed::Refused(status, msg) => {
                    self.refuse(status, msg);
                    return Ok(true);
                }
                Parsed::Head(head) if head.body_len > max_payload => {
                    let received = self.rbuf.len() - head.header_len;
                    // A client waiting for 100 Continue should not send the body at all; it
                    // reads our answer and hangs up, which ends the drain early.
                    self.discard = (head.body_len as u64).saturating_sub(received as u64);
                    self.refuse(
                        400,
                        format!(
                            "Request payload with size {} is larger than the limit of {} \
                             allowed by server.",
                            head.body_len, max_payload
                        ),
                    );
                    return Ok(true);
                }
                Parsed::Head(head) => self.head = Some(head),
            }
        }
        let Some(head) = self.head.as_mut() else {
            return Ok(false);
        };
        let end = head.header_len + head.body_len;
        if self.rbuf.len() < end {
            if head.expect_continue && !head.continue_sent {
                head.continue_sent = true;
                self.wbuf
                    .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                return Ok(true);
            }
            return Ok(false);
        }
        let Some(head) = self.head.take() else {
            return Ok(false);
        };
        let body = &self.rbuf[head.header_len..end];
        let response = match router::parse_request(&head.method, &head.path, body) {
            Ok(action) => vmm.call(action)?,
            Err(msg) => VmmResponse::bad_request(msg),
        };
        self.rbuf.drain(..end);
        if !head.keep_alive {
            self.closing = true;
        }
        write_response(&mut self.wbuf, &response, !head.keep_alive);
        Ok(true)
    }

    /// Queues a final error answer; the connection closes once it is written.
    fn refuse(&mut self, status: u16, msg: String) {
        self.rbuf = Vec::new();
        self.head = None;
        self.closing = true;
        write_response(&mut self.wbuf, &VmmResponse::Error(status, msg), true);
    }
}

fn header_too_large() -> String {
    format!("Request headers are larger than the limit of {MAX_HEADER_SIZE} bytes.")
}

/// Parses a request head at the start of `buf`.
fn parse_head(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let header_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Refused(
                400,
                format!("Too many headers: at most {MAX_HEADERS} are allowed."),
            )
        }
        Err(e) => return Parsed::Refused(400, format!("Invalid HTTP request: {e}.")),
    };
    if header_len > MAX_HEADER_SIZE {
        return Parsed::Refused(400, header_too_large());
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Refused(400, "Invalid HTTP request: incomplete request line.".into());
    };

    let mut content_length: Option<u64> = None;
    let mut saw_close = false;
    let mut saw_keep_alive = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let Some(len) = parse_content_length(h.value) else {
                return Parsed::Refused(400, "Invalid Content-Length header.".into());
            };
            if content_length.is_some_and(|l| l != len) {
                return Parsed::Refused(400, "Conflicting Content-Length headers.".into());
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Refused(
                400,
                "Transfer-Encoding is not supported (chunked bodies are refused): send the body \
                 with a Content-Length header."
                    .into(),
            );
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                saw_close |= token.eq_ignore_ascii_case(b"close");
                saw_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Parsed::Refused(
                    417,
                    "Unsupported Expect header: only 100-continue is supported.".into(),
                );
            }
        }
    }

    let body_len = match content_length {
        Some(len) => len,
        // Without a length we cannot tell where a body would end and the next request begin.
        None if method == "PUT" || method == "PATCH" => {
            return Parsed::Refused(
                400,
                format!("Missing Content-Length header: a {method} request must send one."),
            )
        }
        None => 0,
    };
    Parsed::Head(Head {
        method: method.to_string(),
        path: path.to_string(),
        header_len,
        // A length beyond the address space is certainly beyond `max_payload`.
        body_len: usize::try_from(body_len).unwrap_or(usize::MAX),
        keep_alive: !saw_close && (version == 1 || saw_keep_alive),
        expect_continue,
        continue_sent: false,
    })
}

/// Parses a Content-Length value: ASCII digits only, saturating at `u64::MAX`.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |acc, &d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// The reason phrase of the status codes this server sends.
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        417 => "Expectation Failed",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Appends the HTTP encoding of `response` to `out`.
///
/// An `Error` whose status is not a 4xx or 5xx code is sent as a 500, so that a VMM bug cannot
/// produce a malformed response.
fn write_response(out: &mut Vec<u8>, response: &VmmResponse, close: bool) {
    let (status, body) = match response {
        VmmResponse::Empty => (204, None),
        VmmResponse::Json(value) => match serde_json::to_vec(value) {
            Ok(body) => (200, Some(body)),
            Err(e) => (
                500,
                Some(fault_body(&format!("Cannot encode the response: {e}"))),
            ),
        },
        VmmResponse::Error(status, msg) => {
            let status = if (400..=599).contains(status) {
                *status
            } else {
                500
            };
            (status, Some(fault_body(msg)))
        }
    };
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status} {}\r\nServer: Tartarus API\r\n",
            reason(status)
        )
        .as_bytes(),
    );
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    match body {
        Some(body) => {
            out.extend_from_slice(
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(&body);
        }
        None => out.extend_from_slice(b"\r\n"),
    }
}

/// `{"fault_message": msg}`, JSON-escaped.
fn fault_body(msg: &str) -> Vec<u8> {
    serde_json::json!({ "fault_message": msg })
        .to_string()
        .into_bytes()
}

/// Answers a client beyond the connection limit with a 503 and drops it.
fn turn_away(stream: UnixStream) {
    let mut out = Vec::new();
    write_response(
        &mut out,
        &VmmResponse::Error(
            503,
            format!("Too many open connections: the server allows {MAX_CONNECTIONS} at a time."),
        ),
        true,
    );
    // A fresh socket has an empty send buffer, so this small answer fits; if it does not, the
    // client only misses the explanation.
    let _ = send(stream.as_raw_fd(), &out);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// `send(2)` without blocking and without raising `SIGPIPE` when the peer is gone.
fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live, initialised slice for the whole call and its exact length is
    // passed, so the kernel reads only within it; `fd` is an open socket borrowed from a
    // `UnixStream` the caller owns. The call keeps no reference after it returns.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `poll(2)` over `fds`; `timeout` in milliseconds, -1 for none.
fn poll(fds: &mut [libc::pollfd], timeout: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a live, exclusively borrowed slice of `pollfd` and its exact length is
    // passed, so the kernel reads and writes (`revents`) only within it, and only during the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
