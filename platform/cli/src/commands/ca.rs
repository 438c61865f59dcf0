//! `ca init` and `ca issue server|client`: a local certificate authority for the daemon's mTLS
//! listener (tartarus-auth's `ca` module); no daemon involved.

use std::path::{Path, PathBuf};

use serde_json::json;
use tartarus_auth::ca::{self, CertKind, CA_CERT, CA_KEY};
use tartarus_auth::{Role, TenantScope};

use super::CmdError;
use crate::cli::{CaCmd, CaDirArg, CaIssueCmd, IssueOpts, OutputFormat};
use crate::output::{print, print_json};

/// Environment variable naming the CA directory.
pub const ENV_CA_DIR: &str = "TARTARUS_CA_DIR";
/// The CA directory of root (next to the daemon's state).
pub const ROOT_CA_DIR: &str = "/var/lib/tartarus/ca";

/// Validity of a server certificate unless `--days` says otherwise.
const SERVER_DAYS: u32 = 365;
/// Validity of a client certificate: shorter, as expiry is the only revocation there is.
const CLIENT_DAYS: u32 = 90;

/// The CA directory: `--dir`, else `$TARTARUS_CA_DIR`, else `/var/lib/tartarus/ca` for root,
/// else `$XDG_CONFIG_HOME/tartarus/ca`, else `$HOME/.config/tartarus/ca`.
pub fn ca_dir(
    flag: &CaDirArg,
    env: &dyn Fn(&str) -> Option<String>,
    is_root: bool,
) -> Result<PathBuf, CmdError> {
    if let Some(d) = &flag.dir {
        return Ok(d.clone());
    }
    let nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(d) = nonempty(ENV_CA_DIR) {
        return Ok(PathBuf::from(d));
    }
    if is_root {
        return Ok(PathBuf::from(ROOT_CA_DIR));
    }
    let base = match nonempty("XDG_CONFIG_HOME") {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(nonempty("HOME").ok_or_else(|| {
            CmdError::Usage("neither HOME nor XDG_CONFIG_HOME is set: give --dir".into())
        })?)
        .join(".config"),
    };
    Ok(base.join("tartarus").join("ca"))
}

fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() == 0 }
}

fn process_env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// Runs a `ca` command.
pub fn run(cmd: CaCmd, output: OutputFormat) -> Result<i32, CmdError> {
    match cmd {
        CaCmd::Init { dir, cn } => init(&ca_dir(&dir, &process_env, is_root())?, &cn, output),
        CaCmd::Issue(CaIssueCmd::Server { name, sans, opts }) => {
            let sans = if sans.is_empty() {
                vec![name.clone()]
            } else {
                sans
            };
            issue(&name, CertKind::Server, sans, opts, output)
        }
        CaCmd::Issue(CaIssueCmd::Client {
            name,
            tenant,
            role,
            opts,
        }) => {
            let kind = CertKind::Client {
                tenant: TenantScope::parse(&tenant).map_err(|e| CmdError::Usage(e.to_string()))?,
                role: role
                    .parse::<Role>()
                    .map_err(|e| CmdError::Usage(e.to_string()))?,
            };
            issue(&name, kind, Vec::new(), opts, output)
        }
    }
}

fn init(dir: &Path, cn: &str, output: OutputFormat) -> Result<i32, CmdError> {
    ca::init_ca(dir, cn)?;
    let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if output == OutputFormat::Json {
        print_json(&json!({"dir": dir, "cert": cert, "key": key, "cn": cn}))?;
    } else {
        print(&format!(
            "Created CA '{cn}' in {}\n  {}  certificate: give it to the daemon (client CA) and to clients (--tls-ca)\n  {}  private key (mode 0600): keep it secret\n",
            dir.display(),
            cert.display(),
            key.display()
        ))?;
    }
    Ok(0)
}

