//! The append-only writer: crash repair on open, group commit (many appends, one
//! `fdatasync`), signed checkpoints every N records and on close.
//!
//! One writer thread owns the file. `append` hands it the event and waits (asynchronously, or
//! blocking) for the answer, which comes only after the record's bytes were written and
//! `fdatasync` returned: a returned seq is durable. While one batch is being synced the next
//! appends queue up and share the next sync.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ed25519_dalek::{SigningKey, VerifyingKey};
use tokio::sync::{oneshot, watch};

use crate::checkpoint::{load_or_create_key, Checkpoint, KeyError};
use crate::event::{AuditEvent, Record, GENESIS};
use crate::reader::{Entry, LineReader, RawLine, ReadError};

/// Default checkpoint spacing (records).
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;
/// Default largest group commit (records per `fdatasync`).
pub const DEFAULT_MAX_BATCH: usize = 4096;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("Cannot open or write audit log {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("Audit log {path} is damaged at line {line}: {reason}; run `tartarus audit verify`")]
    Corrupt {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error("Audit log writer failed earlier and accepts no more records: {0}")]
    Poisoned(String),
    #[error("Audit log is closed")]
    Closed,
}

/// How to open the log.
#[derive(Clone, Debug)]
pub struct LogConfig {
    pub path: PathBuf,
    /// ed25519 seed (hex, 0600); created with `<key>.pub` beside it if missing.
    pub key_path: PathBuf,
    /// A signed checkpoint follows every record whose seq is a multiple of this (>= 1).
    pub checkpoint_every: u64,
    /// Most records per `fdatasync`; 1 syncs every record on its own.
    pub max_batch: usize,
}

impl LogConfig {
    pub fn new(path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> LogConfig {
        LogConfig {
            path: path.into(),
            key_path: key_path.into(),
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            max_batch: DEFAULT_MAX_BATCH,
        }
    }
}

/// Something `open` changed in the file; worth a log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repair {
    /// A crash left `bytes` bytes of an unfinished line at `offset` (line `line`): removed.
    TruncatedPartialTail { line: u64, offset: u64, bytes: u64 },
    /// A checkpoint was due after record `seq` (a crash between the two): written now.
    CheckpointAdded { seq: u64 },
}

impl std::fmt::Display for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Repair::TruncatedPartialTail {
                line,
                offset,
                bytes,
            } => write!(
                f,
                "removed an unfinished record at line {line} ({bytes} bytes at offset {offset}) left by a crash"
            ),
            Repair::CheckpointAdded { seq } => {
                write!(f, "wrote the checkpoint due after record {seq}")
            }
        }
    }
}

/// What `open` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenReport {
    pub records: u64,
    pub last_seq: u64,
    /// Empty when the file was whole.
    pub repairs: Vec<Repair>,
    /// A new signing key was generated.
    pub key_created: bool,
}

/// A record appended: its seq and hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub hash: String,
}

type Reply = oneshot::Sender<Result<Appended, LogError>>;

enum Cmd {
    Append(AuditEvent, Reply),
    /// A std channel: `close` may be called (briefly blocking) from async code and from Drop.
    Close(mpsc::Sender<Result<(), LogError>>),
}

/// The open log. `append` may be called from many tasks or threads at once.
pub struct AuditLog {
    tx: mpsc::Sender<Cmd>,
    syncs: Arc<AtomicU64>,
    durable: watch::Receiver<u64>,
    thread: Mutex<Option<JoinHandle<()>>>,
    public_key: VerifyingKey,
    path: PathBuf,
}

