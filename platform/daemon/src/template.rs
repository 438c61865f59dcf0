//! Templates: a kernel, a root image and resources, plus a ready snapshot of them booted.
//!
//! A build boots the template once in a jail (read-only root image on /dev/vda, an empty
//! writable layer on /dev/vdb that tartarus-init lays over it, vsock for the agent), waits for
//! the agent, runs the warm-up commands, pauses and writes a Full snapshot. Every sandbox of the
//! template is a restore of that snapshot in a jail of its own, with the root image shared
//! (hard link, read-only) and its own copy of the writable layer as it was at snapshot time.
//! Ready snapshots are cached by a hash of everything that makes them (kernel, root image, VMM
//! binary, resources, boot args, warm-up), so building the same template again is instant.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};
use tartarus_auth::TenantScope;
use tartarus_types::{BuildEvent, ErrorDetail, RuntimeSpec, TemplateSpec, TemplateState};
use tokio::sync::mpsc;

use crate::daemon::{Daemon, Shared};
use crate::error::{chain, ApiError};
use crate::fsutil;
use crate::store::{StoredSpec, TemplateRow, HOST_TENANT};
use crate::vmm::{self, Limits};

/// File names inside a template (and snapshot) directory and inside every jail.
pub const KERNEL: &str = "vmlinux";
pub const ROOTFS: &str = "rootfs.ext4";
pub const DISK: &str = "disk.ext4";
pub const STATE: &str = "ready.state";
pub const MEM: &str = "ready.mem";

/// Bumped when the jail layout or boot arguments change in a way that invalidates cached
/// ready snapshots.
const LAYOUT_VERSION: &str = "tartarusd-template-v2";
/// How long a template's first boot may take to reach the agent (emulated guest kernels on
/// nested PVM hosts take 20-45 s).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const STEPS: u32 = 6;
/// How long one warm-up command may run (importing a large runtime on an emulated guest
/// kernel takes minutes on nested PVM hosts).
const WARMUP_TIMEOUT: Duration = Duration::from_secs(1800);
const GUEST_CID: u32 = 3;

/// The kernel command line every template boots with (before the spec's own words).
pub const BASE_BOOT_ARGS: &str =
    "console=ttyS0 8250.nr_uarts=1 reboot=k panic=1 pci=off i8042.noaux \
    i8042.nomux i8042.dumbkbd quiet tartarus.overlay=/dev/vdb";

pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
        })
}

fn validate(spec: &TemplateSpec) -> Result<(), ApiError> {
    if !valid_name(&spec.name) {
        return Err(ApiError::BadRequest(format!(
            "name: '{}' is not a template name ([a-z0-9][a-z0-9_.-]{{0,62}})",
            spec.name
        )));
    }
    if !(1..=32).contains(&spec.vcpus) {
        return Err(ApiError::BadRequest(format!(
            "vcpus: {} is out of range (1-32)",
            spec.vcpus
        )));
    }
    if !(64..=65536).contains(&spec.memory_mib) {
        return Err(ApiError::BadRequest(format!(
            "memory_mib: {} is out of range (64-65536)",
            spec.memory_mib
        )));
    }
    if !(16..=1 << 20).contains(&spec.disk_mib) {
        return Err(ApiError::BadRequest(format!(
            "disk_mib: {} is out of range (16-1048576)",
            spec.disk_mib
        )));
    }
    let mut files = vec![("kernel", &spec.kernel)];
    match (&spec.image, spec.rootfs.is_empty()) {
        (Some(_), false) => {
            return Err(ApiError::BadRequest(
                "rootfs, image: give one of them, not both".into(),
            ))
        }
        (None, true) => {
            return Err(ApiError::BadRequest(
                "rootfs: missing (give a root file system image or an OCI image)".into(),
            ))
        }
        (Some(i), true) => {
            tartarus_images::source::Source::parse(i)
                .map_err(|e| ApiError::BadRequest(format!("image: {e}")))?;
        }
        (None, false) => files.push(("rootfs", &spec.rootfs)),
    }
    for (field, path) in files {
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err(ApiError::BadRequest(format!(
                "{field}: '{path}' is not an absolute path"
            )));
        }
        match std::fs::metadata(p) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(ApiError::BadRequest(format!(
                    "{field}: '{path}' is not a regular file"
                )))
            }
            Err(e) => {
                return Err(ApiError::BadRequest(format!(
                    "{field}: cannot use '{path}': {e}"
                )))
            }
        }
    }
    for (i, w) in spec.warmup.iter().enumerate() {
        if w.argv.is_empty() || w.argv[0].is_empty() {
            return Err(ApiError::BadRequest(format!("warmup[{i}].argv: empty")));
        }
    }
    if let Some(rt) = &spec.runtime {
        crate::code::validate_runtime(rt)?;
    }
    if let Some(a) = &spec.boot_args {
        if a.len() > 2048 {
            return Err(ApiError::BadRequest(
                "boot_args: longer than 2048 bytes".into(),
            ));
        }
    }
    Ok(())
}

