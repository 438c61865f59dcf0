//! The API's error type: one place where failures become HTTP statuses and
//! `{"error": {"code", "message"}}` bodies.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tartarus_types::{ErrorBody, ErrorDetail};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Limit(String),
    #[error("{0}")]
    Unavailable(String),
    /// The guest agent refused a request (missing program, bad path, ...).
    #[error("{0}")]
    Agent(String),
    #[error("{0}")]
    Internal(String),
    /// A registry refused the credentials (or their absence) for a pull.
    #[error("{0}")]
    RegistryAuth(String),
    /// A registry failed, could not be reached, or sent what it should not have.
    #[error("{0}")]
    Upstream(String),
    /// No valid credentials (401; the auth layer answers most of these itself).
    #[error("{0}")]
    Unauthorized(String),
    /// The caller's role may not do this (403). Another tenant's resource is a NotFound.
    #[error("{0}")]
    Forbidden(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Agent(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Limit(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::RegistryAuth(_) => StatusCode::FORBIDDEN,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::Limit(_) => "limit_exceeded",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Agent(_) => "agent_error",
            ApiError::Internal(_) => "internal",
            ApiError::RegistryAuth(_) => "registry_unauthorized",
            ApiError::Upstream(_) => "upstream",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
        }
    }

    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code().to_string(),
            message: self.to_string(),
        }
    }

    /// An internal failure with its whole source chain in the message.
    pub fn internal(context: &str, e: &dyn std::error::Error) -> ApiError {
        ApiError::Internal(format!("{context}: {}", chain(e)))
    }
}

/// The message of an error answer, kept in the response's extensions for the audit layer.
#[derive(Debug, Clone)]
pub struct ErrorNote(pub String);

/// "outer: inner: innermost" for an error and its sources.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::internal("state database", &e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::warn!("{}: {}", self.code(), self);
        }
        let body = ErrorBody {
            error: self.detail(),
        };
        let mut r = (self.status(), axum::Json(body)).into_response();
        // For the audit record of this request.
        r.extensions_mut().insert(ErrorNote(self.to_string()));
        r
    }
}
