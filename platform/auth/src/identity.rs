//! Who is calling ([`Identity`]), what they may do ([`Role::allows`] over [`Action`]), and
//! which tenant's data a query may see ([`TenantScope`]).
//!
//! The permission table lives in ONE place, [`Role::allows`]; the crate README shows it as a
//! table and a test checks the README against this function.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Errors of this module: names that are not tenants or roles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("Invalid tenant name {0:?}: 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit")]
    BadTenant(String),
    #[error("Unknown role {0:?}: expected admin, operator, developer or viewer")]
    BadRole(String),
    #[error("Role {role} may not {action}")]
    Forbidden { role: Role, action: Action },
    #[error("{action} is host-wide: it needs the host scope, not one tenant's")]
    HostOnly { action: Action },
}

/// A tenant name: `[a-z0-9][a-z0-9_-]{0,62}`. `*` is not a tenant; the host scope is
/// [`TenantScope::All`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tenant(String);

impl Tenant {
    pub fn new(name: &str) -> Result<Tenant, IdentityError> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && name.as_bytes()[0].is_ascii_alphanumeric();
        if ok {
            Ok(Tenant(name.to_string()))
        } else {
            Err(IdentityError::BadTenant(name.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Tenant {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Tenant::new(&s)
    }
}

impl From<Tenant> for String {
    fn from(t: Tenant) -> String {
        t.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which tenants' rows a caller may see. Every store query takes one, so none can forget
/// the tenant filter: [`TenantScope::sql_param`] gives the value for
/// `WHERE (?1 IS NULL OR tenant = ?1)`, [`TenantScope::covers`] checks one owner.
/// In JSON it is a plain string: `"*"` or the tenant name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TenantScope {
    /// The host: every tenant (the Unix socket, or a credential issued for tenant `*`).
    All,
    /// One tenant, whatever the role (an admin of X is still scoped to X).
    Tenant(Tenant),
}

impl TenantScope {
    /// `*` is the host scope, anything else must be a valid tenant name.
    pub fn parse(s: &str) -> Result<TenantScope, IdentityError> {
        if s == "*" {
            Ok(TenantScope::All)
        } else {
            Tenant::new(s).map(TenantScope::Tenant)
        }
    }

    /// Whether a row owned by `owner` is visible in this scope.
    pub fn covers(&self, owner: &str) -> bool {
        match self {
            TenantScope::All => true,
            TenantScope::Tenant(t) => t.as_str() == owner,
        }
    }

    /// The tenant to filter on, `None` for the host scope: bind it to
    /// `WHERE (?N IS NULL OR tenant = ?N)`.
    pub fn sql_param(&self) -> Option<&str> {
        match self {
            TenantScope::All => None,
            TenantScope::Tenant(t) => Some(t.as_str()),
        }
    }

    /// The form stored in a database column: `*` or the tenant name.
    pub fn as_str(&self) -> &str {
        match self {
            TenantScope::All => "*",
            TenantScope::Tenant(t) => t.as_str(),
        }
    }

    pub fn is_host(&self) -> bool {
        matches!(self, TenantScope::All)
    }
}

impl TryFrom<String> for TenantScope {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        TenantScope::parse(&s)
    }
}

impl From<TenantScope> for String {
    fn from(t: TenantScope) -> String {
        t.as_str().to_string()
    }
}

impl fmt::Display for TenantScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Roles, most powerful first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Operator,
    Developer,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Developer, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Developer => "developer",
            Role::Viewer => "viewer",
        }
    }

