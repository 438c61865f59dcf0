//! A RELP client (the Reliable Event Logging Protocol as rsyslog's librelp speaks it).
//!
//! Frames are `TXNR SP COMMAND SP DATALEN [SP DATA] LF`. The session opens with
//! `1 open` offering `relp_version=0`, `relp_software` and `commands=syslog`, which the server
//! answers with `1 rsp ... 200 OK` and its own offers. Each `syslog` command carries one
//! message and a fresh txnr (1..=999_999_999, then back to 1); the server answers every one
//! with `rsp` and a status code, 200 meaning it took the message. The client may have many
//! commands outstanding (its window). `close` ends the session; the server may instead send
//! `serverclose` (txnr 0) at any time, after which nothing outstanding will be answered.
//!
//! Reading runs in a task of its own that hands complete frames over a channel, so the
//! caller can `select!` on responses while it writes. The session runs over any byte
//! stream: plain TCP ([`RelpClient::connect`]) or TLS ([`RelpClient::open`] on a stream
//! from [`crate::tls::TlsClient::connect`]).

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Highest txnr; the next one is 1.
pub const MAX_TXNR: u64 = 999_999_999;
const MAX_DATALEN: usize = 128 << 20;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum RelpError {
    #[error("RELP connection to {addr} failed")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("RELP connection to {0} timed out")]
    ConnectTimeout(String),
    #[error("RELP I/O error")]
    Io(#[from] std::io::Error),
    #[error("RELP protocol error: {0}")]
    Protocol(String),
    #[error("RELP server refused the session: {0}")]
    OpenRefused(String),
    #[error("RELP server closed the connection")]
    Closed,
    #[error("RELP server sent serverclose")]
    ServerClose,
    #[error("RELP server answered txnr {txnr} with {code} {text}")]
    Refused { txnr: u64, code: u16, text: String },
    #[error("RELP server did not answer within {0:?}")]
    Timeout(Duration),
}

/// A frame from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub txnr: u64,
    pub command: String,
    pub data: Vec<u8>,
}

/// A server's answer to one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub txnr: u64,
    pub code: u16,
    pub text: String,
}

impl Frame {
    /// The `rsp` this frame is, or the error it means (`serverclose`, something unknown).
    pub fn into_response(self) -> Result<Response, RelpError> {
        match self.command.as_str() {
            "rsp" => {
                let data = String::from_utf8_lossy(&self.data);
                let first = data.lines().next().unwrap_or("");
                let (code, text) = first.split_once(' ').unwrap_or((first, ""));
                let code = code.parse().map_err(|_| {
                    RelpError::Protocol(format!("rsp without a status code: {first:?}"))
                })?;
                Ok(Response {
                    txnr: self.txnr,
                    code,
                    text: text.to_string(),
                })
            }
            "serverclose" => Err(RelpError::ServerClose),
            other => Err(RelpError::Protocol(format!("unexpected command {other:?}"))),
        }
    }
}

async fn read_token<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    what: &str,
    max: usize,
) -> Result<(String, u8), RelpError> {
    let mut tok = Vec::new();
    loop {
        let b = match r.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && tok.is_empty() => {
                return Err(RelpError::Closed)
            }
            Err(e) => return Err(e.into()),
        };
        if b == b' ' || b == b'\n' {
            return String::from_utf8(tok)
                .map(|s| (s, b))
                .map_err(|_| RelpError::Protocol(format!("{what} is not text")));
        }
        tok.push(b);
        if tok.len() > max {
            return Err(RelpError::Protocol(format!("{what} too long")));
        }
    }
}

/// Reads one frame.
pub async fn read_frame<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<Frame, RelpError> {
    let (txnr, _) = read_token(r, "txnr", 9).await?;
    let txnr: u64 = txnr
        .parse()
        .map_err(|_| RelpError::Protocol(format!("bad txnr {txnr:?}")))?;
    let (command, _) = read_token(r, "command", 32).await?;
    let (len, sep) = read_token(r, "datalen", 9).await?;
    let len: usize = len
        .parse()
        .map_err(|_| RelpError::Protocol(format!("bad datalen {len:?}")))?;
    if len > MAX_DATALEN {
        return Err(RelpError::Protocol(format!("datalen {len} too large")));
    }
    let mut data = vec![0; len];
    if len > 0 {
        if sep != b' ' {
            return Err(RelpError::Protocol("no space before data".into()));
        }
        r.read_exact(&mut data).await?;
        if r.read_u8().await? != b'\n' {
            return Err(RelpError::Protocol("frame without trailer".into()));
        }
    } else if sep != b'\n' {
        // `DATALEN SP LF` also occurs in the wild for empty data.
        if r.read_u8().await? != b'\n' {
            return Err(RelpError::Protocol("frame without trailer".into()));
        }
    }
    Ok(Frame {
        txnr,
        command,
        data,
    })
}

/// Appends one frame to `out`.
pub fn encode_frame(out: &mut Vec<u8>, txnr: u64, command: &str, data: &[u8]) {
    out.extend_from_slice(format!("{txnr} {command} {}", data.len()).as_bytes());
    if !data.is_empty() {
        out.push(b' ');
        out.extend_from_slice(data);
    }
    out.push(b'\n');
}

