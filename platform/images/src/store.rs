//! The image store: a JSON index of pulled images (`<root>/images.json`) over the blob cache,
//! the built root file systems (`<root>/rootfs/<key>/`), name lookup and garbage collection.
//!
//! Every change to the index is a write of a new file and a rename, under the store's lock,
//! so a crash leaves either the old or the new index; blobs that a crash left unreferenced are
//! removed by the next prune.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::blobs::{BlobError, BlobStore, Digest};
use crate::manifest::{Descriptor, ImageConfig};
use crate::source;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no image '{0}' (see `tartarus image ls`)")]
    NotFound(String),
    #[error("'{0}' matches more than one image; use more of the id")]
    Ambiguous(String),
    #[error("image {id} is used by {users}; remove those first or use force")]
    InUse { id: String, users: String },
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("image index {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image index {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// One pulled image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The manifest digest (the image's id).
    pub id: Digest,
    /// The names it can be found by (`registry/repo:tag`), none for a dangling image.
    pub names: Vec<String>,
    /// Where it came from (a registry reference, `oci:DIR`, `docker-archive:FILE`).
    pub source: String,
    pub config_digest: Digest,
    pub layers: Vec<Descriptor>,
    pub config: ImageConfig,
    /// Sum of the blob sizes (compressed layers + config + manifest).
    pub size: u64,
    /// Unix seconds.
    pub pulled_at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    images: Vec<ImageRecord>,
}

/// What a prune or a removal freed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freed {
    pub images: Vec<String>,
    pub blobs: usize,
    pub rootfs: usize,
    pub bytes: u64,
}

pub struct ImageStore {
    root: PathBuf,
    pub blobs: BlobStore,
    lock: Mutex<()>,
}

