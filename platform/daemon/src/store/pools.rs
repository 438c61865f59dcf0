//! Warm pools in the state database: each pool's settings, and the claim of a pooled sandbox
//! (one UPDATE, so two creates never get the same one).

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};

use super::{now_ms, Result, Store};

/// A pool's settings: the template (of `tenant`) and the bounds of its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    pub tenant: String,
    pub template: String,
    pub min: u32,
    pub max: u32,
    pub max_memory_mib: Option<u64>,
}

impl PoolRow {
    /// The key pooled sandboxes carry in their `pool` column.
    pub fn key(&self) -> String {
        pool_key(&self.tenant, &self.template)
    }
}

pub fn pool_key(tenant: &str, template: &str) -> String {
    format!("{tenant}/{template}")
}

/// What a create asks of the sandbox it claims.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    pub tenant: &'a str,
    pub timeout_s: Option<u64>,
    pub idle_timeout_s: Option<u64>,
    pub labels: &'a BTreeMap<String, String>,
}

impl Store {
    pub fn put_pool(&self, p: &PoolRow) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO pools (tenant, template, min, max, max_memory_mib) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    p.tenant,
                    p.template,
                    p.min as i64,
                    p.max as i64,
                    p.max_memory_mib.map(|v| v as i64)
                ],
            )?;
            Ok(())
        })
    }

    pub fn pools(&self) -> Result<Vec<PoolRow>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT tenant, template, min, max, max_memory_mib FROM pools \
                 ORDER BY tenant, template",
            )?;
            let rows = st
                .query_map([], |r| {
                    Ok(PoolRow {
                        tenant: r.get(0)?,
                        template: r.get(1)?,
                        min: r.get::<_, i64>(2)? as u32,
                        max: r.get::<_, i64>(3)? as u32,
                        max_memory_mib: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    pub fn delete_pool(&self, tenant: &str, template: &str) -> Result<bool> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM pools WHERE tenant = ?1 AND template = ?2",
                params![tenant, template],
            )? > 0)
        })
    }

    /// Takes the oldest ready (paused) sandbox of pool `key` for a create: it leaves the pool,
    /// becomes the claimer's, and its creation time is now. None when the pool is empty.
    pub fn claim_pooled(&self, key: &str, claim: &Claim<'_>) -> Result<Option<String>> {
        let labels = serde_json::to_string(claim.labels)?;
        self.with(|c| {
            Ok(c.query_row(
                "UPDATE sandboxes SET pool = NULL, from_pool = 1, tenant = ?2, timeout_s = ?3, \
                 idle_timeout_s = ?4, labels = ?5, created_ms = ?6 \
                 WHERE id = (SELECT id FROM sandboxes WHERE pool = ?1 AND state = 'paused' \
                             ORDER BY created_ms, id LIMIT 1) \
                 RETURNING id",
                params![
                    key,
                    claim.tenant,
                    claim.timeout_s.map(|v| v as i64),
                    claim.idle_timeout_s.map(|v| v as i64),
                    labels,
                    now_ms()
                ],
                |r| r.get(0),
            )
            .optional()?)
        })
    }
}
