//! The daemon's state: SQLite in WAL mode, one transaction per state change.
//!
//! Rows are the truth after a restart: a sandbox row is written (`creating`) before any of its
//! resources exist, and removed only after they are gone, so recovery can always find them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, Row};
use tartarus_auth::TenantScope;
use tartarus_types::{
    Event, NetworkMode, SandboxState, Snapshot, Template, TemplateState, WarmupCommand,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("State database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("Corrupt JSON in the state database")]
    Json(#[from] serde_json::Error),
    #[error("The state database has schema {found}, newer than this daemon's {known}: run a newer tartarusd")]
    TooNew { found: i64, known: i64 },
}

pub type Result<T> = std::result::Result<T, StoreError>;

mod pools;
mod schema;

pub use pools::{pool_key, Claim, PoolRow};

/// The tenant a host-scope caller owns things as, and the owner of shared templates.
pub const HOST_TENANT: &str = "*";

/// A template row, with the daemon-private paths.
#[derive(Debug, Clone)]
pub struct TemplateRow {
    pub api: Template,
    /// Directory holding vmlinux, rootfs.ext4, disk.ext4, ready.state, ready.mem.
    pub dir: String,
}

/// A sandbox row, with the daemon-private fields.
#[derive(Debug, Clone)]
pub struct SandboxRow {
    pub id: String,
    /// The owning tenant (`*` = the host).
    pub tenant: String,
    pub state: SandboxState,
    pub template: String,
    pub snapshot: Option<String>,
    pub pid: Option<i32>,
    /// Start time of `pid` in clock ticks since boot (/proc/PID/stat field 22).
    pub pid_start: Option<u64>,
    pub uid: u32,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub network: NetworkMode,
    pub timeout_s: Option<u64>,
    pub labels: BTreeMap<String, String>,
    pub created_ms: i64,
    pub create_ms: Option<f64>,
    pub restore_ms: Option<f64>,
    pub reason: Option<String>,
    /// The template's directory the sandbox's files were linked from.
    pub template_dir: String,
    /// The uplink subnet of a `nat` sandbox.
    pub net_index: Option<u16>,
    /// Hibernate after this many idle seconds.
    pub idle_timeout_s: Option<u64>,
    /// Set while hibernated: when, how many bytes its files take, how much RSS went.
    pub hibernated_ms: Option<i64>,
    pub hibernated_bytes: Option<u64>,
    pub memory_freed_kib: Option<u64>,
    /// The last wake's duration and the number of wakes.
    pub wake_ms: Option<f64>,
    pub wakes: u64,
    /// `tenant/template` while the sandbox waits, paused, in that template's warm pool
    /// (hidden from the API until a create claims it).
    pub pool: Option<String>,
    /// Whether a create claimed it from a warm pool.
    pub from_pool: bool,
}

/// A templates row as read: tenant, name, state, spec JSON, dir, created, build ms, bytes, error.
type RawTemplate = (
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

pub struct Store {
    conn: Mutex<Connection>,
}

/// The spec part of a template, as stored.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StoredSpec {
    pub kernel: String,
    pub rootfs: String,
    pub boot_args: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub disk_mib: u32,
    pub env: BTreeMap<String, String>,
    pub warmup: Vec<WarmupCommand>,
    /// The image the root file system was made from.
    #[serde(default)]
    pub image: Option<tartarus_types::TemplateImage>,
    /// The built root file system's cache key (stands for its content in the snapshot key).
    #[serde(default)]
    pub rootfs_key: Option<String>,
    /// The warm runtime (absent in rows written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<tartarus_types::RuntimeSpec>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 in UTC with millisecond precision, from Unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm, public domain description).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

fn network_str(n: NetworkMode) -> &'static str {
    match n {
        NetworkMode::None => "none",
        NetworkMode::Nat => "nat",
    }
}

fn template_state_str(s: TemplateState) -> &'static str {
    match s {
        TemplateState::Building => "building",
        TemplateState::Ready => "ready",
        TemplateState::Failed => "failed",
    }
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::migrate(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c)
    }

    // ---- templates -------------------------------------------------------------------------

    pub fn put_template(
        &self,
        tenant: &str,
        name: &str,
        state: TemplateState,
        spec: &StoredSpec,
        dir: &str,
    ) -> Result<()> {
        let spec = serde_json::to_string(spec)?;
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO templates (tenant, name, state, spec, dir, created_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![tenant, name, template_state_str(state), spec, dir, now_ms()],
            )?;
            Ok(())
        })
    }

    pub fn finish_template(
        &self,
        tenant: &str,
        name: &str,
        state: TemplateState,
        build_ms: Option<u64>,
        snapshot_bytes: Option<u64>,
        error: Option<&str>,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE templates SET state = ?2, build_ms = ?3, snapshot_bytes = ?4, error = ?5 \
                 WHERE name = ?1 AND tenant = ?6",
                params![
                    name,
                    template_state_str(state),
                    build_ms.map(|v| v as i64),
                    snapshot_bytes.map(|v| v as i64),
                    error,
                    tenant
                ],
            )?;
            Ok(())
        })
    }

    fn template_from_row(row: &Row<'_>) -> rusqlite::Result<RawTemplate> {
        Ok((
            row.get(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
            row.get(5)?,
            row.get(6)?,
            row.get(7)?,
            row.get(8)?,
        ))
    }

    fn to_template(r: RawTemplate) -> Result<TemplateRow> {
        let (tenant, name, state, spec, dir, created, build_ms, bytes, error) = r;
        let spec: StoredSpec = serde_json::from_str(&spec)?;
        let state = match state.as_str() {
            "ready" => TemplateState::Ready,
            "building" => TemplateState::Building,
            _ => TemplateState::Failed,
        };
        Ok(TemplateRow {
            api: Template {
                name,
                tenant,
                state,
                kernel: spec.kernel,
                rootfs: spec.rootfs,
                boot_args: spec.boot_args,
                vcpus: spec.vcpus,
                memory_mib: spec.memory_mib,
                disk_mib: spec.disk_mib,
                env: spec.env,
                warmup: spec.warmup,
                image: spec.image,
                runtime: spec.runtime,
                created_at: rfc3339(created),
                build_ms: build_ms.map(|v| v as u64),
                snapshot_bytes: bytes.map(|v| v as u64),
                error,
            },
            dir,
        })
    }

    const TEMPLATE_COLS: &'static str =
        "tenant, name, state, spec, dir, created_ms, build_ms, snapshot_bytes, error";

    /// The template `name` owned by `tenant` exactly (`*` = a host template).
    pub fn template(&self, tenant: &str, name: &str) -> Result<Option<TemplateRow>> {
        let r = self.with(|c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {} FROM templates WHERE name = ?1 AND tenant = ?2",
                    Self::TEMPLATE_COLS
                ),
                params![name, tenant],
                Self::template_from_row,
            )
            .optional()?)
        })?;
        r.map(Self::to_template).transpose()
    }

    /// The templates `scope` may see: a tenant's own and the host's (`*`); all of them for
    /// the host scope.
    pub fn templates(&self, scope: &TenantScope) -> Result<Vec<TemplateRow>> {
        let rows = self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {} FROM templates WHERE (?1 IS NULL OR tenant = ?1 OR tenant = '*') \
                 ORDER BY name, tenant",
                Self::TEMPLATE_COLS
            ))?;
            let rows = st
                .query_map(params![scope.sql_param()], Self::template_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        rows.into_iter().map(Self::to_template).collect()
    }

    pub fn delete_template(&self, tenant: &str, name: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM templates WHERE name = ?1 AND tenant = ?2",
                params![name, tenant],
            )?;
            Ok(())
        })
    }

    /// How many sandboxes and snapshots still use a template directory.
    pub fn template_dir_users(&self, dir: &str) -> Result<u64> {
        self.with(|c| {
            let a: i64 = c.query_row(
                "SELECT COUNT(*) FROM sandboxes WHERE template_dir = ?1",
                params![dir],
                |r| r.get(0),
            )?;
            let b: i64 = c.query_row(
                "SELECT COUNT(*) FROM snapshots WHERE template_dir = ?1",
                params![dir],
                |r| r.get(0),
            )?;
            Ok((a + b) as u64)
        })
    }

    // ---- sandboxes -------------------------------------------------------------------------

    const SANDBOX_COLS: &'static str = "id, state, template, template_dir, snapshot, pid, \
        pid_start, uid, vcpus, memory_mib, network, timeout_s, labels, created_ms, create_ms, \
        restore_ms, reason, net_index, tenant, idle_timeout_s, hibernated_ms, hibernated_bytes, \
        memory_freed_kib, wake_ms, wakes, pool, from_pool";

    fn sandbox_from_row(row: &Row<'_>) -> rusqlite::Result<SandboxRow> {
        let state: String = row.get(1)?;
        let network: String = row.get(10)?;
        let labels: String = row.get(12)?;
        Ok(SandboxRow {
            id: row.get(0)?,
            state: SandboxState::parse(&state).unwrap_or(SandboxState::Failed),
            template: row.get(2)?,
            template_dir: row.get(3)?,
            snapshot: row.get(4)?,
            pid: row.get(5)?,
            pid_start: row.get::<_, Option<i64>>(6)?.map(|v| v as u64),
            uid: row.get::<_, i64>(7)? as u32,
            vcpus: row.get::<_, i64>(8)? as u8,
            memory_mib: row.get::<_, i64>(9)? as u32,
            network: if network == "nat" {
                NetworkMode::Nat
            } else {
                NetworkMode::None
            },
            timeout_s: row.get::<_, Option<i64>>(11)?.map(|v| v as u64),
            labels: serde_json::from_str(&labels).unwrap_or_default(),
            created_ms: row.get(13)?,
            create_ms: row.get(14)?,
            restore_ms: row.get(15)?,
            reason: row.get(16)?,
            net_index: row.get::<_, Option<i64>>(17)?.map(|v| v as u16),
            tenant: row.get(18)?,
            idle_timeout_s: row.get::<_, Option<i64>>(19)?.map(|v| v as u64),
            hibernated_ms: row.get(20)?,
            hibernated_bytes: row.get::<_, Option<i64>>(21)?.map(|v| v as u64),
            memory_freed_kib: row.get::<_, Option<i64>>(22)?.map(|v| v as u64),
            wake_ms: row.get(23)?,
            wakes: row.get::<_, i64>(24)? as u64,
            pool: row.get(25)?,
            from_pool: row.get::<_, i64>(26)? != 0,
        })
    }

    pub fn insert_sandbox(&self, s: &SandboxRow) -> Result<()> {
        let labels = serde_json::to_string(&s.labels)?;
        self.with(|c| {
            c.execute(
                &format!(
                    "INSERT INTO sandboxes ({}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, \
                     ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27)",
                    Self::SANDBOX_COLS
                ),
                params![
                    s.id,
                    s.state.as_str(),
                    s.template,
                    s.template_dir,
                    s.snapshot,
                    s.pid,
                    s.pid_start.map(|v| v as i64),
                    s.uid as i64,
                    s.vcpus as i64,
                    s.memory_mib as i64,
                    network_str(s.network),
                    s.timeout_s.map(|v| v as i64),
                    labels,
                    s.created_ms,
                    s.create_ms,
                    s.restore_ms,
                    s.reason,
                    s.net_index.map(|v| v as i64),
                    s.tenant,
                    s.idle_timeout_s.map(|v| v as i64),
                    s.hibernated_ms,
                    s.hibernated_bytes.map(|v| v as i64),
                    s.memory_freed_kib.map(|v| v as i64),
                    s.wake_ms,
                    s.wakes as i64,
                    s.pool,
                    s.from_pool as i64
                ],
            )?;
            Ok(())
        })
    }

    /// The sandbox `id` if `scope` may see it (another tenant's is `None`, as a missing one).
    pub fn sandbox(&self, scope: &TenantScope, id: &str) -> Result<Option<SandboxRow>> {
        self.with(|c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {} FROM sandboxes WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)",
                    Self::SANDBOX_COLS
                ),
                params![id, scope.sql_param()],
                Self::sandbox_from_row,
            )
            .optional()?)
        })
    }

    /// The sandboxes `scope` may see.
    pub fn sandboxes(&self, scope: &TenantScope) -> Result<Vec<SandboxRow>> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {} FROM sandboxes WHERE (?1 IS NULL OR tenant = ?1) ORDER BY created_ms, id",
                Self::SANDBOX_COLS
            ))?;
            let rows = st
                .query_map(params![scope.sql_param()], Self::sandbox_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    pub fn set_sandbox_running(
        &self,
        id: &str,
        pid: i32,
        pid_start: u64,
        create_ms: f64,
        restore_ms: f64,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE sandboxes SET state = 'running', pid = ?2, pid_start = ?3, create_ms = ?4, \
                 restore_ms = ?5 WHERE id = ?1",
                params![id, pid, pid_start as i64, create_ms, restore_ms],
            )?;
            Ok(())
        })
    }

    /// The VMM is gone and its snapshot is on disk.
    pub fn set_sandbox_hibernated(&self, id: &str, bytes: u64, freed_kib: u64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE sandboxes SET state = 'hibernated', pid = NULL, pid_start = NULL, \
                 hibernated_ms = ?2, hibernated_bytes = ?3, memory_freed_kib = ?4 WHERE id = ?1",
                params![id, now_ms(), bytes as i64, freed_kib as i64],
            )?;
            Ok(())
        })
    }

    /// A hibernated sandbox runs again in the VMM `pid`.
    pub fn set_sandbox_woken(
        &self,
        id: &str,
        pid: i32,
        pid_start: u64,
        wake_ms: f64,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE sandboxes SET state = 'running', pid = ?2, pid_start = ?3, wake_ms = ?4, \
                 wakes = wakes + 1, hibernated_ms = NULL, hibernated_bytes = NULL WHERE id = ?1",
                params![id, pid, pid_start as i64, wake_ms],
            )?;
            Ok(())
        })
    }

    pub fn set_sandbox_pid(&self, id: &str, pid: i32, pid_start: u64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE sandboxes SET pid = ?2, pid_start = ?3 WHERE id = ?1",
                params![id, pid, pid_start as i64],
            )?;
            Ok(())
        })
    }

    /// Sets the state (and the reason, for stopped/failed); clears the pid when the VMM is gone.
    pub fn set_sandbox_state(
        &self,
        id: &str,
        state: SandboxState,
        reason: Option<&str>,
    ) -> Result<()> {
        let gone = matches!(state, SandboxState::Stopped | SandboxState::Failed);
        self.with(|c| {
            if gone {
                c.execute(
                    "UPDATE sandboxes SET state = ?2, reason = ?3, pid = NULL, pid_start = NULL \
                     WHERE id = ?1",
                    params![id, state.as_str(), reason],
                )?;
            } else {
                c.execute(
                    "UPDATE sandboxes SET state = ?2 WHERE id = ?1",
                    params![id, state.as_str()],
                )?;
            }
            Ok(())
        })
    }

    pub fn delete_sandbox(&self, id: &str) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM sandboxes WHERE id = ?1", params![id])?;
            Ok(())
        })
    }

    // ---- snapshots -------------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    pub fn insert_snapshot(
        &self,
        tenant: &str,
        id: &str,
        sandbox: &str,
        template: &str,
        template_dir: &str,
        dir: &str,
        vcpus: u8,
        memory_mib: u32,
        size_bytes: u64,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO snapshots (id, sandbox, template, template_dir, dir, vcpus, \
                 memory_mib, created_ms, size_bytes, tenant) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    id,
                    sandbox,
                    template,
                    template_dir,
                    dir,
                    vcpus as i64,
                    memory_mib as i64,
                    now_ms(),
                    size_bytes as i64,
                    tenant
                ],
            )?;
            Ok(())
        })
    }

    fn snapshot_from_row(row: &Row<'_>) -> rusqlite::Result<SnapshotRow> {
        Ok(SnapshotRow {
            api: Snapshot {
                id: row.get(0)?,
                tenant: row.get(9)?,
                sandbox: row.get(1)?,
                template: row.get(2)?,
                created_at: rfc3339(row.get(7)?),
                size_bytes: row.get::<_, i64>(8)? as u64,
            },
            template_dir: row.get(3)?,
            dir: row.get(4)?,
            vcpus: row.get::<_, i64>(5)? as u8,
            memory_mib: row.get::<_, i64>(6)? as u32,
        })
    }

    const SNAPSHOT_COLS: &'static str =
        "id, sandbox, template, template_dir, dir, vcpus, memory_mib, created_ms, size_bytes, tenant";

    /// The snapshot `id` if `scope` may see it.
    pub fn snapshot(&self, scope: &TenantScope, id: &str) -> Result<Option<SnapshotRow>> {
        self.with(|c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {} FROM snapshots WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)",
                    Self::SNAPSHOT_COLS
                ),
                params![id, scope.sql_param()],
                Self::snapshot_from_row,
            )
            .optional()?)
        })
    }

    /// The snapshots `scope` may see.
    pub fn snapshots(&self, scope: &TenantScope) -> Result<Vec<SnapshotRow>> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {} FROM snapshots WHERE (?1 IS NULL OR tenant = ?1) ORDER BY created_ms, id",
                Self::SNAPSHOT_COLS
            ))?;
            let rows = st
                .query_map(params![scope.sql_param()], Self::snapshot_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    pub fn delete_snapshot(&self, id: &str) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM snapshots WHERE id = ?1", params![id])?;
            Ok(())
        })
    }

    // ---- events ----------------------------------------------------------------------------

    pub fn add_event(&self, mut e: Event) -> Result<Event> {
        let ms = now_ms();
        e.time = rfc3339(ms);
        let id = self.with(|c| {
            c.execute(
                "INSERT INTO events (time_ms, kind, sandbox, template, snapshot, state, message, \
                 tenant) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    ms, e.kind, e.sandbox, e.template, e.snapshot, e.state, e.message, e.tenant
                ],
            )?;
            Ok(c.last_insert_rowid())
        })?;
        e.id = id;
        Ok(e)
    }

    /// The events after `since` that `scope` may see (a tenant's own; host events, e.g. a
    /// shared template's, only to the host scope).
    pub fn events_since(&self, scope: &TenantScope, since: i64, limit: u32) -> Result<Vec<Event>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, time_ms, kind, sandbox, template, snapshot, state, message, tenant \
                 FROM events WHERE id > ?1 AND (?3 IS NULL OR tenant = ?3) ORDER BY id LIMIT ?2",
            )?;
            let rows = st
                .query_map(params![since, limit, scope.sql_param()], |r| {
                    Ok(Event {
                        id: r.get(0)?,
                        time: rfc3339(r.get(1)?),
                        kind: r.get(2)?,
                        sandbox: r.get(3)?,
                        template: r.get(4)?,
                        snapshot: r.get(5)?,
                        state: r.get(6)?,
                        message: r.get(7)?,
                        tenant: r.get(8)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }
}

#[derive(Debug, Clone)]
pub struct SnapshotRow {
    pub api: Snapshot,
    pub template_dir: String,
    pub dir: String,
    pub vcpus: u8,
    pub memory_mib: u32,
}

#[cfg(test)]
mod tests;
