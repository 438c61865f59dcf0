//! The API key store: SQLite rows holding only each key's hash, with tenant, role, expiry,
//! last use, rotation and revocation.
//!
//! Blocking (rusqlite): call it from tokio through `spawn_blocking`, or use
//! [`KeyStore::authenticate_cached`] first, which never touches the database.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::apikey::{ApiKey, ParseError};
use crate::identity::{AuthMethod, Identity, Role, TenantScope};

/// `last_used_at` is written at most once per this many seconds per key.
pub const LAST_USED_EVERY_SECS: i64 = 60;
/// How long a key's row is trusted from memory before it is read again (a revocation by
/// another process takes effect within this; one by this store, at once).
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// Errors of the key store. The first five are what a caller presenting a key can get.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("Malformed API key")]
    Malformed,
    #[error("API key checksum mismatch (mistyped or truncated key)")]
    BadChecksum,
    #[error("Unknown API key")]
    Unknown,
    #[error("API key expired")]
    Expired,
    #[error("API key revoked")]
    Revoked,
    #[error("No key {0:?}")]
    NotFound(String),
    #[error("Key {0:?} is already revoked or expired")]
    Inactive(String),
    #[error("A caller scoped to {caller} cannot make a key for {target}")]
    OutOfScope { caller: String, target: String },
    #[error("The system's random source failed")]
    Random,
    #[error("Key store row {id:?} is corrupt: {what}")]
    Corrupt { id: String, what: String },
    #[error("Key store database")]
    Db(#[from] rusqlite::Error),
}

impl From<ParseError> for KeyError {
    fn from(e: ParseError) -> KeyError {
        match e {
            ParseError::Malformed => KeyError::Malformed,
            ParseError::BadChecksum => KeyError::BadChecksum,
            ParseError::Random => KeyError::Random,
        }
    }
}

/// What a new key is for.
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub tenant: TenantScope,
    pub role: Role,
    pub name: String,
    /// Unix seconds; `None` never expires.
    pub expires_at: Option<i64>,
}

/// A key's row, without its hash. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub tenant: TenantScope,
    pub role: Role,
    pub name: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Set by a rotation: the key that replaces this one.
    pub replaced_by: Option<String>,
}

/// A key just made: the plaintext is here and nowhere else, ever.
#[derive(Debug)]
pub struct NewKey {
    pub info: KeyInfo,
    pub key: String,
}

struct Cached {
    hash: [u8; 32],
    info: KeyInfo,
    read_at: Instant,
}

type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// API keys in SQLite. Cheap to share behind an `Arc`; every method is `&self`.
pub struct KeyStore {
    db: Mutex<Connection>,
    cache: Mutex<HashMap<String, Cached>>,
    clock: Clock,
}

const MIGRATIONS: &[&str] = &[
    // 1: the keys.
    "CREATE TABLE auth_keys (
        id TEXT PRIMARY KEY,
        hash BLOB NOT NULL,
        tenant TEXT NOT NULL,
        role TEXT NOT NULL,
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        last_used_at INTEGER,
        revoked_at INTEGER,
        replaced_by TEXT
    );
    CREATE INDEX auth_keys_tenant ON auth_keys(tenant);",
];

const COLUMNS: &str =
    "id, tenant, role, name, created_at, expires_at, last_used_at, revoked_at, replaced_by, hash";

