//! The kernel command line as tartarus-init reads it (`/proc/cmdline`).

use std::net::Ipv4Addr;

/// Errors of command-line values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("Bad ip= value '{0}'")]
    BadIp(String),
    #[error("Bad tartarus.agent_port= value '{0}'")]
    BadPort(String),
}

/// The parameters tartarus-init cares about.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// `tartarus.hostname=`
    pub hostname: Option<String>,
    /// `tartarus.agent_port=` (default [`crate::DEFAULT_AGENT_PORT`])
    pub agent_port: Option<u32>,
    /// `tartarus.poweroff_after_ready`: power off right after printing the ready line (tests).
    pub poweroff_after_ready: bool,
    /// `ip=`
    pub ip: Option<IpConfig>,
    /// `tartarus.shell`: an interactive shell on the console; the VM powers off when it exits.
    pub shell: bool,
    /// `tartarus.overlay=/dev/vdX`: a writable overlay over the read-only root, its upper layer
    /// on that ext4 device (see [`overlay_device`]).
    pub overlay: Option<String>,
}

/// The device of `tartarus.overlay=` (the last one wins), read without parsing the rest of the
/// line: PID 1 needs it before anything else, whatever else the line holds.
pub fn overlay_device(line: &str) -> Option<String> {
    line.split_whitespace()
        .filter_map(|w| w.strip_prefix("tartarus.overlay="))
        .rfind(|v| !v.is_empty())
        .map(Into::into)
}

/// A static IPv4 configuration from `ip=`: either the kernel's nfsroot form
/// `ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>` or `ip=<addr>/<prefix>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub addr: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    pub device: String,
}

impl Cmdline {
    /// Parses a whole command line; unknown words are ignored.
    pub fn parse(line: &str) -> Result<Self, CmdlineError> {
        let mut c = Cmdline::default();
        for word in line.split_whitespace() {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            match (key, value) {
                ("tartarus.hostname", Some(v)) if !v.is_empty() => c.hostname = Some(v.into()),
                ("tartarus.agent_port", Some(v)) => {
                    c.agent_port = Some(v.parse().map_err(|_| CmdlineError::BadPort(v.into()))?)
                }
                ("tartarus.poweroff_after_ready", None | Some("1")) => {
                    c.poweroff_after_ready = true
                }
                ("ip", Some(v)) => c.ip = parse_ip(v)?,
                ("tartarus.shell", None | Some("1")) => c.shell = true,
                ("tartarus.overlay", Some(v)) if !v.is_empty() => c.overlay = Some(v.into()),
                _ => {}
            }
        }
        Ok(c)
    }
}

fn parse_ip(v: &str) -> Result<Option<IpConfig>, CmdlineError> {
    let bad = || CmdlineError::BadIp(v.into());
    if matches!(v, "off" | "none" | "") {
        return Ok(None);
    }
    if let Some((addr, prefix)) = v.split_once('/') {
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u32 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        let cfg = IpConfig {
            addr,
            netmask: Ipv4Addr::from(mask),
            gateway: None,
            hostname: None,
            device: "eth0".into(),
        };
        return Ok(Some(cfg));
    }
    let f: Vec<&str> = v.split(':').collect();
    let field = |i: usize| f.get(i).copied().filter(|s| !s.is_empty());
    let addr: Ipv4Addr = field(0).ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let netmask = match field(3) {
        Some(m) => m.parse().map_err(|_| bad())?,
        None => Ipv4Addr::new(255, 255, 255, 0),
    };
    let gateway = field(2).map(|g| g.parse()).transpose().map_err(|_| bad())?;
    Ok(Some(IpConfig {
        addr,
        netmask,
        gateway,
        hostname: field(4).map(Into::into),
        device: field(5).unwrap_or("eth0").into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tartarus_keys_and_ip() {
        let c = Cmdline::parse(
            "console=ttyS0 tartarus.hostname=box tartarus.agent_port=1024 \
             tartarus.poweroff_after_ready tartarus.shell ip=172.16.0.2::172.16.0.1:255.255.255.252:vm:eth0:off",
        )
        .unwrap();
        assert_eq!(c.hostname.as_deref(), Some("box"));
        assert_eq!(c.agent_port, Some(1024));
        assert!(c.poweroff_after_ready);
        assert!(c.shell);
        let ip = c.ip.unwrap();
        assert_eq!(ip.addr, Ipv4Addr::new(172, 16, 0, 2));
        assert_eq!(ip.gateway, Some(Ipv4Addr::new(172, 16, 0, 1)));
        assert_eq!(ip.netmask, Ipv4Addr::new(255, 255, 255, 252));
        assert_eq!(ip.hostname.as_deref(), Some("vm"));
        assert_eq!(ip.device, "eth0");
    }

    #[test]
    fn parses_cidr_and_rejects_garbage() {
        let c = Cmdline::parse("ip=10.0.0.5/24").unwrap();
        let ip = c.ip.unwrap();
        assert_eq!(ip.netmask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(ip.gateway, None);
        assert_eq!(Cmdline::parse("").unwrap(), Cmdline::default());
        assert!(Cmdline::parse("ip=10.0.0.500").is_err());
        assert!(Cmdline::parse("ip=10.0.0.5/40").is_err());
        assert!(Cmdline::parse("tartarus.agent_port=x").is_err());
        assert_eq!(Cmdline::parse("ip=off").unwrap().ip, None);
    }

    #[test]
    fn finds_the_overlay_device() {
        let line = "ro root=/dev/vda tartarus.overlay=/dev/vdb ip=garbage";
        assert_eq!(overlay_device(line).as_deref(), Some("/dev/vdb"));
        assert!(Cmdline::parse(line).is_err());
        let c = Cmdline::parse("tartarus.overlay=/dev/vdc").unwrap();
        assert_eq!(c.overlay.as_deref(), Some("/dev/vdc"));
        assert_eq!(overlay_device("tartarus.overlay= ro"), None);
        assert_eq!(overlay_device("root=/dev/vda"), None);
    }
}
