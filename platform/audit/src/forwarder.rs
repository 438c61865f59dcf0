//! Epimetheus: ships the log to a syslog sink and advances a durable cursor only after the
//! sink accepted a record.
//!
//! - RELP: a record is accepted when its `rsp 200` arrives; the cursor then moves to the
//!   highest seq below which every record was acknowledged. Zero loss: whatever the sink
//!   did not acknowledge is sent again after a reconnect.
//! - TCP (RFC 6587 octet counting): there is no acknowledgement, so a record counts as
//!   accepted once its bytes were handed to the kernel (`write` returned). Records in socket
//!   buffers when the sink dies are lost: at-least-once only up to the socket write.
//!
//! - Both also run over TLS (`tls://`, RFC 5425, and `relp+tls://`) with the same
//!   semantics: the cursor still moves only on `rsp 200` over RELP, and at the write over
//!   plain octet counting. A sink whose certificate does not verify is a connect failure
//!   like any other (retried with backoff, nothing marked sent). A new `tls://` session
//!   must survive `tls_settle` before the first write: sinks refuse a client certificate
//!   right after the handshake, and what was written by then would count as sent.
//!
//! Duplicates are possible with both (records re-sent after a reconnect, or after a crash
//! between acceptance and the cursor write); every message's MSGID (`<seq>-<hash10>`)
//! identifies its record so a sink can drop them.
//!
//! The backlog during an outage is the log itself after the cursor: nothing is buffered in
//! memory beyond the RELP window. The task sleeps on the log's durable-seq notification (or
//! re-checks the file every `poll` when it has none), retries a failed sink with capped
//! exponential backoff, and rate-limits with a token bucket. File reads and cursor writes are
//! small and done inline: run it on a multi-thread runtime.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cursor::{Cursor, CursorError, TokenBucket};
use crate::event::Record;
use crate::reader::{Entry, LineReader, ReadError};
use crate::relp::{RelpClient, RelpError};
use crate::syslog::{octet_frame, SyslogError, SyslogFormat};
use crate::tls::{TlsClient, TlsConfig, TlsError};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Cursor(#[from] CursorError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Relp(#[from] RelpError),
    #[error(transparent)]
    Syslog(#[from] SyslogError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("Syslog URL {0:?}: use tcp://, relp://, tls:// or relp+tls:// with HOST:PORT")]
    Url(String),
    #[error("Syslog URL {0:?} uses TLS: a CA file to verify the sink with is required")]
    NoCa(String),
    #[error("Syslog URL {0:?} does not use TLS: TLS settings would be ignored")]
    TlsUnused(String),
    #[error("Syslog TCP connection to {addr} failed")]
    TcpConnect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Syslog TCP write failed")]
    TcpWrite(#[source] std::io::Error),
    #[error("Syslog TCP sink closed the connection")]
    TcpClosed,
    #[error("The sink acknowledged nothing for {0:?}")]
    AckTimeout(Duration),
    #[error("Cursor (record {seq}) does not match the log: {reason}")]
    CursorMismatch { seq: u64, reason: String },
    #[error("Log changed under the forwarder: expected record {expected}, found {found}")]
    LogChanged { expected: u64, found: u64 },
    #[error("Forwarder task failed: {0}")]
    Task(String),
}

/// Where to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP with octet counting, `host:port`.
    Tcp(String),
    /// RELP, `host:port`.
    Relp(String),
    /// Octet counting over TLS (RFC 5425), `host:port`.
    Tls(String, TlsConfig),
    /// RELP over TLS, `host:port`.
    RelpTls(String, TlsConfig),
}

impl Transport {
    /// `tcp://`, `relp://`, `tls://` or `relp+tls://` followed by `HOST:PORT` (a trailing
    /// `/` is ignored). The TLS schemes need `tls` (at least the CA); the others refuse it,
    /// so that a certificate configured for a plain URL is not silently unused.
    pub fn from_url(url: &str, tls: Option<TlsConfig>) -> Result<Transport, ForwardError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| ForwardError::Url(url.to_string()))?;
        let addr = rest.trim_end_matches('/').to_string();
        if addr.contains('/') || crate::tls::host_of(&addr).is_err() {
            return Err(ForwardError::Url(url.to_string()));
        }
        let need = |tls: Option<TlsConfig>| tls.ok_or_else(|| ForwardError::NoCa(url.to_string()));
        let plain = |tls: &Option<TlsConfig>| match tls {
            Some(_) => Err(ForwardError::TlsUnused(url.to_string())),
            None => Ok(()),
        };
        match scheme {
            "tcp" => plain(&tls).map(|_| Transport::Tcp(addr)),
            "relp" => plain(&tls).map(|_| Transport::Relp(addr)),
            "tls" => Ok(Transport::Tls(addr, need(tls)?)),
            "relp+tls" => Ok(Transport::RelpTls(addr, need(tls)?)),
            _ => Err(ForwardError::Url(url.to_string())),
        }
    }

    /// The sink's `host:port`.
    pub fn addr(&self) -> &str {
        match self {
            Transport::Tcp(a) | Transport::Relp(a) => a,
            Transport::Tls(a, _) | Transport::RelpTls(a, _) => a,
        }
    }

    /// Reads the TLS files (when there are any): a bad file fails here, once.
    fn tls_client(&self) -> Result<Option<TlsClient>, TlsError> {
        match self {
            Transport::Tcp(_) | Transport::Relp(_) => Ok(None),
            Transport::Tls(a, c) | Transport::RelpTls(a, c) => TlsClient::new(c, a).map(Some),
        }
    }
}

