//! RFC 5424 messages for audit records, and RFC 6587 octet-counting framing.
//!
//! ```text
//! <PRI>1 TIMESTAMP HOSTNAME tartarusd PROCID MSGID [audit@32473 seq=".." hash=".." ...] MSG
//! ```
//! - PRI = facility * 8 + severity; severity from the result: `ok` 6 (info), `denied` 4
//!   (warning), `error: ..` 3 (error). Facility defaults to 13 (log audit).
//! - TIMESTAMP is the event's own time (RFC 3339, ms, UTC), not the send time.
//! - MSGID is `<seq>-<first 10 hex digits of the record hash>`: unique per record and the same
//!   on every resend, so a sink can drop duplicates after a reconnect.
//! - Structured data `audit@32473` (32473 is the documentation enterprise number of RFC 5612;
//!   change [`SD_ID`] if the project registers one) carries seq, hash and every event field.
//! - MSG is either the record's exact JSON line ([`MsgFormat::Json`], the default: a receiver
//!   can re-check the hash chain from the copy) or one human sentence ([`MsgFormat::Text`]).

use std::fmt::Write as _;

use crate::event::{Outcome, Record};

/// The SD-ID of the structured-data element.
pub const SD_ID: &str = "audit@32473";
/// Facility 13: log audit.
pub const DEFAULT_FACILITY: u8 = 13;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum SyslogError {
    #[error("Syslog facility {0} is out of range 0..=23")]
    Facility(u8),
}

/// What MSG holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MsgFormat {
    /// The record's JSON line, byte for byte.
    #[default]
    Json,
    /// `<principal> (<tenant>) <action> <resource>: <result> [from <source>, request <id>]`;
    /// an error text keeps its newlines.
    Text,
}

/// The fixed parts of every message.
#[derive(Clone, Debug)]
pub struct SyslogFormat {
    pub facility: u8,
    pub hostname: String,
    pub app_name: String,
    pub procid: String,
    pub msg_format: MsgFormat,
}

impl Default for SyslogFormat {
    fn default() -> Self {
        SyslogFormat {
            facility: DEFAULT_FACILITY,
            hostname: local_hostname(),
            app_name: "tartarusd".into(),
            procid: std::process::id().to_string(),
            msg_format: MsgFormat::Json,
        }
    }
}

/// This host's name, or `-` (RFC 5424's NILVALUE) when unknown.
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| header_field(h.trim(), 255))
        .filter(|h| h != "-")
        .unwrap_or_else(|| "-".into())
}

/// A header field: printable US-ASCII without spaces, at most `max` characters, `-` if empty.
fn header_field(s: &str, max: usize) -> String {
    let v: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if v.is_empty() {
        "-".into()
    } else {
        v
    }
}

/// Severity for a result.
pub fn severity(result: &Outcome) -> u8 {
    match result {
        Outcome::Ok => 6,
        Outcome::Denied => 4,
        Outcome::Error(_) => 3,
    }
}

/// The MSGID of a record: `<seq>-<10 hex digits of its hash>` (at most 31 characters).
pub fn message_id(r: &Record) -> String {
    format!("{}-{}", r.seq, &r.hash[..r.hash.len().min(10)])
}

/// Escapes a PARAM-VALUE: `"`, `\` and `]` get a backslash.
fn sd_escape(out: &mut String, v: &str) {
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
}

impl SyslogFormat {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), SyslogError> {
        if self.facility > 23 {
            return Err(SyslogError::Facility(self.facility));
        }
        Ok(())
    }

    /// The RFC 5424 message for `r`, whose line in the log is `line`.
    pub fn format(&self, r: &Record, line: &str) -> String {
        let pri = u16::from(self.facility.min(23)) * 8 + u16::from(severity(&r.result));
        let mut m = String::with_capacity(line.len() * 2 + 128);
        let _ = write!(
            m,
            "<{pri}>1 {} {} {} {} {} [{SD_ID}",
            r.time,
            header_field(&self.hostname, 255),
            header_field(&self.app_name, 48),
            header_field(&self.procid, 128),
            message_id(r),
        );
        let seq = r.seq.to_string();
        let result = r.result.to_string();
        let time = r.time.to_string();
        for (k, v) in [
            ("seq", seq.as_str()),
            ("hash", &r.hash),
            ("time", &time),
            ("request_id", &r.request_id),
            ("tenant", &r.tenant),
            ("principal", &r.principal),
            ("action", &r.action),
            ("resource", &r.resource),
            ("result", &result),
            ("source", &r.source),
        ] {
            let _ = write!(m, " {k}=\"");
            sd_escape(&mut m, v);
            m.push('"');
        }
        m.push_str("] ");
        match self.msg_format {
            MsgFormat::Json => m.push_str(line),
            MsgFormat::Text => {
                let _ = write!(
                    m,
                    "{} ({}) {} {}: {} [from {}, request {}]",
                    r.principal, r.tenant, r.action, r.resource, r.result, r.source, r.request_id
                );
            }
        }
        m
    }
}

/// RFC 6587 octet-counting: `<length in bytes> SP <message>`.
pub fn octet_frame(msg: &str) -> Vec<u8> {
    let mut f = Vec::with_capacity(msg.len() + 8);
    f.extend_from_slice(msg.len().to_string().as_bytes());
    f.push(b' ');
    f.extend_from_slice(msg.as_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AuditEvent, GENESIS};

    #[test]
    fn message_shape() {
        let ev = AuditEvent {
            time: "2026-12-05T17:00:00.123Z".parse().unwrap(),
            request_id: "r1".into(),
            tenant: "ac\"me".into(),
            principal: "al]ice".into(),
            action: "sandbox.create".into(),
            resource: "sandbox/sb-1".into(),
            result: Outcome::Denied,
            source: "127.0.0.1:5000".into(),
        };
        let r = Record::new(7, GENESIS, ev);
        let f = SyslogFormat {
            facility: 13,
            hostname: "host one".into(),
            app_name: "tartarusd".into(),
            procid: "42".into(),
            msg_format: MsgFormat::Json,
        };
        let m = f.format(&r, &r.to_line());
        let want = format!(
            "<108>1 2026-12-05T17:00:00.123Z hostone tartarusd 42 7-{} [audit@32473 seq=\"7\"",
            &r.hash[..10]
        );
        assert!(m.starts_with(&want), "{m}");
        assert!(m.contains(r#"tenant="ac\"me" principal="al\]ice""#), "{m}");
        assert!(m.ends_with(&format!("] {}", r.to_line())));
        let framed = octet_frame("héllo");
        assert_eq!(framed, b"6 h\xc3\xa9llo");
        assert!(SyslogFormat { facility: 24, ..f }.validate().is_err());
    }
}
