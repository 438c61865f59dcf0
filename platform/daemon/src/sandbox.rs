//! Sandbox lifecycle: create (a restore in a fresh jail), pause/resume, snapshots, stop and
//! delete, the exit watcher and timeouts (recovery after a daemon restart: `recover`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tartarus_auth::TenantScope;
use tartarus_types::{CreateSandbox, NetworkMode, Sandbox, SandboxState, Snapshot, TemplateState};

use crate::daemon::{Daemon, Live, Shared};
use crate::error::{chain, ApiError};
use crate::fsutil;
use crate::store::{now_ms, rfc3339, SandboxRow};
use crate::template::{DISK, MEM, ROOTFS, STATE};
use crate::vmm::{self, Limits};

const API_TIMEOUT: Duration = Duration::from_secs(30);
/// A restored guest answers its agent within well under a second here; allow for load.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The API view of a row.
pub fn view(row: &SandboxRow) -> Sandbox {
    let age_s = ((now_ms() - row.created_ms).max(0) / 1000) as u64;
    Sandbox {
        id: row.id.clone(),
        tenant: row.tenant.clone(),
        state: row.state,
        template: row.template.clone(),
        snapshot: row.snapshot.clone(),
        pid: row.pid,
        vcpus: row.vcpus,
        memory_mib: row.memory_mib,
        network: row.network,
        guest_ip: row.net_index.map(|_| crate::netns::GUEST_IP.to_string()),
        timeout_s: row.timeout_s,
        labels: row.labels.clone(),
        created_at: rfc3339(row.created_ms),
        age_s,
        create_ms: row.create_ms,
        restore_ms: row.restore_ms,
        rss_kib: row.pid.and_then(vmm::rss_kib),
        reason: row.reason.clone(),
        idle_timeout_s: row.idle_timeout_s,
        hibernated_at: row
            .hibernated_ms
            .filter(|_| row.state == SandboxState::Hibernated)
            .map(rfc3339),
        hibernated_bytes: row
            .hibernated_bytes
            .filter(|_| row.state == SandboxState::Hibernated),
        memory_freed_kib: row.memory_freed_kib,
        wake_ms: row.wake_ms,
        wakes: row.wakes,
        from_pool: row.from_pool,
    }
}

/// A sandbox with a VMM (or about to have one): it counts against the memory limit.
pub fn is_live(s: SandboxState) -> bool {
    matches!(
        s,
        SandboxState::Creating | SandboxState::Running | SandboxState::Paused
    )
}

/// A sandbox that holds a uid, a network namespace and a place under `--max-sandboxes`:
/// the live ones and the hibernated ones.
pub fn holds_resources(s: SandboxState) -> bool {
    is_live(s) || s == SandboxState::Hibernated
}

/// Where a new sandbox's files come from.
pub struct Source {
    /// The template's tenant, when the sandbox starts from a template.
    template_tenant: Option<String>,
    template: String,
    template_dir: String,
    snapshot: Option<String>,
    state: PathBuf,
    mem: PathBuf,
    disk: PathBuf,
    vcpus: u8,
    memory_mib: u32,
}

pub fn source(d: &Daemon, scope: &TenantScope, req: &CreateSandbox) -> Result<Source, ApiError> {
    match (&req.template, &req.snapshot) {
        (Some(_), Some(_)) => Err(ApiError::BadRequest(
            "template, snapshot: give one of them, not both".into(),
        )),
        (None, None) => Err(ApiError::BadRequest(
            "template: missing (or give a snapshot)".into(),
        )),
        (Some(name), None) => {
            let t = crate::template::usable(d, scope, name)?;
            if t.api.state != TemplateState::Ready {
                return Err(ApiError::Conflict(format!(
                    "Template '{name}' is not ready (it is {:?})",
                    t.api.state
                )));
            }
            let dir = Path::new(&t.dir);
            Ok(Source {
                template_tenant: Some(t.api.tenant.clone()),
                template: name.clone(),
                template_dir: t.dir.clone(),
                snapshot: None,
                state: dir.join(STATE),
                mem: dir.join(MEM),
                disk: dir.join(DISK),
                vcpus: t.api.vcpus,
                memory_mib: t.api.memory_mib,
            })
        }
        (None, Some(id)) => {
            let s = d
                .store
                .snapshot(scope, id)?
                .ok_or_else(|| ApiError::NotFound(format!("No snapshot '{id}'")))?;
            let dir = Path::new(&s.dir);
            Ok(Source {
                template_tenant: None,
                template: s.api.template.clone(),
                template_dir: s.template_dir.clone(),
                snapshot: Some(id.clone()),
                state: dir.join(STATE),
                mem: dir.join(MEM),
                disk: dir.join(DISK),
                vcpus: s.vcpus,
                memory_mib: s.memory_mib,
            })
        }
    }
}

