//! The snapshot state file: a small, checksummed envelope around a serde body.
//!
//! # Layout (all integers little endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic, `b"TARTSNAP"` |
//! | 8 | 2 | format major version |
//! | 10 | 2 | format minor version |
//! | 12 | 8 | body length `N` |
//! | 20 | N | body: compact JSON (`serde_json`) |
//! | 20+N | 8 | CRC-64/XZ of bytes `0 .. 20+N` |
//!
//! The envelope itself (magic, version, length, body, CRC) never changes; the version numbers
//! describe the *body* schema. A reader checks, in this order: the file can be read, it starts
//! with the magic, it is as long as its header says, the CRC matches, the major version is the
//! one it reads, and finally that the body parses.
//!
//! # Versioning rule
//!
//! * **Minor** bumps are compatible in both directions. A new minor may only *add* fields, and
//!   every added field carries `#[serde(default)]` (or `#[serde(default = "...")]`) so that a
//!   newer reader accepts files without it. Readers never use `#[serde(deny_unknown_fields)]`,
//!   so an older reader loading a newer-minor file silently ignores the fields it does not know.
//!   Therefore a field may only be introduced in a minor bump if ignoring it is *safe* (the
//!   restored VM behaves correctly without it); [`Summary::newer_minor`] tells tools when that
//!   happened.
//! * **Major** bumps are for everything else (renamed, removed or re-typed fields, fields whose
//!   absence changes behaviour). A reader refuses any major other than its own
//!   ([`StateError::UnsupportedVersion`]).
//!
//! Writes are atomic: the file is written to a temporary name in the same directory, fsynced,
//! renamed over the destination, and the directory is fsynced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::crc64::crc64;

/// Magic at the start of every snapshot state file.
pub const STATE_MAGIC: [u8; 8] = *b"TARTSNAP";
/// Body-schema major version written and read by this build.
pub const FORMAT_MAJOR: u16 = 1;
/// Body-schema minor version written by this build. One bump per added device kind:
///
/// * 1.1 added the virtio devices (`devices`) with the `block` kind. A 1.0 reader ignores them
///   and would restore a VM without its devices; no 1.0 writer could snapshot a VM that had
///   any, and 1.1 readers load 1.0 files as VMs without devices.
/// * 1.2 added the `net` device kind, 1.3 the `vsock` kind. A reader that does not know a kind
///   refuses the file, naming the kind (it cannot create that device). Builds before these
///   bumps wrote both kinds under 1.1; every reader since loads those files unchanged.
/// * 1.4 added the vsock's `next_host_port` and `open_connections`: a 1.4 reader goes on
///   from that port and resets those connections one by one instead of the whole transport;
///   1.3 files lack both and are restored as before (transport reset, ports from the first).
///   An older reader ignores them and resets the transport, which is safe.
pub const FORMAT_MINOR: u16 = 4;

const HEADER_LEN: usize = 20;
const CRC_LEN: usize = 8;

/// Errors from reading or writing envelope files.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file could not be opened or read (missing, permissions, I/O error).
    #[error("cannot read snapshot file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file could not be written.
    #[error("cannot write snapshot file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file ends before its header or its declared body and CRC.
    #[error("snapshot file is truncated: {actual} bytes, expected {expected}")]
    Truncated {
        /// Bytes needed.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The file does not start with the expected magic.
    #[error("not a Tartarus {kind} (bad magic)")]
    BadMagic {
        /// What kind of file was expected ("snapshot", "working-set file").
        kind: &'static str,
    },
    /// The file is longer than its header says.
    #[error("snapshot file is corrupt: {0} unexpected bytes after the CRC")]
    TrailingData(u64),
    /// The stored CRC does not match the contents.
    #[error(
        "snapshot file is corrupt: CRC mismatch (stored {stored:#018x}, computed {computed:#018x})"
    )]
    CrcMismatch {
        /// CRC stored in the file.
        stored: u64,
        /// CRC of the contents.
        computed: u64,
    },
    /// The body schema's major version is not the one this build reads.
    #[error("snapshot format version {major}.{minor}, this VMM reads major {supported}")]
    UnsupportedVersion {
        /// Major version in the file.
        major: u16,
        /// Minor version in the file.
        minor: u16,
        /// Major version this build reads.
        supported: u16,
    },
    /// The body is not valid for the requested type.
    #[error("snapshot body does not parse: {0}")]
    Parse(#[source] serde_json::Error),
    /// The value could not be serialized.
    #[error("cannot serialize snapshot body: {0}")]
    Serialize(#[source] serde_json::Error),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, StateError>;

/// What [`describe`] found in a state file.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Format version in the file, (major, minor).
    pub version: (u16, u16),
    /// Whether this build can load it (same major).
    pub supported: bool,
    /// The file's minor is newer than this build's: fields this build does not know are ignored.
    pub newer_minor: bool,
    /// Body length in bytes.
    pub body_len: u64,
    /// Whole-file length in bytes.
    pub file_len: u64,
    /// CRC stored in the file.
    pub stored_crc: u64,
    /// CRC computed over the contents.
    pub computed_crc: u64,
    /// `stored_crc == computed_crc`.
    pub crc_ok: bool,
    /// The body as untyped JSON, for printing.
    pub body: serde_json::Value,
}

/// A component whose state goes into a snapshot.
///
/// `save` is called on a paused VM and must not fail: it only copies state that was already
/// captured. `restore` builds the component from that state plus whatever context it needs (for
/// example guest memory, an event fd or the VM fd), so `Ctx` is usually a small struct of
/// references owned by the caller.
pub trait Persist {
    /// The serialized form. Add fields only with `#[serde(default)]` (see the module docs).
    type State: Serialize + DeserializeOwned;
    /// What `restore` needs besides the state.
    type Ctx;
    /// Why `restore` can fail.
    type Error;

    /// Captures the component's state.
    fn save(&self) -> Self::State;

    /// Rebuilds the component from `state`.
    fn restore(ctx: Self::Ctx, state: &Self::State) -> std::result::Result<Self, Self::Error>
    where
        Self: Sized;
}

/// Writes `value` as a snapshot state file at `path`, atomically and durably.
pub fn write_state_file<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let body = serde_json::to_vec(value).map_err(StateError::Serialize)?;
    write_envelope(path, STATE_MAGIC, FORMAT_MAJOR, FORMAT_MINOR, &body)
}

