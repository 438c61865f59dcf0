//! `/keys` (API keys of the caller's tenant) and `/audit` (the audit log, read back).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use tartarus_audit::{Filter, Timestamp};
use tartarus_auth::keystore::{KeyError, KeyInfo, KeySpec, KeyStore, NewKey};
use tartarus_auth::{Action, Role, TenantScope};
use tartarus_types::{ApiKeyInfo, AuditEntry, AuditQuery, CreateKey, CreatedKey, List, RotateKey};

use crate::access::Caller;
use crate::daemon::Shared;
use crate::error::ApiError;
use crate::routes::{Body2, Q};

/// Default overlap of a rotation: the old key works one more hour.
const DEFAULT_OVERLAP_S: u64 = 3600;
/// Most records `GET /audit` returns.
const MAX_AUDIT: usize = 10_000;

fn key_error(e: KeyError) -> ApiError {
    match e {
        KeyError::NotFound(id) => ApiError::NotFound(format!("No key '{id}'")),
        KeyError::Inactive(_) => ApiError::Conflict(e.to_string()),
        KeyError::OutOfScope { .. } => ApiError::Forbidden(e.to_string()),
        KeyError::Db(_) | KeyError::Corrupt { .. } | KeyError::Random => {
            ApiError::internal("key store", &e)
        }
        other => ApiError::BadRequest(other.to_string()),
    }
}

fn info(k: KeyInfo) -> ApiKeyInfo {
    ApiKeyInfo {
        id: k.id,
        tenant: k.tenant.as_str().to_string(),
        role: k.role.as_str().to_string(),
        name: k.name,
        created_at: k.created_at,
        expires_at: k.expires_at,
        last_used_at: k.last_used_at,
        revoked_at: k.revoked_at,
        replaced_by: k.replaced_by,
    }
}

fn created(k: NewKey) -> CreatedKey {
    CreatedKey {
        key: k.key,
        info: info(k.info),
    }
}

async fn blocking<T: Send + 'static>(
    keys: &Arc<KeyStore>,
    f: impl FnOnce(&KeyStore) -> Result<T, KeyError> + Send + 'static,
) -> Result<T, ApiError> {
    let k = keys.clone();
    tokio::task::spawn_blocking(move || f(&k))
        .await
        .map_err(|e| ApiError::Internal(format!("key task: {e}")))?
        .map_err(key_error)
}

fn now_s() -> i64 {
    crate::store::now_ms() / 1000
}

pub async fn create_key(
    State(d): State<Shared>,
    c: Caller,
    Body2(req): Body2<CreateKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let scope = c.allow(Action::KeyCreate)?.clone();
    let name = req.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "name: 1-64 characters, no control characters".into(),
        ));
    }
    let role: Role = req
        .role
        .parse()
        .map_err(|e: tartarus_auth::identity::IdentityError| {
            ApiError::BadRequest(format!("role: {e}"))
        })?;
    let tenant = match &req.tenant {
        Some(t) => {
            TenantScope::parse(t).map_err(|e| ApiError::BadRequest(format!("tenant: {e}")))?
        }
        None => scope.clone(),
    };
    let expires_at = match req.expires_in_s {
        Some(0) => {
            return Err(ApiError::BadRequest(
                "expires_in_s: must be at least 1".into(),
            ))
        }
        Some(s) => Some(now_s().saturating_add(s.min(100 * 365 * 86_400) as i64)),
        None => None,
    };
    let spec = KeySpec {
        tenant,
        role,
        name,
        expires_at,
    };
    let k = blocking(&d.keys, move |k| k.create(&scope, spec)).await?;
    c.resource(format!("key/{}", k.info.id));
    Ok((StatusCode::CREATED, Json(created(k))))
}

pub async fn list_keys(
    State(d): State<Shared>,
    c: Caller,
) -> Result<Json<List<ApiKeyInfo>>, ApiError> {
    let scope = c.allow(Action::KeyList)?.clone();
    let items = blocking(&d.keys, move |k| k.list(&scope)).await?;
    Ok(Json(List {
        items: items.into_iter().map(info).collect(),
    }))
}

pub async fn get_key(
    State(d): State<Shared>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<ApiKeyInfo>, ApiError> {
    let scope = c.allow(Action::KeyList)?.clone();
    Ok(Json(info(
        blocking(&d.keys, move |k| k.get(&scope, &id)).await?,
    )))
}

pub async fn revoke_key(
    State(d): State<Shared>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<ApiKeyInfo>, ApiError> {
    let scope = c.allow(Action::KeyRevoke)?.clone();
    Ok(Json(info(
        blocking(&d.keys, move |k| k.revoke(&scope, &id)).await?,
    )))
}

pub async fn rotate_key(
    State(d): State<Shared>,
    c: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let scope = c.allow(Action::KeyRotate)?.clone();
    let req: RotateKey = if body.is_empty() {
        RotateKey::default()
    } else {
        crate::routes::parse_body(&body)?
    };
    let overlap = Duration::from_secs(req.overlap_s.unwrap_or(DEFAULT_OVERLAP_S).min(90 * 86_400));
    let k = blocking(&d.keys, move |k| k.rotate(&scope, &id, overlap)).await?;
    Ok((StatusCode::CREATED, Json(created(k))))
}

/// `since` as RFC 3339 or Unix seconds.
fn parse_since(s: &str) -> Result<Timestamp, ApiError> {
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(Timestamp(secs.saturating_mul(1000)));
    }
    s.parse::<Timestamp>().map_err(|e| {
        ApiError::BadRequest(format!(
            "since: '{s}' is neither RFC 3339 nor Unix seconds ({e})"
        ))
    })
}

pub async fn audit(
    State(d): State<Shared>,
    c: Caller,
    Q(q): Q<AuditQuery>,
) -> Result<Json<List<AuditEntry>>, ApiError> {
    let scope = c.allow(Action::AuditRead)?.clone();
    let since = q.since.as_deref().map(parse_since).transpose()?;
    // A tenant reads its own records only, whatever it asks for.
    let tenant = match (&scope, q.tenant) {
        (TenantScope::All, t) => t,
        (TenantScope::Tenant(own), Some(t)) if t != own.as_str() => {
            return Ok(Json(List { items: Vec::new() }))
        }
        (TenantScope::Tenant(own), _) => Some(own.as_str().to_string()),
    };
    let limit = q.limit.unwrap_or(1000).clamp(1, MAX_AUDIT);
    let path = d.audit.path().to_path_buf();
    // The newest `limit` matching records, oldest first.
    let records = tokio::task::spawn_blocking(move || {
        let mut keep = std::collections::VecDeque::with_capacity(limit);
        for r in tartarus_audit::query(&path, Filter { since, tenant })? {
            if keep.len() == limit {
                keep.pop_front();
            }
            keep.push_back(r?);
        }
        Ok::<_, tartarus_audit::ReadError>(keep)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("audit task: {e}")))?
    .map_err(|e| ApiError::internal("audit log", &e))?;
    let items = records
        .into_iter()
        .map(|r| AuditEntry {
            seq: r.seq,
            time: r.time.to_string(),
            request_id: r.request_id,
            tenant: r.tenant,
            principal: r.principal,
            action: r.action,
            resource: r.resource,
            result: r.result.to_string(),
            source: r.source,
            hash: r.hash,
        })
        .collect();
    Ok(Json(List { items }))
}
