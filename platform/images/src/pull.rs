//! Pulls: from a registry over the OCI distribution API (oci-client: anonymous, basic and
//! bearer-token auth, indexes resolved to linux/amd64, layers fetched concurrently, every blob
//! checked against its digest, retries with backoff), and from local OCI layouts and
//! `docker save` archives (archive.rs). Everything lands in the blob cache first; the image
//! index learns of an image only once all of its blobs are there.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::blobs::{BlobError, Digest};
use crate::manifest::{self, Descriptor, Document, ManifestError};
use crate::source::{self, Source, SourceError};
use crate::store::{ImageRecord, ImageStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(
        "{registry}: authentication failed ({detail}); check the user name and password or token"
    )]
    Auth { registry: String, detail: String },
    #[error("{0}: no such image or tag in the registry")]
    NotFound(String),
    #[error("{registry} cannot be reached after {tries} tries: {detail}")]
    Unreachable {
        registry: String,
        tries: u32,
        detail: String,
    },
    #[error("{registry}: {detail}")]
    Registry { registry: String, detail: String },
    #[error("image {image}: {source}")]
    Manifest {
        image: String,
        #[source]
        source: ManifestError,
    },
    #[error(
        "the image is {size} bytes compressed, over the limit of {limit} bytes (--max-image-size)"
    )]
    TooLarge { size: u64, limit: u64 },
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what}: {detail}")]
    Archive { what: String, detail: String },
    #[error("writing to the image cache: {0}")]
    Io(#[source] std::io::Error),
}

/// Registry credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Auth {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A registry bearer token, sent as is.
    Bearer {
        token: String,
    },
}

#[derive(Debug, Clone)]
pub struct PullOptions {
    pub auth: Auth,
    /// Registries (`host[:port]`) spoken to over plain HTTP. Loopback registries (localhost,
    /// 127.0.0.0/8, ::1) always are, as Docker does.
    pub insecure_registries: Vec<String>,
    pub concurrency: usize,
    /// Tries per request (the first included) before a registry counts as unreachable.
    pub tries: u32,
    /// First backoff between tries (doubled each time).
    pub backoff: Duration,
    /// Connect and read timeout of one request.
    pub timeout: Duration,
    /// Refuse images whose compressed size is over this.
    pub max_image_size: Option<u64>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            auth: Auth::Anonymous,
            insecure_registries: vec![],
            concurrency: 4,
            tries: 4,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(30),
            max_image_size: None,
        }
    }
}

/// Progress of a pull, as NDJSON lines to the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// The manifest is known: what will be fetched.
    Resolved {
        image: String,
        digest: Digest,
        layers: usize,
        bytes: u64,
    },
    /// Bytes of one layer so far (sent every few MB).
    Progress {
        digest: Digest,
        done: u64,
        total: u64,
    },
    /// One layer is in the cache (`cached`: it already was).
    Layer {
        digest: Digest,
        bytes: u64,
        cached: bool,
    },
    /// A retry after a failed request.
    Retry {
        what: String,
        attempt: u32,
        error: String,
    },
}

pub type Progress = Arc<dyn Fn(PullEvent) + Send + Sync>;

pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Pulls `input` (any [`Source`]) into `store`; `name` overrides the name it is stored under.
pub async fn pull(
    store: &ImageStore,
    input: &str,
    name: Option<&str>,
    opts: &PullOptions,
    progress: Progress,
) -> Result<ImageRecord, PullError> {
    let src = Source::parse(input)?;
    let mut rec = match &src {
        Source::Registry(r) => pull_registry(store, r, opts, &progress).await?,
        Source::OciLayout { dir, tag } => {
            let (store2, dir, tag) = (clone_root(store)?, dir.clone(), tag.clone());
            let max = opts.max_image_size;
            tokio::task::spawn_blocking(move || {
                crate::archive::oci_layout(&store2, &dir, tag.as_deref(), max)
            })
            .await
            .map_err(|e| PullError::Io(std::io::Error::other(e)))??
        }
        Source::DockerArchive { file, name } => {
            let (store2, file, n) = (clone_root(store)?, file.clone(), name.clone());
            let max = opts.max_image_size;
            tokio::task::spawn_blocking(move || {
                crate::archive::docker_archive(&store2, &file, n.as_deref(), max)
            })
            .await
            .map_err(|e| PullError::Io(std::io::Error::other(e)))??
        }
    };
    if let Some(n) = name {
        let n = source::normalize_name(n).ok_or_else(|| SourceError::BadReference {
            input: n.into(),
            reason: "not a name[:tag]".into(),
        })?;
        rec.names = vec![n];
    }
    rec.source = src.describe();
    rec.pulled_at = now_s();
    Ok(store.add(rec)?)
}