/// An open RELP session.
pub struct RelpClient {
    addr: String,
    writer: Box<dyn AsyncWrite + Send + Unpin>,
    frames: mpsc::Receiver<Result<Frame, RelpError>>,
    reader: JoinHandle<()>,
    next_txnr: u64,
    out: Vec<u8>,
}

impl Drop for RelpClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_loop<R: AsyncRead + Unpin>(half: R, tx: mpsc::Sender<Result<Frame, RelpError>>) {
    let mut r = BufReader::with_capacity(64 * 1024, half);
    loop {
        let f = read_frame(&mut r).await;
        let stop = f.is_err();
        if tx.send(f).await.is_err() || stop {
            return;
        }
    }
}

impl RelpClient {
    /// Connects and opens a session offering `commands=syslog`.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<RelpClient, RelpError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| RelpError::ConnectTimeout(addr.to_string()))?
            .map_err(|source| RelpError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        stream.set_nodelay(true)?;
        RelpClient::open(stream, addr, timeout).await
    }

    /// Opens a session over an established stream (TLS, for one) to `addr`.
    pub async fn open<S>(stream: S, addr: &str, timeout: Duration) -> Result<RelpClient, RelpError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rh, writer) = tokio::io::split(stream);
        let (tx, frames) = mpsc::channel(4096);
        let reader = tokio::spawn(read_loop(rh, tx));
        let mut c = RelpClient {
            addr: addr.to_string(),
            writer: Box::new(writer),
            frames,
            reader,
            next_txnr: 1,
            out: Vec::new(),
        };
        let offer = format!(
            "relp_version=0\nrelp_software=tartarus-audit,{},https://github.com/tartarus-vmm/tartarus\ncommands=syslog",
            env!("CARGO_PKG_VERSION")
        );
        let txnr = c.queue("open", offer.as_bytes());
        c.flush().await?;
        let rsp = tokio::time::timeout(timeout, c.recv())
            .await
            .map_err(|_| RelpError::Timeout(timeout))??;
        if rsp.txnr != txnr || rsp.code != 200 {
            return Err(RelpError::OpenRefused(format!("{} {}", rsp.code, rsp.text)));
        }
        Ok(c)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn queue(&mut self, command: &str, data: &[u8]) -> u64 {
        let txnr = self.next_txnr;
        self.next_txnr = if txnr >= MAX_TXNR { 1 } else { txnr + 1 };
        encode_frame(&mut self.out, txnr, command, data);
        txnr
    }

    /// Queues a `syslog` command (sent at the next [`flush`](Self::flush)); returns its txnr.
    pub fn queue_syslog(&mut self, msg: &[u8]) -> u64 {
        self.queue("syslog", msg)
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), RelpError> {
        if !self.out.is_empty() {
            self.writer.write_all(&self.out).await?;
            // TLS holds what it encrypted until flushed.
            self.writer.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// The next response. `serverclose`, a closed connection or a protocol error end the
    /// session (as errors). Cancel-safe.
    pub async fn recv(&mut self) -> Result<Response, RelpError> {
        match self.frames.recv().await {
            Some(f) => f?.into_response(),
            None => Err(RelpError::Closed),
        }
    }

    /// A response already received, if any.
    pub fn try_recv(&mut self) -> Option<Result<Response, RelpError>> {
        match self.frames.try_recv() {
            Ok(f) => Some(f.and_then(Frame::into_response)),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(Err(RelpError::Closed)),
        }
    }

    /// Sends `close` and waits (up to `timeout`) for its answer; responses to earlier
    /// commands that arrive meanwhile are dropped, so call this with nothing outstanding.
    pub async fn close(mut self, timeout: Duration) -> Result<(), RelpError> {
        let txnr = self.queue("close", b"");
        self.flush().await?;
        tokio::time::timeout(timeout, async {
            loop {
                match self.recv().await {
                    Ok(r) if r.txnr == txnr => return Ok(()),
                    Ok(_) => {}
                    Err(RelpError::ServerClose | RelpError::Closed) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .map_err(|_| RelpError::Timeout(timeout))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 5, "rsp", b"200 OK");
        encode_frame(&mut buf, 0, "serverclose", b"");
        encode_frame(&mut buf, 6, "rsp", b"500 no\nmore");
        assert_eq!(
            String::from_utf8_lossy(&buf),
            "5 rsp 6 200 OK\n0 serverclose 0\n6 rsp 11 500 no\nmore\n"
        );
        let mut r = BufReader::new(&buf[..]);
        let f = read_frame(&mut r).await.unwrap();
        assert_eq!(
            f.clone().into_response().unwrap(),
            Response {
                txnr: 5,
                code: 200,
                text: "OK".into()
            }
        );
        let f = read_frame(&mut r).await.unwrap();
        assert!(matches!(f.into_response(), Err(RelpError::ServerClose)));
        let f = read_frame(&mut r).await.unwrap();
        assert_eq!(f.into_response().unwrap().code, 500);
        assert!(matches!(read_frame(&mut r).await, Err(RelpError::Closed)));
        let mut bad = BufReader::new(&b"x rsp 0\n"[..]);
        assert!(matches!(
            read_frame(&mut bad).await,
            Err(RelpError::Protocol(_))
        ));
    }
}
