//! Warm pools: per template, sandboxes already restored (agent answering) and paused, so a
//! create only resumes one. A pool is kept between its `min` and `max`, steered by demand
//! (a moving average of the template's create rate times the time a refill takes), capped by
//! its memory budget, and drained when the host runs short of memory (pools shrink before
//! anything else: creates also evict ready pool sandboxes to fit under the daemon's limits).
//!
//! Pooled sandboxes are rows of the sandboxes table with `pool` = `tenant/template`, owned by
//! the template's tenant and hidden from the API until a create claims one (one UPDATE in the
//! store, so no two creates get the same). They are restored like any sandbox (no network).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tartarus_auth::TenantScope;
use tartarus_types::{CreateSandbox, Pool, PoolSpec, Sandbox, SandboxState, TemplateState};

use crate::daemon::Shared;
use crate::error::{chain, ApiError};
use crate::fsutil;
use crate::store::{pool_key, Claim, PoolRow, HOST_TENANT};
use crate::{sandbox, vmm};

/// How often pools are steered.
const TICK: Duration = Duration::from_millis(500);
/// The window of the demand's moving average.
const DEMAND_WINDOW_S: f64 = 30.0;
/// Most sandboxes one pool may keep.
pub const MAX_POOL: u32 = 64;

/// What the daemon tracks of each pool besides its settings.
#[derive(Debug, Default, Clone)]
struct Stats {
    filling: u32,
    claims: u64,
    misses: u64,
    /// Creates since the last tick.
    recent: u64,
    /// Creates per second, moving average.
    demand: f64,
    /// Seconds a fill took, moving average.
    fill_s: f64,
    target: u32,
    pressure: bool,
}

/// The daemon's pools' live numbers (settings are in the store).
#[derive(Default)]
pub struct Pools {
    stats: Mutex<HashMap<String, Stats>>,
}

impl Pools {
    fn with<T>(&self, key: &str, f: impl FnOnce(&mut Stats) -> T) -> T {
        let mut m = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        f(m.entry(key.to_string()).or_default())
    }
}

/// Takes a ready sandbox of pool `key` for `scope`'s create: resumed, the caller's, its
/// timeouts armed. None when the pool is empty (or has no settings: nothing is counted).
pub async fn claim(
    d: &Shared,
    scope: &TenantScope,
    key: &str,
    req: &CreateSandbox,
    t0: Instant,
) -> Result<Option<Sandbox>, ApiError> {
    let has_pool = d.store.pools()?.iter().any(|p| p.key() == key);
    if !has_pool {
        return Ok(None);
    }
    d.pools.with(key, |s| s.recent += 1);
    let claim = Claim {
        tenant: scope.as_str(),
        timeout_s: req.timeout_s,
        idle_timeout_s: req.idle_timeout_s,
        labels: &req.labels,
    };
    let Some(id) = d.store.claim_pooled(key, &claim)? else {
        d.pools.with(key, |s| s.misses += 1);
        return Ok(None);
    };
    let lock = d.lock_of(&id);
    let _g = lock.lock().await;
    let sock = d.cfg.jail(&id).api_sock();
    if let Err(e) = vmm::set_vm_state(&sock, "Resumed").await {
        // A pooled VMM that does not answer: gone, and the create takes the normal path.
        tracing::warn!("pool {key}: sandbox {id} did not resume: {}", chain(&e));
        d.store
            .set_sandbox_state(&id, SandboxState::Failed, Some("Did not resume"))?;
        drop(_g);
        destroy(d, &id).await;
        d.pools.with(key, |s| s.misses += 1);
        return Ok(None);
    }
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let row = d.sandbox_row(scope, &id)?;
    let (pid, start) = (row.pid.unwrap_or(0), row.pid_start.unwrap_or(0));
    d.store
        .set_sandbox_running(&id, pid, start, ms, row.restore_ms.unwrap_or(0.0))?;
    if let Some(live) = d.live_of(&id) {
        *live.last_active.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        live.stopping.store(false, Ordering::SeqCst);
        sandbox::arm_timeout(d, &row, &live);
    }
    d.metrics.create_seconds.observe(ms / 1e3);
    d.pools.with(key, |s| s.claims += 1);
    d.event(scope.as_str(), "sandbox.created", |e| {
        e.sandbox = Some(id.clone());
        e.template = Some(row.template.clone());
        e.state = Some("running".into());
        e.message = Some(format!("From the warm pool in {ms:.1} ms"));
    });
    d.audit_state(scope.as_str(), &format!("sandbox/{id}"), "running", None);
    d.refresh_gauges();
    Ok(Some(sandbox::view(&d.sandbox_row(scope, &id)?)))
}

