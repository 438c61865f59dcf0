//! The forwarder's durable cursor and its rate limiter.
//!
//! The cursor file holds `<seq> <hash>\n`: the last record the sink accepted. It is replaced
//! atomically (write `<cursor>.tmp`, fsync, rename over the cursor, fsync the directory), so a
//! crash leaves either the old or the new cursor, never a torn one. The hash ties the cursor
//! to the log: a cursor whose record has another hash belongs to a different log.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::event::GENESIS;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("Cannot read or write cursor file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cursor file {0} is malformed (want \"<seq> <hash>\")")]
    Malformed(PathBuf),
}

/// The last record the sink accepted (seq 0: none yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub seq: u64,
    pub hash: String,
}

impl Default for Cursor {
    fn default() -> Self {
        Cursor {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }
}

impl Cursor {
    /// Reads the cursor file; a missing file is seq 0.
    pub fn load(path: &Path) -> Result<Cursor, CursorError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Cursor::default()),
            Err(source) => {
                return Err(CursorError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let mut parts = text.split_whitespace();
        let (Some(seq), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(CursorError::Malformed(path.to_path_buf()));
        };
        let seq = seq
            .parse()
            .map_err(|_| CursorError::Malformed(path.to_path_buf()))?;
        Ok(Cursor {
            seq,
            hash: hash.to_string(),
        })
    }

    /// Replaces the cursor file atomically and durably.
    pub fn store(&self, path: &Path) -> Result<(), CursorError> {
        let io = |source| CursorError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(format!("{} {}\n", self.seq, self.hash).as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(io)?;
        drop(f);
        fs::rename(&tmp, path).map_err(io)?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: rate.max(f64::MIN_POSITIVE),
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
    }

    /// Takes a token if one is there; otherwise says how long until one is.
    pub fn take(&mut self) -> Result<(), Duration> {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_bucket() {
        let dir = std::env::temp_dir().join(format!("audit-cursor-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("cursor");
        assert_eq!(Cursor::load(&p).unwrap(), Cursor::default());
        let c = Cursor {
            seq: 12,
            hash: "ab".repeat(32),
        };
        c.store(&p).unwrap();
        assert_eq!(Cursor::load(&p).unwrap(), c);
        fs::write(&p, "12\n").unwrap();
        assert!(matches!(Cursor::load(&p), Err(CursorError::Malformed(_))));
        fs::remove_dir_all(&dir).unwrap();

        let mut b = TokenBucket::new(0.001, 2);
        assert!(b.take().is_ok());
        assert!(b.take().is_ok());
        let wait = b.take().unwrap_err();
        assert!(wait > Duration::from_secs(100), "{wait:?}");
    }
}
