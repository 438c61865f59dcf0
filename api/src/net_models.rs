//! Network interface bodies: `PUT` and `PATCH /network-interfaces/{iface_id}` (Firecracker's
//! wire format), also the elements of the config file's `"network-interfaces"`.

use serde::{Deserialize, Serialize};

use crate::models::RateLimiterConfig;

/// `PUT /network-interfaces/{iface_id}` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceConfig {
    pub iface_id: String,
    /// The host tap device the interface is backed by.
    pub host_dev_name: String,
    /// `aa:bb:cc:dd:ee:ff`; without it the guest picks its own address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// `PATCH /network-interfaces/{iface_id}` body: new rate limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    pub iface_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// Parses `aa:bb:cc:dd:ee:ff` (hex digits, either case).
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || {
        format!("Invalid network interface: guest_mac '{s}' is not a MAC address like 06:00:ac:10:00:02")
    };
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Interface names the kernel accepts: 1-15 bytes, no '/', ':' or whitespace, not "." or "..".
fn valid_dev_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
}

pub(crate) fn check_iface_id(id: &str) -> Result<(), String> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(format!(
            "Invalid network interface: iface_id '{id}' must be 1-64 characters from [A-Za-z0-9_-]"
        ))
    }
}

fn check_limiters(
    rx: Option<&RateLimiterConfig>,
    tx: Option<&RateLimiterConfig>,
) -> Result<(), String> {
    if let Some(r) = rx {
        r.validate("network interface (rx_rate_limiter)")?;
    }
    if let Some(r) = tx {
        r.validate("network interface (tx_rate_limiter)")?;
    }
    Ok(())
}

impl NetworkInterfaceConfig {
    pub fn validate(&self) -> Result<(), String> {
        check_iface_id(&self.iface_id)?;
        if !valid_dev_name(&self.host_dev_name) {
            return Err(format!(
                "Invalid network interface: host_dev_name '{}' is not a valid interface name \
                 (1-15 bytes, no '/', ':' or spaces)",
                self.host_dev_name
            ));
        }
        if let Some(m) = &self.guest_mac {
            let mac = parse_mac(m)?;
            if mac[0] & 1 != 0 {
                return Err(format!(
                    "Invalid network interface: guest_mac '{m}' is a multicast address"
                ));
            }
        }
        check_limiters(self.rx_rate_limiter.as_ref(), self.tx_rate_limiter.as_ref())
    }

    /// The parsed `guest_mac` (None when absent or invalid; `validate` reports invalid ones).
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.guest_mac.as_deref().and_then(|m| parse_mac(m).ok())
    }

    /// Why `self` cannot sit next to `other` (a different interface), if it cannot.
    pub fn conflict_with(&self, other: &NetworkInterfaceConfig) -> Option<String> {
        if other.iface_id == self.iface_id {
            return Some(format!(
                "Invalid network interface {}: duplicate iface_id",
                self.iface_id
            ));
        }
        if other.host_dev_name == self.host_dev_name {
            return Some(format!(
                "Invalid network interface {}: host_dev_name '{}' is already used by interface {}",
                self.iface_id, self.host_dev_name, other.iface_id
            ));
        }
        if self.mac().is_some() && self.mac() == other.mac() {
            return Some(format!(
                "Invalid network interface {}: guest_mac {} is already used by interface {}",
                self.iface_id,
                self.guest_mac.as_deref().unwrap_or_default(),
                other.iface_id
            ));
        }
        None
    }
}

impl NetworkInterfaceUpdate {
    pub fn validate(&self) -> Result<(), String> {
        check_iface_id(&self.iface_id)?;
        check_limiters(self.rx_rate_limiter.as_ref(), self.tx_rate_limiter.as_ref())
    }
}

/// Checks a list (the config file's) for invalid entries and clashes.
pub fn validate_list(list: &[NetworkInterfaceConfig]) -> Result<(), String> {
    for (i, n) in list.iter().enumerate() {
        n.validate()?;
        if let Some(e) = list[..i].iter().find_map(|o| n.conflict_with(o)) {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(id: &str, dev: &str, mac: Option<&str>) -> NetworkInterfaceConfig {
        NetworkInterfaceConfig {
            iface_id: id.into(),
            host_dev_name: dev.into(),
            guest_mac: mac.map(String::from),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        }
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("06:00:AC:10:00:02").unwrap(),
            [6, 0, 0xac, 0x10, 0, 2]
        );
        for bad in [
            "",
            "06:00:ac:10:00",
            "06:00:ac:10:00:02:03",
            "6:00:ac:10:00:02",
            "zz:00:ac:10:00:02",
            "06-00-ac-10-00-02",
        ] {
            assert!(parse_mac(bad).unwrap_err().contains("guest_mac"), "{bad}");
        }
        assert!(iface("a", "tap0", Some("01:00:5e:00:00:01"))
            .validate()
            .unwrap_err()
            .contains("multicast"));
    }

    #[test]
    fn names_and_ids() {
        assert!(iface("eth0", "tap0", None).validate().is_ok());
        assert!(iface("eth/0", "tap0", None)
            .validate()
            .unwrap_err()
            .contains("iface_id"));
        assert!(iface("eth0", "", None)
            .validate()
            .unwrap_err()
            .contains("host_dev_name"));
        assert!(iface("eth0", "a-very-long-name", None)
            .validate()
            .unwrap_err()
            .contains("host_dev_name"));
    }

    #[test]
    fn clashes() {
        let a = iface("a", "tap0", Some("06:00:00:00:00:01"));
        assert!(validate_list(&[a.clone(), iface("a", "tap1", None)])
            .unwrap_err()
            .contains("duplicate iface_id"));
        assert!(validate_list(&[a.clone(), iface("b", "tap0", None)])
            .unwrap_err()
            .contains("host_dev_name 'tap0' is already used by interface a"));
        assert!(
            validate_list(&[a.clone(), iface("b", "tap1", Some("06:00:00:00:00:01"))])
                .unwrap_err()
                .contains("guest_mac 06:00:00:00:00:01 is already used")
        );
        assert!(validate_list(&[a, iface("b", "tap1", None), iface("c", "tap2", None)]).is_ok());
    }
}
