//! The command line of `key`, `ca` and `audit` (issue #14), and the parsers of their values:
//! durations (`30d`, `12h`, `1h30m`, `3600`), roles, tenants and `--since` times.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create an API key; prints it once (it cannot be shown again)
    Create(KeyCreateArgs),
    /// List API keys (never their secrets)
    #[command(visible_alias = "list")]
    Ls,
    /// Show one API key
    #[command(visible_alias = "inspect")]
    Get {
        /// Key id (the 8 characters after `tts_`), or the whole key
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Replace a key by a new one (same tenant, role and name); the old one keeps working for
    /// the overlap
    Rotate {
        /// Key id, or the whole key
        #[arg(value_name = "ID")]
        id: String,
        /// How long the old key keeps working (`0` = it stops at once; default: the daemon's,
        /// 1h)
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        overlap: Option<u64>,
    },
    /// Revoke keys at once (final)
    #[command(visible_alias = "rm")]
    Revoke {
        /// Key ids, or whole keys
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tartarus key create --name ci --role developer --tenant acme \
                        --expires 30d\n  \
                        KEY=$(tartarus key create --name bot --role viewer)\n\n\
                  The key is printed on stdout, alone; the note that it will not be shown \
                  again goes to stderr."
)]
pub struct KeyCreateArgs {
    /// A label for people (`ci`, `alice-laptop`), 1-64 characters
    #[arg(long)]
    pub name: String,
    /// admin, operator, developer or viewer
    #[arg(long, value_parser = parse_role)]
    pub role: String,
    /// The key's tenant, or `*` for the host scope (default: the caller's own)
    #[arg(long, value_parser = parse_tenant)]
    pub tenant: Option<String>,
    /// Lifetime: `30d`, `12h`, `90m`, `3600s`, `1w`, `1d12h` (default: never expires)
    #[arg(long, value_name = "DURATION", value_parser = parse_lifetime)]
    pub expires: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// Make a CA (ca.crt + ca.key) in the CA directory; refuses to replace one
    Init {
        #[command(flatten)]
        dir: CaDirArg,
        /// The CA certificate's common name
        #[arg(long, value_name = "NAME", default_value = "Tartarus CA")]
        cn: String,
    },
    /// Sign a server or client certificate with the CA
    #[command(subcommand)]
    Issue(CaIssueCmd),
}

/// `--dir`: where the CA lives.
#[derive(Debug, Clone, Default, Args)]
pub struct CaDirArg {
    /// CA directory [env: TARTARUS_CA_DIR; default: /var/lib/tartarus/ca as root, else
    /// $XDG_CONFIG_HOME/tartarus/ca (~/.config/tartarus/ca)]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Options every issued certificate takes.
#[derive(Debug, Clone, Args)]
pub struct IssueOpts {
    /// Validity in days (default: 365 for a server, 90 for a client: there are no CRLs, so
    /// a client certificate is revoked by letting it expire)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: Option<u32>,
    #[command(flatten)]
    pub dir: CaDirArg,
    /// Where to write NAME.crt and NAME.key (default: the CA directory)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CaIssueCmd {
    /// A certificate for the daemon's TLS listener (serverAuth)
    #[command(
        after_help = "Example:\n  tartarus ca issue server tartarusd --san tartarus.example.com \
                            --san 10.0.0.5\n\nWithout --san the certificate is valid for NAME."
    )]
    Server {
        /// Common name, and the file stem of NAME.crt / NAME.key
        name: String,
        /// A DNS name or IP address the daemon is reached at (repeatable; default: NAME)
        #[arg(long = "san", value_name = "DNS_OR_IP")]
        sans: Vec<String>,
        #[command(flatten)]
        opts: IssueOpts,
    },
    /// A certificate a client presents (clientAuth): CN = NAME, O = tenant, OU = role
    #[command(
        after_help = "Example:\n  tartarus ca issue client alice --tenant acme --role developer\n  \
                            tartarus --host https://tartarus.example.com:7443 --tls-ca ca.crt \
                            --tls-cert alice.crt --tls-key alice.key ps"
    )]
    Client {
        /// The principal (common name), and the file stem of NAME.crt / NAME.key
        name: String,
        /// The tenant, or `*` for the host scope
        #[arg(long, value_parser = parse_tenant)]
        tenant: String,
        /// admin, operator, developer or viewer
        #[arg(long, value_parser = parse_role)]
        role: String,
        #[command(flatten)]
        opts: IssueOpts,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// List audit records from the daemon (oldest first)
    #[command(visible_alias = "list")]
    Ls(AuditLsArgs),
    /// Check the audit log file's hash chain and signed checkpoints (local; exit 0 when
    /// intact, 1 naming the first problem)
    Verify(AuditVerifyArgs),
}