impl ImageStore {
    pub fn open(root: &Path) -> Result<ImageStore, StoreError> {
        let blobs = BlobStore::open(root)?;
        let rootfs = root.join("rootfs");
        fs::create_dir_all(&rootfs).map_err(|source| StoreError::Io {
            path: rootfs,
            source,
        })?;
        let s = ImageStore {
            root: root.to_path_buf(),
            blobs,
            lock: Mutex::new(()),
        };
        s.read()?;
        Ok(s)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    fn read(&self) -> Result<Index, StoreError> {
        let path = self.index_path();
        match fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|source| StoreError::Corrupt { path, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    fn write(&self, idx: &Index) -> Result<(), StoreError> {
        let path = self.index_path();
        let tmp = path.with_extension("json.tmp");
        let io = |source| StoreError::Io {
            path: tmp.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(idx).expect("the index serializes");
        let f = fs::File::create(&tmp).map_err(io)?;
        std::io::Write::write_all(&mut &f, &bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        Ok(self.read()?.images)
    }

    /// Finds an image by name (as typed: `edge`, `host:5000/edge:v1`, normalized like a pull),
    /// by id (`sha256:...`) or by a unique prefix of at least 4 hex digits of the id.
    pub fn get(&self, what: &str) -> Result<ImageRecord, StoreError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let idx = self.read()?;
        find(&idx, what).map(|i| idx.images[i].clone())
    }

    /// Adds a pulled image; the names move from any image that had them (which becomes
    /// dangling if that was its last name).
    pub fn add(&self, rec: ImageRecord) -> Result<ImageRecord, StoreError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut idx = self.read()?;
        for other in idx.images.iter_mut() {
            other.names.retain(|n| !rec.names.contains(n));
        }
        let rec = match idx.images.iter_mut().find(|i| i.id == rec.id) {
            Some(same) => {
                for n in &rec.names {
                    if !same.names.contains(n) {
                        same.names.push(n.clone());
                    }
                }
                same.source = rec.source.clone();
                same.pulled_at = rec.pulled_at;
                same.clone()
            }
            None => {
                idx.images.push(rec.clone());
                rec
            }
        };
        self.write(&idx)?;
        Ok(rec)
    }

    /// Removes a name (or, given an id, the whole image), then frees what nothing references.
    /// `users` names what still uses the image (templates); unless `force`, such an image stays.
    pub fn remove(&self, what: &str, users: &[String], force: bool) -> Result<Freed, StoreError> {
        let mut freed = Freed::default();
        {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            let mut idx = self.read()?;
            let i = find(&idx, what)?;
            let by_id = what.starts_with("sha256:")
                || !idx.images[i].names.iter().any(|n| matches_name(n, what));
            let last_name = idx.images[i].names.len() <= 1;
            if (by_id || last_name) && !users.is_empty() && !force {
                return Err(StoreError::InUse {
                    id: idx.images[i].id.short().to_string(),
                    users: users.join(", "),
                });
            }
            if by_id || last_name {
                let rec = idx.images.remove(i);
                freed.images.push(rec.id.to_string());
            } else {
                idx.images[i].names.retain(|n| !matches_name(n, what));
            }
            self.write(&idx)?;
        }
        let more = self.collect(false)?;
        freed.blobs = more.blobs;
        freed.rootfs = more.rootfs;
        freed.bytes = more.bytes;
        Ok(freed)
    }

    /// `image prune`: removes dangling images (no names) unless `keep` names them, then every
    /// blob and root fs nothing references.
    pub fn prune(&self, keep: &[Digest]) -> Result<Freed, StoreError> {
        let mut images = vec![];
        {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            let mut idx = self.read()?;
            idx.images.retain(|r| {
                let drop = r.names.is_empty() && !keep.contains(&r.id);
                if drop {
                    images.push(r.id.to_string());
                }
                !drop
            });
            self.write(&idx)?;
        }
        let mut f = self.collect(true)?;
        f.images = images;
        Ok(f)
    }

    /// Deletes blobs and root file systems that no image references (and, with `tmp`, the
    /// leftovers of interrupted pulls and builds).
    fn collect(&self, tmp: bool) -> Result<Freed, StoreError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let idx = self.read()?;
        let mut live = std::collections::HashSet::new();
        for r in &idx.images {
            live.insert(r.id.clone());
            live.insert(r.config_digest.clone());
            live.extend(r.layers.iter().map(|l| l.digest.clone()));
        }
        let mut f = Freed::default();
        for d in self.blobs.list()? {
            if !live.contains(&d) {
                f.bytes += self.blobs.remove(&d)?;
                f.blobs += 1;
            }
        }
        let dir = self.root.join("rootfs");
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                let meta = crate::rootfs::read_meta(&e.path());
                let used = meta.as_ref().is_some_and(|m| live.contains(&m.image));
                if !used {
                    f.bytes += dir_bytes(&e.path());
                    let _ = fs::remove_dir_all(e.path());
                    f.rootfs += 1;
                }
            }
        }
        if tmp {
            self.blobs.clean_tmp();
        }
        Ok(f)
    }
}

fn dir_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file() && m.nlink() == 1)
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// Whether the stored name `name` is what the user meant by `what`.
fn matches_name(name: &str, what: &str) -> bool {
    name == what || source::normalize_name(what).is_some_and(|n| n == name)
}

fn find(idx: &Index, what: &str) -> Result<usize, StoreError> {
    if let Some(i) = idx
        .images
        .iter()
        .position(|r| r.names.iter().any(|n| matches_name(n, what)))
    {
        return Ok(i);
    }
    let hex = what.strip_prefix("sha256:").unwrap_or(what);
    if hex.len() >= 4 && hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        let hits: Vec<usize> = (0..idx.images.len())
            .filter(|&i| idx.images[i].id.hex().starts_with(hex))
            .collect();
        match hits.len() {
            1 => return Ok(hits[0]),
            0 => {}
            _ => return Err(StoreError::Ambiguous(what.into())),
        }
    }
    Err(StoreError::NotFound(what.into()))
}