/// Reads and checks a snapshot state file, then parses its body as `T`.
pub fn read_state_file<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let env = read_envelope(path, STATE_MAGIC, "snapshot")?;
    env.check(FORMAT_MAJOR)?;
    serde_json::from_slice(env.body()).map_err(StateError::Parse)
}

/// Parses a state file for display. A CRC mismatch or a foreign major version is reported in
/// the [`Summary`] rather than as an error; a missing or truncated file, a bad magic or a body
/// that is not JSON are still errors.
pub fn describe(path: &Path) -> Result<Summary> {
    let env = read_envelope(path, STATE_MAGIC, "snapshot")?;
    let body = serde_json::from_slice(env.body()).map_err(StateError::Parse)?;
    Ok(Summary {
        version: (env.major, env.minor),
        supported: env.major == FORMAT_MAJOR,
        newer_minor: env.major == FORMAT_MAJOR && env.minor > FORMAT_MINOR,
        body_len: env.body_len() as u64,
        file_len: env.bytes.len() as u64,
        stored_crc: env.stored_crc,
        computed_crc: env.computed_crc,
        crc_ok: env.stored_crc == env.computed_crc,
        body,
    })
}

/// A parsed, not yet validated envelope.
pub(crate) struct Envelope {
    bytes: Vec<u8>,
    major: u16,
    minor: u16,
    stored_crc: u64,
    computed_crc: u64,
}

impl Envelope {
    fn body_len(&self) -> usize {
        self.bytes.len() - HEADER_LEN - CRC_LEN
    }

    pub(crate) fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..HEADER_LEN + self.body_len()]
    }

    /// CRC first (a flipped version byte is corruption, not a version), then the major version.
    pub(crate) fn check(&self, supported_major: u16) -> Result<()> {
        if self.stored_crc != self.computed_crc {
            return Err(StateError::CrcMismatch {
                stored: self.stored_crc,
                computed: self.computed_crc,
            });
        }
        if self.major != supported_major {
            return Err(StateError::UnsupportedVersion {
                major: self.major,
                minor: self.minor,
                supported: supported_major,
            });
        }
        Ok(())
    }
}

/// Serializes the envelope into bytes.
pub(crate) fn encode_envelope(magic: [u8; 8], major: u16, minor: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + CRC_LEN);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&major.to_le_bytes());
    out.extend_from_slice(&minor.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc64(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Writes an envelope atomically (temp file, fsync, rename, fsync of the directory).
pub(crate) fn write_envelope(
    path: &Path,
    magic: [u8; 8],
    major: u16,
    minor: u16,
    body: &[u8],
) -> Result<()> {
    let bytes = encode_envelope(magic, major, minor, body);
    let werr = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = temp_path(path);
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_parent(path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map_err(werr)
}

/// Reads an envelope and checks magic and lengths (not CRC or version).
pub(crate) fn read_envelope(path: &Path, magic: [u8; 8], kind: &'static str) -> Result<Envelope> {
    let rerr = |source| StateError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    crate::host_file::open_regular_read_only(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(rerr)?;
    decode_envelope(bytes, magic, kind)
}

pub(crate) fn decode_envelope(
    bytes: Vec<u8>,
    magic: [u8; 8],
    kind: &'static str,
) -> Result<Envelope> {
    let len = bytes.len();
    let have = len.min(magic.len());
    if bytes[..have] != magic[..have] {
        return Err(StateError::BadMagic { kind });
    }
    if len < HEADER_LEN {
        return Err(StateError::Truncated {
            expected: (HEADER_LEN + CRC_LEN) as u64,
            actual: len as u64,
        });
    }
    let major = u16::from_le_bytes([bytes[8], bytes[9]]);
    let minor = u16::from_le_bytes([bytes[10], bytes[11]]);
    let body_len = u64::from_le_bytes(bytes[12..20].try_into().unwrap());
    let expected = (HEADER_LEN as u64 + CRC_LEN as u64).saturating_add(body_len);
    if (len as u64) < expected {
        return Err(StateError::Truncated {
            expected,
            actual: len as u64,
        });
    }
    if len as u64 > expected {
        return Err(StateError::TrailingData(len as u64 - expected));
    }
    let crc_at = len - CRC_LEN;
    let stored_crc = u64::from_le_bytes(bytes[crc_at..].try_into().unwrap());
    let computed_crc = crc64(&bytes[..crc_at]);
    Ok(Envelope {
        bytes,
        major,
        minor,
        stored_crc,
        computed_crc,
    })
}

/// `dir/.name.tmp.PID` next to `path`, so the rename stays within one file system.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

/// Fsyncs the directory holding `path` so a rename into it is durable.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
