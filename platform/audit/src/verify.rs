//! `verify`: walks a log and names the first problem, with its seq and line number.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;

use crate::event::GENESIS;
use crate::reader::{Entry, LineReader, RawLine, ReadError};

/// Errors of this module (the file could not be read at all; what is wrong *in* the file is
/// a [`Problem`]).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("Audit log {0} does not exist")]
    Missing(PathBuf),
}

/// The first thing wrong with a log. Lines are 1-based line numbers of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A line that is not a record or checkpoint at all (`seq` when its start is readable).
    Malformed {
        line: u64,
        seq: Option<u64>,
        reason: String,
    },
    /// The record's content does not match its hash (or is not in canonical form).
    Edited { seq: u64, line: u64 },
    /// Records `first..=last` are missing before `line`.
    Deleted { first: u64, last: u64, line: u64 },
    /// `seq` appears twice: at `first_line` and again at `line`.
    Inserted {
        seq: u64,
        first_line: u64,
        line: u64,
    },
    /// Record `seq` stands at `line` where record `expected` belongs (which comes later).
    Reordered { seq: u64, expected: u64, line: u64 },
    /// Record `seq` is self-consistent but its `prev` is not the previous record's hash: it
    /// was replaced or inserted with a recomputed hash.
    BrokenLink { seq: u64, line: u64 },
    /// The checkpoint at `line` signs a different record or hash than the one before it:
    /// the chain up to `seq` was rewritten.
    CheckpointMismatch { seq: u64, line: u64 },
    /// The checkpoint at `line` (for `seq`) has a signature the key does not verify.
    BadSignature { seq: u64, line: u64 },
    /// The checkpoint due after record `seq` (at `line`) is not there.
    MissingCheckpoint { seq: u64, line: u64 },
    /// The file ends in `bytes` bytes of an unfinished line `line` (a crash mid-write;
    /// opening the log for writing repairs it).
    TruncatedTail { line: u64, bytes: u64 },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Malformed { line, seq, reason } => match seq {
                Some(s) => write!(f, "line {line} (record {s}) is malformed: {reason}"),
                None => write!(f, "line {line} is malformed: {reason}"),
            },
            Problem::Edited { seq, line } => {
                write!(f, "record {seq} at line {line} was edited (hash mismatch)")
            }
            Problem::Deleted { first, last, line } if first == last => {
                write!(f, "record {first} was deleted (before line {line})")
            }
            Problem::Deleted { first, last, line } => {
                write!(f, "records {first}..{last} were deleted (before line {line})")
            }
            Problem::Inserted {
                seq,
                first_line,
                line,
            } => write!(
                f,
                "record {seq} appears twice (lines {first_line} and {line}): a record was inserted"
            ),
            Problem::Reordered {
                seq,
                expected,
                line,
            } => write!(
                f,
                "record {seq} at line {line} is out of order (record {expected} belongs there)"
            ),
            Problem::BrokenLink { seq, line } => write!(
                f,
                "record {seq} at line {line} does not chain to the record before it (replaced or inserted)"
            ),
            Problem::CheckpointMismatch { seq, line } => write!(
                f,
                "checkpoint at line {line} signs record {seq} with a different hash: the chain was rewritten"
            ),
            Problem::BadSignature { seq, line } => {
                write!(f, "checkpoint for record {seq} at line {line} has a bad signature")
            }
            Problem::MissingCheckpoint { seq, line } => {
                write!(f, "the checkpoint due after record {seq} (line {line}) is missing")
            }
            Problem::TruncatedTail { line, bytes } => {
                write!(f, "line {line} is an unfinished record ({bytes} bytes): truncated tail")
            }
        }
    }
}

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked before the problem (all of them when there is none).
    pub records: u64,
    pub checkpoints: u64,
    pub last_seq: u64,
    /// The last seq covered by a valid checkpoint signature.
    pub signed_through: u64,
    /// Records after `signed_through`: protected by the chain only (an attacker who can
    /// write the file can rewrite or drop them undetected; the syslog copy is the witness).
    pub unsigned_tail: u64,
    pub problem: Option<Problem>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// How to verify.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    pub key: VerifyingKey,
    /// The writer's checkpoint spacing, when known: a record whose seq is a multiple of it
    /// must be followed by its checkpoint. Otherwise it is learned from the first valid
    /// checkpoint (its signed `interval`).
    pub checkpoint_every: Option<u64>,
}

/// Verifies with the checkpoint spacing learned from the log itself.
pub fn verify(path: &Path, key: &VerifyingKey) -> Result<VerifyReport, VerifyError> {
    verify_with(
        path,
        &VerifyOptions {
            key: *key,
            checkpoint_every: None,
        },
    )
}

