//! Image → bootable ext4 root file system: unpack the layers into a staging directory, add
//! what a Tartarus guest needs (`/.tartarus/init`, the image config, the mount points
//! tartarus-init uses), and `mkfs.ext4 -d` it (no loop mounts), sized to the content plus
//! headroom. The result is cached under `<store>/rootfs/<key>/`, the key being a hash of the
//! image id, the init binary and [`BUILDER_VERSION`]: building the same image again is instant.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::blobs::{self, Digest};
use crate::manifest;
use crate::store::{ImageRecord, ImageStore};
use crate::unpack::{self, Layer, UnpackError, UnpackOptions};

/// Bumped when what a build puts into the file system changes.
pub const BUILDER_VERSION: &str = "tartarus-rootfs-v1";
/// Where the init lands inside the image (boot with `init=` this).
pub const INIT_PATH: &str = "/.tartarus/init";
/// The image's run config, as JSON, inside the image.
pub const CONFIG_PATH: &str = "/.tartarus/image.json";
pub const IMAGE_FILE: &str = "rootfs.ext4";
const META_FILE: &str = "meta.json";

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error(transparent)]
    Blob(#[from] blobs::BlobError),
    #[error("the image's layer {digest} is not in the cache (pull the image again)")]
    MissingLayer { digest: Digest },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mkfs.ext4 failed: {0}")]
    Mkfs(String),
    #[error("the init binary {0} is not an executable file")]
    Init(PathBuf),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The tartarus-init binary to inject.
    pub init: PathBuf,
    /// Refuse images whose unpacked files are over this many bytes.
    pub max_bytes: Option<u64>,
}

/// What is recorded beside a built image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub image: Digest,
    pub builder: String,
    pub init_sha256: String,
    /// Bytes of files in the image, and the image file's size.
    pub content_bytes: u64,
    pub image_bytes: u64,
    /// Random, made once per build. Two builds of one image are not byte-identical (mkfs
    /// picks UUIDs, hash seeds and times), so whatever depends on the bytes (a ready snapshot
    /// whose guest has read them) is keyed by this, not by the build key; the file never
    /// changes after its build (it is shared read-only), so this stands for its content
    /// without hashing hundreds of MB.
    #[serde(default)]
    pub build_id: String,
    pub built_at: u64,
}

/// Time per phase, for the benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phases {
    pub unpack_ms: u64,
    pub mkfs_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Built {
    pub path: PathBuf,
    pub key: String,
    pub cached: bool,
    pub meta: Meta,
    pub phases: Phases,
}

pub fn read_meta(dir: &Path) -> Option<Meta> {
    serde_json::from_slice(&fs::read(dir.join(META_FILE)).ok()?).ok()
}

/// The cache key of an image built with `init`.
pub fn key(image: &Digest, init: &Path) -> Result<String, RootfsError> {
    let (init_digest, _) = blobs::hash_file(init)?;
    let mut h = Sha256::new();
    h.update(BUILDER_VERSION);
    h.update(image.as_str());
    h.update(init_digest.as_str());
    Ok(blobs::hex(&h.finalize()[..12]))
}