/// Configuration of a forwarder.
#[derive(Clone, Debug)]
pub struct ForwarderConfig {
    pub log_path: PathBuf,
    pub cursor_path: PathBuf,
    pub transport: Transport,
    pub syslog: SyslogFormat,
    /// Records per second (token bucket) and the burst; `None`: unlimited.
    pub rate_limit: Option<(f64, u32)>,
    /// RELP: commands outstanding at once. TCP: records per write.
    pub window: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Connect timeout, and how long outstanding RELP commands may go unanswered.
    pub timeout: Duration,
    /// How often to look at the file when no append notification is given.
    pub poll: Duration,
    /// `tls://` only: how long a new session must stay up before records are written (a
    /// sink refusing our client certificate drops it right after the handshake).
    pub tls_settle: Duration,
}

impl ForwarderConfig {
    pub fn new(
        log_path: impl Into<PathBuf>,
        cursor_path: impl Into<PathBuf>,
        transport: Transport,
    ) -> Self {
        ForwarderConfig {
            log_path: log_path.into(),
            cursor_path: cursor_path.into(),
            transport,
            syslog: SyslogFormat::default(),
            rate_limit: None,
            window: 256,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            tls_settle: Duration::from_millis(500),
        }
    }
}

/// A snapshot of the forwarder's health, for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// A session with the sink is up.
    pub connected: bool,
    /// Last seq the sink accepted (the cursor).
    pub cursor: u64,
    /// Last seq known in the log.
    pub log_seq: u64,
    /// Records behind: `log_seq - cursor`.
    pub lag: u64,
    /// Bytes of log after the cursor (the on-disk backlog).
    pub backlog_bytes: u64,
    /// Records the sink accepted since start.
    pub sent: u64,
    /// Records sent but not accepted when a session broke (they are sent again).
    pub failed: u64,
    /// Connection or session failures.
    pub errors: u64,
    /// Successful connects after the first.
    pub reconnects: u64,
    /// Times the rate limit made the forwarder wait.
    pub rate_limited: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    pub last_accepted_at: Option<SystemTime>,
}

/// A running forwarder.
pub struct Forwarder {
    health: Arc<Mutex<Health>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Forwarder {
    /// Starts the forwarding task (call inside a tokio runtime). `appended` is the log's
    /// [`subscribe`](crate::AuditLog::subscribe) channel: the forwarder wakes on it and sends
    /// only durable records; without it, it re-reads the file every `config.poll`.
    /// Fails at once if the cursor does not belong to this log.
    pub fn start(
        config: ForwarderConfig,
        appended: Option<watch::Receiver<u64>>,
    ) -> Result<Forwarder, ForwardError> {
        config.syslog.validate()?;
        let tls = config.transport.tls_client()?;
        let cursor = Cursor::load(&config.cursor_path)?;
        let reader = position(&config, &cursor)?;
        let health = Arc::new(Mutex::new(Health {
            cursor: cursor.seq,
            log_seq: cursor.seq,
            ..Health::default()
        }));
        let (stop, stop_rx) = watch::channel(false);
        let mut state = State {
            acked_at: (reader.offset(), reader.lines()),
            read_seq: cursor.seq,
            cursor,
            reader,
            health: health.clone(),
            appended,
            bucket: config.rate_limit.map(|(r, b)| TokenBucket::new(r, b)),
            config,
            tls,
            stop: stop_rx,
        };
        state.update_health(|_| {});
        let task = tokio::spawn(async move { state.run().await });
        Ok(Forwarder { health, stop, task })
    }

    /// The current health.
    pub fn health(&self) -> Health {
        self.health.lock().expect("not poisoned").clone()
    }

    /// Ends the task at once, as a crash would: nothing is flushed or closed (the cursor
    /// file holds the last acceptance it had stored).
    pub fn abort(self) {
        self.task.abort();
    }

    /// Stops: no new records are sent, outstanding RELP commands get up to `timeout` to be
    /// acknowledged, the session is closed.
    pub async fn stop(self) -> Result<Health, ForwardError> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| ForwardError::Task(e.to_string()))?;
        Ok(self.health.lock().expect("not poisoned").clone())
    }
}

