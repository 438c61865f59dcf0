//! The content-addressed blob cache: `<root>/blobs/sha256/<hex>`, shared by every image.
//!
//! A blob is written to `<root>/tmp/` first and renamed into place only once its SHA-256 has
//! been checked, so the cache never holds a half-written or mismatched blob.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("'{0}' is not a sha256 digest (sha256:<64 hex digits>)")]
    BadDigest(String),
    #[error("blob {expected} does not match its digest: its content hashes to {actual}")]
    Mismatch { expected: Digest, actual: Digest },
    #[error("blob {digest}: {size} bytes, the manifest says {expected}")]
    SizeMismatch {
        digest: Digest,
        size: u64,
        expected: u64,
    },
    #[error("blob cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A `sha256:<64 lowercase hex>` digest (the only algorithm images here use).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }
    pub fn from_hasher(h: Sha256) -> Digest {
        Digest(format!("sha256:{}", hex(&h.finalize())))
    }
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
    /// The first 12 hex digits, as `docker images` shows ids.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl FromStr for Digest {
    type Err = BlobError;
    fn from_str(s: &str) -> Result<Self, BlobError> {
        let ok = s.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        });
        if ok {
            Ok(Digest(s.to_string()))
        } else {
            Err(BlobError::BadDigest(s.chars().take(100).collect()))
        }
    }
}
impl TryFrom<String> for Digest {
    type Error = BlobError;
    fn try_from(s: String) -> Result<Self, BlobError> {
        s.parse()
    }
}
impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The blob cache under one root directory.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl BlobStore {
    /// Opens (creating) `<root>/blobs/sha256` and `<root>/tmp`. Leftovers in `tmp` from a
    /// crash are removed by [`BlobStore::clean_tmp`], which the owner calls when no pull runs.
    pub fn open(root: &Path) -> Result<BlobStore, BlobError> {
        let dir = root.join("blobs/sha256");
        let tmp = root.join("tmp");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        Ok(BlobStore { dir, tmp })
    }

    pub fn clean_tmp(&self) {
        if let Ok(rd) = fs::read_dir(&self.tmp) {
            for e in rd.flatten() {
                let p = e.path();
                let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
            }
        }
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    pub fn has(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// A fresh path under the cache's temporary directory (same file system as the blobs).
    pub fn temp_path(&self, what: &str) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Hashes the finished temporary file `tmp` and moves it into place as `expected`;
    /// removes it and fails when the content does not match.
    pub fn commit(
        &self,
        tmp: &Path,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<(), BlobError> {
        let res = (|| {
            let (actual, size) = hash_file(tmp)?;
            if &actual != expected {
                return Err(BlobError::Mismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
            if let Some(want) = expected_size.filter(|w| *w != size) {
                return Err(BlobError::SizeMismatch {
                    digest: expected.clone(),
                    size,
                    expected: want,
                });
            }
            let dst = self.path(expected);
            fs::rename(tmp, &dst).map_err(io_err(&dst))
        })();
        if res.is_err() {
            let _ = fs::remove_file(tmp);
        }
        res
    }

    /// Stores `bytes` and returns their digest.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest, BlobError> {
        let d = Digest::of(bytes);
        if self.has(&d) {
            return Ok(d);
        }
        let tmp = self.temp_path("put");
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        drop(f);
        self.commit(&tmp, &d, None)?;
        Ok(d)
    }

    pub fn read(&self, d: &Digest) -> Result<Vec<u8>, BlobError> {
        let p = self.path(d);
        fs::read(&p).map_err(io_err(&p))
    }

    pub fn remove(&self, d: &Digest) -> Result<u64, BlobError> {
        let p = self.path(d);
        let size = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(&p) {
            Ok(()) => Ok(size),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// Every blob in the cache.
    pub fn list(&self) -> Result<Vec<Digest>, BlobError> {
        let rd = fs::read_dir(&self.dir).map_err(io_err(&self.dir))?;
        Ok(rd
            .flatten()
            .filter_map(|e| {
                format!("sha256:{}", e.file_name().to_string_lossy())
                    .parse()
                    .ok()
            })
            .collect())
    }
}

/// SHA-256 and length of a file.
pub fn hash_file(path: &Path) -> Result<(Digest, u64), BlobError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io_err(path))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((Digest::from_hasher(h), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("tartarus-blobs-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn digests_parse_strictly() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(good.parse::<Digest>().is_ok());
        for bad in [
            "sha256:abc".to_string(),
            format!("sha512:{}", "a".repeat(64)),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:../{}", "a".repeat(61)),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_mismatched_blob_never_enters_the_cache() {
        let root = tempdir("mismatch");
        let s = BlobStore::open(&root).unwrap();
        let d = s.put(b"hello").unwrap();
        assert_eq!(s.read(&d).unwrap(), b"hello");
        let tmp = s.temp_path("t");
        fs::write(&tmp, b"evil").unwrap();
        let want = Digest::of(b"good");
        let e = s.commit(&tmp, &want, None).unwrap_err();
        assert!(matches!(e, BlobError::Mismatch { .. }), "{e}");
        assert!(!s.has(&want) && !tmp.exists());
        let tmp = s.temp_path("t");
        fs::write(&tmp, b"good").unwrap();
        let e = s.commit(&tmp, &want, Some(5)).unwrap_err();
        assert!(matches!(e, BlobError::SizeMismatch { .. }), "{e}");
        assert_eq!(s.list().unwrap(), vec![d]);
        fs::remove_dir_all(root).unwrap();
    }
}