/// A second handle on the same store root, for blocking tasks.
fn clone_root(store: &ImageStore) -> Result<ImageStore, PullError> {
    Ok(ImageStore::open(store.root())?)
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn client(reference: &Reference, opts: &PullOptions) -> Client {
    let reg = reference.resolve_registry().to_string();
    let plain = is_loopback(&reg) || opts.insecure_registries.iter().any(|r| r == &reg);
    Client::new(ClientConfig {
        protocol: if plain {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(opts.timeout),
        read_timeout: Some(opts.timeout),
        max_concurrent_download: opts.concurrency.max(1),
        ..Default::default()
    })
}

fn registry_auth(a: &Auth) -> RegistryAuth {
    match a {
        Auth::Anonymous => RegistryAuth::Anonymous,
        Auth::Basic { username, password } => {
            RegistryAuth::Basic(username.clone(), password.clone())
        }
        Auth::Bearer { token } => RegistryAuth::Bearer(token.clone()),
    }
}

/// What a failed request means for the pull.
enum Failure {
    Retry(String),
    Fatal(PullError),
}

fn classify(e: OciDistributionError, registry: &str, what: &str) -> Failure {
    use OciDistributionError as E;
    let reg = registry.to_string();
    match e {
        E::AuthenticationFailure(d) => Failure::Fatal(PullError::Auth {
            registry: reg,
            detail: d,
        }),
        E::UnauthorizedError { url } => Failure::Fatal(PullError::Auth {
            registry: reg,
            detail: format!("401 Unauthorized at {url}"),
        }),
        E::ImageManifestNotFoundError(_) => Failure::Fatal(PullError::NotFound(what.into())),
        E::ServerError { code, message, .. } if code == 401 || code == 403 => {
            Failure::Fatal(PullError::Auth {
                registry: reg,
                detail: format!("{code} {}", message.trim()),
            })
        }
        E::ServerError { code: 404, .. } => Failure::Fatal(PullError::NotFound(what.into())),
        E::ServerError { code, message, .. } if code >= 500 || code == 429 || code == 408 => {
            Failure::Retry(format!("HTTP {code} {}", message.trim()))
        }
        E::RegistryError { envelope, .. } => {
            let text = format!("{envelope}");
            let codes: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}", e.code))
                .collect();
            if codes.iter().any(|c| c == "Unauthorized" || c == "Denied") {
                Failure::Fatal(PullError::Auth {
                    registry: reg,
                    detail: text,
                })
            } else if codes
                .iter()
                .any(|c| c.contains("Unknown") || c == "NotFound" || c == "NameInvalid")
            {
                Failure::Fatal(PullError::NotFound(what.into()))
            } else if codes.iter().any(|c| c == "Toomanyrequests") {
                Failure::Retry(text)
            } else {
                Failure::Fatal(PullError::Registry {
                    registry: reg,
                    detail: text,
                })
            }
        }
        E::RequestError(r) => Failure::Retry(error_chain(&r)),
        E::IoError(io) => Failure::Retry(io.to_string()),
        other => Failure::Fatal(PullError::Registry {
            registry: reg,
            detail: other.to_string(),
        }),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Runs `op` until it succeeds, fails for good, or has been tried `opts.tries` times.
async fn retry<T, F, Fut>(
    opts: &PullOptions,
    registry: &str,
    what: &str,
    progress: &Progress,
    mut op: F,
) -> Result<T, PullError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut wait = opts.backoff;
    let tries = opts.tries.max(1);
    let mut last = String::new();
    for attempt in 1..=tries {
        match op().await {
            Ok(v) => return Ok(v),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(e)) => {
                tracing::warn!(registry, what, attempt, error = %e, "registry request failed");
                last = e;
                if attempt < tries {
                    progress(PullEvent::Retry {
                        what: what.into(),
                        attempt,
                        error: last.clone(),
                    });
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }
    Err(PullError::Unreachable {
        registry: registry.into(),
        tries,
        detail: last,
    })
}

async fn fetch_manifest(
    c: &Client,
    r: &Reference,
    auth: &RegistryAuth,
    opts: &PullOptions,
    progress: &Progress,
) -> Result<(Vec<u8>, Digest), PullError> {
    let reg = r.resolve_registry().to_string();
    let what = r.whole();
    retry(opts, &reg, &what, progress, || async {
        let (bytes, _) = c
            .pull_manifest_raw(r, auth, manifest::ACCEPTED)
            .await
            .map_err(|e| classify(e, &reg, &what))?;
        let digest = Digest::of(&bytes);
        if let Some(want) = r.digest() {
            if want != digest.as_str() {
                return Err(Failure::Fatal(PullError::Blob(BlobError::Mismatch {
                    expected: want
                        .parse()
                        .map_err(|e| Failure::Fatal(PullError::Blob(e)))?,
                    actual: digest,
                })));
            }
        }
        Ok((bytes.to_vec(), digest))
    })
    .await
}

async fn pull_registry(
    store: &ImageStore,
    r: &Reference,
    opts: &PullOptions,
    progress: &Progress,
) -> Result<ImageRecord, PullError> {
    let c = client(r, opts);
    let auth = registry_auth(&opts.auth);
    let image = r.whole();
    let merr = |source| PullError::Manifest {
        image: image.clone(),
        source,
    };
    let (mut bytes, mut digest) = fetch_manifest(&c, r, &auth, opts, progress).await?;
    let mut target = r.clone();
    let m = match manifest::parse(&bytes, None).map_err(merr)? {
        Document::Manifest(m) => m,
        Document::Index(i) => {
            let e = manifest::pick_amd64(&i).map_err(merr)?;
            target = r.clone_with_digest(e.digest.to_string());
            (bytes, digest) = fetch_manifest(&c, &target, &auth, opts, progress).await?;
            match manifest::parse(&bytes, None).map_err(merr)? {
                Document::Manifest(m) => m,
                Document::Index(_) => {
                    return Err(merr(ManifestError::MediaType(
                        "an index inside an index".into(),
                    )))
                }
            }
        }
    };
    let total: u64 = m.layers.iter().map(|l| l.size).sum::<u64>() + m.config.size;
    if let Some(limit) = opts.max_image_size.filter(|l| total > *l) {
        return Err(PullError::TooLarge { size: total, limit });
    }
    progress(PullEvent::Resolved {
        image: image.clone(),
        digest: digest.clone(),
        layers: m.layers.len(),
        bytes: total,
    });
    fetch_blob(store, &c, &target, &m.config, opts, progress, false).await?;
    let config_bytes = store.blobs.read(&m.config.digest)?;
    let config = manifest::parse_config(&config_bytes, &m).map_err(merr)?;
    // Futures made first: a stream that maps with a closure over borrowed data is not
    // `Send` for every lifetime, and the daemon runs pulls on spawned tasks.
    let fetches: Vec<_> = m
        .layers
        .iter()
        .map(|l| fetch_blob(store, &c, &target, l, opts, progress, true))
        .collect();
    futures_util::stream::iter(fetches)
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    let id = store.blobs.put(&bytes)?;
    debug_assert_eq!(id, digest);
    Ok(ImageRecord {
        id,
        names: source::normalize_name(&image).into_iter().collect(),
        source: image,
        config_digest: m.config.digest.clone(),
        size: total + bytes.len() as u64,
        layers: m.layers,
        config,
        pulled_at: now_s(),
    })
}

const PROGRESS_EVERY: u64 = 4 << 20;

async fn fetch_blob(
    store: &ImageStore,
    c: &Client,
    r: &Reference,
    desc: &Descriptor,
    opts: &PullOptions,
    progress: &Progress,
    layer: bool,
) -> Result<(), PullError> {
    if store.blobs.has(&desc.digest) {
        if layer {
            progress(PullEvent::Layer {
                digest: desc.digest.clone(),
                bytes: desc.size,
                cached: true,
            });
        }
        return Ok(());
    }
    let reg = r.resolve_registry().to_string();
    let what = format!("blob {}", desc.digest);
    retry(opts, &reg, &what, progress, || async {
        let tmp = TempFile(store.blobs.temp_path("pull"));
        // Created here, synchronously: a create still running on a blocking thread when the
        // future is dropped would make the file after the guard removed it.
        let f = std::fs::File::create(&tmp.0).map_err(|e| Failure::Fatal(PullError::Io(e)))?;
        let f = tokio::fs::File::from_std(f);
        download(store, c, r, desc, &tmp.0, f, progress, layer, &reg, &what).await
    })
    .await?;
    if layer {
        progress(PullEvent::Layer {
            digest: desc.digest.clone(),
            bytes: desc.size,
            cached: false,
        });
    }
    Ok(())
}

/// A download's temporary file, removed when the download ends without committing it (after a
/// commit it is gone already). A guard rather than cleanup after the await: when one layer
/// fails, the pull drops the downloads still in flight, which never reach code after an await.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[allow(clippy::too_many_arguments)]
async fn download(
    store: &ImageStore,
    c: &Client,
    r: &Reference,
    desc: &Descriptor,
    tmp: &std::path::Path,
    mut f: tokio::fs::File,
    progress: &Progress,
    layer: bool,
    reg: &str,
    what: &str,
) -> Result<(), Failure> {
    let fatal = |e: PullError| Failure::Fatal(e);
    let mut stream = c
        .pull_blob_stream(r, desc.digest.as_str())
        .await
        .map_err(|e| classify(e, reg, what))?;
    let mut h = Sha256::new();
    let (mut done, mut told) = (0u64, 0u64);
    let mismatch = |h: Sha256| {
        Failure::Fatal(PullError::Blob(BlobError::Mismatch {
            expected: desc.digest.clone(),
            actual: Digest::from_hasher(h),
        }))
    };
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            // The verifying stream fails at the end when the content does not match.
            Err(_) if desc.size > 0 && done >= desc.size => return Err(mismatch(h)),
            Err(e) => return Err(Failure::Retry(e.to_string())),
        };
        if desc.size > 0 && done + chunk.len() as u64 > desc.size {
            return Err(Failure::Fatal(PullError::Blob(BlobError::SizeMismatch {
                digest: desc.digest.clone(),
                size: done + chunk.len() as u64,
                expected: desc.size,
            })));
        }
        h.update(&chunk);
        f.write_all(&chunk)
            .await
            .map_err(|e| fatal(PullError::Io(e)))?;
        done += chunk.len() as u64;
        if layer && done - told >= PROGRESS_EVERY {
            told = done;
            progress(PullEvent::Progress {
                digest: desc.digest.clone(),
                done,
                total: desc.size,
            });
        }
    }
    f.flush().await.map_err(|e| fatal(PullError::Io(e)))?;
    f.sync_all().await.map_err(|e| fatal(PullError::Io(e)))?;
    drop(f);
    let size = (desc.size > 0).then_some(desc.size);
    store
        .blobs
        .commit(tmp, &desc.digest, size)
        .map_err(|e| fatal(PullError::Blob(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_speak_http() {
        for r in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in ["docker.io", "10.0.0.1:5000", "example.com:443"] {
            assert!(!is_loopback(r), "{r}");
        }
    }
}