/// A reader placed just after the cursor's record.
fn position(config: &ForwarderConfig, cursor: &Cursor) -> Result<LineReader, ForwardError> {
    let mut reader = LineReader::open(&config.log_path)?;
    if cursor.seq == 0 {
        return Ok(reader);
    }
    let mismatch = |reason: String| ForwardError::CursorMismatch {
        seq: cursor.seq,
        reason,
    };
    while let Some((e, _)) = reader.next_entry()? {
        if let Entry::Record { record, .. } = e {
            if record.seq == cursor.seq {
                if record.hash != cursor.hash {
                    return Err(mismatch(format!(
                        "record {} has hash {}",
                        record.seq, record.hash
                    )));
                }
                return Ok(reader);
            }
        }
    }
    Err(mismatch("the log has no such record".into()))
}

struct InFlight {
    txnr: u64,
    seq: u64,
    hash: String,
    /// Reader position after this record.
    end: (u64, u64),
    acked: bool,
}

enum Conn {
    Tcp {
        stream: Box<dyn AsyncWrite + Send + Unpin>,
        closed: tokio::sync::oneshot::Receiver<()>,
        buf: Vec<u8>,
        /// The task reading the other half: it holds the connection open until aborted.
        _reader: AbortOnDrop,
    },
    Relp(RelpClient),
}

struct State {
    config: ForwarderConfig,
    tls: Option<TlsClient>,
    cursor: Cursor,
    /// Reader position after the cursor's record.
    acked_at: (u64, u64),
    reader: LineReader,
    /// Last seq read from the file (sent or queued).
    read_seq: u64,
    health: Arc<Mutex<Health>>,
    appended: Option<watch::Receiver<u64>>,
    bucket: Option<TokenBucket>,
    stop: watch::Receiver<bool>,
}

/// Why a session ended without error.
enum End {
    Stopped,
}