fn hash_file(h: &mut Sha256, path: &Path) -> std::io::Result<()> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

/// The cache key of a ready snapshot.
fn cache_key(
    spec: &StoredSpec,
    runtime: Option<&RuntimeSpec>,
    vmm: &Path,
    pvm: bool,
) -> std::io::Result<String> {
    let mut h = Sha256::new();
    h.update(LAYOUT_VERSION.as_bytes());
    for p in [Path::new(&spec.kernel), Path::new(&spec.rootfs), vmm] {
        match &spec.rootfs_key {
            // An image's root fs carries an id of its build (it never changes afterwards).
            Some(k) if p == Path::new(&spec.rootfs) => h.update(k.as_bytes()),
            _ => hash_file(&mut h, p)?,
        }
        h.update(b"\0");
    }
    let mut shape = json!({
        "boot_args": spec.boot_args, "vcpus": spec.vcpus, "memory_mib": spec.memory_mib,
        "disk_mib": spec.disk_mib, "warmup": spec.warmup, "pvm": pvm,
    });
    // Only when set: the keys of templates without one stay as they were.
    if let Some(rt) = runtime {
        shape["runtime"] = json!({"language": rt.language, "preload": rt.preload,
                                  "script": crate::code::PYTHON_RUNTIME});
        if !rt.warmup.is_empty() {
            shape["runtime"]["warmup"] = json!(rt.warmup);
        }
    }
    h.update(shape.to_string().as_bytes());
    Ok(h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

struct Progress {
    tx: mpsc::Sender<BuildEvent>,
    step: u32,
    steps: u32,
}

/// The root file system of a template made from an image: pulled if not in the cache yet,
/// then built (or found built).
async fn image_rootfs(
    d: &Shared,
    tenant: &str,
    reference: &str,
    auth: Option<&tartarus_types::RegistryAuth>,
    p: &mut Progress,
) -> Result<
    (
        tartarus_images::rootfs::Built,
        tartarus_types::TemplateImage,
    ),
    ApiError,
> {
    // A tenant always asks the registry (with its own credentials, if any): the cache is the
    // host's, and an image another tenant pulled with credentials must not be usable without.
    // The pull itself reuses cached layers.
    let cached = if tenant == HOST_TENANT {
        d.images.store.get(reference)
    } else {
        Err(tartarus_images::store::StoreError::NotFound(
            reference.to_string(),
        ))
    };
    let rec = match cached {
        Ok(r) => {
            p.step(format!(
                "image {reference}: {} (in the cache)",
                r.id.short()
            ))
            .await;
            r
        }
        Err(tartarus_images::store::StoreError::NotFound(_)) => {
            p.step(format!("pulling {reference}")).await;
            let (tx, mut rx) = mpsc::channel(64);
            let logs = p.tx.clone();
            let fwd = tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    let line = match ev {
                        tartarus_types::PullEvent::Resolved {
                            digest,
                            layers,
                            bytes,
                            ..
                        } => {
                            format!("{digest}: {layers} layers, {bytes} bytes")
                        }
                        tartarus_types::PullEvent::Layer {
                            digest,
                            bytes,
                            cached,
                        } => {
                            format!(
                                "layer {digest} ({bytes} bytes){}",
                                if cached { ", cached" } else { "" }
                            )
                        }
                        tartarus_types::PullEvent::Retry {
                            what,
                            attempt,
                            error,
                        } => {
                            format!("retrying {what} (attempt {attempt}): {error}")
                        }
                        _ => continue,
                    };
                    let _ = logs.send(BuildEvent::Log { line }).await;
                }
            });
            let r = crate::images::pull(d, reference, None, auth, tx).await;
            let _ = fwd.await;
            r?
        }
        Err(e) => return Err(e.into()),
    };
    p.step("making the root file system from the image").await;
    let (tx, mut rx) = mpsc::channel::<String>(16);
    let logs = p.tx.clone();
    let fwd = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            let _ = logs.send(BuildEvent::Log { line }).await;
        }
    });
    let built = crate::images::build_rootfs(d, &rec, tx).await;
    let _ = fwd.await;
    let built = built?;
    Ok((built, crate::images::template_image(reference, &rec)))
}

