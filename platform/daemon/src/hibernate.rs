//! Hibernation: a sandbox whose guest has nothing to do is paused, written to disk as a Full
//! snapshot (memory, device state, its writable layer) and its VMM exits, giving its memory
//! back; any request that needs the guest wakes it again with a restore in a fresh jail, on
//! the same network namespace, uid and tap, so the guest cannot tell.
//!
//! Files: while hibernated, `<state>/sandboxes/<id>/hibernated/` holds `ready.state`,
//! `ready.mem` (the names a template's snapshot has) and the writable layer `disk.ext4`; the jail is gone. A hibernation cut
//! short by a daemon SIGKILL after the VMM exited is finished by recovery when all three files
//! are there (the VMM wrote the snapshot completely before it answered, and the files are moved
//! only after it exited).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tartarus_auth::TenantScope;
use tartarus_types::{Sandbox, SandboxState};

use crate::daemon::{Activity, Live, Shared};
use crate::error::{chain, ApiError};
use crate::fsutil;
use crate::metrics::ReasonLabel;
use crate::sandbox::{self, view};
use crate::store::{now_ms, SandboxRow};
use crate::template::{DISK, MEM, ROOTFS, STATE};
use crate::vmm::{self, Limits};

/// Where the VMM writes the hibernation snapshot inside its jail (then moved out).
const HIB_STATE: &str = "hib.state";
const HIB_MEM: &str = "hib.mem";
/// How often the idle clock is checked.
const TICK: Duration = Duration::from_secs(1);
const API_TIMEOUT: Duration = Duration::from_secs(30);
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory that holds a hibernated sandbox's files.
pub fn hib_dir(d: &Shared, id: &str) -> PathBuf {
    d.cfg.sandbox_dir(id).join("hibernated")
}

/// Whether a hibernation's files are all there.
pub fn complete(dir: &Path) -> bool {
    [STATE, MEM, DISK].iter().all(|f| dir.join(f).is_file())
}

/// Why a sandbox hibernates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// `POST /sandboxes/{id}/hibernate`: refused (409) while something is in progress.
    Request,
    /// Its idle timeout passed: skipped while something is in progress.
    Idle,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::Request => "request",
            Why::Idle => "idle",
        }
    }
}