/// Where the chain ends after the scan on open.
struct Tail {
    records: u64,
    seq: u64,
    hash: String,
    checkpointed: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Walks the existing file, checks the chain, truncates a partial tail.
fn scan(path: &Path, key: &VerifyingKey, repairs: &mut Vec<Repair>) -> Result<Tail, LogError> {
    let corrupt = |line, reason: String| LogError::Corrupt {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut t = Tail {
        records: 0,
        seq: 0,
        hash: GENESIS.to_string(),
        checkpointed: 0,
    };
    let mut reader = LineReader::open(path)?;
    // Start of a run of NUL-filled lines (what some file systems leave after a crash).
    let mut zeros: Option<(u64, u64)> = None;
    loop {
        match reader.next_line()? {
            RawLine::Eof => break,
            RawLine::Partial { start, len, line } => {
                let (offset, line) = zeros.unwrap_or((start, line));
                let size = start + len;
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path))?;
                f.set_len(offset)
                    .and_then(|_| f.sync_all())
                    .map_err(io_err(path))?;
                repairs.push(Repair::TruncatedPartialTail {
                    line,
                    offset,
                    bytes: size - offset,
                });
                return Ok(t);
            }
            RawLine::Complete { text, start, line } => {
                if text.iter().all(|b| *b == 0) {
                    zeros.get_or_insert((start, line));
                    continue;
                }
                if let Some((_, zline)) = zeros {
                    return Err(corrupt(zline, "a line of NUL bytes".into()));
                }
                match Entry::parse(&text).map_err(|r| corrupt(line, r))? {
                    Entry::Record { record, line: l } => {
                        if record.compute_hash() != record.hash || record.to_line() != l {
                            return Err(corrupt(line, format!("record {} was edited", record.seq)));
                        }
                        if record.seq != t.seq + 1 || record.prev != t.hash {
                            return Err(corrupt(
                                line,
                                format!("record {} does not follow record {}", record.seq, t.seq),
                            ));
                        }
                        t.seq = record.seq;
                        t.hash = record.hash;
                        t.records += 1;
                    }
                    Entry::Checkpoint(c) => {
                        if c.seq != t.seq || c.hash != t.hash || !c.signature_valid(key) {
                            return Err(corrupt(
                                line,
                                format!("bad checkpoint for record {}", c.seq),
                            ));
                        }
                        t.checkpointed = c.seq;
                    }
                }
            }
        }
    }
    if let Some((offset, line)) = zeros {
        // Whole lines of NULs at the end: the same crash artefact, newline included.
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        let size = f.metadata().map_err(io_err(path))?.len();
        f.set_len(offset)
            .and_then(|_| f.sync_all())
            .map_err(io_err(path))?;
        repairs.push(Repair::TruncatedPartialTail {
            line,
            offset,
            bytes: size - offset,
        });
    }
    Ok(t)
}

impl AuditLog {
    /// Opens (or creates) the log, repairing a crash-damaged tail (reported, never silent),
    /// and starts the writer thread. A log damaged anywhere else is refused with
    /// [`LogError::Corrupt`].
    pub fn open(config: LogConfig) -> Result<(AuditLog, OpenReport), LogError> {
        let path = config.path.clone();
        let (key, key_created) = load_or_create_key(&config.key_path)?;
        let public_key = key.verifying_key();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut repairs = Vec::new();
        let tail = scan(&path, &public_key, &mut repairs)?;
        let every = config.checkpoint_every.max(1);
        let mut w = Writer {
            file: &mut file,
            key: &key,
            every,
            seq: tail.seq,
            hash: tail.hash,
            checkpointed: tail.checkpointed,
        };
        if w.seq > 0 && w.seq % every == 0 && w.checkpointed != w.seq {
            let mut buf = Vec::new();
            w.push_checkpoint(&mut buf);
            w.file
                .write_all(&buf)
                .and_then(|_| w.file.sync_data())
                .map_err(io_err(&path))?;
            repairs.push(Repair::CheckpointAdded { seq: w.seq });
        }
        let report = OpenReport {
            records: tail.records,
            last_seq: w.seq,
            repairs,
            key_created,
        };
        let (seq, hash, checkpointed) = (w.seq, w.hash.clone(), w.checkpointed);
        let (tx, rx) = mpsc::channel();
        let (durable_tx, durable) = watch::channel(seq);
        let max_batch = config.max_batch.max(1);
        let thread_path = path.clone();
        let syncs = Arc::new(AtomicU64::new(0));
        let thread_syncs = syncs.clone();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let mut w = Writer {
                    file: &mut file,
                    key: &key,
                    every,
                    seq,
                    hash,
                    checkpointed,
                };
                w.run(&thread_path, rx, durable_tx, max_batch, &thread_syncs);
            })
            .map_err(io_err(&path))?;
        Ok((
            AuditLog {
                tx,
                syncs,
                durable,
                thread: Mutex::new(Some(thread)),
                public_key,
                path,
            },
            report,
        ))
    }

    /// Appends `event`; resolves once the record is on disk (after `fdatasync`).
    pub async fn append(&self, event: AuditEvent) -> Result<Appended, LogError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append(event, tx))
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    /// [`append`](Self::append) for synchronous callers (not from inside an async task).
    pub fn append_blocking(&self, event: AuditEvent) -> Result<Appended, LogError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append(event, tx))
            .map_err(|_| LogError::Closed)?;
        rx.blocking_recv().map_err(|_| LogError::Closed)?
    }

    /// Queues `event` without waiting for it: it is on disk after the next group commit
    /// (within one batch). For callers that cannot wait (state changes recorded from
    /// synchronous code); a failure to write is logged by the writer and poisons the log,
    /// which the next awaited `append` reports.
    pub fn submit(&self, event: AuditEvent) -> Result<(), LogError> {
        let (tx, _rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append(event, tx))
            .map_err(|_| LogError::Closed)
    }

    /// The seq of the last durable record; changes after every group commit. The forwarder
    /// waits on this instead of polling the file.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    /// The key that verifies this log's checkpoints.
    pub fn public_key(&self) -> VerifyingKey {
        self.public_key
    }

    /// Group commits (`fdatasync` calls) so far: appends per sync is the batching factor.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the closing checkpoint and stops the writer. Appends queued before the close
    /// are written first. Blocks for one `fdatasync` (fine at shutdown, also from async
    /// code). Dropping the log does the same, without reporting an error.
    pub fn close(self) -> Result<(), LogError> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<(), LogError> {
        let Some(thread) = self.thread.lock().expect("not poisoned").take() else {
            return Ok(());
        };
        let (tx, rx) = mpsc::channel();
        let result = match self.tx.send(Cmd::Close(tx)) {
            Ok(()) => rx.recv().unwrap_or(Err(LogError::Closed)),
            Err(_) => Err(LogError::Closed),
        };
        let _ = thread.join();
        result
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

struct Writer<'a> {
    file: &'a mut File,
    key: &'a SigningKey,
    every: u64,
    seq: u64,
    hash: String,
    checkpointed: u64,
}

