//! The agent protocol: framing and message types (spec: guest-init/README.md).
//!
//! A frame is a 4-byte big-endian length `N` followed by `N` bytes: a 4-byte big-endian header
//! length `H`, `H` bytes of JSON header (an object with a `"type"` tag), and `N - 4 - H` bytes of
//! raw payload (stdin/stdout/stderr data, file contents; empty for most messages).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The newest protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest protocol version this crate speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// Largest frame (header + payload) either side accepts: 16 MiB.
pub const MAX_FRAME: usize = 16 << 20;
/// Largest payload a single data frame carries; bigger data is split into several frames.
pub const MAX_CHUNK: usize = 1 << 20;

/// Errors of framing and message decoding.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("I/O error on the agent stream")]
    Io(#[from] io::Error),
    #[error("The peer closed the stream")]
    Closed,
    #[error("Frame of {0} bytes exceeds the limit of {MAX_FRAME} bytes")]
    TooLarge(usize),
    #[error("Frame of {0} bytes is too short for its header")]
    Truncated(usize),
    #[error("Bad message header")]
    BadHeader(#[source] serde_json::Error),
}

/// How the child's stdin is fed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdinMode {
    /// stdin is /dev/null (the default).
    #[default]
    Null,
    /// The exec frame's payload is all of stdin; it is closed after that.
    Data,
    /// The exec frame's payload is the first chunk; `stdin` frames follow, the last with `eof`.
    Stream,
}

/// An exec request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Program and arguments; the program is looked up in `PATH` when it has no slash.
    pub argv: Vec<String>,
    /// Variables to set (on top of the agent's environment unless `clear_env`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Start from an empty environment.
    #[serde(default)]
    pub clear_env: bool,
    /// Working directory (default: the agent's, `/`).
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub stdin: StdinMode,
    /// Run as this user (`name`, `uid`, `name:group`, `uid:gid`, resolved in the guest);
    /// absent: the agent's (root). Left out of the JSON when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Version 2: run the process on a new pseudo-terminal (stdin always streams; its output
    /// comes as `stdout` frames). Left out of the JSON when false, so v1 frames are unchanged.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tty: bool,
    /// Version 2, with `tty`: the terminal's initial rows (0: unset).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rows: u16,
    /// Version 2, with `tty`: the terminal's initial columns (0: unset).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cols: u16,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

impl ExecSpec {
    /// A spec that runs `argv` with the defaults.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecSpec {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }

    /// This spec on a pseudo-terminal of `rows` x `cols` (stdin streams).
    pub fn with_tty(mut self, rows: u16, cols: u16) -> Self {
        self.tty = true;
        self.rows = rows;
        self.cols = cols;
        self.stdin = StdinMode::Stream;
        self
    }
}

/// The stop sequence's default grace period for `shutdown` without `grace_ms`.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u32 = 3000;

/// Messages from the client to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Must be the first frame: the client's version range.
    Hello {
        min_version: u32,
        max_version: u32,
        #[serde(default)]
        client: String,
    },
    Ping,
    Info,
    /// Payload: stdin data (see [`StdinMode`]).
    Exec(ExecSpec),
    /// More stdin for the running exec of this connection (payload); `eof` closes it.
    Stdin {
        #[serde(default)]
        eof: bool,
    },
    /// Send `signal` to `pid` (any process an exec of this agent started), or, without `pid`,
    /// to the running exec of this connection.
    Signal {
        #[serde(default)]
        pid: Option<i32>,
        signal: i32,
    },
    /// Payload: the file's new contents (or the bytes to append).
    WriteFile {
        path: String,
        #[serde(default)]
        mode: Option<u32>,
        #[serde(default)]
        append: bool,
        #[serde(default)]
        create_dirs: bool,
    },
    /// Read up to `max_len` bytes (default and cap: [`MAX_CHUNK`]) from `offset`.
    ReadFile {
        path: String,
        #[serde(default)]
        offset: u64,
        #[serde(default)]
        max_len: Option<u64>,
    },
    /// Version 2: new window size of the running tty exec of this connection. No answer.
    Resize {
        rows: u16,
        cols: u16,
    },
    /// Version 2: connect to 127.0.0.1:`port` in the guest; after `ok` the connection is a raw
    /// byte pipe to that TCP socket.
    Connect {
        port: u16,
    },
    /// Version 2: stop every process (SIGTERM, `grace_ms`, SIGKILL), sync and power off; `ok`
    /// comes first.
    Shutdown {
        #[serde(default)]
        grace_ms: Option<u32>,
    },
}

impl Request {
    /// The message's `type` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Ping => "ping",
            Request::Info => "info",
            Request::Exec(_) => "exec",
            Request::Stdin { .. } => "stdin",
            Request::Signal { .. } => "signal",
            Request::WriteFile { .. } => "write_file",
            Request::ReadFile { .. } => "read_file",
            Request::Resize { .. } => "resize",
            Request::Connect { .. } => "connect",
            Request::Shutdown { .. } => "shutdown",
        }
    }

    /// The lowest protocol version in which this request (with these fields) exists.
    pub fn min_version(&self) -> u32 {
        match self {
            Request::Exec(spec) if spec.tty => 2,
            Request::Resize { .. } | Request::Connect { .. } | Request::Shutdown { .. } => 2,
            _ => 1,
        }
    }
}

