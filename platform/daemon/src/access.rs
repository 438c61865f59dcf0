//! Who may call the API, and the audit trail of what they did (issue #14).
//!
//! Every request passes [`gate`]: the connection's [`Transport`] (set by the accept loop in
//! [`crate::listen`]) and the request's credentials become an [`Identity`] (Unix socket = the
//! host's root admin; else an API key, an OIDC JWT or an mTLS client certificate), or a 401.
//! Handlers take a [`Caller`] and call [`Caller::allow`] with their [`Action`] before anything
//! else: the role check (403) and the tenant scope every store query then filters by. Another
//! tenant's resource is never a 403 but a 404, from the scoped query.
//!
//! The gate writes one audit record (hash-chained, fsync'ed before the answer is sent) for every
//! mutating request, every request refused with 401 or 403, and the reads that reach into a
//! sandbox (files, logs, agent and port connections); the daemon adds one per sandbox state
//! change ([`crate::daemon::Daemon::audit_state`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tartarus_audit::{AuditEvent, AuditLog, Outcome};
use tartarus_auth::layer::{AuthError, Authenticator, Transport};
use tartarus_auth::{Action, Identity, TenantScope};

use crate::error::{ApiError, ErrorNote};
use crate::metrics::Metrics;

/// Where a connection came from, for the audit record's `source`.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub transport: Transport,
    pub source: String,
}

impl ConnInfo {
    pub fn unix(uid: Option<u32>) -> ConnInfo {
        ConnInfo {
            transport: Transport::UnixSocket { uid },
            source: "unix".into(),
        }
    }

    pub fn tcp(peer: SocketAddr) -> ConnInfo {
        ConnInfo {
            transport: Transport::Tcp,
            source: peer.to_string(),
        }
    }
}

/// What the audit record of a request says, filled in by the handler through [`Caller`].
#[derive(Debug, Default)]
struct Note {
    action: Option<String>,
    resource: Option<String>,
    /// Audit this read (it reaches into a sandbox).
    force: bool,
}

/// The gate's shared state.
pub struct Gate {
    pub auth: Authenticator,
    pub audit: Arc<AuditLog>,
    pub metrics: Arc<Metrics>,
}

/// The request id: the client's `X-Request-Id` when it is sane, else a fresh one.
fn request_id(req: &Request) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| format!("req-{}", crate::fsutil::random_hex(8)))
}

/// `sandbox_files_read` → `sandbox.files_read`.
pub fn action_name(a: Action) -> String {
    a.as_str().replacen('_', ".", 1)
}

/// The middleware in front of every route.
pub async fn gate(State(g): State<Arc<Gate>>, mut req: Request, next: Next) -> Response {
    let rid = request_id(&req);
    let conn = req
        .extensions()
        .get::<ConnInfo>()
        .cloned()
        .unwrap_or_else(|| ConnInfo {
            transport: Transport::Tcp,
            source: "unknown".into(),
        });
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let identity = match &conn.transport {
        // The socket is 0600 root's; a peer of another uid got in through a changed mode.
        Transport::UnixSocket { uid: Some(uid) } if *uid != 0 => Err(AuthError::Internal(format!(
            "uid {uid} on the root-only Unix socket"
        ))),
        t => g.auth.authenticate(Some(t), req.headers()).await,
    };
    let id = match identity {
        Ok(id) => id,
        Err(e) => {
            g.metrics.auth_failures.inc();
            let why = e.to_string();
            let mut resp = e.into_response();
            let ev = AuditEvent::now(
                rid.clone(),
                "-",
                "-",
                "auth.failed",
                resource_of(route.as_deref(), &path, &method),
                Outcome::Denied,
                conn.source.clone(),
            );
            tracing::info!(request = %rid, source = %conn.source, "{method} {path}: 401: {why}");
            if g.audit.append(ev).await.is_err() {
                g.metrics.audit_errors.inc();
            } else {
                g.metrics.audit_records.inc();
            }
            set_rid(&mut resp, &rid);
            return resp;
        }
    };
    let note = Arc::new(Mutex::new(Note::default()));
    req.extensions_mut().insert(id.clone());
    req.extensions_mut().insert(NoteSlot(note.clone()));
    let mut resp = next.run(req).await;
    let status = resp.status();
    let n = std::mem::take(&mut *note.lock().unwrap_or_else(|p| p.into_inner()));
    let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    if status == StatusCode::FORBIDDEN {
        g.metrics.forbidden.inc();
    }
    if mutating || refused || n.force {
        let result = if status.is_success() || status == StatusCode::SWITCHING_PROTOCOLS {
            Outcome::Ok
        } else if refused {
            Outcome::Denied
        } else {
            let msg = resp
                .extensions()
                .get::<ErrorNote>()
                .map(|e| e.0.clone())
                .unwrap_or_default();
            Outcome::Error(format!("{} {msg}", status.as_u16()).trim_end().to_string())
        };
        let ev = AuditEvent::now(
            rid.clone(),
            id.tenant.as_str(),
            id.principal.clone(),
            n.action
                .unwrap_or_else(|| format!("http.{}", method.as_str().to_ascii_lowercase())),
            n.resource
                .unwrap_or_else(|| resource_of(route.as_deref(), &path, &method)),
            result,
            conn.source.clone(),
        );
        // The record is on disk before the client hears the answer. A log that cannot be
        // written makes the request fail (it happened, but nobody may rely on it unaudited).
        match g.audit.append(ev).await {
            Ok(_) => {
                g.metrics.audit_records.inc();
            }
            Err(e) => {
                g.metrics.audit_errors.inc();
                tracing::error!(request = %rid, "audit log: {e}");
                resp = ApiError::Internal(format!(
                    "The request was carried out but its audit record could not be written: {e}"
                ))
                .into_response();
            }
        }
    }
    set_rid(&mut resp, &rid);
    resp
}