/// A uid no live sandbox uses.
fn pick_uid(d: &Daemon, rows: &[SandboxRow]) -> u32 {
    let used: HashSet<u32> = rows.iter().map(|r| r.uid).collect();
    (0..65_536u32)
        .map(|i| d.cfg.uid_base + i)
        .find(|u| !used.contains(u))
        .unwrap_or(d.cfg.uid_base)
}

/// `POST /sandboxes`: a sandbox of `scope`'s tenant (`*` for the host scope).
pub async fn create(
    d: &Shared,
    scope: &TenantScope,
    req: CreateSandbox,
) -> Result<Sandbox, ApiError> {
    let t0 = Instant::now();
    if req.timeout_s == Some(0) {
        return Err(ApiError::BadRequest("timeout_s: must be at least 1".into()));
    }
    if req.idle_timeout_s == Some(0) {
        return Err(ApiError::BadRequest(
            "idle_timeout_s: must be at least 1".into(),
        ));
    }
    let src = source(d, scope, &req)?;
    // A template's warm pool serves plain creates (no network, no snapshot).
    if let (Some(tt), NetworkMode::None) = (&src.template_tenant, req.network) {
        let key = crate::store::pool_key(tt, &src.template);
        if let Some(s) = crate::pool::claim(d, scope, &key, &req, t0).await? {
            return Ok(s);
        }
    }
    let row = new_sandbox(d, scope.as_str(), &req, &src, None, t0).await?;
    Ok(view(&row))
}