    /// THE permission table. Read it as: the lowest role that may do each action.
    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        let lowest = match action {
            Health | SandboxList | SandboxGet | SnapshotList | SnapshotGet | TemplateList
            | TemplateGet | ImageList | ImageGet | EventsRead | PoolList => Role::Viewer,
            SandboxCreate | SandboxDelete | SandboxExec | SandboxFilesRead | SandboxFilesWrite
            | SandboxLogs | SandboxPorts | SandboxAgent | SandboxPause | SandboxResume
            | SandboxHibernate | SandboxWake | SnapshotCreate | SnapshotDelete | TemplateBuild
            | ImagePull => Role::Developer,
            TemplateDelete | ImageDelete | ImagePrune | MetricsRead | KeyList | PoolSet
            | PoolDelete => Role::Operator,
            KeyCreate | KeyRotate | KeyRevoke | AuditRead => Role::Admin,
        };
        self <= lowest
    }
}

impl FromStr for Role {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Role, IdentityError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdentityError::BadRole(s.to_string()))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every operation of the daemon's API (platform/openapi.yaml), one per route and method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `GET /health`
    Health,
    /// `POST /sandboxes`
    SandboxCreate,
    /// `GET /sandboxes`
    SandboxList,
    /// `GET /sandboxes/{id}`
    SandboxGet,
    /// `DELETE /sandboxes/{id}`
    SandboxDelete,
    /// `POST /sandboxes/{id}/exec`
    SandboxExec,
    /// `GET /sandboxes/{id}/files`
    SandboxFilesRead,
    /// `PUT /sandboxes/{id}/files`
    SandboxFilesWrite,
    /// `GET /sandboxes/{id}/logs`
    SandboxLogs,
    /// `GET /sandboxes/{id}/ports/{port}` (upgrade)
    SandboxPorts,
    /// `GET /sandboxes/{id}/agent` (upgrade: interactive exec)
    SandboxAgent,
    /// `POST /sandboxes/{id}/pause`
    SandboxPause,
    /// `POST /sandboxes/{id}/resume`
    SandboxResume,
    /// `POST /sandboxes/{id}/hibernate`
    SandboxHibernate,
    /// `POST /sandboxes/{id}/wake`
    SandboxWake,
    /// `GET /pools`, `GET /templates/{name}/pool`
    PoolList,
    /// `PUT /templates/{name}/pool`
    PoolSet,
    /// `DELETE /templates/{name}/pool`
    PoolDelete,
    /// `POST /sandboxes/{id}/snapshots`
    SnapshotCreate,
    /// `GET /snapshots`, `GET /sandboxes/{id}/snapshots`
    SnapshotList,
    /// `GET /snapshots/{id}`
    SnapshotGet,
    /// `DELETE /snapshots/{id}`
    SnapshotDelete,
    /// `POST /templates`
    TemplateBuild,
    /// `GET /templates`
    TemplateList,
    /// `GET /templates/{name}`
    TemplateGet,
    /// `DELETE /templates/{name}`
    TemplateDelete,
    /// `POST /images/pull`
    ImagePull,
    /// `GET /images`
    ImageList,
    /// `GET /images/{name}`
    ImageGet,
    /// `DELETE /images/{name}` (host-wide: the image cache is shared)
    ImageDelete,
    /// `POST /images/prune` (host-wide)
    ImagePrune,
    /// `GET /events`
    EventsRead,
    /// `GET /metrics` (host-wide: counts every tenant's sandboxes)
    MetricsRead,
    /// list API keys
    KeyList,
    /// create an API key
    KeyCreate,
    /// rotate an API key
    KeyRotate,
    /// revoke an API key
    KeyRevoke,
    /// read the audit log
    AuditRead,
}

