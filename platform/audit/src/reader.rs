//! Reading the log: whole lines with their offsets, parsed entries, and `query` for
//! `tartarus audit ls --since --tenant`.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::checkpoint::Checkpoint;
use crate::event::{Record, Timestamp};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("Cannot read audit log {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Audit log {path}, line {line}: {reason}")]
    Malformed {
        path: PathBuf,
        line: u64,
        reason: String,
    },
}

/// One parsed line of the log.
#[derive(Clone, Debug)]
pub enum Entry {
    /// A record and its exact line (without the newline).
    Record {
        record: Record,
        line: String,
    },
    Checkpoint(Checkpoint),
}

impl Entry {
    /// Parses one line (without its newline); the error says what is wrong.
    pub fn parse(text: &[u8]) -> Result<Entry, String> {
        let s = std::str::from_utf8(text).map_err(|_| "not UTF-8".to_string())?;
        if Checkpoint::is_checkpoint_line(s) {
            Checkpoint::parse(s)
                .map(Entry::Checkpoint)
                .map_err(|e| format!("malformed checkpoint: {e}"))
        } else {
            Record::parse(s)
                .map(|record| Entry::Record {
                    record,
                    line: s.to_string(),
                })
                .map_err(|e| {
                    let source = std::error::Error::source(&e).map(|s| s.to_string());
                    format!(
                        "malformed record: {}",
                        source.unwrap_or_else(|| e.to_string())
                    )
                })
        }
    }
}

/// What [`LineReader::next_line`] found.
#[derive(Debug)]
pub enum RawLine {
    /// A whole line (newline stripped), its byte offset and 1-based line number.
    Complete {
        text: Vec<u8>,
        start: u64,
        line: u64,
    },
    /// Bytes after the last newline (a write in progress, or a crash mid-write). The reader
    /// stays before them, so a later call sees the line once it is complete.
    Partial {
        start: u64,
        len: u64,
        line: u64,
    },
    Eof,
}

/// Reads the log line by line, tracking byte offsets and line numbers.
pub struct LineReader {
    path: PathBuf,
    file: BufReader<File>,
    offset: u64,
    line: u64,
}

impl LineReader {
    /// From the start of the file.
    pub fn open(path: &Path) -> Result<LineReader, ReadError> {
        LineReader::open_at(path, 0, 0)
    }

    /// From byte `offset`, which is the start of line `lines_before + 1`.
    pub fn open_at(path: &Path, offset: u64, lines_before: u64) -> Result<LineReader, ReadError> {
        let io = |source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        Ok(LineReader {
            path: path.to_path_buf(),
            file: BufReader::with_capacity(256 * 1024, file),
            offset,
            line: lines_before,
        })
    }

    /// Byte offset of the next line.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Lines read so far (the number of the last complete line).
    pub fn lines(&self) -> u64 {
        self.line
    }

    /// Moves to byte `offset`, the start of line `lines_before + 1`.
    pub fn seek(&mut self, offset: u64, lines_before: u64) -> Result<(), ReadError> {
        self.file
            .seek(SeekFrom::Start(offset))
            .map_err(|source| self.io(source))?;
        self.offset = offset;
        self.line = lines_before;
        Ok(())
    }

    fn io(&self, source: std::io::Error) -> ReadError {
        ReadError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// The next whole line, a partial tail, or the end.
    pub fn next_line(&mut self) -> Result<RawLine, ReadError> {
        let mut buf = Vec::new();
        let n = self
            .file
            .read_until(b'\n', &mut buf)
            .map_err(|source| self.io(source))?;
        let start = self.offset;
        if n == 0 {
            return Ok(RawLine::Eof);
        }
        if buf.last() != Some(&b'\n') {
            // Rewind (also drops the BufReader's buffer) so the line is re-read when whole.
            self.file
                .seek(SeekFrom::Start(start))
                .map_err(|source| self.io(source))?;
            return Ok(RawLine::Partial {
                start,
                len: n as u64,
                line: self.line + 1,
            });
        }
        buf.pop();
        self.offset += n as u64;
        self.line += 1;
        Ok(RawLine::Complete {
            text: buf,
            start,
            line: self.line,
        })
    }

    /// The next whole line parsed, with its line number; `None` at the end or at a partial
    /// tail. A line that does not parse is an error.
    pub fn next_entry(&mut self) -> Result<Option<(Entry, u64)>, ReadError> {
        match self.next_line()? {
            RawLine::Complete { text, line, .. } => Entry::parse(&text)
                .map(|e| Some((e, line)))
                .map_err(|reason| ReadError::Malformed {
                    path: self.path.clone(),
                    line,
                    reason,
                }),
            RawLine::Partial { .. } | RawLine::Eof => Ok(None),
        }
    }
}

/// Which records `query` returns.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only records with `time >= since`.
    pub since: Option<Timestamp>,
    /// Only this tenant's records.
    pub tenant: Option<String>,
}

impl Filter {
    pub fn matches(&self, r: &Record) -> bool {
        self.since.is_none_or(|s| r.time >= s)
            && self.tenant.as_ref().is_none_or(|t| &r.tenant == t)
    }
}

/// Iterates the log's records matching `filter`, in log order (checkpoints are skipped, a
/// partial tail ends the iteration). Reads lazily: fine for large logs.
pub fn query(path: &Path, filter: Filter) -> Result<Query, ReadError> {
    Ok(Query {
        reader: LineReader::open(path)?,
        filter,
        done: false,
    })
}

/// The iterator [`query`] returns.
pub struct Query {
    reader: LineReader,
    filter: Filter,
    done: bool,
}

impl Iterator for Query {
    type Item = Result<Record, ReadError>;
    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            match self.reader.next_entry() {
                Ok(Some((Entry::Record { record, .. }, _))) => {
                    if self.filter.matches(&record) {
                        return Some(Ok(record));
                    }
                }
                Ok(Some((Entry::Checkpoint(_), _))) => {}
                Ok(None) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}
