//! The axum middleware: every request gets an [`Identity`] in its extensions, or a 401 in the
//! daemon's error shape (`{"error": {"code": "unauthorized", "message": ...}}`).
//!
//! ```ignore
//! let auth = Arc::new(Authenticator::new().with_keys(keys).with_oidc(oidc));
//! let app = router.layer(axum::middleware::from_fn_with_state(auth, tartarus_auth::layer::require_identity));
//! // In the accept loop, per connection: insert a `Transport` into every request's extensions
//! // (UnixSocket for the root-only socket, MtlsTcp with the verified peer certificate, or Tcp).
//! // In a handler: `Extension(id): Extension<Identity>`, then `id.authorize(Action::...)` and
//! // pass `id.scope()` to every store query.
//! ```
//!
//! Precedence: the Unix socket is the host's super-admin whatever the headers say; otherwise
//! a credential in the headers (`X-API-KEY`, or `Authorization: Bearer` with a `tts_` key or
//! a JWT) decides; otherwise a verified client certificate; otherwise 401.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rustls::pki_types::CertificateDer;
use tartarus_types::{ErrorBody, ErrorDetail};

use crate::apikey;
use crate::identity::{Action, Identity, IdentityError};
use crate::keystore::{KeyError, KeyStore};
use crate::oidc::{self, OidcError, OidcVerifier};
use crate::tls::{self, TlsError};

/// How the request reached the daemon: inserted into each request's extensions by the
/// daemon's accept loop (a request without one is treated as plain TCP).
#[derive(Debug, Clone)]
pub enum Transport {
    /// The root-only Unix socket (peer uid from SO_PEERCRED, if known).
    UnixSocket { uid: Option<u32> },
    /// TCP without a client certificate.
    Tcp,
    /// TCP over mTLS: the client certificate rustls verified against our CA.
    MtlsTcp { peer_cert: CertificateDer<'static> },
}

/// Why a request was not authenticated (all 401 but `Internal`).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("No credentials: send Authorization: Bearer <key or token>, X-API-KEY, or a client certificate")]
    Missing,
    #[error("{0}")]
    Key(#[source] KeyError),
    #[error("{0}")]
    Jwt(#[source] OidcError),
    #[error("{0}")]
    Cert(#[source] TlsError),
    #[error("Bearer token is neither a tts_ API key nor a JWT this daemon accepts")]
    Unsupported,
    #[error("Authentication failed internally: {0}")]
    Internal(String),
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Internal(_) | AuthError::Key(KeyError::Db(_) | KeyError::Corrupt { .. }) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    fn body(&self) -> ErrorDetail {
        let internal = self.status().is_server_error();
        ErrorDetail {
            code: if internal { "internal" } else { "unauthorized" }.to_string(),
            message: if internal {
                // Details go to the log, not to an unauthenticated caller.
                "Authentication failed internally".to_string()
            } else {
                self.to_string()
            },
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::warn!("auth: {self:?}");
        }
        let mut resp =
            (self.status(), axum::Json(ErrorBody { error: self.body() })).into_response();
        if self.status() == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A 403 in the daemon's shape for an identity that may not do an action. (A resource of
/// another tenant is a 404 from the store query, never this.)
#[derive(Debug)]
pub struct Forbidden(pub IdentityError);

impl IntoResponse for Forbidden {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: "forbidden".into(),
                message: self.0.to_string(),
            },
        };
        (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
    }
}

/// Checks `action` for `id`: `Ok`, or the 403 to send (`?` in a handler returning
/// `Result<_, Response>` after `.map_err(IntoResponse::into_response)`).
pub fn authorize(id: &Identity, action: Action) -> Result<(), Forbidden> {
    id.authorize(action).map_err(Forbidden)
}

/// Keys, OIDC and mTLS behind one call. Build once, share as `Arc`.
#[derive(Default)]
pub struct Authenticator {
    keys: Option<Arc<KeyStore>>,
    oidc: Option<Arc<OidcVerifier>>,
}

impl Authenticator {
    pub fn new() -> Authenticator {
        Authenticator::default()
    }

    pub fn with_keys(mut self, keys: Arc<KeyStore>) -> Authenticator {
        self.keys = Some(keys);
        self
    }

    pub fn with_oidc(mut self, oidc: Arc<OidcVerifier>) -> Authenticator {
        self.oidc = Some(oidc);
        self
    }

    /// The identity of one request (see the module doc for the precedence).
    pub async fn authenticate(
        &self,
        transport: Option<&Transport>,
        headers: &HeaderMap,
    ) -> Result<Identity, AuthError> {
        if let Some(Transport::UnixSocket { uid }) = transport {
            return Ok(Identity::unix_socket(*uid));
        }
        let api_key_header = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        if let Some(key) = api_key_header {
            return self.api_key(key.trim()).await;
        }
        if let Some(token) = apikey::bearer(headers) {
            if token.starts_with(apikey::PREFIX) {
                return self.api_key(token).await;
            }
            if let (Some(v), true) = (&self.oidc, oidc::looks_like_jwt(token)) {
                return v.verify(token).await.map_err(AuthError::Jwt);
            }
            return Err(AuthError::Unsupported);
        }
        if let Some(Transport::MtlsTcp { peer_cert }) = transport {
            return tls::identity_from_peer_cert(peer_cert).map_err(AuthError::Cert);
        }
        Err(AuthError::Missing)
    }

    /// From memory when the key's row is cached, else from SQLite on the blocking pool.
    async fn api_key(&self, key: &str) -> Result<Identity, AuthError> {
        let Some(store) = &self.keys else {
            return Err(AuthError::Unsupported);
        };
        if let Some(r) = store.authenticate_cached(key) {
            return r.map_err(AuthError::Key);
        }
        let store = Arc::clone(store);
        let key = key.to_string();
        tokio::task::spawn_blocking(move || store.authenticate(&key))
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))?
            .map_err(AuthError::Key)
    }
}

/// The middleware: `axum::middleware::from_fn_with_state(Arc<Authenticator>, require_identity)`.
/// On success the request carries `Identity` (use `Extension<Identity>` in handlers).
pub async fn require_identity(
    State(auth): State<Arc<Authenticator>>,
    mut req: Request,
    next: Next,
) -> Response {
    let transport = req.extensions().get::<Transport>().cloned();
    match auth.authenticate(transport.as_ref(), req.headers()).await {
        Ok(id) => {
            req.extensions_mut().insert(id);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
#[path = "layer_tests.rs"]
mod tests;