impl Progress {
    async fn step(&mut self, message: impl Into<String>) {
        self.step += 1;
        let message = message.into();
        tracing::info!("template build: {message}");
        let _ = self
            .tx
            .send(BuildEvent::Progress {
                step: self.step,
                steps: self.steps,
                message,
            })
            .await;
    }
}

/// Starts a template build; the returned channel carries its progress and ends with `done` or
/// `error`. The build goes on if the receiver is dropped.
pub fn start_build(
    d: &Shared,
    scope: &TenantScope,
    mut spec: TemplateSpec,
) -> Result<mpsc::Receiver<BuildEvent>, ApiError> {
    // A tenant's templates are its own; the host scope's are shared with every tenant.
    let tenant = scope.as_str().to_string();
    tenant_may_build(scope, &spec)?;
    if spec.kernel.is_empty() {
        spec.kernel = match &d.cfg.default_kernel {
            Some(k) => k.display().to_string(),
            None => {
                return Err(ApiError::BadRequest(
                    "kernel: missing, and the daemon has no default (tartarusd --kernel)".into(),
                ))
            }
        };
    }
    validate(&spec)?;
    {
        let mut b = d.building.lock().unwrap_or_else(|p| p.into_inner());
        let key = building_key(&tenant, &spec.name);
        if b.contains(&key) {
            return Err(ApiError::Conflict(format!(
                "Template '{}' is being built already",
                spec.name
            )));
        }
        if !spec.replace && d.store.template(&tenant, &spec.name)?.is_some() {
            return Err(ApiError::Conflict(format!(
                "Template '{}' exists (set replace to build it again)",
                spec.name
            )));
        }
        b.insert(key);
    }
    let (tx, rx) = mpsc::channel(256);
    let d = d.clone();
    tokio::spawn(async move {
        let name = spec.name.clone();
        let started = Instant::now();
        let mut progress = Progress {
            tx: tx.clone(),
            step: 0,
            steps: if spec.image.is_some() {
                STEPS + 2
            } else {
                STEPS
            },
        };
        let result = build(&d, &tenant, spec, &mut progress, started).await;
        d.building
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&building_key(&tenant, &name));
        d.metrics.template_builds.inc();
        let ev = match result {
            Ok(()) => match d.store.template(&tenant, &name) {
                Ok(Some(t)) => BuildEvent::Done {
                    template: Box::new(t.api),
                },
                _ => BuildEvent::Error {
                    error: ErrorDetail {
                        code: "internal".into(),
                        message: "The template vanished after its build".into(),
                    },
                },
            },
            Err(e) => {
                tracing::warn!("template {name}: build failed: {e}");
                let _ = d.store.finish_template(
                    &tenant,
                    &name,
                    TemplateState::Failed,
                    None,
                    None,
                    Some(&e.to_string()),
                );
                d.event(&tenant, "template.failed", |ev| {
                    ev.template = Some(name.clone());
                    ev.message = Some(e.to_string());
                });
                BuildEvent::Error { error: e.detail() }
            }
        };
        let _ = tx.send(ev).await;
    });
    Ok(rx)
}

