//! `~/.config/tartarus/config.toml` (honouring `$XDG_CONFIG_HOME`) and how the global settings
//! are resolved: flag > environment > profile > default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::OutputFormat;

/// Environment variable naming the daemon address.
pub const ENV_HOST: &str = "TARTARUS_HOST";
/// Environment variable naming the profile.
pub const ENV_PROFILE: &str = "TARTARUS_PROFILE";
/// Environment variable holding the API key (or a JWT) sent as `Authorization: Bearer`.
pub const ENV_API_KEY: &str = "TARTARUS_API_KEY";
/// Environment variable naming the CA file that `https://` daemons must be signed by.
pub const ENV_TLS_CA: &str = "TARTARUS_TLS_CA";
/// Environment variable naming the client certificate (PEM) for mTLS.
pub const ENV_TLS_CERT: &str = "TARTARUS_TLS_CERT";
/// Environment variable naming the client certificate's private key (PEM) for mTLS.
pub const ENV_TLS_KEY: &str = "TARTARUS_TLS_KEY";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("no profile '{name}' in {path}")]
    UnknownProfile { name: String, path: String },
    #[error("profile '{profile}': output must be 'table' or 'json', not '{value}'")]
    BadOutput { profile: String, value: String },
}

/// The config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub default_profile: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// One `[profiles.NAME]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default)]
    pub host: Option<String>,
    /// Sent as `Authorization: Bearer <key>`.
    #[serde(default)]
    pub api_key: Option<String>,
    /// `table` or `json`.
    #[serde(default)]
    pub output: Option<String>,
    /// CA certificate(s), PEM, trusted for an `https://` host (relative paths are relative to
    /// the config file's directory, `~/` is the home directory).
    #[serde(default)]
    pub tls_ca: Option<String>,
    /// Client certificate, PEM, presented to an `https://` host (mTLS).
    #[serde(default)]
    pub tls_cert: Option<String>,
    /// The client certificate's private key, PEM.
    #[serde(default)]
    pub tls_key: Option<String>,
}

/// What the command runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub host: String,
    pub api_key: Option<String>,
    pub output: OutputFormat,
    /// The profile in use, if any.
    pub profile: Option<String>,
    /// TLS files for an `https://` host.
    pub tls: TlsFiles,
}

/// The files of the TLS client: none is needed for `unix://` or `http://` hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) the daemon's certificate must chain to; without it the system's
    /// trust store is used.
    pub ca: Option<PathBuf>,
    /// Client certificate (mTLS); needs `key` too.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The global flags that take part in the resolution.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub host: Option<String>,
    pub profile: Option<String>,
    pub output: Option<OutputFormat>,
    pub api_key: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// Where the config file lives: `$XDG_CONFIG_HOME/tartarus/config.toml`, else
/// `$HOME/.config/tartarus/config.toml`.
pub fn config_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = match env("XDG_CONFIG_HOME").filter(|s| !s.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(env("HOME").filter(|s| !s.is_empty())?).join(".config"),
    };
    Some(base.join("tartarus").join("config.toml"))
}

impl ConfigFile {
    /// Parses a config file's text; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.message().to_string(),
        })
    }

    /// Loads `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }
}

/// Resolves the settings: flag > environment > profile > default.
pub fn resolve(
    flags: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
    config: &ConfigFile,
    config_path: &Path,
) -> Result<Settings, ConfigError> {
    let nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
    let profile_name = flags
        .profile
        .clone()
        .or_else(|| nonempty(ENV_PROFILE))
        .or_else(|| config.default_profile.clone());
    let profile =
        match &profile_name {
            Some(name) => Some(config.profiles.get(name).cloned().ok_or_else(|| {
                ConfigError::UnknownProfile {
                    name: name.clone(),
                    path: config_path.display().to_string(),
                }
            })?),
            None => None,
        };
    let profile = profile.unwrap_or_default();
    let host = flags
        .host
        .clone()
        .or_else(|| nonempty(ENV_HOST))
        .or(profile.host)
        .unwrap_or_else(|| format!("unix://{}", tartarus_types::DEFAULT_SOCKET));
    let output = match (flags.output, profile.output.as_deref()) {
        (Some(o), _) => o,
        (None, None) | (None, Some("table")) => OutputFormat::Table,
        (None, Some("json")) => OutputFormat::Json,
        (None, Some(other)) => {
            return Err(ConfigError::BadOutput {
                profile: profile_name.unwrap_or_default(),
                value: other.to_string(),
            })
        }
    };
    let home = env("HOME").filter(|h| !h.is_empty());
    let base = config_path.parent().unwrap_or(Path::new("."));
    let file = |flag: &Option<PathBuf>, var: &str, prof: &Option<String>| {
        flag.clone()
            .or_else(|| nonempty(var).map(PathBuf::from))
            .or_else(|| {
                prof.as_deref()
                    .filter(|p| !p.is_empty())
                    .map(|p| profile_path(p, base, home.as_deref()))
            })
    };
    let tls = TlsFiles {
        ca: file(&flags.tls_ca, ENV_TLS_CA, &profile.tls_ca),
        cert: file(&flags.tls_cert, ENV_TLS_CERT, &profile.tls_cert),
        key: file(&flags.tls_key, ENV_TLS_KEY, &profile.tls_key),
    };
    let api_key = flags
        .api_key
        .clone()
        .filter(|k| !k.is_empty())
        .or_else(|| nonempty(ENV_API_KEY))
        .or(profile.api_key.filter(|k| !k.is_empty()));
    Ok(Settings {
        host,
        api_key,
        output,
        profile: profile_name,
        tls,
    })
}

/// A path from the config file: `~/x` is under the home directory, a relative path is relative
/// to the config file's directory (so a profile can name `ca.crt` beside it).
pub fn profile_path(p: &str, config_dir: &Path, home: Option<&str>) -> PathBuf {
    match (p.strip_prefix("~/"), home) {
        (Some(rest), Some(h)) => Path::new(h).join(rest),
        _ if Path::new(p).is_absolute() => PathBuf::from(p),
        _ => config_dir.join(p),
    }
}

/// Resolves the settings from the process environment and the user's config file.
pub fn load_settings(flags: &Overrides) -> Result<Settings, ConfigError> {
    let env = |k: &str| std::env::var(k).ok();
    let path = config_path(&env);
    let config = match &path {
        Some(p) => ConfigFile::load(p)?,
        None => ConfigFile::default(),
    };
    let shown = path.unwrap_or_else(|| PathBuf::from("~/.config/tartarus/config.toml"));
    resolve(flags, &env, &config, &shown)
}
