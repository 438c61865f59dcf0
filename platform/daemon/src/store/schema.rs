//! The state database's tables, and the migration of older databases (`PRAGMA user_version`).
//!
//! - version 0: the first daemon's tables (no tenants).
//! - version 1: every template, sandbox, snapshot and event belongs to a tenant (`*` = the
//!   host); templates are keyed by (tenant, name). Rows of a version-0 database become the
//!   host's.
//! - version 2: hibernation (a sandbox's idle timeout, its hibernation's size and the memory
//!   it gave back, wake times) and warm pools (the `pools` table; a sandbox's pool while it
//!   waits in one, and whether it came from one).

use rusqlite::Connection;

use super::{Result, StoreError};

pub const VERSION: i64 = 2;

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS templates (
    tenant TEXT NOT NULL DEFAULT '*',
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    dir TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    build_ms INTEGER,
    snapshot_bytes INTEGER,
    error TEXT,
    PRIMARY KEY (tenant, name)
);
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL DEFAULT '*',
    state TEXT NOT NULL,
    template TEXT NOT NULL,
    template_dir TEXT NOT NULL,
    snapshot TEXT,
    pid INTEGER,
    pid_start INTEGER,
    uid INTEGER NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    network TEXT NOT NULL,
    timeout_s INTEGER,
    labels TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    create_ms REAL,
    restore_ms REAL,
    reason TEXT,
    net_index INTEGER,
    idle_timeout_s INTEGER,
    hibernated_ms INTEGER,
    hibernated_bytes INTEGER,
    memory_freed_kib INTEGER,
    wake_ms REAL,
    wakes INTEGER NOT NULL DEFAULT 0,
    pool TEXT,
    from_pool INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS pools (
    tenant TEXT NOT NULL,
    template TEXT NOT NULL,
    min INTEGER NOT NULL,
    max INTEGER NOT NULL,
    max_memory_mib INTEGER,
    PRIMARY KEY (tenant, template)
);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL DEFAULT '*',
    sandbox TEXT NOT NULL,
    template TEXT NOT NULL,
    template_dir TEXT NOT NULL,
    dir TEXT NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL DEFAULT '*',
    time_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    sandbox TEXT,
    template TEXT,
    snapshot TEXT,
    state TEXT,
    message TEXT
);
CREATE INDEX IF NOT EXISTS sandboxes_tenant ON sandboxes (tenant);
CREATE INDEX IF NOT EXISTS snapshots_tenant ON snapshots (tenant);
CREATE INDEX IF NOT EXISTS events_tenant ON events (tenant, id);
";

/// Version 0 → 1: tenant columns; templates re-keyed by (tenant, name).
const V0_TO_V1: &str = "
ALTER TABLE templates RENAME TO templates_v0;
CREATE TABLE templates (
    tenant TEXT NOT NULL DEFAULT '*',
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    dir TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    build_ms INTEGER,
    snapshot_bytes INTEGER,
    error TEXT,
    PRIMARY KEY (tenant, name)
);
INSERT INTO templates (tenant, name, state, spec, dir, created_ms, build_ms, snapshot_bytes, error)
    SELECT '*', name, state, spec, dir, created_ms, build_ms, snapshot_bytes, error FROM templates_v0;
DROP TABLE templates_v0;
ALTER TABLE sandboxes ADD COLUMN tenant TEXT NOT NULL DEFAULT '*';
ALTER TABLE snapshots ADD COLUMN tenant TEXT NOT NULL DEFAULT '*';
ALTER TABLE events ADD COLUMN tenant TEXT NOT NULL DEFAULT '*';
";

/// Version 1 → 2: hibernation and pool columns (the pools table comes with TABLES).
const V1_TO_V2: &str = "
ALTER TABLE sandboxes ADD COLUMN idle_timeout_s INTEGER;
ALTER TABLE sandboxes ADD COLUMN hibernated_ms INTEGER;
ALTER TABLE sandboxes ADD COLUMN hibernated_bytes INTEGER;
ALTER TABLE sandboxes ADD COLUMN memory_freed_kib INTEGER;
ALTER TABLE sandboxes ADD COLUMN wake_ms REAL;
ALTER TABLE sandboxes ADD COLUMN wakes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN pool TEXT;
ALTER TABLE sandboxes ADD COLUMN from_pool INTEGER NOT NULL DEFAULT 0;
";

fn has_table(c: &Connection, name: &str) -> Result<bool> {
    let n: i64 = c.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// Brings the database to [`VERSION`] in one transaction.
pub fn migrate(c: &mut Connection) -> Result<()> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > VERSION {
        return Err(StoreError::TooNew {
            found: version,
            known: VERSION,
        });
    }
    if version == 0 && has_table(&tx, "templates")? {
        tracing::info!("state database: migrating to schema {VERSION} (tenants)");
        tx.execute_batch(V0_TO_V1)?;
    }
    if version <= 1 && has_table(&tx, "sandboxes")? {
        tracing::info!("state database: migrating to schema {VERSION} (hibernation)");
        tx.execute_batch(V1_TO_V2)?;
    }
    tx.execute_batch(TABLES)?;
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()?;
    Ok(())
}
