//! OCI images in the daemon: pulls (streamed progress), the image cache's API views, removal
//! and prune (which keep what templates use), and the image → root file system step of a
//! template build. The work itself is in the `tartarus-images` crate.

use std::path::PathBuf;
use std::sync::Arc;

use tartarus_images::pull::{Auth, PullOptions};
use tartarus_images::rootfs::{self, BuildOptions, Built};
use tartarus_images::store::{Freed, StoreError};
use tartarus_images::{ImageRecord, ImageStore, PullError};
use tartarus_types::{Image, ImagesFreed, PullEvent, PullImage, RegistryAuth, TemplateImage};
use tokio::sync::mpsc;

use crate::daemon::{Daemon, Shared};
use crate::error::{chain, ApiError};

/// The daemon's image settings.
pub struct Images {
    pub store: Arc<ImageStore>,
    /// tartarus-init, injected into every image's root file system.
    pub init: PathBuf,
    pub insecure_registries: Vec<String>,
    pub max_image_size: Option<u64>,
}

impl Images {
    pub fn pull_options(&self, auth: Option<&RegistryAuth>) -> PullOptions {
        PullOptions {
            auth: match auth {
                None => Auth::Anonymous,
                Some(RegistryAuth::Basic { username, password }) => Auth::Basic {
                    username: username.clone(),
                    password: password.clone(),
                },
                Some(RegistryAuth::Bearer { token }) => Auth::Bearer {
                    token: token.clone(),
                },
            },
            insecure_registries: self.insecure_registries.clone(),
            max_image_size: self.max_image_size,
            ..Default::default()
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(_) => ApiError::NotFound(e.to_string()),
            StoreError::Ambiguous(_) => ApiError::BadRequest(e.to_string()),
            StoreError::InUse { .. } => ApiError::Conflict(e.to_string()),
            e => ApiError::Internal(chain(&e)),
        }
    }
}

impl From<PullError> for ApiError {
    fn from(e: PullError) -> ApiError {
        match e {
            PullError::Source(_) | PullError::Manifest { .. } | PullError::TooLarge { .. } => {
                ApiError::BadRequest(chain(&e))
            }
            PullError::Archive { .. } => ApiError::BadRequest(chain(&e)),
            PullError::NotFound(_) => ApiError::NotFound(chain(&e)),
            PullError::Auth { .. } => ApiError::RegistryAuth(chain(&e)),
            PullError::Unreachable { .. } | PullError::Registry { .. } => {
                ApiError::Upstream(chain(&e))
            }
            PullError::Blob(tartarus_images::blobs::BlobError::Mismatch { .. })
            | PullError::Blob(tartarus_images::blobs::BlobError::SizeMismatch { .. }) => {
                ApiError::Upstream(chain(&e))
            }
            e => ApiError::Internal(chain(&e)),
        }
    }
}

impl From<rootfs::RootfsError> for ApiError {
    fn from(e: rootfs::RootfsError) -> ApiError {
        use tartarus_images::unpack::UnpackError as U;
        match &e {
            rootfs::RootfsError::Unpack(U::DiskFull { .. }) => ApiError::Unavailable(chain(&e)),
            rootfs::RootfsError::Unpack(_) => ApiError::BadRequest(chain(&e)),
            rootfs::RootfsError::MissingLayer { .. } => ApiError::Conflict(chain(&e)),
            _ => ApiError::Internal(chain(&e)),
        }
    }
}

fn ms_rfc3339(secs: u64) -> String {
    crate::store::rfc3339(secs as i64 * 1000)
}

/// Templates whose root file system came from image `id`.
fn users_of(d: &Daemon, id: &str) -> Result<Vec<String>, ApiError> {
    Ok(d.store
        .templates(&tartarus_auth::TenantScope::All)?
        .into_iter()
        .filter(|t| t.api.image.as_ref().is_some_and(|i| i.id == id))
        .map(|t| t.api.name)
        .collect())
}

pub fn view(d: &Daemon, r: &ImageRecord) -> Result<Image, ApiError> {
    let key = rootfs::key(&r.id, &d.images.init).ok();
    let rootfs_bytes = key.and_then(|k| {
        let p = d
            .images
            .store
            .root()
            .join("rootfs")
            .join(k)
            .join(rootfs::IMAGE_FILE);
        std::fs::metadata(p).ok().map(|m| m.len())
    });
    let c = &r.config.run;
    Ok(Image {
        id: r.id.to_string(),
        names: r.names.clone(),
        source: r.source.clone(),
        size: r.size,
        layers: r.layers.iter().map(|l| l.digest.to_string()).collect(),
        created: r.config.created.clone(),
        pulled_at: ms_rfc3339(r.pulled_at),
        entrypoint: c.entrypoint.clone(),
        cmd: c.cmd.clone(),
        env: c.env.clone(),
        working_dir: c.working_dir.clone(),
        user: c.user.clone(),
        labels: c.labels.clone(),
        exposed_ports: c.exposed_ports.clone(),
        rootfs_bytes,
        templates: users_of(d, r.id.as_str())?,
    })
}

pub fn list(d: &Daemon) -> Result<Vec<Image>, ApiError> {
    d.images.store.list()?.iter().map(|r| view(d, r)).collect()
}

