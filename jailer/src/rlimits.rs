//! `--resource-limit fsize=N|no-file=N`: parsing, a dry-run check, and `setrlimit`.

use std::io;

/// The RLIMIT_NOFILE the VMM gets when `no-file` is not given (Firecracker's default).
pub const DEFAULT_NO_FILE: u64 = 2048;

/// The capability that allows raising a hard limit.
const CAP_SYS_RESOURCE: u32 = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// RLIMIT_FSIZE: the largest file the process may create, in bytes.
    Fsize,
    /// RLIMIT_NOFILE: one more than the largest file descriptor number.
    NoFile,
}

impl Resource {
    pub fn name(self) -> &'static str {
        match self {
            Resource::Fsize => "fsize",
            Resource::NoFile => "no-file",
        }
    }

    fn raw(self) -> libc::__rlimit_resource_t {
        match self {
            Resource::Fsize => libc::RLIMIT_FSIZE,
            Resource::NoFile => libc::RLIMIT_NOFILE,
        }
    }
}

/// One limit; soft and hard are both set to `value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceLimit {
    pub resource: Resource,
    pub value: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RlimitError {
    #[error("Invalid --resource-limit {0:?}: use fsize=BYTES or no-file=N")]
    Format(String),
    #[error("Invalid --resource-limit {0:?}: unknown resource (known: fsize, no-file)")]
    Unknown(String),
    #[error("Invalid --resource-limit {0:?}: the value must be a non-negative integer")]
    Value(String),
    #[error("Invalid --resource-limit {0:?}: given more than once")]
    Duplicate(String),
    #[error(
        "Invalid --resource-limit {name}={value}: above the current hard limit {hard} and \
         this process may not raise it (no CAP_SYS_RESOURCE)"
    )]
    AboveHard {
        name: &'static str,
        value: u64,
        hard: u64,
    },
    #[error("Invalid --resource-limit no-file={value}: above the kernel's fs.nr_open ({max})")]
    AboveNrOpen { value: u64, max: u64 },
    #[error("Cannot set the {name} limit to {value}")]
    Set {
        name: &'static str,
        value: u64,
        #[source]
        source: io::Error,
    },
}

/// Parses one `RESOURCE=VALUE`.
pub fn parse(s: &str) -> Result<ResourceLimit, RlimitError> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| RlimitError::Format(s.to_string()))?;
    let resource = match name {
        "fsize" => Resource::Fsize,
        "no-file" => Resource::NoFile,
        _ => return Err(RlimitError::Unknown(s.to_string())),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RlimitError::Value(s.to_string()));
    }
    let value = value
        .parse::<u64>()
        .map_err(|_| RlimitError::Value(s.to_string()))?;
    Ok(ResourceLimit { resource, value })
}

/// Parses every `--resource-limit` and adds the default `no-file` if it was not given.
pub fn parse_all(raw: &[String]) -> Result<Vec<ResourceLimit>, RlimitError> {
    let mut out: Vec<ResourceLimit> = Vec::new();
    for s in raw {
        let l = parse(s)?;
        if out.iter().any(|o| o.resource == l.resource) {
            return Err(RlimitError::Duplicate(s.clone()));
        }
        out.push(l);
    }
    if !out.iter().any(|l| l.resource == Resource::NoFile) {
        out.push(ResourceLimit {
            resource: Resource::NoFile,
            value: DEFAULT_NO_FILE,
        });
    }
    Ok(out)
}

fn getrlimit(r: Resource) -> io::Result<libc::rlimit> {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `cur` is a valid, writable rlimit for the kernel to fill.
    if unsafe { libc::getrlimit(r.raw(), &mut cur) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cur)
}

/// Checks, without changing anything, that the limits can be set: raising a hard limit needs
/// CAP_SYS_RESOURCE, and no-file may not exceed fs.nr_open.
pub fn check_allowed(limits: &[ResourceLimit]) -> Result<(), RlimitError> {
    for l in limits {
        if l.resource == Resource::NoFile {
            if let Some(max) = std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                if l.value > max {
                    return Err(RlimitError::AboveNrOpen {
                        value: l.value,
                        max,
                    });
                }
            }
        }
        let Ok(cur) = getrlimit(l.resource) else {
            continue;
        };
        let hard = cur.rlim_max;
        if hard != libc::RLIM_INFINITY
            && l.value > hard
            && !crate::privileges::has_effective_cap(CAP_SYS_RESOURCE)
        {
            return Err(RlimitError::AboveHard {
                name: l.resource.name(),
                value: l.value,
                hard,
            });
        }
    }
    Ok(())
}

/// Sets soft and hard limits; they are inherited across fork and exec.
pub fn apply(limits: &[ResourceLimit]) -> Result<(), RlimitError> {
    for l in limits {
        let lim = libc::rlimit {
            rlim_cur: l.value,
            rlim_max: l.value,
        };
        // SAFETY: `lim` is a valid rlimit that the kernel only reads.
        if unsafe { libc::setrlimit(l.resource.raw(), &lim) } != 0 {
            return Err(RlimitError::Set {
                name: l.resource.name(),
                value: l.value,
                source: io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!(
            parse("fsize=100").unwrap(),
            ResourceLimit {
                resource: Resource::Fsize,
                value: 100
            }
        );
        assert_eq!(parse("no-file=7").unwrap().resource, Resource::NoFile);
        assert!(matches!(parse("nofile=7"), Err(RlimitError::Unknown(_))));
        assert!(matches!(parse("fsize"), Err(RlimitError::Format(_))));
        for bad in [
            "fsize=",
            "fsize=-1",
            "fsize=1k",
            "fsize=99999999999999999999999",
        ] {
            assert!(matches!(parse(bad), Err(RlimitError::Value(_))), "{bad}");
        }
    }

    #[test]
    fn default_no_file() {
        let l = parse_all(&["fsize=1".to_string()]).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].value, DEFAULT_NO_FILE);
        let l = parse_all(&["no-file=10".to_string()]).unwrap();
        assert_eq!(
            l,
            [ResourceLimit {
                resource: Resource::NoFile,
                value: 10
            }]
        );
        assert!(matches!(
            parse_all(&["fsize=1".to_string(), "fsize=2".to_string()]),
            Err(RlimitError::Duplicate(_))
        ));
    }
}