/// `POST /sandboxes/{id}/hibernate`.
pub async fn hibernate(
    d: &Shared,
    scope: &TenantScope,
    id: &str,
    why: Why,
) -> Result<Sandbox, ApiError> {
    let lock = d.lock_of(id);
    let _g = lock.lock().await;
    let row = d.sandbox_row(scope, id)?;
    match row.state {
        SandboxState::Hibernated => return Ok(view(&row)),
        SandboxState::Running | SandboxState::Paused => {}
        s => {
            return Err(ApiError::Conflict(format!(
                "Sandbox '{id}' is {}; only a running or paused sandbox can hibernate",
                s.as_str()
            )))
        }
    }
    let live = d.live_of(id);
    let busy = live
        .as_ref()
        .map(|l| l.active.load(Ordering::SeqCst))
        .unwrap_or(0);
    if busy > 0 {
        return Err(ApiError::Conflict(format!(
            "Sandbox '{id}' has {busy} request(s) in progress (an exec, a stream, a file \
             transfer, a background process or a port forward); it hibernates once they end"
        )));
    }
    if why == Why::Idle && row.state != SandboxState::Running {
        return Ok(view(&row));
    }
    let jail = d.cfg.jail(id);
    let sock = jail.api_sock();
    let vmm_err =
        |e: vmm::VmmError| ApiError::Unavailable(format!("The sandbox's VMM: {}", chain(&e)));
    let rss = row.pid.and_then(vmm::rss_kib).unwrap_or(0);
    let was_running = row.state == SandboxState::Running;
    if was_running {
        vmm::set_vm_state(&sock, "Paused").await.map_err(vmm_err)?;
    }
    let written = vmm::api(
        &sock,
        "PUT",
        "/snapshot/create",
        Some(
            &json!({"snapshot_type": "Full", "snapshot_path": format!("/{HIB_STATE}"),
                     "mem_file_path": format!("/{HIB_MEM}")}),
        ),
        Duration::from_secs(300),
    )
    .await;
    if let Err(e) = written {
        // A full disk, say: the sandbox goes on as it was.
        let _ = std::fs::remove_file(jail.root.join(HIB_STATE));
        let _ = std::fs::remove_file(jail.root.join(HIB_MEM));
        if was_running {
            if let Err(e) = vmm::set_vm_state(&sock, "Resumed").await {
                tracing::warn!(
                    "sandbox {id}: resume after a failed hibernation: {}",
                    chain(&e)
                );
            }
        }
        return Err(ApiError::Internal(format!(
            "Writing the hibernation snapshot failed: {}",
            chain(&e)
        )));
    }
    // The snapshot is whole: the VMM can go.
    d.mark_stopping(id);
    if let Some(pid) = row.pid {
        vmm::kill_if_same(pid, row.pid_start);
        if let Ok(w) = vmm::ProcessWatch::new(pid) {
            let _ = tokio::time::timeout(Duration::from_secs(5), w.exited()).await;
        }
    }
    let dir = hib_dir(d, id);
    let (root, dir2) = (jail.root.clone(), dir.clone());
    let sdir = d.cfg.sandbox_dir(id);
    let version = d.cfg.launcher.cgroup_version;
    let moved = tokio::task::spawn_blocking(move || -> Result<u64, ApiError> {
        let e = |e: fsutil::FsError| ApiError::internal("moving the hibernation files", &e);
        std::fs::create_dir_all(&dir2).map_err(|x| ApiError::internal("hibernation dir", &x))?;
        // The writable layer last: `complete` means every file is in place.
        fsutil::move_file(&root.join(HIB_MEM), &dir2.join(MEM)).map_err(e)?;
        fsutil::move_file(&root.join(HIB_STATE), &dir2.join(STATE)).map_err(e)?;
        fsutil::move_file(&root.join(DISK), &dir2.join(DISK)).map_err(e)?;
        sandbox::keep_serial_log(&jail, &sdir);
        if let Err(x) = vmm::cleanup_jail(&jail, version) {
            tracing::warn!("cannot remove the jail {}: {x}", jail.base.display());
        }
        Ok(fsutil::allocated_bytes(&dir2))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("hibernate task: {e}")))?;
    d.drop_live(id);
    let bytes = match moved {
        Ok(b) => b,
        Err(e) => {
            sandbox::teardown(d, id).await;
            d.set_state(id, SandboxState::Failed, Some(&e.to_string()));
            return Err(e);
        }
    };
    d.store.set_sandbox_hibernated(id, bytes, rss)?;
    d.metrics
        .hibernations
        .get_or_create(&ReasonLabel {
            reason: why.as_str().into(),
        })
        .inc();
    d.metrics.hibernated_freed_bytes.inc_by(rss * 1024);
    tracing::info!(
        "sandbox {id}: hibernated ({}): {rss} KiB of memory given back, {bytes} bytes on disk",
        why.as_str()
    );
    let reason = format!("Hibernated ({})", why.as_str());
    d.audit_state(
        &row.tenant,
        &format!("sandbox/{id}"),
        "hibernated",
        Some(&reason),
    );
    d.event(&row.tenant, "sandbox.state", |e| {
        e.sandbox = Some(id.to_string());
        e.state = Some("hibernated".into());
        e.message = Some(reason.clone());
    });
    d.refresh_gauges();
    Ok(view(&d.sandbox_row(scope, id)?))
}

/// `POST /sandboxes/{id}/wake`: a hibernated sandbox runs again (a running one is left as is).
pub async fn wake(d: &Shared, scope: &TenantScope, id: &str) -> Result<Sandbox, ApiError> {
    let lock = d.lock_of(id);
    let _g = lock.lock().await;
    let row = d.sandbox_row(scope, id)?;
    match row.state {
        SandboxState::Hibernated => wake_locked(d, &row).await?,
        SandboxState::Running | SandboxState::Paused => {}
        s => {
            return Err(ApiError::Conflict(format!(
                "Sandbox '{id}' is {}; only a hibernated sandbox can be woken",
                s.as_str()
            )))
        }
    }
    Ok(view(&d.sandbox_row(scope, id)?))
}

/// A running sandbox for a request that uses its guest, woken first if it hibernates; the
/// [`Activity`] keeps it from hibernating until the request drops it.
pub async fn awake(
    d: &Shared,
    scope: &TenantScope,
    id: &str,
) -> Result<(SandboxRow, Activity), ApiError> {
    let lock = d.lock_of(id);
    let _g = lock.lock().await;
    let row = d.sandbox_row(scope, id)?;
    if row.state == SandboxState::Hibernated {
        wake_locked(d, &row).await?;
    }
    let row = d.running_row(scope, id)?;
    let live = d
        .live_of(id)
        .ok_or_else(|| ApiError::Unavailable(format!("Sandbox '{id}' has no VMM")))?;
    Ok((row, Activity::new(live)))
}