/// Creates a sandbox of `tenant` from `src` (restore, agent answering); with `pool`, it is
/// one for that warm pool (hidden until claimed; the pool pauses it).
pub async fn new_sandbox(
    d: &Shared,
    tenant: &str,
    req: &CreateSandbox,
    src: &Source,
    pool: Option<String>,
    t0: Instant,
) -> Result<SandboxRow, ApiError> {
    let tenant = tenant.to_string();
    let id = format!("sb-{}", fsutil::random_hex(6));
    let mut evict = Vec::new();
    let row = {
        let _adm = d.admission.lock().await;
        // The limits are the host's: every tenant's sandboxes count. Warm pools yield: a
        // create counts without their ready sandboxes and evicts as many as it needs.
        let rows = d.store.sandboxes(&TenantScope::All)?;
        let pooled = |r: &&SandboxRow| r.pool.is_some() && r.state == SandboxState::Paused;
        let mut spare: Vec<&SandboxRow> = if pool.is_none() {
            rows.iter().filter(pooled).collect()
        } else {
            Vec::new()
        };
        let counted = |r: &&SandboxRow| pool.is_some() || !pooled(r);
        let held = rows
            .iter()
            .filter(|r| holds_resources(r.state))
            .filter(counted)
            .count();
        if held >= d.cfg.max_sandboxes {
            return Err(ApiError::Limit(format!(
                "{held} sandboxes are alive or hibernated, the limit (--max-sandboxes) is {}",
                d.cfg.max_sandboxes
            )));
        }
        let used: u64 = rows
            .iter()
            .filter(|r| is_live(r.state))
            .filter(counted)
            .map(|r| r.memory_mib as u64)
            .sum();
        if used + src.memory_mib as u64 > d.cfg.max_memory_mib {
            return Err(ApiError::Limit(format!(
                "memory: {used} MiB of guest memory in use + {} MiB asked exceeds the limit \
                 (--max-memory-mib) of {} MiB",
                src.memory_mib, d.cfg.max_memory_mib
            )));
        }
        let (mut all_held, mut all_used) = (
            held + spare.len(),
            used + spare.iter().map(|r| r.memory_mib as u64).sum::<u64>(),
        );
        while all_held >= d.cfg.max_sandboxes
            || all_used + src.memory_mib as u64 > d.cfg.max_memory_mib
        {
            let Some(r) = spare.pop() else { break };
            all_held -= 1;
            all_used -= r.memory_mib as u64;
            // Out of the pool now, so no create claims it meanwhile.
            d.store
                .set_sandbox_state(&r.id, SandboxState::Stopped, Some("Evicted"))?;
            evict.push(r.id.clone());
        }
        let live_rows: Vec<SandboxRow> = rows
            .into_iter()
            .filter(|r| holds_resources(r.state))
            .collect();
        let net_index =
            match req.network {
                NetworkMode::None => None,
                NetworkMode::Nat => {
                    let used: HashSet<u16> = live_rows.iter().filter_map(|r| r.net_index).collect();
                    Some((0..16_384u16).find(|i| !used.contains(i)).ok_or_else(|| {
                        ApiError::Limit("network: every nat subnet is in use".into())
                    })?)
                }
            };
        let row = SandboxRow {
            id: id.clone(),
            tenant: tenant.clone(),
            state: SandboxState::Creating,
            template: src.template.clone(),
            snapshot: src.snapshot.clone(),
            pid: None,
            pid_start: None,
            uid: pick_uid(d, &live_rows),
            vcpus: src.vcpus,
            memory_mib: src.memory_mib,
            network: req.network,
            timeout_s: req.timeout_s,
            labels: req.labels.clone(),
            created_ms: now_ms(),
            create_ms: None,
            restore_ms: None,
            reason: None,
            template_dir: src.template_dir.clone(),
            net_index,
            idle_timeout_s: req.idle_timeout_s,
            hibernated_ms: None,
            hibernated_bytes: None,
            memory_freed_kib: None,
            wake_ms: None,
            wakes: 0,
            pool,
            from_pool: false,
        };
        // The row exists before any resource does, so recovery can always clean up.
        d.store.insert_sandbox(&row)?;
        row
    };
    for e in evict {
        crate::pool::destroy(d, &e).await;
    }
    d.event(&tenant, "sandbox.created", |e| {
        e.sandbox = Some(id.clone());
        e.template = Some(row.template.clone());
        e.snapshot = row.snapshot.clone();
        e.state = Some("creating".into());
    });
    let lock = d.lock_of(&id);
    let _g = lock.lock().await;
    let live = Arc::new(Live::default());
    d.set_live(&id, live.clone());
    match start_vm(d, &row, src, t0).await {
        Ok(()) => {
            watch(d, &id, live);
            d.refresh_gauges();
            d.store
                .sandbox(&TenantScope::All, &id)?
                .ok_or_else(|| ApiError::Internal(format!("Sandbox '{id}' left the store")))
        }
        Err(e) => {
            live.stopping.store(true, Ordering::SeqCst);
            d.metrics.fail("create");
            teardown(d, &id).await;
            d.set_state(&id, SandboxState::Failed, Some(&e.to_string()));
            Err(e)
        }
    }
}