enum Line {
    Entry(Box<Entry>),
    Bad { seq: Option<u64>, reason: String },
}

/// The seq a damaged record line starts with, if readable.
fn leading_seq(text: &[u8]) -> Option<u64> {
    let rest = text.strip_prefix(b"{\"seq\":")?;
    let digits: Vec<u8> = rest
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Verifies `path`; see [`Problem`] for what it finds.
pub fn verify_with(path: &Path, opts: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    if !path.exists() {
        return Err(VerifyError::Missing(path.to_path_buf()));
    }
    let mut reader = LineReader::open(path)?;
    let mut lines: Vec<(u64, Line)> = Vec::new();
    let mut tail: Option<(u64, u64)> = None;
    // Every line number each seq appears at, to tell deletions from reorderings.
    let mut where_seq: HashMap<u64, Vec<u64>> = HashMap::new();
    loop {
        match reader.next_line()? {
            RawLine::Eof => break,
            RawLine::Partial { len, line, .. } => {
                tail = Some((line, len));
                break;
            }
            RawLine::Complete { text, line, .. } => {
                let parsed = match Entry::parse(&text) {
                    Ok(e) => {
                        if let Entry::Record { record, .. } = &e {
                            where_seq.entry(record.seq).or_default().push(line);
                        }
                        Line::Entry(Box::new(e))
                    }
                    Err(reason) => Line::Bad {
                        seq: leading_seq(&text),
                        reason,
                    },
                };
                lines.push((line, parsed));
            }
        }
    }

    let mut rep = VerifyReport {
        records: 0,
        checkpoints: 0,
        last_seq: 0,
        signed_through: 0,
        unsigned_tail: 0,
        problem: None,
    };
    let mut every = opts.checkpoint_every.filter(|e| *e > 0);
    let mut last_hash = GENESIS.to_string();
    let mut due: Option<(u64, u64)> = None;
    let problem = 'walk: {
        for (line, parsed) in &lines {
            let line = *line;
            let entry = match parsed {
                Line::Bad { seq, reason } => {
                    break 'walk Some(Problem::Malformed {
                        line,
                        seq: *seq,
                        reason: reason.clone(),
                    });
                }
                Line::Entry(e) => e,
            };
            match &**entry {
                Entry::Record { record, line: text } => {
                    if let Some((seq, at)) = due {
                        break 'walk Some(Problem::MissingCheckpoint { seq, line: at });
                    }
                    let seq = record.seq;
                    if record.compute_hash() != record.hash || &record.to_line() != text {
                        break 'walk Some(Problem::Edited { seq, line });
                    }
                    let expected = rep.last_seq + 1;
                    if seq > expected {
                        let later = where_seq
                            .get(&expected)
                            .is_some_and(|ls| ls.iter().any(|l| *l > line));
                        break 'walk Some(if later {
                            Problem::Reordered {
                                seq,
                                expected,
                                line,
                            }
                        } else {
                            Problem::Deleted {
                                first: expected,
                                last: seq - 1,
                                line,
                            }
                        });
                    }
                    if seq < expected {
                        let earlier = where_seq
                            .get(&seq)
                            .and_then(|ls| ls.iter().find(|l| **l < line).copied());
                        break 'walk Some(match earlier {
                            Some(first_line) => Problem::Inserted {
                                seq,
                                first_line,
                                line,
                            },
                            None => Problem::Reordered {
                                seq,
                                expected,
                                line,
                            },
                        });
                    }
                    if record.prev != last_hash {
                        break 'walk Some(Problem::BrokenLink { seq, line });
                    }
                    last_hash = record.hash.clone();
                    rep.last_seq = seq;
                    rep.records += 1;
                    if every.is_some_and(|e| seq % e == 0) {
                        due = Some((seq, line));
                    }
                }
                Entry::Checkpoint(c) => {
                    if c.seq != rep.last_seq || c.hash != last_hash {
                        break 'walk Some(Problem::CheckpointMismatch { seq: c.seq, line });
                    }
                    if !c.signature_valid(&opts.key) {
                        break 'walk Some(Problem::BadSignature { seq: c.seq, line });
                    }
                    if every.is_none() && c.interval > 0 {
                        every = Some(c.interval);
                    }
                    rep.checkpoints += 1;
                    rep.signed_through = c.seq;
                    due = None;
                }
            }
        }
        if let Some((seq, line)) = due {
            break 'walk Some(Problem::MissingCheckpoint { seq, line });
        }
        tail.map(|(line, bytes)| Problem::TruncatedTail { line, bytes })
    };
    rep.unsigned_tail = rep.last_seq - rep.signed_through;
    rep.problem = problem;
    Ok(rep)
}