/// Removes a sandbox the API does not show (a pooled one, or one just evicted from a pool):
/// its VMM, jail, namespace, files and row.
pub async fn destroy(d: &Shared, id: &str) {
    let lock = d.lock_of(id);
    let _g = lock.lock().await;
    d.mark_stopping(id);
    sandbox::teardown(d, id).await;
    d.drop_live(id);
    let _ = fsutil::remove_tree(&d.cfg.sandbox_dir(id));
    let row = d.store.sandbox(&TenantScope::All, id).ok().flatten();
    let _ = d.store.delete_sandbox(id);
    if let Some(r) = row {
        crate::template::remove_template_dir_if_unused(d, &r.template_dir);
    }
    drop(_g);
    d.forget_lock(id);
    d.refresh_gauges();
}

/// Host memory available, MiB (`MemAvailable` of /proc/meminfo).
fn mem_available_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Steers every pool twice a second.
pub fn spawn_manager(d: &Shared) -> tokio::task::JoinHandle<()> {
    let d = d.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        loop {
            tick.tick().await;
            let dt = last.elapsed().as_secs_f64().max(0.001);
            last = Instant::now();
            if let Err(e) = steer(&d, dt).await {
                tracing::warn!("warm pools: {e}");
            }
        }
    })
}

async fn steer(d: &Shared, dt: f64) -> Result<(), ApiError> {
    let pools = d.store.pools()?;
    let rows = d.store.sandboxes(&TenantScope::All)?;
    let pressure = mem_available_mib().is_some_and(|m| m < d.cfg.pool_reserve_mib);
    // Pooled sandboxes of no pool (its settings deleted) or that failed go.
    for r in rows.iter().filter(|r| r.pool.is_some()) {
        let key = r.pool.as_deref().unwrap_or_default();
        let known = pools.iter().any(|p| p.key() == key);
        // A pooled sandbox is creating or paused; a running one is a fill that recovery took
        // over after a daemon restart: it goes too.
        if !known
            || matches!(
                r.state,
                SandboxState::Failed | SandboxState::Stopped | SandboxState::Running
            )
        {
            spawn_destroy(d, &r.id);
        }
    }
    for p in &pools {
        let key = p.key();
        let template = d
            .store
            .template(&p.tenant, &p.template)?
            .filter(|t| t.api.state == TemplateState::Ready);
        let Some(t) = template else {
            // The template is gone (or being rebuilt): the pool drains and goes.
            tracing::info!("pool {key}: its template is gone; draining");
            d.store.delete_pool(&p.tenant, &p.template)?;
            continue;
        };
        let members: Vec<_> = rows
            .iter()
            .filter(|r| r.pool.as_deref() == Some(key.as_str()))
            .collect();
        // Sandboxes of an older build of the template (rebuilt with --replace) go.
        for r in members.iter().filter(|r| r.template_dir != t.dir) {
            spawn_destroy(d, &r.id);
        }
        let ready: Vec<_> = members
            .iter()
            .filter(|r| r.template_dir == t.dir && r.state == SandboxState::Paused)
            .collect();
        let alpha = (dt / DEMAND_WINDOW_S).min(1.0);
        let (target, filling) = d.pools.with(&key, |s| {
            let rate = s.recent as f64 / dt;
            s.recent = 0;
            s.demand += alpha * (rate - s.demand);
            let fill_s = if s.fill_s > 0.0 { s.fill_s } else { 1.0 };
            let wanted = p.min as f64 + (s.demand * fill_s * 2.0).ceil();
            let by_memory = p
                .max_memory_mib
                .map(|m| (m / t.api.memory_mib.max(1) as u64) as u32)
                .unwrap_or(u32::MAX);
            let mut target = (wanted as u32).min(p.max).min(by_memory);
            s.pressure = pressure;
            if pressure {
                target = 0;
            }
            s.target = target;
            (target, s.filling)
        });
        let have = ready.len() as u32;
        if have + filling < target && filling == 0 {
            spawn_fill(d, p.clone());
        } else if have > target {
            for r in ready.iter().take((have - target) as usize) {
                // Out of the pool first, so no create claims it meanwhile.
                d.store
                    .set_sandbox_state(&r.id, SandboxState::Stopped, Some("Pool shrank"))?;
                spawn_destroy(d, &r.id);
            }
        }
    }
    Ok(())
}