impl Action {
    pub const ALL: [Action; 38] = [
        Action::Health,
        Action::SandboxCreate,
        Action::SandboxList,
        Action::SandboxGet,
        Action::SandboxDelete,
        Action::SandboxExec,
        Action::SandboxFilesRead,
        Action::SandboxFilesWrite,
        Action::SandboxLogs,
        Action::SandboxPorts,
        Action::SandboxAgent,
        Action::SandboxPause,
        Action::SandboxResume,
        Action::SandboxHibernate,
        Action::SandboxWake,
        Action::PoolList,
        Action::PoolSet,
        Action::PoolDelete,
        Action::SnapshotCreate,
        Action::SnapshotList,
        Action::SnapshotGet,
        Action::SnapshotDelete,
        Action::TemplateBuild,
        Action::TemplateList,
        Action::TemplateGet,
        Action::TemplateDelete,
        Action::ImagePull,
        Action::ImageList,
        Action::ImageGet,
        Action::ImageDelete,
        Action::ImagePrune,
        Action::EventsRead,
        Action::MetricsRead,
        Action::KeyList,
        Action::KeyCreate,
        Action::KeyRotate,
        Action::KeyRevoke,
        Action::AuditRead,
    ];

    /// Actions that touch state shared by every tenant: only an identity with the host scope
    /// ([`TenantScope::All`]) may do them, whatever its role.
    pub fn is_host_wide(self) -> bool {
        matches!(
            self,
            Action::ImageDelete | Action::ImagePrune | Action::MetricsRead
        )
    }

    /// snake_case name, as in the README table and audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Health => "health",
            Action::SandboxCreate => "sandbox_create",
            Action::SandboxList => "sandbox_list",
            Action::SandboxGet => "sandbox_get",
            Action::SandboxDelete => "sandbox_delete",
            Action::SandboxExec => "sandbox_exec",
            Action::SandboxFilesRead => "sandbox_files_read",
            Action::SandboxFilesWrite => "sandbox_files_write",
            Action::SandboxLogs => "sandbox_logs",
            Action::SandboxPorts => "sandbox_ports",
            Action::SandboxAgent => "sandbox_agent",
            Action::SandboxPause => "sandbox_pause",
            Action::SandboxResume => "sandbox_resume",
            Action::SandboxHibernate => "sandbox_hibernate",
            Action::SandboxWake => "sandbox_wake",
            Action::PoolList => "pool_list",
            Action::PoolSet => "pool_set",
            Action::PoolDelete => "pool_delete",
            Action::SnapshotCreate => "snapshot_create",
            Action::SnapshotList => "snapshot_list",
            Action::SnapshotGet => "snapshot_get",
            Action::SnapshotDelete => "snapshot_delete",
            Action::TemplateBuild => "template_build",
            Action::TemplateList => "template_list",
            Action::TemplateGet => "template_get",
            Action::TemplateDelete => "template_delete",
            Action::ImagePull => "image_pull",
            Action::ImageList => "image_list",
            Action::ImageGet => "image_get",
            Action::ImageDelete => "image_delete",
            Action::ImagePrune => "image_prune",
            Action::EventsRead => "events_read",
            Action::MetricsRead => "metrics_read",
            Action::KeyList => "key_list",
            Action::KeyCreate => "key_create",
            Action::KeyRotate => "key_rotate",
            Action::KeyRevoke => "key_revoke",
            Action::AuditRead => "audit_read",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    ApiKey,
    Jwt,
    Mtls,
    UnixSocket,
}

/// The caller of one request: carried from the auth layer down to every store query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Which tenants' data this caller may see.
    pub tenant: TenantScope,
    /// Who: `key:<id>` for API keys, the `sub` claim for JWTs, the certificate's CN for
    /// mTLS, `unix:uid=<n>` for the socket.
    pub principal: String,
    pub role: Role,
    pub method: AuthMethod,
}

impl Identity {
    /// The host's super-admin: whoever can open the root-only Unix socket.
    pub fn unix_socket(uid: Option<u32>) -> Identity {
        Identity {
            tenant: TenantScope::All,
            principal: match uid {
                Some(uid) => format!("unix:uid={uid}"),
                None => "unix".to_string(),
            },
            role: Role::Admin,
            method: AuthMethod::UnixSocket,
        }
    }

    /// The scope every store query of this request must take.
    pub fn scope(&self) -> &TenantScope {
        &self.tenant
    }