/// Restores the hibernation in a fresh jail; on failure the sandbox is `failed` with the
/// reason (its files are of no use to a later try: the snapshot did not load).
async fn wake_locked(d: &Shared, row: &SandboxRow) -> Result<(), ApiError> {
    let id = &row.id;
    if let Some(t) = row.timeout_s {
        if now_ms() >= row.created_ms + (t as i64) * 1000 {
            let reason = format!("Timeout: {t} s after creation");
            sandbox::teardown(d, id).await;
            d.set_state(id, SandboxState::Stopped, Some(&reason));
            return Err(ApiError::Conflict(format!(
                "Sandbox '{id}' reached its timeout while hibernated and is stopped"
            )));
        }
    }
    {
        let _adm = d.admission.lock().await;
        let rows = d.store.sandboxes(&TenantScope::All)?;
        let used: u64 = rows
            .iter()
            .filter(|r| sandbox::is_live(r.state))
            .map(|r| r.memory_mib as u64)
            .sum();
        if used + row.memory_mib as u64 > d.cfg.max_memory_mib {
            return Err(ApiError::Limit(format!(
                "memory: {used} MiB of guest memory in use + {} MiB to wake '{id}' exceeds the \
                 limit (--max-memory-mib) of {} MiB",
                row.memory_mib, d.cfg.max_memory_mib
            )));
        }
        d.store
            .set_sandbox_state(id, SandboxState::Creating, None)?;
    }
    let t0 = Instant::now();
    let live = Arc::new(Live::default());
    d.set_live(id, live.clone());
    match start(d, row, t0).await {
        Ok((pid, pid_start)) => {
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            d.store.set_sandbox_woken(id, pid, pid_start, ms)?;
            d.metrics.wake_seconds.observe(ms / 1e3);
            let _ = fsutil::remove_tree(&hib_dir(d, id));
            sandbox::watch(d, id, live);
            tracing::info!("sandbox {id}: woken in {ms:.1} ms");
            d.audit_state(&row.tenant, &format!("sandbox/{id}"), "running", None);
            d.event(&row.tenant, "sandbox.state", |e| {
                e.sandbox = Some(id.clone());
                e.state = Some("running".into());
                e.message = Some(format!("Woken in {ms:.1} ms"));
            });
            d.refresh_gauges();
            Ok(())
        }
        Err(e) => {
            live.stopping.store(true, Ordering::SeqCst);
            d.drop_live(id);
            d.metrics.fail("wake");
            let reason = format!("Wake failed: {e}");
            tracing::warn!("sandbox {id}: {reason}");
            sandbox::teardown(d, id).await;
            let _ = fsutil::remove_tree(&hib_dir(d, id));
            d.set_state(id, SandboxState::Failed, Some(&reason));
            Err(e)
        }
    }
}

/// Jail, VMM, snapshot load, agent: the same path as a create, from the hibernation's files.
async fn start(d: &Shared, row: &SandboxRow, t0: Instant) -> Result<(i32, u64), ApiError> {
    let id = &row.id;
    let jail = d.cfg.jail(id);
    let dir = hib_dir(d, id);
    if !complete(&dir) {
        return Err(ApiError::Internal(format!(
            "The hibernation files of '{id}' are missing from {}",
            dir.display()
        )));
    }
    let (root, uid) = (jail.root.clone(), row.uid);
    let rootfs = Path::new(&row.template_dir).join(ROOTFS);
    tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
        let e = |e: fsutil::FsError| ApiError::internal("preparing the jail", &e);
        std::fs::create_dir_all(&root).map_err(|x| ApiError::internal("jail", &x))?;
        // The snapshot is linked, the writable layer moved: from here on the guest may
        // write to it, so the hibernation is no longer `complete` (recovery must not go
        // back to it).
        fsutil::link_or_copy(&dir.join(STATE), &root.join(STATE)).map_err(e)?;
        fsutil::link_or_copy(&dir.join(MEM), &root.join(MEM)).map_err(e)?;
        fsutil::link_or_copy(&rootfs, &root.join(ROOTFS)).map_err(e)?;
        fsutil::move_file(&dir.join(DISK), &root.join(DISK)).map_err(e)?;
        for f in [STATE, MEM, DISK] {
            fsutil::give_to(&root.join(f), uid).map_err(e)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| ApiError::Internal(format!("jail task: {e}")))??;
    let vmm_err =
        |e: vmm::VmmError| ApiError::Unavailable(format!("The sandbox's VMM: {}", chain(&e)));
    let (nid, nat) = (id.clone(), row.net_index);
    let ns = tokio::task::spawn_blocking(move || crate::netns::ensure(&nid, uid, nat))
        .await
        .map_err(|e| ApiError::Internal(format!("netns task: {e}")))?
        .map_err(|e| ApiError::internal("the sandbox's network", &e))?;
    let limits = Limits {
        uid: row.uid,
        vcpus: row.vcpus,
        memory_mib: row.memory_mib,
    };
    let pid = d
        .cfg
        .launcher
        .start(&jail, limits, Some(&ns))
        .await
        .map_err(vmm_err)?;
    let pid_start = vmm::process_start_time(pid).unwrap_or(0);
    d.store.set_sandbox_pid(id, pid, pid_start)?;
    vmm::wait_for_socket(&jail.api_sock(), Duration::from_secs(10))
        .await
        .map_err(vmm_err)?;
    vmm::api(
        &jail.api_sock(),
        "PUT",
        "/snapshot/load",
        Some(&json!({
            "snapshot_path": format!("/{STATE}"),
            "mem_backend": {"backend_type": "File", "backend_path": format!("/{MEM}")},
            "resume_vm": true,
        })),
        API_TIMEOUT,
    )
    .await
    .map_err(vmm_err)?;
    let restore = t0.elapsed();
    d.metrics.restore_seconds.observe(restore.as_secs_f64());
    let uds = jail.vsock();
    tokio::task::spawn_blocking(move || {
        crate::daemon::wait_for_agent(&uds, AGENT_TIMEOUT, crate::daemon::HANDSHAKE_TIMEOUT)
            .map(|_| ())
            .map_err(|e| {
                ApiError::Unavailable(format!(
                    "The woken guest's agent did not answer: {}",
                    chain(&e)
                ))
            })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("agent task: {e}")))??;
    Ok((pid, pid_start))
}