async fn build(
    d: &Shared,
    tenant: &str,
    spec: TemplateSpec,
    p: &mut Progress,
    started: Instant,
) -> Result<(), ApiError> {
    let name = spec.name.clone();
    let dir = d
        .cfg
        .templates_dir()
        .join(format!("{name}-{}", fsutil::random_hex(4)));
    let mut base = format!("{BASE_BOOT_ARGS} {}", crate::netns::GUEST_IP_ARG);
    let (mut rootfs, mut image, mut rootfs_key) = (spec.rootfs.clone(), None, None);
    if let Some(reference) = &spec.image {
        let built = image_rootfs(d, tenant, reference, spec.registry_auth.as_ref(), p).await?;
        rootfs = built.0.path.display().to_string();
        // The snapshot depends on the image file's bytes: key it by them.
        rootfs_key = Some(match &built.0.meta.build_id {
            id if !id.is_empty() => format!("build:{id}"),
            _ => tartarus_images::blobs::hash_file(&built.0.path)
                .map_err(|e| ApiError::internal("hashing the root fs", &e))?
                .0
                .to_string(),
        });
        image = Some(built.1);
        base = format!("{base} init={}", tartarus_images::rootfs::INIT_PATH);
    }
    let boot_args = match &spec.boot_args {
        Some(a) if !a.trim().is_empty() => format!("{base} {}", a.trim()),
        _ => base,
    };
    let stored = StoredSpec {
        kernel: spec.kernel.clone(),
        rootfs,
        boot_args,
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        disk_mib: spec.disk_mib,
        env: spec.env.clone(),
        warmup: spec.warmup.clone(),
        image,
        rootfs_key,
        runtime: spec.runtime.clone(),
    };
    let old = d.store.template(tenant, &name)?;
    d.store.put_template(
        tenant,
        &name,
        TemplateState::Building,
        &stored,
        &dir.display().to_string(),
    )?;
    d.event(tenant, "template.building", |e| {
        e.template = Some(name.clone())
    });

    p.step("copying the kernel and the root image").await;
    let (dir2, stored2) = (dir.clone(), stored.clone());
    let vmm_bin = d.cfg.launcher.vmm.clone();
    let pvm = d.cfg.launcher.pvm_workarounds;
    let runtime = spec.runtime.clone();
    let key = tokio::task::spawn_blocking(move || -> Result<String, ApiError> {
        std::fs::create_dir_all(&dir2).map_err(|e| ApiError::internal("template directory", &e))?;
        for (src, name) in [(&stored2.kernel, KERNEL), (&stored2.rootfs, ROOTFS)] {
            let dst = dir2.join(name);
            if name == ROOTFS && stored2.rootfs_key.is_some() {
                // The image cache's root fs never changes once built: share it.
                fsutil::link_or_copy(Path::new(src), &dst)
                    .map_err(|e| ApiError::internal("template", &e))?;
            } else {
                fsutil::sparse_copy(Path::new(src), &dst)
                    .map_err(|e| ApiError::BadRequest(chain(&e)))?;
            }
            fsutil::make_shared_readonly(&dst).map_err(|e| ApiError::internal("template", &e))?;
        }
        cache_key(&stored2, runtime.as_ref(), &vmm_bin, pvm)
            .map_err(|e| ApiError::internal("hashing the template", &e))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("build task: {e}")))??;

    let cache = d.cfg.template_cache.join(&key);
    let cached = [STATE, MEM, DISK].iter().all(|f| cache.join(f).is_file());
    if cached {
        p.step(format!("using the cached ready snapshot {key}"))
            .await;
        for f in [STATE, MEM, DISK] {
            fsutil::link_or_copy(&cache.join(f), &dir.join(f))
                .map_err(|e| ApiError::internal("template cache", &e))?;
        }
        p.step("cached: no boot needed").await;
        p.step("cached: no warm-up needed").await;
        p.step("cached: snapshot present").await;
    } else {
        boot_and_snapshot(d, &stored, spec.runtime.as_ref(), &dir, p).await?;
        // Fill the cache (hard links: no extra space).
        let tmp = d
            .cfg
            .template_cache
            .join(format!(".tmp-{key}-{}", fsutil::random_hex(4)));
        let filled = (|| -> Result<(), fsutil::FsError> {
            std::fs::create_dir_all(&tmp).map_err(|source| fsutil::FsError::Io {
                op: "create",
                path: tmp.display().to_string(),
                source,
            })?;
            for f in [STATE, MEM, DISK] {
                fsutil::link_or_copy(&dir.join(f), &tmp.join(f))?;
            }
            // Another daemon may have filled the same key meanwhile: keep a complete entry
            // (its readers may be linking from it), replace only an incomplete one.
            if [STATE, MEM, DISK].iter().all(|f| cache.join(f).is_file()) {
                return fsutil::remove_tree(&tmp);
            }
            let _ = fsutil::remove_tree(&cache);
            std::fs::rename(&tmp, &cache).map_err(|source| fsutil::FsError::Io {
                op: "rename",
                path: cache.display().to_string(),
                source,
            })
        })();
        if let Err(e) = filled {
            tracing::warn!("template cache not filled: {}", chain(&e));
            let _ = fsutil::remove_tree(&tmp);
        }
    }

    p.step("template ready").await;
    let bytes = fsutil::allocated_bytes(&dir);
    // The new build is in; the old directory goes once nothing uses it.
    d.store.finish_template(
        tenant,
        &name,
        TemplateState::Ready,
        Some(started.elapsed().as_millis() as u64),
        Some(bytes),
        None,
    )?;
    if let Some(old) = old {
        if old.dir != dir.display().to_string() {
            remove_template_dir_if_unused(d, &old.dir);
        }
    }
    d.event(tenant, "template.ready", |e| {
        e.template = Some(name.clone())
    });
    Ok(())
}