pub fn get(d: &Daemon, name: &str) -> Result<Image, ApiError> {
    let r = d.images.store.get(name)?;
    view(d, &r)
}

fn freed(f: Freed) -> ImagesFreed {
    ImagesFreed {
        images: f.images,
        blobs: f.blobs,
        rootfs: f.rootfs,
        bytes: f.bytes,
    }
}

pub fn remove(d: &Daemon, name: &str, force: bool) -> Result<ImagesFreed, ApiError> {
    let r = d.images.store.get(name)?;
    let users = users_of(d, r.id.as_str())?;
    Ok(freed(d.images.store.remove(name, &users, force)?))
}

pub fn prune(d: &Daemon) -> Result<ImagesFreed, ApiError> {
    // Images that templates were made from stay, named or not.
    let keep: Vec<tartarus_images::Digest> = d
        .store
        .templates(&tartarus_auth::TenantScope::All)?
        .into_iter()
        .filter_map(|t| t.api.image.and_then(|i| i.id.parse().ok()))
        .collect();
    Ok(freed(d.images.store.prune(&keep)?))
}

fn convert(e: tartarus_images::PullEvent) -> PullEvent {
    use tartarus_images::PullEvent as P;
    match e {
        P::Resolved {
            image,
            digest,
            layers,
            bytes,
        } => PullEvent::Resolved {
            image,
            digest: digest.to_string(),
            layers,
            bytes,
        },
        P::Progress {
            digest,
            done,
            total,
        } => PullEvent::Progress {
            digest: digest.to_string(),
            done,
            total,
        },
        P::Layer {
            digest,
            bytes,
            cached,
        } => PullEvent::Layer {
            digest: digest.to_string(),
            bytes,
            cached,
        },
        P::Retry {
            what,
            attempt,
            error,
        } => PullEvent::Retry {
            what,
            attempt,
            error,
        },
    }
}

/// Pulls `reference`; progress goes to `tx` (dropped events are fine: the pull goes on).
pub async fn pull(
    d: &Shared,
    reference: &str,
    name: Option<&str>,
    auth: Option<&RegistryAuth>,
    tx: mpsc::Sender<PullEvent>,
) -> Result<ImageRecord, ApiError> {
    let opts = d.images.pull_options(auth);
    let progress: tartarus_images::pull::Progress = Arc::new(move |e| {
        let _ = tx.try_send(convert(e));
    });
    let started = std::time::Instant::now();
    let r = tartarus_images::pull(&d.images.store, reference, name, &opts, progress).await;
    match &r {
        Ok(rec) => {
            tracing::info!(image = %rec.id, ms = started.elapsed().as_millis() as u64, "pulled {reference}");
            // The image cache is the host's (shared by every tenant).
            d.event(crate::store::HOST_TENANT, "image.pulled", |e| {
                e.message = Some(format!("{reference} {}", rec.id))
            });
        }
        Err(e) => tracing::warn!("pull {reference}: {}", chain(e)),
    }
    Ok(r?)
}

/// The built root file system of `rec` (cached by image id + init + builder version).
pub async fn build_rootfs(
    d: &Shared,
    rec: &ImageRecord,
    tx: mpsc::Sender<String>,
) -> Result<Built, ApiError> {
    let store = d.images.store.clone();
    let opts = BuildOptions {
        init: d.images.init.clone(),
        max_bytes: d.images.max_image_size,
    };
    let rec = rec.clone();
    tokio::task::spawn_blocking(move || {
        rootfs::build(&store, &rec, &opts, &mut |m| {
            let _ = tx.try_send(m.to_string());
        })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("rootfs task: {e}")))?
    .map_err(ApiError::from)
}

/// `POST /images/pull`: the stream of events, ending in `done` or `error`.
pub fn start_pull(d: &Shared, req: PullImage) -> mpsc::Receiver<PullEvent> {
    let (tx, rx) = mpsc::channel(256);
    let d = d.clone();
    tokio::spawn(async move {
        let res = async {
            let rec = pull(
                &d,
                &req.reference,
                req.name.as_deref(),
                req.auth.as_ref(),
                tx.clone(),
            )
            .await?;
            if req.build {
                let (mtx, mut mrx) = mpsc::channel(16);
                let tx2 = tx.clone();
                let fwd = tokio::spawn(async move {
                    while let Some(m) = mrx.recv().await {
                        let _ = tx2.send(PullEvent::Build { message: m }).await;
                    }
                });
                let built = build_rootfs(&d, &rec, mtx).await;
                let _ = fwd.await;
                built?;
            }
            view(&d, &rec)
        }
        .await;
        let ev = match res {
            Ok(image) => PullEvent::Done {
                image: Box::new(image),
            },
            Err(e) => PullEvent::Error { error: e.detail() },
        };
        let _ = tx.send(ev).await;
    });
    rx
}

/// What a template keeps of its image.
pub fn template_image(reference: &str, rec: &ImageRecord) -> TemplateImage {
    let c = &rec.config.run;
    TemplateImage {
        reference: reference.into(),
        id: rec.id.to_string(),
        entrypoint: c.entrypoint.clone(),
        cmd: c.cmd.clone(),
        env: c.env.clone(),
        working_dir: c.working_dir.clone(),
        user: c.user.clone(),
    }
}