async fn start_vm(d: &Shared, row: &SandboxRow, src: &Source, t0: Instant) -> Result<(), ApiError> {
    let id = &row.id;
    let jail = d.cfg.jail(id);
    let (root, uid) = (jail.root.clone(), row.uid);
    let (state, mem, disk) = (src.state.clone(), src.mem.clone(), src.disk.clone());
    let rootfs = Path::new(&src.template_dir).join(ROOTFS);
    let sdir = d.cfg.sandbox_dir(id);
    tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
        let e = |e: fsutil::FsError| ApiError::internal("preparing the jail", &e);
        std::fs::create_dir_all(&root).map_err(|x| ApiError::internal("jail", &x))?;
        std::fs::create_dir_all(&sdir).map_err(|x| ApiError::internal("sandbox dir", &x))?;
        fsutil::link_or_copy(&state, &root.join(STATE)).map_err(e)?;
        fsutil::link_or_copy(&mem, &root.join(MEM)).map_err(e)?;
        fsutil::link_or_copy(&rootfs, &root.join(ROOTFS)).map_err(e)?;
        // The writable layer is the one file each sandbox owns: a sparse copy of the layer as
        // it was when the snapshot was taken.
        fsutil::sparse_copy(&disk, &root.join(DISK)).map_err(e)?;
        fsutil::give_to(&root.join(DISK), uid).map_err(e)?;
        Ok(())
    })
    .await
    .map_err(|e| ApiError::Internal(format!("jail task: {e}")))??;

    let vmm_err =
        |e: vmm::VmmError| ApiError::Unavailable(format!("The sandbox's VMM: {}", chain(&e)));
    let limits = Limits {
        uid: row.uid,
        vcpus: row.vcpus,
        memory_mib: row.memory_mib,
    };
    let (nid, nat) = (id.clone(), row.net_index);
    let ns = tokio::task::spawn_blocking(move || crate::netns::create(&nid, uid, nat))
        .await
        .map_err(|e| ApiError::Internal(format!("netns task: {e}")))?
        .map_err(|e| ApiError::internal("the sandbox's network", &e))?;
    let pid = d
        .cfg
        .launcher
        .start(&jail, limits, Some(&ns))
        .await
        .map_err(vmm_err)?;
    let start = vmm::process_start_time(pid).unwrap_or(0);
    d.store.set_sandbox_pid(id, pid, start)?;
    vmm::wait_for_socket(&jail.api_sock(), Duration::from_secs(10))
        .await
        .map_err(vmm_err)?;
    let t_load = Instant::now();
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
    let restore = t_load.elapsed();
    let uds = jail.vsock();
    tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
        crate::daemon::wait_for_agent(&uds, AGENT_TIMEOUT, crate::daemon::HANDSHAKE_TIMEOUT)
            .map(|_| ())
            .map_err(|e| {
                ApiError::Unavailable(format!(
                    "The restored guest's agent did not answer: {}",
                    chain(&e)
                ))
            })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("agent task: {e}")))??;
    let create = t0.elapsed();
    d.metrics.restore_seconds.observe(restore.as_secs_f64());
    d.metrics.create_seconds.observe(create.as_secs_f64());
    d.store.set_sandbox_running(
        id,
        pid,
        start,
        create.as_secs_f64() * 1e3,
        restore.as_secs_f64() * 1e3,
    )?;
    d.audit_state(&row.tenant, &format!("sandbox/{id}"), "running", None);
    d.event(&row.tenant, "sandbox.state", |e| {
        e.sandbox = Some(id.clone());
        e.state = Some("running".into());
    });
    Ok(())
}

/// Watches the VMM: an exit the daemon did not ask for makes the sandbox `stopped` (the guest
/// powered off) or `failed`; either way its resources go. Also arms the timeout.
pub fn watch(d: &Shared, id: &str, live: Arc<Live>) {
    let Ok(Some(row)) = d.store.sandbox(&TenantScope::All, id) else {
        return;
    };
    let Some(pid) = row.pid else { return };
    let mut tasks = Vec::new();
    match vmm::ProcessWatch::new(pid) {
        Ok(w) => {
            let (d2, id2, live2) = (d.clone(), id.to_string(), live.clone());
            tasks.push(
                tokio::spawn(async move {
                    let how = w.exited().await;
                    if live2.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    let lock = d2.lock_of(&id2);
                    let _g = lock.lock().await;
                    if live2.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    d2.drop_live(&id2);
                    let clean = how == "exited with code 0";
                    let (state, reason) = if clean {
                        (SandboxState::Stopped, "The guest powered off".to_string())
                    } else {
                        d2.metrics.vmm_unexpected_exits.inc();
                        d2.metrics.fail("vmm_exit");
                        (SandboxState::Failed, format!("The sandbox's VMM {how}"))
                    };
                    tracing::info!("sandbox {id2}: {reason}");
                    teardown(&d2, &id2).await;
                    d2.set_state(&id2, state, Some(&reason));
                })
                .abort_handle(),
            );
        }
        Err(e) => tracing::warn!("sandbox {id}: cannot watch pid {pid}: {e}"),
    }
    live.tasks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(tasks);
    arm_timeout(d, &row, &live);
}

/// Stops the sandbox when `timeout_s` after its creation passes (a task of `live`).
pub fn arm_timeout(d: &Shared, row: &SandboxRow, live: &Live) {
    let Some(t) = row.timeout_s else { return };
    let deadline = row.created_ms + (t as i64) * 1000;
    let wait = Duration::from_millis((deadline - now_ms()).max(0) as u64);
    let (d2, id2) = (d.clone(), row.id.clone());
    let task = tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        tracing::info!("sandbox {id2}: timeout of {t} s reached");
        let reason = format!("Timeout: {t} s after creation");
        let _ = stop(&d2, &TenantScope::All, &id2, 0, &reason).await;
    })
    .abort_handle();
    live.tasks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(task);
}