fn system_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl KeyStore {
    /// Opens (creating if needed) the key database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<KeyStore, KeyError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        KeyStore::over(conn)
    }

    /// A store in memory (tests, benchmarks).
    pub fn open_in_memory() -> Result<KeyStore, KeyError> {
        KeyStore::over(Connection::open_in_memory()?)
    }

    /// Over a connection the caller opened (the tables are prefixed `auth_`, so they can live
    /// in the daemon's database).
    pub fn over(mut conn: Connection) -> Result<KeyStore, KeyError> {
        migrate(&mut conn)?;
        Ok(KeyStore {
            db: Mutex::new(conn),
            cache: Mutex::new(HashMap::new()),
            clock: Arc::new(system_now),
        })
    }

    /// Replaces the clock (Unix seconds): tests move time without sleeping.
    pub fn with_clock(mut self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> KeyStore {
        self.clock = Arc::new(clock);
        self
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget(&self, id: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Makes a key. `caller` is the scope of whoever asks: a tenant admin can only make keys
    /// for its own tenant, only the host scope can make host (`*`) keys.
    pub fn create(&self, caller: &TenantScope, spec: KeySpec) -> Result<NewKey, KeyError> {
        if !caller.covers(spec.tenant.as_str()) {
            return Err(KeyError::OutOfScope {
                caller: caller.to_string(),
                target: spec.tenant.to_string(),
            });
        }
        let key = ApiKey::generate()?;
        let info = KeyInfo {
            id: key.id().to_string(),
            tenant: spec.tenant,
            role: spec.role,
            name: spec.name,
            created_at: self.now(),
            expires_at: spec.expires_at,
            last_used_at: None,
            revoked_at: None,
            replaced_by: None,
        };
        self.conn().execute(
            "INSERT INTO auth_keys (id, hash, tenant, role, name, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                info.id,
                &key.hash()[..],
                info.tenant.as_str(),
                info.role.as_str(),
                info.name,
                info.created_at,
                info.expires_at
            ],
        )?;
        Ok(NewKey {
            info,
            key: key.expose(),
        })
    }

    /// The keys visible in `scope`, oldest first.
    pub fn list(&self, scope: &TenantScope) -> Result<Vec<KeyInfo>, KeyError> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM auth_keys WHERE (?1 IS NULL OR tenant = ?1)
             ORDER BY created_at, id"
        ))?;
        let rows = st.query_map(params![scope.sql_param()], raw_row)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r?.into_info()?.1);
        }
        Ok(out)
    }

    /// One key, if `scope` may see it (another tenant's key is `NotFound`, like a missing one).
    pub fn get(&self, scope: &TenantScope, id: &str) -> Result<KeyInfo, KeyError> {
        let raw = self.conn().query_row(
            &format!(
                "SELECT {COLUMNS} FROM auth_keys WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)"
            ),
            params![id, scope.sql_param()],
            raw_row,
        );
        match raw.optional()? {
            Some(r) => Ok(r.into_info()?.1),
            None => Err(KeyError::NotFound(id.to_string())),
        }
    }

    /// Revokes a key at once (this process forgets its cached row too).
    pub fn revoke(&self, scope: &TenantScope, id: &str) -> Result<KeyInfo, KeyError> {
        let now = self.now();
        let n = self.conn().execute(
            "UPDATE auth_keys SET revoked_at = ?1
             WHERE id = ?2 AND (?3 IS NULL OR tenant = ?3) AND revoked_at IS NULL",
            params![now, id, scope.sql_param()],
        )?;
        self.forget(id);
        let info = self.get(scope, id)?;
        if n == 0 && info.revoked_at.is_none() {
            return Err(KeyError::NotFound(id.to_string()));
        }
        Ok(info)
    }

    /// Replaces a key by a new one with the same tenant, role and name. The old key keeps
    /// working for `overlap` (or until its own expiry, if sooner), then fails as `Expired`.
    /// If the old key had a lifetime, the new one gets the same lifetime from now.
    pub fn rotate(
        &self,
        scope: &TenantScope,
        id: &str,
        overlap: Duration,
    ) -> Result<NewKey, KeyError> {
        let old = self.get(scope, id)?;
        let now = self.now();
        if old.revoked_at.is_some() || old.expires_at.is_some_and(|e| e <= now) {
            return Err(KeyError::Inactive(id.to_string()));
        }
        let lifetime = old.expires_at.map(|e| e - old.created_at);
        let new = self.create(
            scope,
            KeySpec {
                tenant: old.tenant.clone(),
                role: old.role,
                name: old.name.clone(),
                expires_at: lifetime.map(|l| now + l),
            },
        )?;
        let cutoff = now.saturating_add(overlap.as_secs() as i64);
        let old_end = old.expires_at.map_or(cutoff, |e| e.min(cutoff));
        self.conn().execute(
            "UPDATE auth_keys SET expires_at = ?1, replaced_by = ?2 WHERE id = ?3",
            params![old_end, new.info.id, id],
        )?;
        self.forget(id);
        Ok(new)
    }

    /// Checks a presented key; on success records its use (at most once a minute) and returns
    /// who it is. Touches the database: from async code, use `spawn_blocking` or
    /// [`KeyStore::authenticate_cached`] first.
    pub fn authenticate(&self, presented: &str) -> Result<Identity, KeyError> {
        let key = ApiKey::parse(presented)?;
        let raw = self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM auth_keys WHERE id = ?1"),
                params![key.id()],
                raw_row,
            )
            .optional()?;
        let Some(raw) = raw else {
            return Err(KeyError::Unknown);
        };
        let (hash, info) = raw.into_info()?;
        let now = self.now();
        let result = check(&key, &hash, &info, now);
        if result.is_ok()
            && info
                .last_used_at
                .is_none_or(|t| now - t >= LAST_USED_EVERY_SECS)
        {
            self.conn().execute(
                "UPDATE auth_keys SET last_used_at = ?1 WHERE id = ?2",
                params![now, info.id],
            )?;
            let mut info = info.clone();
            info.last_used_at = Some(now);
            self.remember(hash, info);
        } else if result.is_ok() {
            self.remember(hash, info);
        }
        result
    }

    fn remember(&self, hash: [u8; 32], info: KeyInfo) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= 10_000 {
            cache.clear();
        }
        cache.insert(
            info.id.clone(),
            Cached {
                hash,
                info,
                read_at: Instant::now(),
            },
        );
    }

    /// The same check from memory only: `None` when the database must be asked (key not
    /// cached, cached too long ago, or its `last_used_at` is due for a write). Malformed and
    /// bad-checksum keys are answered here, without any lookup.
    pub fn authenticate_cached(&self, presented: &str) -> Option<Result<Identity, KeyError>> {
        let key = match ApiKey::parse(presented) {
            Ok(k) => k,
            Err(e) => return Some(Err(e.into())),
        };
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let c = cache.get(key.id())?;
        let now = self.now();
        if c.read_at.elapsed() >= CACHE_TTL
            || c.info
                .last_used_at
                .is_none_or(|t| now - t >= LAST_USED_EVERY_SECS)
        {
            return None;
        }
        Some(check(&key, &c.hash, &c.info, now))
    }
}