fn spawn_destroy(d: &Shared, id: &str) {
    let (d, id) = (d.clone(), id.to_string());
    tokio::spawn(async move { destroy(&d, &id).await });
}

/// Restores one sandbox for pool `p` and pauses it.
fn spawn_fill(d: &Shared, p: PoolRow) {
    let key = p.key();
    d.pools.with(&key, |s| s.filling += 1);
    let d = d.clone();
    tokio::spawn(async move {
        let t0 = Instant::now();
        let filled = fill(&d, &p, t0).await;
        let secs = t0.elapsed().as_secs_f64();
        d.pools.with(&key, |s| {
            s.filling -= 1;
            if filled.is_ok() {
                s.fill_s = if s.fill_s > 0.0 {
                    s.fill_s + 0.2 * (secs - s.fill_s)
                } else {
                    secs
                };
            }
        });
        match filled {
            Ok(()) => {}
            // At the daemon's limits the pool waits (creates come first): not worth a warning
            // twice a second.
            Err(e @ ApiError::Limit(_)) => tracing::debug!("pool {key}: no refill: {e}"),
            Err(e) => tracing::warn!("pool {key}: a refill failed: {e}"),
        }
    });
}

async fn fill(d: &Shared, p: &PoolRow, t0: Instant) -> Result<(), ApiError> {
    let scope = if p.tenant == HOST_TENANT {
        TenantScope::All
    } else {
        TenantScope::parse(&p.tenant).map_err(|e| ApiError::Internal(e.to_string()))?
    };
    let req = CreateSandbox {
        template: Some(p.template.clone()),
        ..Default::default()
    };
    let src = sandbox::source(d, &scope, &req)?;
    let row = sandbox::new_sandbox(d, &p.tenant, &req, &src, Some(p.key()), t0).await?;
    let lock = d.lock_of(&row.id);
    let _g = lock.lock().await;
    let paused = vmm::set_vm_state(&d.cfg.jail(&row.id).api_sock(), "Paused").await;
    match paused {
        Ok(()) => {
            d.store
                .set_sandbox_state(&row.id, SandboxState::Paused, None)?;
            Ok(())
        }
        Err(e) => {
            d.store
                .set_sandbox_state(&row.id, SandboxState::Failed, Some("Did not pause"))?;
            Err(ApiError::Unavailable(format!(
                "The pooled sandbox's VMM: {}",
                chain(&e)
            )))
        }
    }
}

/// The owner of the template `name` a pool request names: the caller's tenant, or for the
/// host scope `owner` (default: the shared templates).
fn owner(scope: &TenantScope, owner: Option<&str>) -> String {
    match (scope, owner) {
        (TenantScope::All, Some(o)) => o.to_string(),
        _ => scope.as_str().to_string(),
    }
}