/// What went wrong, for a program to act on (`error` frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Bad framing, unknown message type, bad JSON, or a message out of order; the agent closes.
    Protocol,
    /// No common protocol version; the agent closes.
    UnsupportedVersion,
    /// A well-formed request with bad arguments (empty argv, ...).
    BadRequest,
    NotFound,
    PermissionDenied,
    /// No such process among this agent's execs.
    NoSuchProcess,
    /// Any other failure; see the message.
    Failed,
}

/// Messages from the agent to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Hello {
        version: u32,
        min_version: u32,
        max_version: u32,
        agent: String,
    },
    Pong,
    Info(AgentInfo),
    /// The exec's process started.
    Started {
        pid: i32,
    },
    /// Payload: a chunk of the process's stdout.
    Stdout,
    /// Payload: a chunk of the process's stderr.
    Stderr,
    /// The process ended: `code` when it exited, `signal` when a signal killed it.
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// A request without data in its answer succeeded (write_file: `bytes` written).
    Ok {
        #[serde(default)]
        bytes: u64,
    },
    /// Payload: file data from `offset`; `size` is the file's whole size.
    FileData {
        offset: u64,
        size: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// What `info` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub agent: String,
    pub protocol_version: u32,
    pub hostname: String,
    pub kernel: String,
    pub uptime_ms: u64,
    pub pid: u32,
}

/// A decoded frame: a message and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<M> {
    pub msg: M,
    pub payload: Vec<u8>,
}

/// Writes one frame.
pub fn write_frame<M: Serialize, W: Write + ?Sized>(
    w: &mut W,
    msg: &M,
    payload: &[u8],
) -> Result<(), ProtocolError> {
    let header = serde_json::to_vec(msg).map_err(ProtocolError::BadHeader)?;
    let total = 4 + header.len() + payload.len();
    if total > MAX_FRAME {
        return Err(ProtocolError::TooLarge(total));
    }
    let mut buf = Vec::with_capacity(8 + header.len() + payload.len());
    buf.extend_from_slice(&(total as u32).to_be_bytes());
    buf.extend_from_slice(&(header.len() as u32).to_be_bytes());
    buf.extend_from_slice(&header);
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads the raw parts of one frame: (header JSON, payload). A clean end of stream before the
/// first byte is [`ProtocolError::Closed`]; an oversized length is refused before reading it.
pub fn read_raw_frame<R: Read + ?Sized>(r: &mut R) -> Result<(Vec<u8>, Vec<u8>), ProtocolError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(ProtocolError::Closed),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let total = u32::from_be_bytes(len) as usize;
    if total > MAX_FRAME {
        return Err(ProtocolError::TooLarge(total));
    }
    if total < 4 {
        return Err(ProtocolError::Truncated(total));
    }
    let mut body = vec![0u8; total];
    r.read_exact(&mut body)?;
    let hlen = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
    if hlen > total - 4 {
        return Err(ProtocolError::Truncated(total));
    }
    let payload = body.split_off(4 + hlen);
    body.drain(..4);
    Ok((body, payload))
}

