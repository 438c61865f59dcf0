//! Hosts whose /dev/kvm is served by PVM (a nested, pagetable-based hypervisor) emulate guest
//! ring-0 code and cannot run a few instructions a stock Linux kernel uses early (XRSTOR, CLAC/STAC,
//! POPCNT, CMPXCHG16B). A guest kernel that is not itself a PVM guest boots there only with those
//! CPU features hidden on its command line; the VMM adds them itself and says so in the log.
//! A kernel built as a PVM guest runs natively and needs none of this: operators turn it off with
//! `--pvm-workarounds off` (and on with `on` where detection cannot see the host, e.g. in a jail
//! without /sys).

use std::path::Path;
use std::str::FromStr;

/// Command-line words that keep a non-PVM Linux kernel off what PVM cannot emulate (and off the
/// slowest emulated paths: `erms`/`fsrm` string instructions).
pub const WORKAROUNDS: &[&str] = &["noxsave", "clearcpuid=smap,popcnt,cx16,erms,fsrm"];

/// `--pvm-workarounds`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PvmMode {
    /// Add the work-arounds when the host is a PVM host.
    #[default]
    Auto,
    On,
    Off,
}

impl FromStr for PvmMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(PvmMode::Auto),
            "on" => Ok(PvmMode::On),
            "off" => Ok(PvmMode::Off),
            o => Err(format!("invalid value '{o}': expected auto, on or off")),
        }
    }
}

/// Whether this host's KVM is PVM.
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

impl PvmMode {
    pub fn enabled(self) -> bool {
        match self {
            PvmMode::Auto => host_is_pvm(),
            PvmMode::On => true,
            PvmMode::Off => false,
        }
    }
}

/// The work-around words `cmdline` does not already set (compared by key, so a user's own
/// `clearcpuid=...` wins).
pub fn missing_words(cmdline: &str) -> Vec<&'static str> {
    let key = |w: &str| w.split('=').next().unwrap_or(w).to_string();
    let present: Vec<String> = cmdline.split_whitespace().map(key).collect();
    WORKAROUNDS
        .iter()
        .copied()
        .filter(|w| !present.contains(&key(w)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_words_are_added() {
        assert_eq!(missing_words("console=ttyS0"), WORKAROUNDS.to_vec());
        assert_eq!(missing_words("noxsave clearcpuid=smap"), Vec::<&str>::new());
        assert_eq!(missing_words("noxsave"), vec![WORKAROUNDS[1]]);
        assert_eq!("off".parse::<PvmMode>(), Ok(PvmMode::Off));
        assert!("maybe".parse::<PvmMode>().is_err());
        assert!(!PvmMode::Off.enabled());
        assert!(PvmMode::On.enabled());
    }
}