/// Builds (or finds in the cache) the root file system of `rec`. Blocking.
pub fn build(
    store: &ImageStore,
    rec: &ImageRecord,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Built, RootfsError> {
    let init_ok = fs::metadata(&opts.init).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0);
    if !init_ok {
        return Err(RootfsError::Init(opts.init.clone()));
    }
    let key = key(&rec.id, &opts.init)?;
    let dir = store.root().join("rootfs").join(&key);
    let path = dir.join(IMAGE_FILE);
    if let (true, Some(meta)) = (path.is_file(), read_meta(&dir)) {
        return Ok(Built {
            path,
            key,
            cached: true,
            meta,
            phases: Phases::default(),
        });
    }
    let layers = rec
        .layers
        .iter()
        .map(|l| {
            if !store.blobs.has(&l.digest) {
                return Err(RootfsError::MissingLayer {
                    digest: l.digest.clone(),
                });
            }
            Ok(Layer {
                path: store.blobs.path(&l.digest),
                digest: l.digest.to_string(),
                compression: manifest::compression(&l.media_type).ok().flatten(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let work = store.blobs.temp_path("build");
    let stage = work.join("root");
    fs::create_dir_all(&stage).map_err(io("creating", &stage))?;
    let res = (|| {
        let t = Instant::now();
        let n = layers.len();
        let mut last = usize::MAX;
        let stats = unpack::unpack(
            &layers,
            &stage,
            &UnpackOptions {
                max_bytes: opts.max_bytes,
            },
            &mut |i, _| {
                if i != last {
                    last = i;
                    progress(&format!("unpacking layer {}/{n}", i + 1));
                }
            },
        )?;
        let unpack_ms = t.elapsed().as_millis() as u64;
        inject(&stage, rec, &opts.init)?;
        progress("making the ext4 file system");
        let t = Instant::now();
        // Size from what the unpack wrote (every file rounded up to a block), not a walk.
        let content_bytes = stats.bytes + (stats.entries + 16) * 4096;
        let inodes = stats.entries + 16;
        let img = work.join(IMAGE_FILE);
        mkfs(&stage, &img, content_bytes, inodes)?;
        let mkfs_ms = t.elapsed().as_millis() as u64;
        let (init_sha256, _) = blobs::hash_file(&opts.init)?;
        let build_id = random_id().map_err(io("reading", Path::new("/dev/urandom")))?;
        let meta = Meta {
            image: rec.id.clone(),
            builder: BUILDER_VERSION.into(),
            init_sha256: init_sha256.to_string(),
            content_bytes,
            image_bytes: fs::metadata(&img).map(|m| m.len()).unwrap_or(0),
            build_id,
            built_at: crate::pull::now_s(),
        };
        fs::write(
            work.join(META_FILE),
            serde_json::to_vec_pretty(&meta).expect("serializes"),
        )
        .map_err(io("writing", &work))?;
        // The staging tree (thousands of files) goes in the background: nobody waits for it.
        let trash = store.blobs.temp_path("trash");
        if fs::rename(&stage, &trash).is_ok() {
            std::thread::spawn(move || {
                let _ = fs::remove_dir_all(&trash);
            });
        }
        // A concurrent build of the same image may have won: theirs is as good as ours.
        if fs::rename(&work, &dir).is_err() && !path.is_file() {
            return Err(RootfsError::Io {
                what: "moving into the cache",
                path: dir.clone(),
                source: std::io::Error::other("rename failed"),
            });
        }
        Ok(Built {
            path: path.clone(),
            key: key.clone(),
            cached: false,
            meta,
            phases: Phases { unpack_ms, mkfs_ms },
        })
    })();
    if work.exists() {
        let _ = fs::remove_dir_all(&work);
    }
    res
}

/// Makes `stage/NAME` a real directory with `mode` (whatever the image had there: only
/// top-level names, checked without following links).
fn ensure_dir(stage: &Path, name: &str, mode: u32) -> Result<(), RootfsError> {
    let p = stage.join(name);
    match fs::symlink_metadata(&p) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(m) if m.is_symlink() || m.is_file() => {
            fs::remove_file(&p).map_err(io("replacing", &p))?
        }
        Ok(_) => fs::remove_file(&p).map_err(io("replacing", &p))?,
        Err(_) => {}
    }
    fs::create_dir(&p).map_err(io("creating", &p))?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(io("chmod", &p))
}

/// Adds the init, the image config and the mount points.
fn inject(stage: &Path, rec: &ImageRecord, init: &Path) -> Result<(), RootfsError> {
    for (d, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
    ] {
        ensure_dir(stage, d, mode)?;
    }
    let t = stage.join(".tartarus");
    if fs::symlink_metadata(&t).is_ok() {
        fs::remove_dir_all(&t)
            .or_else(|_| fs::remove_file(&t))
            .map_err(io("replacing", &t))?;
    }
    ensure_dir(stage, ".tartarus", 0o755)?;
    let dst = stage.join(INIT_PATH.trim_start_matches('/'));
    fs::copy(init, &dst).map_err(io("copying the init to", &dst))?;
    fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)).map_err(io("chmod", &dst))?;
    let cfg = stage.join(CONFIG_PATH.trim_start_matches('/'));
    let doc = serde_json::json!({"image": rec.id, "names": rec.names, "config": rec.config.run});
    fs::write(&cfg, serde_json::to_vec_pretty(&doc).expect("serializes"))
        .map_err(io("writing", &cfg))?;
    Ok(())
}

fn random_id() -> std::io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(blobs::hex(&b))
}

fn mkfs(stage: &Path, img: &Path, content: u64, inodes: u64) -> Result<(), RootfsError> {
    // Content + metadata overhead (inode tables, directories, extents) + room for the
    // overlay's lower layer to be read as is: 15% + 64 MiB, whole MiB.
    let mib = (content + content / 7 + (64 << 20)).div_ceil(1 << 20);
    let inodes = inodes + inodes / 4 + 4096;
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "tartarus-root",
            "-O",
            "^has_journal",
            "-m",
            "0",
        ])
        .arg("-N")
        .arg(inodes.to_string())
        .arg("-E")
        .arg("nodiscard")
        .arg("-d")
        .arg(stage)
        .arg(img)
        .arg(format!("{mib}M"))
        .output()
        .map_err(|e| RootfsError::Mkfs(format!("cannot run mkfs.ext4 (install e2fsprogs): {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let _ = fs::remove_file(img);
        return Err(RootfsError::Mkfs(err.trim().chars().take(2000).collect()));
    }
    Ok(())
}