async fn boot_and_snapshot(
    d: &Shared,
    spec: &StoredSpec,
    runtime: Option<&RuntimeSpec>,
    dir: &Path,
    p: &mut Progress,
) -> Result<(), ApiError> {
    p.step("making the writable layer").await;
    let disk = dir.join(DISK);
    let out = tokio::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-E"])
        .arg("lazy_itable_init=1,lazy_journal_init=1")
        .args(["-m", "0", "-L", "tartarus-layer"])
        .arg(&disk)
        .arg(format!("{}M", spec.disk_mib))
        .output()
        .await
        .map_err(|e| ApiError::internal("mkfs.ext4 (install e2fsprogs)", &e))?;
    if !out.status.success() {
        return Err(ApiError::Internal(format!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }

    let id = format!("tpl-{}", fsutil::random_hex(6));
    let jail = d.cfg.jail(&id);
    let uid = d.cfg.uid_base.saturating_sub(1);
    let nid = id.clone();
    let result =
        match tokio::task::spawn_blocking(move || crate::netns::create(&nid, uid, None)).await {
            Ok(Ok(ns)) => boot_in_jail(d, spec, runtime, dir, &jail, uid, &ns, p).await,
            Ok(Err(e)) => Err(ApiError::internal("the build VM's network", &e)),
            Err(e) => Err(ApiError::Internal(format!("netns task: {e}"))),
        };
    // Whatever happened, the build VM goes.
    if let Ok(pid) = std::fs::read_to_string(jail.pid_file()) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            vmm::kill_if_same(pid, None);
            wait_gone(pid).await;
        }
    }
    let serial = std::fs::read_to_string(jail.serial()).unwrap_or_default();
    let version = d.cfg.launcher.cgroup_version;
    let jail2 = jail.clone();
    let _ = tokio::task::spawn_blocking(move || {
        crate::netns::remove(&jail2.id);
        vmm::cleanup_jail(&jail2, version)
    })
    .await;
    result.map_err(|e| {
        let tail: Vec<&str> = serial.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        if tail.is_empty() {
            e
        } else {
            ApiError::Internal(format!("{e} (console: {})", tail.join(" | ")))
        }
    })
}

