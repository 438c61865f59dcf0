//! Signed checkpoints and the signing key.
//!
//! A checkpoint line `{"checkpoint":{"seq":N,"hash":"<hex>","interval":I,"sig":"<hex>"}}`
//! follows record N in the log. `sig` is an ed25519 signature over
//! `"tartarus-audit checkpoint v1\0" || seq (u64 BE) || interval (u64 BE) || hash (32 bytes)`,
//! so rewriting the chain from some record on (recomputing every hash) is caught at the next
//! checkpoint unless the writer also holds the private key. `interval` is the writer's
//! checkpoint spacing: a checkpoint is due after every record whose seq is a multiple of it.
//!
//! The key file holds the 32-byte ed25519 seed as hex (mode 0600, created if missing); the
//! public key is written beside it as `<key file>.pub` (hex) for `verify`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::event::{from_hex, to_hex};

const DOMAIN: &[u8] = b"tartarus-audit checkpoint v1\0";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("Cannot read or write key file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Key file {path} is readable by others (mode {mode:o}); want 0600")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("Key file {0} does not hold a 32-byte hex key")]
    Malformed(PathBuf),
    #[error("No randomness for a new key: {0}")]
    Random(String),
}

/// The body of a checkpoint line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub interval: u64,
    pub sig: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrapper {
    checkpoint: Checkpoint,
}

fn message(seq: u64, interval: u64, hash: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 16 + hash.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&interval.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

impl Checkpoint {
    /// Signs (seq, interval, hash). `hash` is the record's hex hash.
    pub fn sign(key: &SigningKey, seq: u64, hash: &str, interval: u64) -> Checkpoint {
        let raw = from_hex(hash).unwrap_or_default();
        let sig = key.sign(&message(seq, interval, &raw));
        Checkpoint {
            seq,
            hash: hash.to_string(),
            interval,
            sig: to_hex(&sig.to_bytes()),
        }
    }

    /// Whether `sig` is `key`'s signature over this checkpoint's fields.
    pub fn signature_valid(&self, key: &VerifyingKey) -> bool {
        let (Some(raw), Some(sig)) = (from_hex(&self.hash), from_hex(&self.sig)) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&sig) else {
            return false;
        };
        key.verify(&message(self.seq, self.interval, &raw), &sig)
            .is_ok()
    }

    /// The line, without its newline.
    pub fn to_line(&self) -> String {
        serde_json::to_string(&Wrapper {
            checkpoint: self.clone(),
        })
        .expect("a checkpoint always serialises")
    }

    /// Whether `line` is a checkpoint line rather than a record line.
    pub fn is_checkpoint_line(line: &str) -> bool {
        line.starts_with("{\"checkpoint\"")
    }

    /// Parses a checkpoint line.
    pub fn parse(line: &str) -> Result<Checkpoint, serde_json::Error> {
        serde_json::from_str::<Wrapper>(line).map(|w| w.checkpoint)
    }
}

/// `<key file>.pub`.
pub fn public_key_path(key_path: &Path) -> PathBuf {
    let mut s = key_path.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Loads the signing key at `path`, or creates one (mode 0600) and its `.pub` beside it.
/// Returns the key and whether it was created.
pub fn load_or_create_key(path: &Path) -> Result<(SigningKey, bool), KeyError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let mode = fs::metadata(path).map_err(io(path))?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            let bytes: [u8; 32] = from_hex(text.trim())
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| KeyError::Malformed(path.to_path_buf()))?;
            let key = SigningKey::from_bytes(&bytes);
            let pub_path = public_key_path(path);
            if !pub_path.exists() {
                write_public_key(&pub_path, &key.verifying_key())?;
            }
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
            let key = SigningKey::from_bytes(&seed);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir).map_err(io(dir))?;
            }
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io(path))?;
            f.write_all(format!("{}\n", to_hex(&seed)).as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(io(path))?;
            write_public_key(&public_key_path(path), &key.verifying_key())?;
            Ok((key, true))
        }
        Err(e) => Err(io(path)(e)),
    }
}

fn write_public_key(path: &Path, key: &VerifyingKey) -> Result<(), KeyError> {
    fs::write(path, format!("{}\n", to_hex(key.as_bytes()))).map_err(io(path))
}

/// Reads a public key written as hex (the `.pub` file).
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    parse_public_key(text.trim()).ok_or_else(|| KeyError::Malformed(path.to_path_buf()))
}

/// A public key from its hex form.
pub fn parse_public_key(hex: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = from_hex(hex)?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_reject_changes() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let h = "ab".repeat(32);
        let c = Checkpoint::sign(&key, 42, &h, 100);
        assert!(c.signature_valid(&key.verifying_key()));
        assert!(!c.signature_valid(&other.verifying_key()));
        let line = c.to_line();
        assert!(Checkpoint::is_checkpoint_line(&line));
        assert_eq!(Checkpoint::parse(&line).unwrap(), c);
        for bad in [
            Checkpoint {
                seq: 43,
                ..c.clone()
            },
            Checkpoint {
                interval: 1,
                ..c.clone()
            },
            Checkpoint {
                hash: "cd".repeat(32),
                ..c.clone()
            },
        ] {
            assert!(!bad.signature_valid(&key.verifying_key()));
        }
    }
}