/// A certificate's name doubles as its file stem: no path separators, no hidden files.
fn check_stem(name: &str) -> Result<(), CmdError> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') || name.contains('\0') {
        return Err(CmdError::Usage(format!(
            "'{name}' cannot name the certificate's files: no '/', and not starting with '.'"
        )));
    }
    Ok(())
}

fn issue(
    name: &str,
    kind: CertKind,
    sans: Vec<String>,
    opts: IssueOpts,
    output: OutputFormat,
) -> Result<i32, CmdError> {
    check_stem(name)?;
    let dir = ca_dir(&opts.dir, &process_env, is_root())?;
    if !dir.join(CA_KEY).exists() || !dir.join(CA_CERT).exists() {
        return Err(CmdError::Failed(format!(
            "no CA in {} (ca.crt and ca.key): run `tartarus ca init` first, or give --dir",
            dir.display()
        )));
    }
    let out = opts.out.clone().unwrap_or_else(|| dir.clone());
    if name == "ca" && out == dir {
        return Err(CmdError::Usage(
            "a certificate named 'ca' would replace the CA's own files: pick another name or --out"
                .into(),
        ));
    }
    std::fs::create_dir_all(&out)
        .map_err(CmdError::io(format!("cannot create {}", out.display())))?;
    let days = opts.days.unwrap_or(match kind {
        CertKind::Server => SERVER_DAYS,
        CertKind::Client { .. } => CLIENT_DAYS,
    });
    let issued = ca::issue(&dir, &kind, name, &sans, days)?;
    let (cert, key) = issued.write(&out, name)?;
    if output == OutputFormat::Json {
        let mut v = json!({
            "name": name, "cert": cert, "key": key, "ca": dir.join(CA_CERT), "days": days,
        });
        match &kind {
            CertKind::Server => {
                v["kind"] = "server".into();
                v["sans"] = sans.into();
            }
            CertKind::Client { tenant, role } => {
                v["kind"] = "client".into();
                v["tenant"] = tenant.as_str().into();
                v["role"] = role.as_str().into();
            }
        }
        print_json(&v)?;
        return Ok(0);
    }
    let what = match &kind {
        CertKind::Server => format!("server certificate '{name}' for {}", sans.join(", ")),
        CertKind::Client { tenant, role } => format!(
            "client certificate '{name}' (tenant {}, role {})",
            tenant.as_str(),
            role.as_str()
        ),
    };
    print(&format!(
        "Issued {what}, valid {days} days, signed by {}\n  {}\n  {}  (mode 0600)\n",
        dir.join(CA_CERT).display(),
        cert.display(),
        key.display()
    ))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn default_dirs() {
        let none = CaDirArg::default();
        let flag = CaDirArg {
            dir: Some("/x".into()),
        };
        let e = env(&[("HOME", "/home/a"), ("TARTARUS_CA_DIR", "/env")]);
        assert_eq!(ca_dir(&flag, &e, true).unwrap(), PathBuf::from("/x"));
        assert_eq!(ca_dir(&none, &e, true).unwrap(), PathBuf::from("/env"));
        let e = env(&[("HOME", "/home/a")]);
        assert_eq!(ca_dir(&none, &e, true).unwrap(), PathBuf::from(ROOT_CA_DIR));
        assert_eq!(
            ca_dir(&none, &e, false).unwrap(),
            PathBuf::from("/home/a/.config/tartarus/ca")
        );
        let e = env(&[("HOME", "/home/a"), ("XDG_CONFIG_HOME", "/cfg")]);
        assert_eq!(
            ca_dir(&none, &e, false).unwrap(),
            PathBuf::from("/cfg/tartarus/ca")
        );
        assert!(ca_dir(&none, &env(&[]), false).is_err());
    }

    #[test]
    fn stems() {
        assert!(check_stem("alice@example.com").is_ok());
        for bad in ["", ".hidden", "a/b", "../x"] {
            assert!(check_stem(bad).is_err(), "{bad}");
        }
    }
}