async fn wait_gone(pid: i32) {
    if let Ok(w) = vmm::ProcessWatch::new(pid) {
        let _ = tokio::time::timeout(Duration::from_secs(5), w.exited()).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn boot_in_jail(
    d: &Shared,
    spec: &StoredSpec,
    runtime: Option<&RuntimeSpec>,
    dir: &Path,
    jail: &vmm::JailPaths,
    uid: u32,
    netns: &Path,
    p: &mut Progress,
) -> Result<(), ApiError> {
    let fs_err = |e: fsutil::FsError| ApiError::internal("jail", &e);
    std::fs::create_dir_all(&jail.root).map_err(|e| ApiError::internal("jail", &e))?;
    fsutil::link_or_copy(&dir.join(KERNEL), &jail.root.join(KERNEL)).map_err(fs_err)?;
    fsutil::link_or_copy(&dir.join(ROOTFS), &jail.root.join(ROOTFS)).map_err(fs_err)?;
    fsutil::move_file(&dir.join(DISK), &jail.root.join(DISK)).map_err(fs_err)?;
    fsutil::give_to(&jail.root.join(DISK), uid).map_err(fs_err)?;

    p.step("booting the template's microVM").await;
    let limits = Limits {
        uid,
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
    };
    let vmm_err = |e: vmm::VmmError| ApiError::Internal(chain(&e));
    d.cfg
        .launcher
        .start(jail, limits, Some(netns))
        .await
        .map_err(vmm_err)?;
    let sock = jail.api_sock();
    vmm::wait_for_socket(&sock, Duration::from_secs(10))
        .await
        .map_err(vmm_err)?;
    let t = Duration::from_secs(30);
    let put = |path: &'static str, body: serde_json::Value| {
        let sock = sock.clone();
        async move {
            vmm::api(&sock, "PUT", path, Some(&body), t)
                .await
                .map_err(vmm_err)
        }
    };
    put(
        "/machine-config",
        json!({"vcpu_count": spec.vcpus, "mem_size_mib": spec.memory_mib}),
    )
    .await?;
    put(
        "/boot-source",
        json!({"kernel_image_path": format!("/{KERNEL}"), "boot_args": spec.boot_args}),
    )
    .await?;
    put(
        "/drives/rootfs",
        json!({"drive_id": "rootfs", "path_on_host": format!("/{ROOTFS}"),
               "is_root_device": true, "is_read_only": true}),
    )
    .await?;
    put(
        "/drives/layer",
        json!({"drive_id": "layer", "path_on_host": format!("/{DISK}"),
               "is_root_device": false, "is_read_only": false}),
    )
    .await?;
    put(
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0", "host_dev_name": crate::netns::TAP,
               "guest_mac": crate::netns::GUEST_MAC}),
    )
    .await?;
    put(
        "/vsock",
        json!({"guest_cid": GUEST_CID, "uds_path": format!("/{}", vmm::VSOCK_SOCK)}),
    )
    .await?;
    put("/actions", json!({"action_type": "InstanceStart"})).await?;

    // Follow the console while the guest boots.
    let serial = jail.serial();
    let tx = p.tx.clone();
    let tail = tokio::spawn(async move {
        let mut offset = 0usize;
        loop {
            if let Ok(data) = tokio::fs::read(&serial).await {
                if data.len() > offset {
                    let text = String::from_utf8_lossy(&data[offset..]).into_owned();
                    let complete = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
                    for line in text[..complete].lines() {
                        let _ = tx
                            .send(tartarus_types::BuildEvent::Log { line: line.into() })
                            .await;
                    }
                    offset += complete;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let uds = jail.vsock();
    let agent = tokio::task::spawn_blocking(move || {
        crate::daemon::wait_for_agent(&uds, BOOT_TIMEOUT, WARMUP_TIMEOUT)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("agent wait: {e}")));
    tail.abort();
    let mut agent = agent?.map_err(|e| {
        ApiError::Internal(format!(
            "The template's guest did not start its agent: {}",
            chain(&e)
        ))
    })?;

    let also = if runtime.is_some() {
        ", then starting the runtime"
    } else {
        ""
    };
    p.step(format!("agent ready ({}); warming up{also}", agent.agent()))
        .await;
    let (runtime, uds) = (runtime.cloned(), jail.vsock());
    let warmup = spec.warmup.clone();
    let stored_image = spec.image.clone();
    // As for every exec: the image's Env under the template's.
    let mut env = std::collections::BTreeMap::new();
    for kv in stored_image.iter().flat_map(|i| i.env.iter()) {
        if let Some((k, v)) = kv.split_once('=') {
            env.insert(k.to_string(), v.to_string());
        }
    }
    env.extend(spec.env.clone());
    let agent = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        for (i, w) in warmup.iter().enumerate() {
            let argv = if w.background {
                // Detach it from the agent connection (which a restore resets): the shell exits
                // at once and the command lives on, reparented to init.
                let mut a = vec![
                    "/bin/sh".to_string(),
                    "-c".to_string(),
                    "\"$@\" </dev/null >/dev/null 2>&1 &".to_string(),
                    "warmup".to_string(),
                ];
                a.extend(w.argv.iter().cloned());
                a
            } else {
                w.argv.clone()
            };
            let mut spec = guest_init::protocol::ExecSpec::new(argv);
            spec.env = env.clone();
            if let Some(img) = &stored_image {
                spec.cwd = (!img.working_dir.is_empty()).then(|| img.working_dir.clone());
                spec.user = (!img.user.is_empty()).then(|| img.user.clone());
            }
            let out = agent
                .start_exec(&spec, &[])
                .and_then(|s| s.collect())
                .map_err(|e| ApiError::BadRequest(format!("warmup[{i}]: {}", chain(&e))))?;
            if out.code != Some(0) {
                return Err(ApiError::BadRequest(format!(
                    "warmup[{i}] ({}) failed with {:?}/{:?}: {}",
                    w.argv.join(" "),
                    out.code,
                    out.signal,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        if let Some(rt) = &runtime {
            crate::code::start_for_template(&mut agent, &uds, rt, &env, stored_image.as_ref())?;
        }
        // Settle: the page cache and the writable layer's metadata reach the disk image, so
        // every clone starts from a consistent layer.
        let _ = agent.exec(["sync"]);
        Ok(agent)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("warmup task: {e}")))??;
    drop(agent);

    p.step("pausing and writing the ready snapshot").await;
    vmm::set_vm_state(&sock, "Paused").await.map_err(vmm_err)?;
    vmm::api(
        &sock,
        "PUT",
        "/snapshot/create",
        Some(
            &json!({"snapshot_type": "Full", "snapshot_path": format!("/{STATE}"),
                     "mem_file_path": format!("/{MEM}")}),
        ),
        Duration::from_secs(120),
    )
    .await
    .map_err(vmm_err)?;
    for f in [STATE, MEM, DISK] {
        let dst = dir.join(f);
        fsutil::move_file(&jail.root.join(f), &dst).map_err(fs_err)?;
        fsutil::make_shared_readonly(&dst).map_err(fs_err)?;
    }
    Ok(())
}

/// Removes a template directory once no sandbox or snapshot refers to it.
pub fn remove_template_dir_if_unused(d: &Daemon, dir: &str) {
    let still_template = d
        .store
        .templates(&TenantScope::All)
        .map(|ts| ts.iter().any(|t| t.dir == dir))
        .unwrap_or(true);
    if still_template {
        return;
    }
    if let Ok(0) = d.store.template_dir_users(dir) {
        if let Err(e) = fsutil::remove_tree(Path::new(dir)) {
            tracing::warn!("cannot remove {dir}: {}", chain(&e));
        }
    }
}

/// Host paths are the host's: a tenant names no kernel or root fs file and no local image
/// (`oci:` / `docker-archive:`), or it could read any file of the host through a sandbox's
/// disk. Tenants build from registry images with the daemon's kernel.
pub fn tenant_may_build(scope: &TenantScope, spec: &TemplateSpec) -> Result<(), ApiError> {
    if scope.is_host() {
        return Ok(());
    }
    let refuse = |what: &str| {
        Err(ApiError::Forbidden(format!(
            "{what}: host paths are the host's; a tenant builds from a registry image \
             with the daemon's kernel"
        )))
    };
    if !spec.kernel.is_empty() {
        return refuse("kernel");
    }
    if !spec.rootfs.is_empty() {
        return refuse("rootfs");
    }
    if let Some(i) = &spec.image {
        tenant_may_use_image(scope, i)?;
    }
    Ok(())
}

/// A tenant pulls from registries only (a local layout or archive is a host path).
pub fn tenant_may_use_image(scope: &TenantScope, reference: &str) -> Result<(), ApiError> {
    // The prefixes Source::parse reads as local (it also fails on a missing path, which
    // must be refused just the same).
    let r = reference.trim_start();
    let local = r.starts_with("oci:") || r.starts_with("docker-archive:");
    if !scope.is_host() && local {
        return Err(ApiError::Forbidden(format!(
            "image '{reference}': local images are the host's; a tenant pulls from a registry"
        )));
    }
    Ok(())
}

fn building_key(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

/// The template a sandbox of `tenant` means by `name`: its tenant's own, else the host's
/// (`*`) of that name.
pub fn lookup(d: &Daemon, tenant: &str, name: &str) -> Result<Option<TemplateRow>, ApiError> {
    if let Some(t) = d.store.template(tenant, name)? {
        return Ok(Some(t));
    }
    if tenant == HOST_TENANT {
        return Ok(None);
    }
    Ok(d.store.template(HOST_TENANT, name)?)
}

/// [`lookup`] for a caller's scope; a missing (or another tenant's) template is a 404.
pub fn usable(d: &Daemon, scope: &TenantScope, name: &str) -> Result<TemplateRow, ApiError> {
    lookup(d, scope.as_str(), name)?
        .ok_or_else(|| ApiError::NotFound(format!("No template '{name}'")))
}

/// The template `GET /templates/{name}` shows: for a tenant, [`usable`]; for the host scope,
/// the one of tenant `owner` (default `*`, the shared ones).
pub fn visible(
    d: &Daemon,
    scope: &TenantScope,
    name: &str,
    owner: Option<&str>,
) -> Result<TemplateRow, ApiError> {
    match (scope, owner) {
        (TenantScope::All, Some(owner)) => d
            .store
            .template(owner, name)?
            .ok_or_else(|| ApiError::NotFound(format!("No template '{name}' of tenant '{owner}'"))),
        _ => usable(d, scope, name),
    }
}

/// `DELETE /templates/{name}`: a tenant deletes its own templates only (the shared ones are
/// read-only to it); the host scope deletes the shared one, or tenant `owner`'s.
pub fn delete(
    d: &Shared,
    scope: &TenantScope,
    name: &str,
    owner: Option<&str>,
) -> Result<(), ApiError> {
    let tenant = match (scope, owner) {
        (TenantScope::All, Some(o)) => o.to_string(),
        _ => scope.as_str().to_string(),
    };
    if d.building
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&building_key(&tenant, name))
    {
        return Err(ApiError::Conflict(format!(
            "Template '{name}' is being built"
        )));
    }
    let Some(t) = d.store.template(&tenant, name)? else {
        if tenant != HOST_TENANT && d.store.template(HOST_TENANT, name)?.is_some() {
            return Err(ApiError::Forbidden(format!(
                "Template '{name}' is the host's, shared read-only with every tenant"
            )));
        }
        return Err(ApiError::NotFound(format!("No template '{name}'")));
    };
    d.store.delete_template(&tenant, name)?;
    remove_template_dir_if_unused(d, &t.dir);
    d.event(&tenant, "template.deleted", |e| {
        e.template = Some(name.to_string())
    });
    Ok(())
}

/// Builds fail if the daemon stops mid-way; after a restart they are marked failed.
pub fn recover(d: &Arc<Daemon>) {
    for t in d.store.templates(&TenantScope::All).unwrap_or_default() {
        if t.api.state == TemplateState::Building {
            let _ = d.store.finish_template(
                &t.api.tenant,
                &t.api.name,
                TemplateState::Failed,
                None,
                None,
                Some("The daemon stopped during the build"),
            );
            let _ = fsutil::remove_tree(Path::new(&t.dir));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["base", "python-ds", "a", "x1.2_3"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "Base", "-x", "a/b", "a b", &"x".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn specs_are_checked() {
        let spec = |k: &str| TemplateSpec {
            name: "t".into(),
            kernel: k.into(),
            rootfs: "/etc/hostname".into(),
            boot_args: None,
            vcpus: 1,
            memory_mib: 128,
            disk_mib: 64,
            env: Default::default(),
            warmup: vec![],
            replace: false,
            runtime: None,
            image: None,
            registry_auth: None,
        };
        assert!(validate(&spec("/etc/hostname")).is_ok());
        let mut both = spec("/etc/hostname");
        both.image = Some("127.0.0.1:5000/x".into());
        let e = validate(&both).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        both.rootfs.clear();
        assert!(validate(&both).is_ok());
        both.image = Some("Bad Ref!".into());
        let e = validate(&both).unwrap_err().to_string();
        assert!(e.starts_with("image:"), "{e}");
        let mut none = spec("/etc/hostname");
        none.rootfs.clear();
        let e = validate(&none).unwrap_err().to_string();
        assert!(e.starts_with("rootfs: missing"), "{e}");
        let e = validate(&spec("relative")).unwrap_err().to_string();
        assert!(e.starts_with("kernel:"), "{e}");
        let e = validate(&spec("/nonexistent")).unwrap_err().to_string();
        assert!(e.contains("cannot use"), "{e}");
        let e = validate(&spec("/etc")).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let mut s = spec("/etc/hostname");
        s.vcpus = 0;
        assert!(validate(&s).unwrap_err().to_string().starts_with("vcpus"));
    }
}