#[derive(Debug, Args)]
pub struct AuditLsArgs {
    /// Only records at or after this time: RFC 3339 (`2026-12-01T00:00:00Z`), Unix seconds,
    /// or an age such as `2h` or `7d` (that long ago)
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<String>,
    /// Only this tenant's records
    #[arg(long, value_parser = parse_tenant)]
    pub tenant: Option<String>,
    /// The newest N matching records (the daemon's default is 1000, at most 10000)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
}

#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    /// The audit log [default: /var/lib/tartarus/audit/audit.log]
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// The checkpoint public key [default: audit.key.pub beside the log]
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,
}

/// A duration in seconds: one or more `<number><unit>` with units `s`, `m`, `h`, `d`, `w`
/// (`90m`, `1d12h`), or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("'{s}' is not a duration: use e.g. 30d, 12h, 90m, 3600s, 1d12h or plain seconds")
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| bad());
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        num.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !num.is_empty() {
        // `1h30`: a trailing number without its unit is ambiguous.
        return Err(bad());
    }
    Ok(total)
}

/// A key's lifetime: a duration that is not zero.
pub fn parse_lifetime(s: &str) -> Result<u64, String> {
    match parse_duration(s)? {
        0 => Err("a key's lifetime must be longer than 0s (leave --expires out for a key that never expires)".into()),
        n => Ok(n),
    }
}

/// `admin`, `operator`, `developer` or `viewer`.
pub fn parse_role(s: &str) -> Result<String, String> {
    s.parse::<tartarus_auth::Role>()
        .map(|r| r.as_str().to_string())
        .map_err(|e| e.to_string())
}

/// A tenant name or `*`.
pub fn parse_tenant(s: &str) -> Result<String, String> {
    tartarus_auth::TenantScope::parse(s)
        .map(|t| t.as_str().to_string())
        .map_err(|e| e.to_string())
}

/// `--since`: RFC 3339 and Unix seconds pass through; an age (`2h`) becomes the Unix second
/// that long before now.
pub fn parse_since(s: &str) -> Result<String, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(t.to_string());
    }
    if crate::output::parse_rfc3339(t).is_some() {
        return Ok(t.to_string());
    }
    match parse_duration(t) {
        Ok(age) => Ok((crate::output::now_unix() - age as i64).max(0).to_string()),
        Err(_) => Err(format!(
            "'{s}' is not a time: use RFC 3339 (2026-12-01T00:00:00Z), Unix seconds, or an age \
             such as 2h or 7d"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3600"), Ok(3600));
        assert_eq!(parse_duration("3600s"), Ok(3600));
        assert_eq!(parse_duration("90m"), Ok(5400));
        assert_eq!(parse_duration("12h"), Ok(43_200));
        assert_eq!(parse_duration("30d"), Ok(2_592_000));
        assert_eq!(parse_duration("1w"), Ok(604_800));
        assert_eq!(parse_duration("1d12h"), Ok(129_600));
        assert_eq!(parse_duration("1h30m15s"), Ok(5415));
        assert_eq!(parse_duration("0"), Ok(0));
        for bad in [
            "",
            "h",
            "1h30",
            "-5s",
            "1.5h",
            "10y",
            "1 h",
            "99999999999999999999w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_lifetime("0s").is_err());
        assert_eq!(parse_lifetime("1s"), Ok(1));
    }

    #[test]
    fn roles_and_tenants() {
        assert_eq!(parse_role("developer").as_deref(), Ok("developer"));
        assert!(parse_role("root").is_err());
        assert_eq!(parse_tenant("acme").as_deref(), Ok("acme"));
        assert_eq!(parse_tenant("*").as_deref(), Ok("*"));
        assert!(parse_tenant("Acme").is_err());
        assert!(parse_tenant("").is_err());
    }

    #[test]
    fn since_forms() {
        assert_eq!(parse_since("1733000000").as_deref(), Ok("1733000000"));
        assert_eq!(
            parse_since("2026-12-01T00:00:00Z").as_deref(),
            Ok("2026-12-01T00:00:00Z")
        );
        let two_hours_ago: i64 = parse_since("2h").unwrap().parse().unwrap();
        let expect = crate::output::now_unix() - 7200;
        assert!((two_hours_ago - expect).abs() <= 2);
        assert!(parse_since("yesterday").is_err());
    }
}