/// A hibernated sandbox's files become a snapshot (graceful termination with a checkpoint):
/// nothing is copied, the files move.
pub async fn checkpoint(
    d: &Shared,
    scope: &TenantScope,
    id: &str,
) -> Result<tartarus_types::Snapshot, ApiError> {
    let lock = d.lock_of(id);
    let _g = lock.lock().await;
    let row = d.sandbox_row(scope, id)?;
    if row.state != SandboxState::Hibernated {
        return Err(ApiError::Conflict(format!(
            "Sandbox '{id}' is {}, not hibernated",
            row.state.as_str()
        )));
    }
    let snap_id = format!("snap-{}", fsutil::random_hex(6));
    let to = d.cfg.snapshots_dir().join(&snap_id);
    let from = hib_dir(d, id);
    let to2 = to.clone();
    let size = tokio::task::spawn_blocking(move || -> Result<u64, ApiError> {
        let e = |e: fsutil::FsError| ApiError::internal("the checkpoint", &e);
        std::fs::create_dir_all(&to2).map_err(|x| ApiError::internal("snapshot dir", &x))?;
        for f in [STATE, MEM, DISK] {
            fsutil::move_file(&from.join(f), &to2.join(f)).map_err(e)?;
            fsutil::make_shared_readonly(&to2.join(f)).map_err(e)?;
        }
        Ok(fsutil::allocated_bytes(&to2))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("checkpoint task: {e}")))??;
    sandbox::record_snapshot(d, scope, &row, &snap_id, &to, size)
}

/// The idle clock: once a second, hibernates running sandboxes idle for their
/// `idle_timeout_s`, and stops hibernated ones whose `timeout_s` passed.
pub fn spawn_reaper(d: &Shared) -> tokio::task::JoinHandle<()> {
    let d = d.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            reap_once(&d).await;
        }
    })
}

async fn reap_once(d: &Shared) {
    let Ok(rows) = d.store.sandboxes(&TenantScope::All) else {
        return;
    };
    for row in rows {
        match row.state {
            SandboxState::Running => {
                let Some(idle) = row.idle_timeout_s else {
                    continue;
                };
                let Some(live) = d.live_of(&row.id) else {
                    continue;
                };
                if live.idle_for() < Duration::from_secs(idle) {
                    continue;
                }
                match hibernate(d, &TenantScope::All, &row.id, Why::Idle).await {
                    Ok(_) => {}
                    // Something started between the check and the lock: try again later.
                    Err(ApiError::Conflict(_)) => {}
                    Err(e) => tracing::warn!("sandbox {}: idle hibernation failed: {e}", row.id),
                }
            }
            SandboxState::Hibernated => {
                let Some(t) = row.timeout_s else { continue };
                if now_ms() < row.created_ms + (t as i64) * 1000 {
                    continue;
                }
                let reason = format!("Timeout: {t} s after creation");
                let _ = sandbox::stop(d, &TenantScope::All, &row.id, 0, &reason).await;
            }
            _ => {}
        }
    }
}