/// Appends the jail's console output to the sandbox's kept console log.
pub fn keep_serial_log(jail: &vmm::JailPaths, sdir: &Path) {
    let Ok(mut from) = std::fs::File::open(jail.serial()) else {
        return;
    };
    let _ = std::fs::create_dir_all(sdir);
    let to = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(sdir.join("serial.log"));
    if let Ok(mut to) = to {
        let _ = std::io::copy(&mut from, &mut to);
    }
}

/// Kills the VMM (if any) and removes the jail, cgroups and network namespace; keeps the
/// sandbox's log directory with the console output (and a hibernation's files).
pub async fn teardown(d: &Shared, id: &str) {
    let jail = d.cfg.jail(id);
    if let Ok(Some(row)) = d.store.sandbox(&TenantScope::All, id) {
        if let Some(pid) = row.pid {
            vmm::kill_if_same(pid, row.pid_start);
            if let Ok(w) = vmm::ProcessWatch::new(pid) {
                let _ = tokio::time::timeout(Duration::from_secs(5), w.exited()).await;
            }
        }
    }
    // A VMM started by a jailer whose pid never reached the store.
    kill_jail_vmm(&jail).await;
    let sdir = d.cfg.sandbox_dir(id);
    let version = d.cfg.launcher.cgroup_version;
    let nid = id.to_string();
    let _ = tokio::task::spawn_blocking(move || {
        crate::netns::remove(&nid);
        keep_serial_log(&jail, &sdir);
        if let Err(e) = vmm::cleanup_jail(&jail, version) {
            tracing::warn!("cannot remove the jail {}: {e}", jail.base.display());
        }
    })
    .await;
}

/// Kills the VMM a jail's pid file names (when it is still a tartarus-vmm) and waits for it.
pub async fn kill_jail_vmm(jail: &vmm::JailPaths) {
    let Ok(p) = std::fs::read_to_string(jail.pid_file()) else {
        return;
    };
    let Ok(pid) = p.trim().parse::<i32>() else {
        return;
    };
    if is_vmm(pid) {
        vmm::kill_if_same(pid, None);
        if let Ok(w) = vmm::ProcessWatch::new(pid) {
            let _ = tokio::time::timeout(Duration::from_secs(5), w.exited()).await;
        }
    }
}

/// Whether `pid` is a tartarus-vmm process (before killing a pid read from a file).
fn is_vmm(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let first = c.split(|b| *b == 0).next().unwrap_or(&[]);
            first.ends_with(vmm::EXEC_NAME.as_bytes())
        })
        .unwrap_or(false)
}

/// Stops a sandbox's VMM (after `grace_s` seconds of asking the guest to shut down) and marks
/// it `stopped`; the record and logs stay.
pub async fn stop(
    d: &Shared,
    scope: &TenantScope,
    id: &str,
    grace_s: u64,
    reason: &str,
) -> Result<(), ApiError> {
    let lock = d.lock_of(id);
    let _g = lock.lock().await;
    let row = d.sandbox_row(scope, id)?;
    if row.state == SandboxState::Hibernated {
        // No VMM: its network namespace and the hibernation's files go.
        teardown(d, id).await;
        let _ = fsutil::remove_tree(&crate::hibernate::hib_dir(d, id));
        d.set_state(id, SandboxState::Stopped, Some(reason));
        return Ok(());
    }
    if !is_live(row.state) {
        return Ok(());
    }
    d.mark_stopping(id);
    if grace_s > 0 && row.state == SandboxState::Running {
        graceful(d, &row, Duration::from_secs(grace_s)).await;
    }
    teardown(d, id).await;
    d.drop_live(id);
    d.set_state(id, SandboxState::Stopped, Some(reason));
    Ok(())
}

/// Asks the guest to shut down (tartarus-init stops every process, syncs and powers off) and
/// waits up to `grace` for the VMM to exit.
async fn graceful(d: &Shared, row: &SandboxRow, grace: Duration) {
    let Some(pid) = row.pid else { return };
    let uds = d.vsock_of(&row.id);
    let asked = tokio::task::spawn_blocking(move || {
        let mut c = Daemon::agent_blocking(&uds, Duration::from_secs(5))?;
        // tartarus-init's stop sequence: SIGTERM to every process, wait, SIGKILL the rest,
        // sync, power off. Agents of protocol 1 get the same through SIGTERM to PID 1.
        let grace_ms = (grace.as_millis() as u32).saturating_sub(500).max(100);
        if c.version() >= 2 {
            c.shutdown(grace_ms).map_err(crate::daemon::agent_error)
        } else {
            c.exec(["kill", "-TERM", "1"])
                .map_err(crate::daemon::agent_error)
                .map(|_| ())
        }
    })
    .await;
    if !matches!(asked, Ok(Ok(()))) {
        return;
    }
    if let Ok(w) = vmm::ProcessWatch::new(pid) {
        let _ = tokio::time::timeout(grace, w.exited()).await;
    }
}

