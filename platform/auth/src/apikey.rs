//! API keys: the text format (`tts_` + id + secret + checksum) and its parsing.
//!
//! ```text
//! tts_ IIIIIIII SSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSS CCCCCC
//!      key id   secret (32 base62 = 190 bits)     CRC32 of id+secret, base62, 6 chars
//! ```
//! Scanner regex: `\btts_[0-9A-Za-z]{46}\b`. The id (8 base62 characters, random) is public:
//! it names the key in listings and finds its row; only SHA-256(id + secret) is stored.

use std::fmt;

use sha2::{Digest, Sha256};

/// What every key starts with.
pub const PREFIX: &str = "tts_";
/// Length of the public key id.
pub const ID_LEN: usize = 8;
/// Length of the secret part: 32 base62 characters, log2(62^32) ≈ 190 bits.
pub const SECRET_LEN: usize = 32;
/// Length of the checksum: CRC32 in base62, zero-padded (62^6 > 2^32).
pub const CHECKSUM_LEN: usize = 6;
/// The whole key's length.
pub const KEY_LEN: usize = PREFIX.len() + ID_LEN + SECRET_LEN + CHECKSUM_LEN;
/// For secret scanners (GitHub custom patterns, gitleaks, trufflehog).
pub const SCANNER_REGEX: &str = r"\btts_[0-9A-Za-z]{46}\b";

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Errors of this module: why a string is not a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("Malformed API key: expected tts_ followed by 46 letters and digits")]
    Malformed,
    #[error("API key checksum mismatch: the key was mistyped or truncated")]
    BadChecksum,
    #[error("The system's random source failed")]
    Random,
}

/// A parsed key. Its `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    id: String,
    secret: String,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({PREFIX}{}…)", self.id)
    }
}

impl ApiKey {
    /// A new random key.
    pub fn generate() -> Result<ApiKey, ParseError> {
        Ok(ApiKey {
            id: random_base62(ID_LEN)?,
            secret: random_base62(SECRET_LEN)?,
        })
    }

    /// Checks shape and checksum; touches no store.
    pub fn parse(s: &str) -> Result<ApiKey, ParseError> {
        let body = s.strip_prefix(PREFIX).ok_or(ParseError::Malformed)?;
        if body.len() != KEY_LEN - PREFIX.len() || !body.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(ParseError::Malformed);
        }
        let (payload, sum) = body.split_at(ID_LEN + SECRET_LEN);
        if checksum(payload) != sum {
            return Err(ParseError::BadChecksum);
        }
        let (id, secret) = payload.split_at(ID_LEN);
        Ok(ApiKey {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// The public id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The full key text: give it to the user once, never log it.
    pub fn expose(&self) -> String {
        let payload = format!("{}{}", self.id, self.secret);
        format!("{PREFIX}{payload}{}", checksum(&payload))
    }

    /// What the store keeps: SHA-256 over id and secret (both high-entropy, so no salt or
    /// slow hash is needed).
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.id.as_bytes());
        h.update(self.secret.as_bytes());
        h.finalize().into()
    }
}

fn checksum(payload: &str) -> String {
    let mut n = crc32fast::hash(payload.as_bytes()) as u64;
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The checksum of `payload` (id + secret), for tests that forge keys.
#[cfg(test)]
pub(crate) fn test_checksum(payload: &str) -> String {
    checksum(payload)
}

/// Uniform base62 by rejection sampling of random bytes (bytes >= 248 are dropped).
fn random_base62(len: usize) -> Result<String, ParseError> {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).map_err(|_| ParseError::Random)?;
        for &b in &buf {
            if b < 248 && out.len() < len {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    Ok(out)
}

/// The key in a request's headers: `Authorization: Bearer <key>` or `X-API-KEY: <key>` (what
/// E2B clients send). Returns the raw text, not yet parsed.
pub fn from_headers(headers: &axum::http::HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    bearer(headers)
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_shape() {
        let k = ApiKey::generate().unwrap();
        let text = k.expose();
        assert_eq!(text.len(), KEY_LEN);
        assert!(text.starts_with("tts_"));
        assert_eq!(ApiKey::parse(&text).unwrap(), k);
        assert!(
            !format!("{k:?}").contains(&text[12..]),
            "Debug leaks the secret"
        );
        let other = ApiKey::generate().unwrap();
        assert_ne!(k.id(), other.id());
        assert_ne!(k.hash(), other.hash());
    }

    #[test]
    fn every_single_typo_is_caught() {
        let text = ApiKey::generate().unwrap().expose();
        for i in PREFIX.len()..text.len() {
            let mut b = text.clone().into_bytes();
            b[i] = if b[i] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(b).unwrap();
            assert_eq!(ApiKey::parse(&typo), Err(ParseError::BadChecksum), "{i}");
        }
        // Swapped neighbours too.
        let mut b = text.clone().into_bytes();
        let i = (10..40).find(|&i| b[i] != b[i + 1]).unwrap();
        b.swap(i, i + 1);
        assert_eq!(
            ApiKey::parse(&String::from_utf8(b).unwrap()),
            Err(ParseError::BadChecksum)
        );
    }

    #[test]
    fn malformed() {
        let text = ApiKey::generate().unwrap().expose();
        for bad in [
            "",
            "tts_",
            &text[..text.len() - 1],
            &format!("{text}x"),
            &text.replacen("tts_", "tts-", 1),
            &text.replacen("tts_", "TTS_", 1),
            &format!("{}!{}", &text[..20], &text[21..]),
            &format!("{}é{}", &text[..20], &text[22..]),
            "Bearer abc",
        ] {
            assert_eq!(ApiKey::parse(bad), Err(ParseError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn scanner_regex_matches_generated_keys() {
        // The regex is documented for scanners; check its shape by hand (no regex crate).
        let text = ApiKey::generate().unwrap().expose();
        assert_eq!(SCANNER_REGEX, r"\btts_[0-9A-Za-z]{46}\b");
        assert_eq!(text.len() - 4, 46);
        assert!(text[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn header_forms() {
        use axum::http::{HeaderMap, HeaderValue};
        let mut h = HeaderMap::new();
        assert_eq!(from_headers(&h), None);
        h.insert("authorization", HeaderValue::from_static("Bearer abc"));
        assert_eq!(from_headers(&h), Some("abc"));
        h.insert("authorization", HeaderValue::from_static("bearer  abc "));
        assert_eq!(from_headers(&h), Some("abc"));
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(from_headers(&h), None);
        h.insert("x-api-key", HeaderValue::from_static("xyz"));
        assert_eq!(from_headers(&h), Some("xyz"));
    }
}
