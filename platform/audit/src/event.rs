//! Audit events, the on-disk record (one JSON line) and its canonical hash.
//!
//! A record line is the JSON object
//! `{"seq":N,"prev":"<hex>","time":"...","request_id":"...","tenant":"...","principal":"...",
//! "action":"...","resource":"...","result":"...","source":"...","hash":"<hex>"}` with exactly
//! these keys in exactly this order and no whitespace. `hash` is the SHA-256 of the same object
//! without its `hash` key (the *body*: the line up to and excluding `,"hash":...`, followed by
//! `}`), and `prev` is the previous record's `hash` (64 zeros for seq 1). A line that is not
//! byte-for-byte the canonical serialisation of what it parses to counts as edited.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("Invalid timestamp {0:?} (want RFC 3339, e.g. 2026-12-05T17:00:00.000Z)")]
    Timestamp(String),
    #[error("Malformed record")]
    Json(#[source] serde_json::Error),
}

/// A point in time with millisecond precision, written as RFC 3339 UTC (`...T..:..:..mmmZ`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Now, truncated to milliseconds.
    pub fn now() -> Timestamp {
        Timestamp(Utc::now().timestamp_millis())
    }

    /// Milliseconds since the Unix epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    fn to_datetime(self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.0)
            .single()
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            &self
                .to_datetime()
                .to_rfc3339_opts(SecondsFormat::Millis, true),
        )
    }
}