    /// May this caller do `action` at all? (Which rows it may touch is the scope's business.)
    pub fn authorize(&self, action: Action) -> Result<(), IdentityError> {
        if !self.role.allows(action) {
            return Err(IdentityError::Forbidden {
                role: self.role,
                action,
            });
        }
        if action.is_host_wide() && !self.tenant.is_host() {
            return Err(IdentityError::HostOnly { action });
        }
        Ok(())
    }

    pub fn allows(&self, action: Action) -> bool {
        self.authorize(action).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(tenant: &str, role: Role) -> Identity {
        Identity {
            tenant: TenantScope::parse(tenant).unwrap(),
            principal: "p".into(),
            role,
            method: AuthMethod::ApiKey,
        }
    }

    #[test]
    fn roles_are_ordered_and_monotonic() {
        // Anything a lower role may do, every higher role may do too.
        for a in Action::ALL {
            for w in Role::ALL.windows(2) {
                if w[1].allows(a) {
                    assert!(w[0].allows(a), "{} may {a} but {} may not", w[1], w[0]);
                }
            }
        }
        assert!(Role::Admin.allows(Action::KeyCreate));
        assert!(!Role::Operator.allows(Action::KeyCreate));
        assert!(Role::Viewer.allows(Action::SandboxList));
        assert!(!Role::Viewer.allows(Action::SandboxExec));
        assert!(!Role::Viewer.allows(Action::SandboxFilesRead));
        assert!(Role::Developer.allows(Action::SandboxExec));
        assert!(!Role::Developer.allows(Action::TemplateDelete));
    }

    #[test]
    fn tenant_admin_is_scoped_and_not_host() {
        let admin = id("acme", Role::Admin);
        assert!(admin.scope().covers("acme"));
        assert!(!admin.scope().covers("other"));
        assert!(!admin.scope().covers("*"));
        assert_eq!(admin.scope().sql_param(), Some("acme"));
        assert_eq!(
            admin.authorize(Action::ImagePrune),
            Err(IdentityError::HostOnly {
                action: Action::ImagePrune
            })
        );
        let root = Identity::unix_socket(Some(0));
        assert!(root.scope().covers("acme") && root.scope().covers("other"));
        assert_eq!(root.scope().sql_param(), None);
        for a in Action::ALL {
            assert!(root.allows(a), "{a}");
        }
    }

    #[test]
    fn tenant_names_are_checked() {
        for bad in ["", "*", "Acme", "a b", "-x", "a/b", "../x", &"x".repeat(64)] {
            assert!(Tenant::new(bad).is_err(), "{bad:?}");
        }
        for good in ["acme", "a", "team-1", "x_y", &"x".repeat(63)] {
            assert!(Tenant::new(good).is_ok(), "{good:?}");
        }
        assert_eq!(TenantScope::parse("*").unwrap(), TenantScope::All);
        assert!("root".parse::<Role>().is_err());
        assert_eq!(serde_json::to_value(TenantScope::All).unwrap(), "*");
        let t: TenantScope = serde_json::from_value("acme".into()).unwrap();
        assert_eq!(t.as_str(), "acme");
        assert!(serde_json::from_value::<TenantScope>("Bad Name".into()).is_err());
        assert_eq!("viewer".parse::<Role>().unwrap(), Role::Viewer);
    }

    #[test]
    fn readme_table_matches_code() {
        let readme = include_str!("../README.md");
        for a in Action::ALL {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` ", a.as_str())))
                .unwrap_or_else(|| panic!("README has no row for {a}"));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            // | action | admin | operator | developer | viewer | host-wide |
            for (i, r) in Role::ALL.iter().enumerate() {
                let want = if r.allows(a) { "yes" } else { "-" };
                assert_eq!(cells[2 + i], want, "README row {a}, role {r}");
            }
            let hw = if a.is_host_wide() { "yes" } else { "-" };
            assert_eq!(cells[6], hw, "README row {a}, host-wide");
        }
    }
}