/// Reads and decodes one frame.
pub fn read_frame<M, R>(r: &mut R) -> Result<Frame<M>, ProtocolError>
where
    M: for<'de> Deserialize<'de>,
    R: Read + ?Sized,
{
    let (header, payload) = read_raw_frame(r)?;
    let msg = serde_json::from_slice(&header).map_err(ProtocolError::BadHeader)?;
    Ok(Frame { msg, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<M>(msg: M, payload: &[u8])
    where
        M: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let mut buf = Vec::new();
        write_frame(&mut buf, &msg, payload).unwrap();
        let f: Frame<M> = read_frame(&mut &buf[..]).unwrap();
        assert_eq!(f.msg, msg);
        assert_eq!(f.payload, payload);
    }

    #[test]
    fn every_request_roundtrips() {
        roundtrip(
            Request::Hello {
                min_version: 1,
                max_version: 3,
                client: "t".into(),
            },
            b"",
        );
        roundtrip(Request::Ping, b"");
        roundtrip(Request::Info, b"");
        let mut spec = ExecSpec::new(["sh", "-c", "true"]);
        spec.env.insert("A".into(), "b".into());
        spec.cwd = Some("/tmp".into());
        spec.stdin = StdinMode::Stream;
        roundtrip(Request::Exec(spec), b"input");
        roundtrip(Request::Stdin { eof: true }, b"more");
        roundtrip(
            Request::Signal {
                pid: Some(7),
                signal: 15,
            },
            b"",
        );
        roundtrip(
            Request::WriteFile {
                path: "/a".into(),
                mode: Some(0o600),
                append: true,
                create_dirs: true,
            },
            b"data",
        );
        roundtrip(
            Request::ReadFile {
                path: "/a".into(),
                offset: 3,
                max_len: Some(9),
            },
            b"",
        );
        roundtrip(Request::Exec(ExecSpec::new(["sh"]).with_tty(24, 80)), b"");
        roundtrip(
            Request::Resize {
                rows: 50,
                cols: 132,
            },
            b"",
        );
        roundtrip(Request::Connect { port: 8080 }, b"");
        roundtrip(Request::Shutdown { grace_ms: Some(5) }, b"");
        roundtrip(Request::Shutdown { grace_ms: None }, b"");
    }

    #[test]
    fn v2_fields_are_optional_and_absent_from_v1_frames() {
        // A v1 exec parses with the v2 defaults, and a v1-style spec serialises without them.
        let r: Request = serde_json::from_str(r#"{"type":"exec","argv":["true"]}"#).unwrap();
        let Request::Exec(spec) = &r else {
            panic!("{r:?}")
        };
        assert!(!spec.tty && spec.rows == 0 && spec.cols == 0);
        assert_eq!(r.min_version(), 1);
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains("tty") && !json.contains("rows"), "{json}");
        let r: Request =
            serde_json::from_str(r#"{"type":"exec","argv":["sh"],"tty":true,"rows":24,"cols":80}"#)
                .unwrap();
        assert_eq!(r.min_version(), 2);
        let r: Request = serde_json::from_str(r#"{"type":"shutdown"}"#).unwrap();
        assert_eq!(r, Request::Shutdown { grace_ms: None });
        assert_eq!(r.min_version(), 2);
        let r: Request = serde_json::from_str(r#"{"type":"connect","port":22}"#).unwrap();
        assert_eq!((r.kind(), r.min_version()), ("connect", 2));
        let r: Request = serde_json::from_str(r#"{"type":"resize","rows":1,"cols":2}"#).unwrap();
        assert_eq!(r, Request::Resize { rows: 1, cols: 2 });
    }

    #[test]
    fn every_response_roundtrips() {
        roundtrip(
            Response::Hello {
                version: 1,
                min_version: 1,
                max_version: 1,
                agent: "x".into(),
            },
            b"",
        );
        roundtrip(Response::Pong, b"");
        roundtrip(
            Response::Info(AgentInfo {
                agent: "a".into(),
                protocol_version: 1,
                hostname: "h".into(),
                kernel: "k".into(),
                uptime_ms: 5,
                pid: 1,
            }),
            b"",
        );
        roundtrip(Response::Started { pid: 3 }, b"");
        roundtrip(Response::Stdout, b"out");
        roundtrip(Response::Stderr, b"err");
        roundtrip(
            Response::Exit {
                code: Some(3),
                signal: None,
            },
            b"",
        );
        roundtrip(Response::Ok { bytes: 4 }, b"");
        roundtrip(Response::FileData { offset: 0, size: 4 }, b"abcd");
        roundtrip(
            Response::Error {
                code: ErrorCode::NotFound,
                message: "m".into(),
            },
            b"",
        );
    }

    #[test]
    fn wire_format_is_length_header_json_payload() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Ping, b"xy").unwrap();
        let json = br#"{"type":"ping"}"#;
        let total = (4 + json.len() + 2) as u32;
        let mut want = total.to_be_bytes().to_vec();
        want.extend_from_slice(&(json.len() as u32).to_be_bytes());
        want.extend_from_slice(json);
        want.extend_from_slice(b"xy");
        assert_eq!(buf, want);
    }

    #[test]
    fn bad_frames_are_refused() {
        let big = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(
            read_raw_frame(&mut &big[..]),
            Err(ProtocolError::TooLarge(_))
        ));
        let short = [0, 0, 0, 2, 0, 0];
        assert!(matches!(
            read_raw_frame(&mut &short[..]),
            Err(ProtocolError::Truncated(2))
        ));
        let mut lying = 8u32.to_be_bytes().to_vec();
        lying.extend_from_slice(&100u32.to_be_bytes());
        lying.extend_from_slice(b"abcd");
        assert!(matches!(
            read_raw_frame(&mut &lying[..]),
            Err(ProtocolError::Truncated(8))
        ));
        assert!(matches!(
            read_raw_frame(&mut &[][..]),
            Err(ProtocolError::Closed)
        ));
        let mut buf = Vec::new();
        write_frame(
            &mut buf,
            &serde_json::json!({"type": "launch_missiles"}),
            b"",
        )
        .unwrap();
        assert!(matches!(
            read_frame::<Request, _>(&mut &buf[..]),
            Err(ProtocolError::BadHeader(_))
        ));
        let too_big = vec![0u8; MAX_FRAME];
        assert!(matches!(
            write_frame(&mut Vec::new(), &Response::Stdout, &too_big),
            Err(ProtocolError::TooLarge(_))
        ));
    }
}