impl FromStr for Timestamp {
    type Err = EventError;
    /// Any RFC 3339 time (any offset); sub-millisecond digits are dropped.
    fn from_str(s: &str) -> Result<Timestamp, EventError> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| Timestamp(t.timestamp_millis()))
            .map_err(|_| EventError::Timestamp(s.to_string()))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What became of the audited request: `ok`, `denied`, or `error: <text>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Refused by authentication or authorisation.
    Denied,
    /// Accepted but failed; the text says why (may contain newlines).
    Error(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Denied => f.write_str("denied"),
            Outcome::Error(e) => write!(f, "error: {e}"),
        }
    }
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Outcome, String> {
        match s {
            "ok" => Ok(Outcome::Ok),
            "denied" => Ok(Outcome::Denied),
            _ => s
                .strip_prefix("error: ")
                .map(|e| Outcome::Error(e.to_string()))
                .ok_or_else(|| format!("invalid result {s:?} (want ok, denied or \"error: ...\")")),
        }
    }
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Outcome, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One audited thing that happened, as the daemon reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub time: Timestamp,
    pub request_id: String,
    pub tenant: String,
    pub principal: String,
    /// What was attempted, e.g. `sandbox.create`, `auth.login`.
    pub action: String,
    /// What it was attempted on, e.g. `sandbox/sb-123`.
    pub resource: String,
    pub result: Outcome,
    /// The peer: `unix`, `IP:port`, or `cn=<certificate CN>`.
    pub source: String,
}

impl AuditEvent {
    /// An event stamped now.
    pub fn now(
        request_id: impl Into<String>,
        tenant: impl Into<String>,
        principal: impl Into<String>,
        action: impl Into<String>,
        resource: impl Into<String>,
        result: Outcome,
        source: impl Into<String>,
    ) -> AuditEvent {
        AuditEvent {
            time: Timestamp::now(),
            request_id: request_id.into(),
            tenant: tenant.into(),
            principal: principal.into(),
            action: action.into(),
            resource: resource.into(),
            result,
            source: source.into(),
        }
    }
}

/// One record of the log: an event with its place in the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub seq: u64,
    /// Hex SHA-256 of the previous record (its `hash`), [`GENESIS`] for seq 1.
    pub prev: String,
    pub time: Timestamp,
    pub request_id: String,
    pub tenant: String,
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub result: Outcome,
    pub source: String,
    /// Hex SHA-256 of the canonical body (this record without `hash`).
    pub hash: String,
}

/// The hashed part of a record, in the on-disk key order.
#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    prev: &'a str,
    time: Timestamp,
    request_id: &'a str,
    tenant: &'a str,
    principal: &'a str,
    action: &'a str,
    resource: &'a str,
    result: &'a Outcome,
    source: &'a str,
}

impl Record {
    /// Chains `event` after a record whose hash is `prev`; fills in `hash`.
    pub fn new(seq: u64, prev: &str, event: AuditEvent) -> Record {
        let mut r = Record {
            seq,
            prev: prev.to_string(),
            time: event.time,
            request_id: event.request_id,
            tenant: event.tenant,
            principal: event.principal,
            action: event.action,
            resource: event.resource,
            result: event.result,
            source: event.source,
            hash: String::new(),
        };
        r.hash = r.compute_hash();
        r
    }

    fn body_json(&self) -> Vec<u8> {
        let body = Body {
            seq: self.seq,
            prev: &self.prev,
            time: self.time,
            request_id: &self.request_id,
            tenant: &self.tenant,
            principal: &self.principal,
            action: &self.action,
            resource: &self.resource,
            result: &self.result,
            source: &self.source,
        };
        serde_json::to_vec(&body).expect("a record body always serialises")
    }

    /// SHA-256 (hex) of the canonical body, whatever `self.hash` says.
    pub fn compute_hash(&self) -> String {
        to_hex(&Sha256::digest(self.body_json()))
    }

    /// The canonical line, without the trailing newline.
    pub fn to_line(&self) -> String {
        let mut body = self.body_json();
        body.pop(); // the closing brace
        let mut s = String::from_utf8(body).expect("serde_json writes UTF-8");
        s.push_str(",\"hash\":\"");
        s.push_str(&self.hash);
        s.push_str("\"}");
        s
    }

    /// Parses one line (without its newline).
    pub fn parse(line: &str) -> Result<Record, EventError> {
        serde_json::from_str(line).map_err(EventError::Json)
    }

    /// The event this record carries.
    pub fn event(&self) -> AuditEvent {
        AuditEvent {
            time: self.time,
            request_id: self.request_id.clone(),
            tenant: self.tenant.clone(),
            principal: self.principal.clone(),
            action: self.action.clone(),
            resource: self.resource.clone(),
            result: self.result.clone(),
            source: self.source.clone(),
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Bytes of lower- or upper-case hex; `None` if `s` is not hex of an even length.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(result: Outcome) -> AuditEvent {
        AuditEvent {
            time: "2026-12-05T17:00:00.123Z".parse().unwrap(),
            request_id: "r1".into(),
            tenant: "acme".into(),
            principal: "alice".into(),
            action: "sandbox.create".into(),
            resource: "sandbox/sb-1".into(),
            result,
            source: "unix".into(),
        }
    }

    #[test]
    fn line_round_trips_and_hash_covers_body() {
        let r = Record::new(1, GENESIS, ev(Outcome::Error("boom\nline 2".into())));
        let line = r.to_line();
        assert!(line.starts_with("{\"seq\":1,\"prev\":\"000"));
        assert!(line.contains("\"time\":\"2026-12-05T17:00:00.123Z\""));
        assert!(line.contains("\"result\":\"error: boom\\nline 2\""));
        assert!(!line.contains('\n'));
        let back = Record::parse(&line).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.compute_hash(), r.hash);
        assert_eq!(back.to_line(), line);
        let mut edited = back.clone();
        edited.tenant = "evil".into();
        assert_ne!(edited.compute_hash(), r.hash);
    }

    #[test]
    fn outcome_and_time_parse() {
        assert_eq!("ok".parse::<Outcome>().unwrap(), Outcome::Ok);
        assert_eq!("denied".parse::<Outcome>().unwrap(), Outcome::Denied);
        assert_eq!(
            "error: x".parse::<Outcome>().unwrap(),
            Outcome::Error("x".into())
        );
        assert!("maybe".parse::<Outcome>().is_err());
        let t: Timestamp = "2026-12-05T18:00:00.5+01:00".parse().unwrap();
        assert_eq!(t.to_string(), "2026-12-05T17:00:00.500Z");
        assert!("yesterday".parse::<Timestamp>().is_err());
        assert_eq!(
            from_hex(&to_hex(&[0, 1, 254, 255])).unwrap(),
            vec![0, 1, 254, 255]
        );
        assert!(from_hex("0g").is_none());
    }
}
