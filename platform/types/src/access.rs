//! API keys and the audit log over the API (issue #14): `POST/GET /keys`, `GET/DELETE
//! /keys/{id}`, `POST /keys/{id}/rotate`, `GET /audit`.
//!
//! Tenants are names `[a-z0-9][a-z0-9_-]{0,62}`; `*` is the host scope (the Unix socket's root
//! admin, host-wide keys, templates every tenant may use). Roles are `admin`, `operator`,
//! `developer`, `viewer`. Times of keys are Unix seconds.

use serde::{Deserialize, Serialize};

/// `POST /keys`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A label for people (`ci`, `alice's laptop`); 1-64 characters.
    pub name: String,
    /// `admin`, `operator`, `developer` or `viewer`.
    pub role: String,
    /// The key's tenant; default the caller's. Only a host-scope caller may name another
    /// tenant or `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Lifetime in seconds; none = never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<u64>,
}

/// `POST /keys/{id}/rotate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old key keeps working next to the new one, seconds (default 3600; 0 =
    /// the old key stops at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap_s: Option<u64>,
}

/// A key as the API shows it: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyInfo {
    /// The 8-character public id (the key's characters 5-12).
    pub id: String,
    pub tenant: String,
    pub role: String,
    pub name: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Set by a rotation: the key that replaces this one.
    pub replaced_by: Option<String>,
}

/// The answer of `POST /keys` and `POST /keys/{id}/rotate`: the only time the key's plaintext
/// is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedKey {
    /// `tts_` + id + secret + checksum: send as `Authorization: Bearer <key>` or `X-API-KEY`.
    pub key: String,
    #[serde(flatten)]
    pub info: ApiKeyInfo,
}

/// `GET /audit?since=&tenant=&limit=`: query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// RFC 3339 time or Unix seconds: only records at or after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Only this tenant's records (a tenant-scoped caller only ever sees its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The newest N matching records (default 1000, at most 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// One audit record as `GET /audit` lists it (oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the hash chain, from 1.
    pub seq: u64,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub request_id: String,
    pub tenant: String,
    /// `unix:uid=0`, `key:<id>`, a JWT's `sub`, a client certificate's CN, or `-` when
    /// authentication failed.
    pub principal: String,
    /// e.g. `sandbox.create`, `key.revoke`, `auth.failed`, `sandbox.state`.
    pub action: String,
    /// e.g. `sandbox/sb-0123456789ab`.
    pub resource: String,
    /// `ok`, `denied`, or `error: <why>`.
    pub result: String,
    /// `unix`, the peer's `IP:port`, or `cn=<CN>`.
    pub source: String,
    /// Hex SHA-256 of the record (the chain link).
    pub hash: String,
}