impl Writer<'_> {
    fn push_checkpoint(&mut self, buf: &mut Vec<u8>) {
        let c = Checkpoint::sign(self.key, self.seq, &self.hash, self.every);
        buf.extend_from_slice(c.to_line().as_bytes());
        buf.push(b'\n');
        self.checkpointed = self.seq;
    }

    fn run(
        &mut self,
        path: &Path,
        rx: mpsc::Receiver<Cmd>,
        durable: watch::Sender<u64>,
        max_batch: usize,
        syncs: &AtomicU64,
    ) {
        let mut poisoned: Option<String> = None;
        let mut buf = Vec::with_capacity(1 << 20);
        let mut replies: Vec<(Reply, Appended)> = Vec::new();
        let mut close: Option<mpsc::Sender<Result<(), LogError>>> = None;
        while close.is_none() {
            let Ok(first) = rx.recv() else { break };
            let mut next = Some(first);
            buf.clear();
            let (seq0, hash0, ck0) = (self.seq, self.hash.clone(), self.checkpointed);
            while let Some(cmd) = next.take() {
                match cmd {
                    Cmd::Close(reply) => {
                        close = Some(reply);
                        break;
                    }
                    Cmd::Append(_, reply) if poisoned.is_some() => {
                        let _ = reply.send(Err(LogError::Poisoned(
                            poisoned.clone().unwrap_or_default(),
                        )));
                    }
                    Cmd::Append(event, reply) => {
                        let r = Record::new(self.seq + 1, &self.hash, event);
                        buf.extend_from_slice(r.to_line().as_bytes());
                        buf.push(b'\n');
                        self.seq = r.seq;
                        self.hash = r.hash;
                        if self.seq % self.every == 0 {
                            self.push_checkpoint(&mut buf);
                        }
                        replies.push((
                            reply,
                            Appended {
                                seq: self.seq,
                                hash: self.hash.clone(),
                            },
                        ));
                    }
                }
                if replies.len() < max_batch {
                    next = rx.try_recv().ok();
                }
            }
            if close.is_some()
                && poisoned.is_none()
                && self.seq > 0
                && self.checkpointed != self.seq
            {
                self.push_checkpoint(&mut buf);
            }
            if buf.is_empty() {
                continue;
            }
            match self
                .file
                .write_all(&buf)
                .and_then(|_| self.file.sync_data())
            {
                Ok(()) => {
                    syncs.fetch_add(1, Ordering::Relaxed);
                    durable.send_replace(self.seq);
                    for (reply, a) in replies.drain(..) {
                        let _ = reply.send(Ok(a));
                    }
                }
                Err(e) => {
                    // After a failed write or fsync the file's state is unknown: try to cut
                    // it back to the last durable record and refuse further appends.
                    let msg = format!("writing {}: {e}", path.display());
                    tracing::error!("audit log: {msg}");
                    if let Ok(len) = self.file.metadata().map(|m| m.len()) {
                        let _ = self.file.set_len(len.saturating_sub(buf.len() as u64));
                    }
                    self.seq = seq0;
                    self.hash = hash0;
                    self.checkpointed = ck0;
                    for (reply, _) in replies.drain(..) {
                        let _ = reply.send(Err(LogError::Poisoned(msg.clone())));
                    }
                    poisoned = Some(msg);
                }
            }
        }
        if let Some(reply) = close {
            let _ = reply.send(match poisoned {
                Some(m) => Err(LogError::Poisoned(m)),
                None => Ok(()),
            });
        }
    }
}