impl State {
    fn update_health(&self, f: impl FnOnce(&mut Health)) {
        let size = std::fs::metadata(&self.config.log_path)
            .map(|m| m.len())
            .unwrap_or(0);
        let durable = self.appended.as_ref().map(|a| *a.borrow()).unwrap_or(0);
        let mut h = self.health.lock().expect("not poisoned");
        f(&mut h);
        h.cursor = self.cursor.seq;
        h.log_seq = h
            .log_seq
            .max(durable)
            .max(self.read_seq)
            .max(self.cursor.seq);
        h.lag = h.log_seq - self.cursor.seq;
        h.backlog_bytes = size.saturating_sub(self.acked_at.0);
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    async fn run(&mut self) {
        let mut backoff = self.config.backoff_min;
        let mut connects = 0u64;
        loop {
            if self.stopping() {
                return;
            }
            let result = match self.connect().await {
                Ok(conn) => {
                    connects += 1;
                    self.update_health(|h| {
                        h.connected = true;
                        if connects > 1 {
                            h.reconnects += 1;
                        }
                    });
                    backoff = self.config.backoff_min;
                    self.session(conn).await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(End::Stopped) => {
                    self.update_health(|h| h.connected = false);
                    return;
                }
                Err(e) => {
                    let text = error_chain(&e);
                    tracing::warn!("audit forwarder: {text}");
                    self.update_health(|h| {
                        h.connected = false;
                        h.errors += 1;
                        h.last_error = Some(text);
                        h.last_error_at = Some(SystemTime::now());
                    });
                    // Send again from the first record the sink did not accept.
                    let (off, lines) = self.acked_at;
                    if let Err(e) = self.reader.seek(off, lines) {
                        tracing::warn!("audit forwarder: {}", error_chain(&e));
                    }
                    self.read_seq = self.cursor.seq;
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        }
    }

    async fn connect(&self) -> Result<Conn, ForwardError> {
        let timeout = self.config.timeout;
        let tls = || self.tls.as_ref().expect("a TLS transport has its client");
        match &self.config.transport {
            Transport::Relp(addr) => Ok(Conn::Relp(RelpClient::connect(addr, timeout).await?)),
            Transport::RelpTls(addr, _) => {
                let s = tls().connect(addr, timeout).await?;
                Ok(Conn::Relp(RelpClient::open(s, addr, timeout).await?))
            }
            Transport::Tls(addr, _) => {
                let mut s = tls().connect(addr, timeout).await?;
                // No acknowledgements: let the sink refuse the session before anything
                // written could count as sent. RELP needs no such wait (`open` is answered).
                TlsClient::settle(&mut s, addr, self.config.tls_settle.min(timeout)).await?;
                Ok(octet_conn(s))
            }
            Transport::Tcp(addr) => {
                let err = |source| ForwardError::TcpConnect {
                    addr: addr.clone(),
                    source,
                };
                let s = tokio::time::timeout(timeout, TcpStream::connect(addr))
                    .await
                    .map_err(|_| err(std::io::ErrorKind::TimedOut.into()))?
                    .map_err(err)?;
                s.set_nodelay(true).map_err(err)?;
                Ok(octet_conn(s))
            }
        }
    }

    /// The next durable record after `read_seq`, with the reader position after it.
    fn next_record(&mut self) -> Result<Option<(Record, String)>, ForwardError> {
        if let Some(a) = &mut self.appended {
            // Marks the value seen, so the wait for the next append sleeps until it changes.
            if *a.borrow_and_update() <= self.read_seq {
                return Ok(None);
            }
        }
        loop {
            match self.reader.next_entry()? {
                None => return Ok(None),
                Some((Entry::Checkpoint(_), _)) => continue,
                Some((Entry::Record { record, line }, _)) => {
                    if record.seq != self.read_seq + 1 {
                        return Err(ForwardError::LogChanged {
                            expected: self.read_seq + 1,
                            found: record.seq,
                        });
                    }
                    self.read_seq = record.seq;
                    return Ok(Some((record, line)));
                }
            }
        }
    }

    /// Moves the cursor over acknowledged records at the front of `pending`; stores it.
    fn advance(&mut self, pending: &mut VecDeque<InFlight>) -> Result<(), ForwardError> {
        let mut n = 0;
        while pending.front().is_some_and(|p| p.acked) {
            let p = pending.pop_front().expect("front exists");
            self.cursor = Cursor {
                seq: p.seq,
                hash: p.hash,
            };
            self.acked_at = p.end;
            n += 1;
        }
        if n > 0 {
            self.cursor.store(&self.config.cursor_path)?;
            self.update_health(|h| {
                h.sent += n;
                h.last_accepted_at = Some(SystemTime::now());
            });
        }
        Ok(())
    }

    async fn session(&mut self, mut conn: Conn) -> Result<End, ForwardError> {
        let mut pending: VecDeque<InFlight> = VecDeque::new();
        let result = self.session_loop(&mut conn, &mut pending).await;
        if result.is_err() && !pending.is_empty() {
            let n = pending.len() as u64;
            self.update_health(|h| h.failed += n);
        }
        if result.is_ok() {
            match conn {
                Conn::Relp(c) => {
                    let _ = c.close(self.config.timeout).await;
                }
                // A TLS close_notify, then FIN.
                Conn::Tcp { mut stream, .. } => {
                    let _ = tokio::time::timeout(self.config.timeout, stream.shutdown()).await;
                }
            }
        }
        result
    }

    async fn session_loop(
        &mut self,
        conn: &mut Conn,
        pending: &mut VecDeque<InFlight>,
    ) -> Result<End, ForwardError> {
        let mut stop = self.stop.clone();
        let mut stopping = *stop.borrow();
        let mut last_progress = Instant::now();
        let window = self.config.window.max(1);
        loop {
            if !stopping && *stop.borrow() {
                stopping = true;
                last_progress = Instant::now();
            }
            // Fill the window.
            let mut rate_wait: Option<Duration> = None;
            let mut queued = 0usize;
            while !stopping && pending.len() < window {
                if let Some(b) = &mut self.bucket {
                    if let Err(wait) = b.take() {
                        rate_wait = Some(wait);
                        self.health.lock().expect("not poisoned").rate_limited += 1;
                        break;
                    }
                }
                let Some((record, line)) = self.next_record()? else {
                    // The token taken above is unused; a lost token only slows us by one.
                    break;
                };
                let msg = self.config.syslog.format(&record, &line);
                let txnr = match conn {
                    Conn::Relp(c) => c.queue_syslog(msg.as_bytes()),
                    Conn::Tcp { buf, .. } => {
                        buf.extend_from_slice(&octet_frame(&msg));
                        0
                    }
                };
                if pending.is_empty() {
                    last_progress = Instant::now();
                }
                pending.push_back(InFlight {
                    txnr,
                    seq: record.seq,
                    hash: record.hash,
                    end: (self.reader.offset(), self.reader.lines()),
                    acked: false,
                });
                queued += 1;
            }
            if queued > 0 {
                match conn {
                    Conn::Relp(c) => c.flush().await?,
                    Conn::Tcp { stream, buf, .. } => {
                        stream
                            .write_all(buf)
                            .await
                            .map_err(ForwardError::TcpWrite)?;
                        // TLS holds what it encrypted until flushed.
                        stream.flush().await.map_err(ForwardError::TcpWrite)?;
                        buf.clear();
                        // No acknowledgement on TCP: handed to the kernel is accepted.
                        pending.iter_mut().for_each(|p| p.acked = true);
                        self.advance(pending)?;
                    }
                }
                self.update_health(|_| {});
            }
            if stopping && pending.is_empty() {
                return Ok(End::Stopped);
            }
            // TCP empties the window at every write: if it was full, more records may be
            // waiting in the file, so fill again instead of sleeping.
            if queued >= window && matches!(conn, Conn::Tcp { .. }) {
                continue;
            }
            let can_send = !stopping && pending.len() < window;
            let idle = if let Some(w) = rate_wait {
                w
            } else {
                self.config.poll
            };
            let ack_deadline = tokio::time::Instant::from_std(last_progress + self.config.timeout);
            let appended = self.appended.clone();
            let notify = async {
                match appended {
                    Some(mut a) => {
                        // A closed log never changes again: fall back to polling.
                        if a.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            match conn {
                Conn::Relp(c) => {
                    tokio::select! {
                        r = c.recv() => {
                            self.on_response(r?, pending)?;
                            while let Some(r) = c.try_recv() {
                                self.on_response(r?, pending)?;
                            }
                            last_progress = Instant::now();
                            self.advance(pending)?;
                        }
                        _ = notify, if can_send && rate_wait.is_none() => {}
                        _ = tokio::time::sleep(idle), if can_send => {}
                        _ = stop.changed(), if !stopping => { stopping = true; last_progress = Instant::now(); }
                        _ = tokio::time::sleep_until(ack_deadline), if !pending.is_empty() => {
                            return Err(ForwardError::AckTimeout(self.config.timeout));
                        }
                    }
                }
                Conn::Tcp { closed, .. } => {
                    tokio::select! {
                        _ = closed => return Err(ForwardError::TcpClosed),
                        _ = notify, if can_send && rate_wait.is_none() => {}
                        _ = tokio::time::sleep(idle), if can_send => {}
                        _ = stop.changed(), if !stopping => { stopping = true; }
                    }
                }
            }
        }
    }

    fn on_response(
        &mut self,
        r: crate::relp::Response,
        pending: &mut VecDeque<InFlight>,
    ) -> Result<(), ForwardError> {
        let Some(p) = pending.iter_mut().find(|p| p.txnr == r.txnr && !p.acked) else {
            return Err(RelpError::Protocol(format!("rsp for unknown txnr {}", r.txnr)).into());
        };
        if r.code != 200 {
            return Err(RelpError::Refused {
                txnr: r.txnr,
                code: r.code,
                text: r.text,
            }
            .into());
        }
        p.acked = true;
        Ok(())
    }
}

/// An octet-counting session over `stream` (TCP or TLS).
fn octet_conn<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> Conn {
    let (mut rh, wh) = tokio::io::split(stream);
    // The sink never talks; a read that ends means it closed the connection.
    let (tx, closed) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut b = [0u8; 512];
        while matches!(rh.read(&mut b).await, Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    Conn::Tcp {
        stream: Box::new(wh),
        closed,
        buf: Vec::new(),
        _reader: AbortOnDrop(reader),
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `e: source: source...` on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