/// `DELETE /sandboxes/{id}`: stop it if it runs (asking the guest to shut down within
/// `grace_s`), then forget it. With `checkpoint`, a snapshot of it is kept first (a new sandbox
/// can start from it later) and returned.
pub async fn delete(
    d: &Shared,
    scope: &TenantScope,
    id: &str,
    grace_s: u64,
    checkpoint: bool,
) -> Result<Option<Snapshot>, ApiError> {
    let row = d.sandbox_row(scope, id)?;
    let kept = if !checkpoint {
        None
    } else if row.state == SandboxState::Hibernated {
        Some(crate::hibernate::checkpoint(d, scope, id).await?)
    } else if matches!(row.state, SandboxState::Running | SandboxState::Paused) {
        Some(snapshot(d, scope, id, false).await?)
    } else {
        return Err(ApiError::Conflict(format!(
            "Sandbox '{id}' is {}; there is nothing to checkpoint",
            row.state.as_str()
        )));
    };
    stop(d, scope, id, grace_s, "Deleted").await?;
    let lock = d.lock_of(id);
    let _g = lock.lock().await;
    let Some(row) = d.store.sandbox(scope, id)? else {
        return Err(ApiError::NotFound(format!("No sandbox '{id}'")));
    };
    let sdir = d.cfg.sandbox_dir(id);
    let _ = fsutil::remove_tree(&sdir);
    d.store.delete_sandbox(id)?;
    crate::template::remove_template_dir_if_unused(d, &row.template_dir);
    d.event(&row.tenant, "sandbox.deleted", |e| {
        e.sandbox = Some(id.to_string())
    });
    d.refresh_gauges();
    drop(_g);
    d.forget_lock(id);
    Ok(kept)
}

/// `POST /sandboxes/{id}/pause` and `/resume`.
pub async fn set_paused(
    d: &Shared,
    scope: &TenantScope,
    id: &str,
    paused: bool,
) -> Result<Sandbox, ApiError> {
    if !paused && d.sandbox_row(scope, id)?.state == SandboxState::Hibernated {
        // Resuming a hibernated sandbox wakes it.
        return crate::hibernate::wake(d, scope, id).await;
    }
    let lock = d.lock_of(id);
    let _g = lock.lock().await;
    let row = d.sandbox_row(scope, id)?;
    let (from, to, vm_state) = if paused {
        (SandboxState::Running, SandboxState::Paused, "Paused")
    } else {
        (SandboxState::Paused, SandboxState::Running, "Resumed")
    };
    if row.state == to {
        return Ok(view(&row));
    }
    if row.state != from {
        return Err(ApiError::Conflict(format!(
            "Sandbox '{id}' is {}; only a {} sandbox can be {}",
            row.state.as_str(),
            from.as_str(),
            if paused { "paused" } else { "resumed" }
        )));
    }
    vmm::set_vm_state(&d.cfg.jail(id).api_sock(), vm_state)
        .await
        .map_err(|e| ApiError::Unavailable(format!("The sandbox's VMM: {}", chain(&e))))?;
    d.set_state(id, to, None);
    Ok(view(&d.sandbox_row(scope, id)?))
}