fn status(d: &Shared, p: &PoolRow) -> Pool {
    let key = p.key();
    let ready = d
        .store
        .sandboxes(&TenantScope::All)
        .unwrap_or_default()
        .iter()
        .filter(|r| r.pool.as_deref() == Some(key.as_str()) && r.state == SandboxState::Paused)
        .count() as u32;
    let s = d.pools.with(&key, |s| s.clone());
    Pool {
        template: p.template.clone(),
        tenant: p.tenant.clone(),
        min: p.min,
        max: p.max,
        max_memory_mib: p.max_memory_mib,
        target: s.target,
        ready,
        filling: s.filling,
        claims: s.claims,
        misses: s.misses,
        demand_per_min: s.demand * 60.0,
        memory_pressure: s.pressure,
    }
}

/// `PUT /templates/{name}/pool`.
pub fn set(
    d: &Shared,
    scope: &TenantScope,
    name: &str,
    owner_q: Option<&str>,
    spec: PoolSpec,
) -> Result<Pool, ApiError> {
    if spec.max == 0 || spec.max > MAX_POOL {
        return Err(ApiError::BadRequest(format!(
            "max: must be 1 to {MAX_POOL}"
        )));
    }
    if spec.min > spec.max {
        return Err(ApiError::BadRequest(format!(
            "min: {} is more than max ({})",
            spec.min, spec.max
        )));
    }
    if spec.max_memory_mib == Some(0) {
        return Err(ApiError::BadRequest(
            "max_memory_mib: must be at least 1".into(),
        ));
    }
    let tenant = owner(scope, owner_q);
    let t = d.store.template(&tenant, name)?;
    let Some(t) = t else {
        if tenant != HOST_TENANT && d.store.template(HOST_TENANT, name)?.is_some() {
            return Err(ApiError::Forbidden(format!(
                "Template '{name}' is the host's: only the host sets its pool"
            )));
        }
        return Err(ApiError::NotFound(format!("No template '{name}'")));
    };
    if t.api.state != TemplateState::Ready {
        return Err(ApiError::Conflict(format!(
            "Template '{name}' is not ready (it is {:?})",
            t.api.state
        )));
    }
    let row = PoolRow {
        tenant: tenant.clone(),
        template: name.to_string(),
        min: spec.min,
        max: spec.max,
        max_memory_mib: spec.max_memory_mib,
    };
    d.store.put_pool(&row)?;
    d.event(&tenant, "pool.set", |e| {
        e.template = Some(name.to_string());
        e.message = Some(format!("min {} max {}", spec.min, spec.max));
    });
    Ok(status(d, &row))
}

/// `GET /templates/{name}/pool`.
pub fn get(
    d: &Shared,
    scope: &TenantScope,
    name: &str,
    owner_q: Option<&str>,
) -> Result<Pool, ApiError> {
    let tenant = match scope {
        TenantScope::All => owner(scope, owner_q),
        // A tenant sees its own template's pool, or else the shared one's it would use.
        _ => crate::template::usable(d, scope, name)?.api.tenant,
    };
    d.store
        .pools()?
        .into_iter()
        .find(|p| p.tenant == tenant && p.template == name)
        .map(|p| status(d, &p))
        .ok_or_else(|| ApiError::NotFound(format!("Template '{name}' has no pool")))
}

/// `GET /pools`: the caller's tenant's pools and the shared ones.
pub fn list(d: &Shared, scope: &TenantScope) -> Result<Vec<Pool>, ApiError> {
    Ok(d.store
        .pools()?
        .iter()
        .filter(|p| match scope {
            TenantScope::All => true,
            _ => p.tenant == scope.as_str() || p.tenant == HOST_TENANT,
        })
        .map(|p| status(d, p))
        .collect())
}

/// `DELETE /templates/{name}/pool`: its ready sandboxes go at the next tick.
pub fn delete(
    d: &Shared,
    scope: &TenantScope,
    name: &str,
    owner_q: Option<&str>,
) -> Result<(), ApiError> {
    let tenant = owner(scope, owner_q);
    if !d.store.delete_pool(&tenant, name)? {
        return Err(ApiError::NotFound(format!("Template '{name}' has no pool")));
    }
    d.pools
        .stats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&pool_key(&tenant, name));
    d.event(&tenant, "pool.deleted", |e| {
        e.template = Some(name.to_string())
    });
    Ok(())
}