/// The order matters: a wrong secret is `Unknown` (nothing about the row leaks), and only
/// the key's owner learns that it was revoked or expired.
fn check(key: &ApiKey, hash: &[u8; 32], info: &KeyInfo, now: i64) -> Result<Identity, KeyError> {
    if !bool::from(key.hash().ct_eq(hash)) {
        return Err(KeyError::Unknown);
    }
    if info.revoked_at.is_some() {
        return Err(KeyError::Revoked);
    }
    if info.expires_at.is_some_and(|e| e <= now) {
        return Err(KeyError::Expired);
    }
    Ok(Identity {
        tenant: info.tenant.clone(),
        principal: format!("key:{}", info.id),
        role: info.role,
        method: AuthMethod::ApiKey,
    })
}

struct RawRow {
    id: String,
    tenant: String,
    role: String,
    name: String,
    created_at: i64,
    expires_at: Option<i64>,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
    replaced_by: Option<String>,
    hash: Vec<u8>,
}

fn raw_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: r.get(0)?,
        tenant: r.get(1)?,
        role: r.get(2)?,
        name: r.get(3)?,
        created_at: r.get(4)?,
        expires_at: r.get(5)?,
        last_used_at: r.get(6)?,
        revoked_at: r.get(7)?,
        replaced_by: r.get(8)?,
        hash: r.get(9)?,
    })
}

impl RawRow {
    fn into_info(self) -> Result<([u8; 32], KeyInfo), KeyError> {
        let corrupt = |what: String| KeyError::Corrupt {
            id: self.id.clone(),
            what,
        };
        let tenant = TenantScope::parse(&self.tenant).map_err(|e| corrupt(e.to_string()))?;
        let role: Role = self
            .role
            .parse()
            .map_err(|e: crate::identity::IdentityError| corrupt(e.to_string()))?;
        let hash: [u8; 32] = self
            .hash
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("hash is not 32 bytes".into()))?;
        Ok((
            hash,
            KeyInfo {
                id: self.id,
                tenant,
                role,
                name: self.name,
                created_at: self.created_at,
                expires_at: self.expires_at,
                last_used_at: self.last_used_at,
                revoked_at: self.revoked_at,
                replaced_by: self.replaced_by,
            },
        ))
    }
}

fn migrate(conn: &mut Connection) -> Result<(), KeyError> {
    let tx = conn.transaction()?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS auth_schema (version INTEGER NOT NULL)")?;
    let version: i64 = tx
        .query_row("SELECT version FROM auth_schema", [], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(m)?;
        tx.execute("DELETE FROM auth_schema", [])?;
        tx.execute(
            "INSERT INTO auth_schema (version) VALUES (?1)",
            [i as i64 + 1],
        )?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
#[path = "keystore_tests.rs"]
mod tests;