/// `POST /sandboxes/{id}/snapshots`: pause, write a Full snapshot and copy the writable layer,
/// resume (unless asked not to). A failure (a full disk, say) leaves the sandbox as it was.
pub async fn snapshot(
    d: &Shared,
    scope: &TenantScope,
    id: &str,
    leave_paused: bool,
) -> Result<Snapshot, ApiError> {
    if d.sandbox_row(scope, id)?.state == SandboxState::Hibernated {
        crate::hibernate::wake(d, scope, id).await?;
    }
    let lock = d.lock_of(id);
    let _g = lock.lock().await;
    let row = d.sandbox_row(scope, id)?;
    if !matches!(row.state, SandboxState::Running | SandboxState::Paused) {
        return Err(ApiError::Conflict(format!(
            "Sandbox '{id}' is {}; only a running or paused sandbox can be snapshotted",
            row.state.as_str()
        )));
    }
    let jail = d.cfg.jail(id);
    let sock = jail.api_sock();
    let vmm_err =
        |e: vmm::VmmError| ApiError::Unavailable(format!("The sandbox's VMM: {}", chain(&e)));
    let was_running = row.state == SandboxState::Running;
    if was_running {
        vmm::set_vm_state(&sock, "Paused").await.map_err(vmm_err)?;
    }
    let snap_id = format!("snap-{}", fsutil::random_hex(6));
    let dir = d.cfg.snapshots_dir().join(&snap_id);
    let result: Result<u64, ApiError> = async {
        vmm::api(
            &sock,
            "PUT",
            "/snapshot/create",
            Some(
                &json!({"snapshot_type": "Full", "snapshot_path": "/snap.state",
                         "mem_file_path": "/snap.mem"}),
            ),
            Duration::from_secs(300),
        )
        .await
        .map_err(|e| ApiError::Internal(format!("Writing the snapshot failed: {}", chain(&e))))?;
        let (root, dir2) = (jail.root.clone(), dir.clone());
        tokio::task::spawn_blocking(move || -> Result<u64, ApiError> {
            let e = |e: fsutil::FsError| {
                ApiError::Internal(format!("Writing the snapshot failed: {}", chain(&e)))
            };
            std::fs::create_dir_all(&dir2).map_err(|x| ApiError::internal("snapshot dir", &x))?;
            fsutil::sparse_copy(&root.join(DISK), &dir2.join(DISK)).map_err(e)?;
            fsutil::move_file(&root.join("snap.state"), &dir2.join(STATE)).map_err(e)?;
            fsutil::move_file(&root.join("snap.mem"), &dir2.join(MEM)).map_err(e)?;
            for f in [STATE, MEM, DISK] {
                fsutil::make_shared_readonly(&dir2.join(f)).map_err(e)?;
            }
            Ok(fsutil::allocated_bytes(&dir2))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("snapshot task: {e}")))?
    }
    .await;
    if was_running && !leave_paused {
        if let Err(e) = vmm::set_vm_state(&sock, "Resumed").await {
            tracing::warn!("sandbox {id}: resume after snapshot failed: {}", chain(&e));
        }
    }
    if was_running && leave_paused && result.is_ok() {
        d.set_state(id, SandboxState::Paused, None);
    }
    let size = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(jail.root.join("snap.state"));
            let _ = std::fs::remove_file(jail.root.join("snap.mem"));
            let _ = fsutil::remove_tree(&dir);
            return Err(e);
        }
    };
    record_snapshot(d, scope, &row, &snap_id, &dir, size)
}

/// Stores a snapshot of `row` whose files are in `dir`, records the event, and answers it.
pub fn record_snapshot(
    d: &Shared,
    scope: &TenantScope,
    row: &SandboxRow,
    snap_id: &str,
    dir: &Path,
    size: u64,
) -> Result<Snapshot, ApiError> {
    d.store.insert_snapshot(
        &row.tenant,
        snap_id,
        &row.id,
        &row.template,
        &row.template_dir,
        &dir.display().to_string(),
        row.vcpus,
        row.memory_mib,
        size,
    )?;
    d.event(&row.tenant, "snapshot.created", |e| {
        e.sandbox = Some(row.id.clone());
        e.snapshot = Some(snap_id.to_string());
    });
    d.store
        .snapshot(scope, snap_id)?
        .map(|s| s.api)
        .ok_or_else(|| ApiError::Internal("The new snapshot is missing from the store".into()))
}

/// `DELETE /snapshots/{id}`.
pub fn delete_snapshot(d: &Shared, scope: &TenantScope, id: &str) -> Result<(), ApiError> {
    let s = d
        .store
        .snapshot(scope, id)?
        .ok_or_else(|| ApiError::NotFound(format!("No snapshot '{id}'")))?;
    d.store.delete_snapshot(id)?;
    // Sandboxes forked from it hold hard links of its files: removing the directory is safe.
    fsutil::remove_tree(Path::new(&s.dir)).map_err(|e| ApiError::internal("snapshot", &e))?;
    crate::template::remove_template_dir_if_unused(d, &s.template_dir);
    d.event(&s.api.tenant, "snapshot.deleted", |e| {
        e.snapshot = Some(id.to_string())
    });
    Ok(())
}