fn set_rid(resp: &mut Response, rid: &str) {
    if let Ok(v) = HeaderValue::from_str(rid) {
        resp.headers_mut().insert("x-request-id", v);
    }
}

/// `sandbox/sb-…`, `template/name`, … from the path; the raw path otherwise.
fn resource_of(route: Option<&str>, path: &str, method: &Method) -> String {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let kind = match parts.first().copied() {
        Some("sandboxes") => "sandbox",
        Some("templates") => "template",
        Some("snapshots") => "snapshot",
        Some("images") => "image",
        Some("keys") => "key",
        _ => return format!("{method} {}", route.unwrap_or(path)),
    };
    match parts.get(1) {
        Some(id) if !id.is_empty() && *id != "pull" && *id != "prune" => {
            format!("{kind}/{}", parts[1..].join("/"))
        }
        _ => kind.to_string(),
    }
}

#[derive(Clone)]
struct NoteSlot(Arc<Mutex<Note>>);

/// The authenticated caller of a handler.
pub struct Caller {
    pub id: Identity,
    note: Option<Arc<Mutex<Note>>>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let id = parts
            .extensions
            .get::<Identity>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("Not authenticated".into()))?;
        let note = parts.extensions.get::<NoteSlot>().map(|n| n.0.clone());
        Ok(Caller { id, note })
    }
}

impl Caller {
    /// Checks the role for `action` (a 403 names the role and the action) and records the
    /// action for the audit trail; returns the tenant scope to query with.
    pub fn allow(&self, action: Action) -> Result<&TenantScope, ApiError> {
        self.with_note(|n| n.action = Some(action_name(action)));
        self.id
            .authorize(action)
            .map_err(|e| ApiError::Forbidden(e.to_string()))?;
        Ok(&self.id.tenant)
    }

    /// The audited resource, when the path does not say it (a new sandbox's id).
    pub fn resource(&self, r: impl Into<String>) {
        let r = r.into();
        self.with_note(|n| n.resource = Some(r));
    }

    /// Audit this read too.
    pub fn audit_read(&self) {
        self.with_note(|n| n.force = true);
    }

    fn with_note(&self, f: impl FnOnce(&mut Note)) {
        if let Some(n) = &self.note {
            f(&mut n.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_from_paths() {
        let m = Method::POST;
        assert_eq!(resource_of(None, "/sandboxes", &m), "sandbox");
        assert_eq!(
            resource_of(None, "/sandboxes/sb-1/exec", &m),
            "sandbox/sb-1/exec"
        );
        assert_eq!(resource_of(None, "/images/pull", &m), "image");
        assert_eq!(resource_of(None, "/keys/abc/rotate", &m), "key/abc/rotate");
        assert_eq!(resource_of(None, "/nope", &m), "POST /nope");
        assert_eq!(action_name(Action::SandboxFilesRead), "sandbox.files_read");
    }
}
