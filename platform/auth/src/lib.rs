//! Tartarus auth: who is calling and what they may do.
//!
//! - [`identity`]: [`Identity`], [`Role`], [`Action`], [`TenantScope`] and the RBAC table.
//! - [`apikey`] + [`keystore`]: `tts_` API keys, stored as hashes in SQLite.
//! - [`oidc`]: bearer JWTs from an OIDC issuer (discovery + JWKS, cached, rotated).
//! - [`ca`] + [`tls`]: a dev CA (rcgen), client-certificate identities, a rustls server config
//!   whose certificate can be reloaded without a restart.
//! - [`layer`]: the axum middleware that turns a request into an [`Identity`] or a 401.
//! - `harness` (feature `harness`): a real OIDC provider for tests.

pub mod apikey;
pub mod ca;
#[cfg(feature = "harness")]
pub mod harness;
pub mod identity;
pub mod keystore;
pub mod layer;
pub mod oidc;
pub mod tls;

pub use identity::{Action, AuthMethod, Identity, Role, Tenant, TenantScope};
