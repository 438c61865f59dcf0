//! Bearer JWTs from an OIDC issuer: discovery document, JWKS fetched and cached (refetched
//! on a TTL and, at most once per `refetch_min_interval`, on an unknown `kid`), RS256/ES256
//! signatures checked with `jsonwebtoken`, `iss`/`aud`/`exp`/`nbf` checked, claims mapped to
//! a tenant and a role.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::identity::{AuthMethod, Identity, Role, Tenant, TenantScope};

/// How the daemon trusts one OIDC issuer.
#[derive(Debug, Clone, Deserialize)]
pub struct OidcConfig {
    /// Issuer URL, exactly as in the tokens' `iss` (discovery is `<issuer>/.well-known/...`).
    pub issuer: String,
    /// The `aud` tokens must carry.
    pub audience: String,
    /// Claim holding the tenant name; a token without it is refused.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// Claim holding the role (`admin`, `operator`, `developer`, `viewer`).
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// Role for tokens without the role claim; `None` refuses them.
    #[serde(default)]
    pub default_role: Option<Role>,
    /// Accepted signature algorithms: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384.
    #[serde(default = "default_algs")]
    pub algorithms: Vec<String>,
    /// Refetch the JWKS when it is older than this.
    #[serde(default = "default_ttl", with = "secs")]
    pub jwks_ttl: Duration,
    /// Never refetch more often than this (unknown `kid`s must not hammer the provider).
    #[serde(default = "default_min_interval", with = "secs")]
    pub refetch_min_interval: Duration,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// A token that verified is remembered (by its SHA-256) for this many seconds, never past
    /// its `exp`, and forgotten when the JWKS changes: repeated requests with the same bearer
    /// skip the signature check. 0 turns it off.
    #[serde(default = "default_token_cache")]
    pub token_cache_secs: u64,
}

fn default_tenant_claim() -> String {
    "tenant".into()
}
fn default_role_claim() -> String {
    "role".into()
}
fn default_algs() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_min_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_leeway() -> u64 {
    30
}
fn default_token_cache() -> u64 {
    60
}

mod secs {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

impl OidcConfig {
    /// A config with the defaults: claims `tenant` and `role`, RS256 + ES256, JWKS TTL 10 min,
    /// refetch at most every 10 s, 30 s leeway.
    pub fn new(issuer: &str, audience: &str) -> OidcConfig {
        OidcConfig {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            tenant_claim: default_tenant_claim(),
            role_claim: default_role_claim(),
            default_role: None,
            algorithms: default_algs(),
            jwks_ttl: default_ttl(),
            refetch_min_interval: default_min_interval(),
            leeway_secs: default_leeway(),
            token_cache_secs: default_token_cache(),
        }
    }

    fn checked_algorithms(&self) -> Result<Vec<Algorithm>, OidcError> {
        self.algorithms
            .iter()
            .map(|a| match Algorithm::from_str(a) {
                Ok(
                    alg @ (Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
                    | Algorithm::ES256
                    | Algorithm::ES384),
                ) => Ok(alg),
                _ => Err(OidcError::Config(format!(
                    "algorithm {a:?} is not allowed (asymmetric RS*, PS*, ES256, ES384 only)"
                ))),
            })
            .collect()
    }
}

/// Errors of this module: the issuer could not be reached, or a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("OIDC config: {0}")]
    Config(String),
    #[error("Cannot fetch {url}")]
    Fetch {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}")]
    FetchStatus { url: String, status: u16 },
    #[error("The discovery document names issuer {got:?}, configured {expected:?}")]
    IssuerMismatch { expected: String, got: String },
    #[error("Unusable JWKS: {0}")]
    BadJwks(String),
    #[error("Malformed JWT")]
    Malformed,
    #[error("JWT algorithm {0:?} is not allowed")]
    AlgNotAllowed(String),
    #[error("JWT has no kid")]
    MissingKid,
    #[error("JWT signed by unknown key {0:?}")]
    UnknownKid(String),
    #[error("JWT signature does not verify")]
    BadSignature,
    #[error("JWT audience is wrong")]
    WrongAudience,
    #[error("JWT issuer is wrong")]
    WrongIssuer,
    #[error("JWT expired")]
    Expired,
    #[error("JWT not valid yet")]
    NotYetValid,
    #[error("JWT lacks claim {0:?}")]
    MissingClaim(String),
    #[error("JWT claim {claim:?} is unusable: {why}")]
    BadClaim { claim: String, why: String },
    #[error("JWT refused")]
    Invalid(#[source] jsonwebtoken::errors::Error),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Other,
}

struct Key {
    decoding: DecodingKey,
    kind: KeyKind,
    alg: Option<String>,
}

struct KeySet {
    keys: HashMap<String, Key>,
    fetched_at: Instant,
}

/// Verifies bearer JWTs of one issuer. Share it behind an `Arc`.
pub struct OidcVerifier {
    cfg: OidcConfig,
    algs: Vec<Algorithm>,
    http: reqwest::Client,
    /// `None` for a verifier built from a fixed JWKS (never refetched).
    jwks_uri: Option<String>,
    keys: RwLock<KeySet>,
    /// When the JWKS was last fetched or tried: one refetch at a time, rate-limited.
    refetch: tokio::sync::Mutex<Instant>,
    /// SHA-256 of a verified token -> its identity and until when it may be reused.
    verified: Mutex<HashMap<[u8; 32], (Identity, Instant)>>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
}

impl OidcVerifier {
    /// Reads `<issuer>/.well-known/openid-configuration`, then its `jwks_uri`.
    pub async fn discover(cfg: OidcConfig) -> Result<OidcVerifier, OidcError> {
        let algs = cfg.checked_algorithms()?;
        // No idle pool: fetches are minutes apart, and a pooled connection to a provider that
        // restarted since fails the next fetch.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|source| OidcError::Fetch {
                url: cfg.issuer.clone(),
                source,
            })?;
        let url = format!(
            "{}/.well-known/openid-configuration",
            cfg.issuer.trim_end_matches('/')
        );
        let doc: Discovery = get_json(&http, &url).await?;
        if doc.issuer != cfg.issuer {
            return Err(OidcError::IssuerMismatch {
                expected: cfg.issuer.clone(),
                got: doc.issuer,
            });
        }
        let keys = fetch_keys(&http, &doc.jwks_uri).await?;
        Ok(OidcVerifier {
            cfg,
            algs,
            http,
            jwks_uri: Some(doc.jwks_uri),
            keys: RwLock::new(keys),
            refetch: tokio::sync::Mutex::new(Instant::now()),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// A verifier over a fixed JWKS document (offline use, benchmarks): never refetched.
    pub fn from_jwks(cfg: OidcConfig, jwks_json: &str) -> Result<OidcVerifier, OidcError> {
        let algs = cfg.checked_algorithms()?;
        let set: JwkSet =
            serde_json::from_str(jwks_json).map_err(|e| OidcError::BadJwks(e.to_string()))?;
        Ok(OidcVerifier {
            cfg,
            algs,
            http: reqwest::Client::new(),
            jwks_uri: None,
            keys: RwLock::new(key_set(set)?),
            refetch: tokio::sync::Mutex::new(Instant::now()),
            verified: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.cfg
    }

    /// The `kid`s currently cached.
    pub fn cached_kids(&self) -> Vec<String> {
        let mut k: Vec<String> = self.read_keys().keys.keys().cloned().collect();
        k.sort();
        k
    }

    fn read_keys(&self) -> std::sync::RwLockReadGuard<'_, KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Refetches the JWKS unless one was fetched less than `refetch_min_interval` ago.
    /// Returns whether it fetched.
    pub async fn refresh(&self) -> Result<bool, OidcError> {
        self.refresh_inner(true).await
    }

    /// With `wait` false, a refetch already under way elsewhere is not waited for.
    async fn refresh_inner(&self, wait: bool) -> Result<bool, OidcError> {
        let Some(uri) = &self.jwks_uri else {
            return Ok(false);
        };
        let mut last = if wait {
            self.refetch.lock().await
        } else {
            match self.refetch.try_lock() {
                Ok(g) => g,
                Err(_) => return Ok(false),
            }
        };
        if last.elapsed() < self.cfg.refetch_min_interval {
            return Ok(false);
        }
        *last = Instant::now();
        let set = fetch_keys(&self.http, uri).await?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = set;
        // A key may have been retired: every remembered token is checked again.
        self.verified_cache().clear();
        Ok(true)
    }

    /// Forgets when the JWKS was last fetched, so the next unknown `kid` refetches at once
    /// (tests; an admin's "reload now").
    pub async fn allow_refetch_now(&self) {
        let mut last = self.refetch.lock().await;
        if let Some(t) = Instant::now().checked_sub(self.cfg.refetch_min_interval) {
            *last = t;
        }
    }

    /// Verifies a bearer JWT and maps it to an [`Identity`].
    pub async fn verify(&self, token: &str) -> Result<Identity, OidcError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if self.cfg.token_cache_secs > 0 {
            if let Some((id, until)) = self.verified_cache().get(&digest) {
                if Instant::now() < *until {
                    return Ok(id.clone());
                }
            }
        }
        let header = raw_header(token)?;
        let alg = self
            .algs
            .iter()
            .copied()
            .find(|a| format!("{a:?}") == header.alg)
            .ok_or_else(|| OidcError::AlgNotAllowed(header.alg.clone()))?;
        let kid = header.kid.ok_or(OidcError::MissingKid)?;

        let stale = self.read_keys().fetched_at.elapsed() >= self.cfg.jwks_ttl;
        let known = self.read_keys().keys.contains_key(&kid);
        if stale || !known {
            // A known kid in a stale cache does not wait for a refetch another request runs;
            // an unknown kid does (its answer depends on it).
            if let Err(e) = self.refresh_inner(!known).await {
                // Keep the keys we have; an outage at the provider must not log everyone out.
                tracing::warn!("OIDC JWKS refetch failed: {e}");
            }
        }
        let (id, exp) = self.verify_with_cached(token, alg, &kid)?;
        if self.cfg.token_cache_secs > 0 {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let left = (exp - now).clamp(0, self.cfg.token_cache_secs as i64) as u64;
            let mut cache = self.verified_cache();
            if cache.len() >= 10_000 {
                cache.clear();
            }
            cache.insert(
                digest,
                (id.clone(), Instant::now() + Duration::from_secs(left)),
            );
        }
        Ok(id)
    }

    fn verified_cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Identity, Instant)>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The synchronous part: the key must be cached already.
    fn verify_with_cached(
        &self,
        token: &str,
        alg: Algorithm,
        kid: &str,
    ) -> Result<(Identity, i64), OidcError> {
        let keys = self.read_keys();
        let key = keys
            .keys
            .get(kid)
            .ok_or_else(|| OidcError::UnknownKid(kid.to_string()))?;
        let family_ok = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => key.kind == KeyKind::Rsa,
            Algorithm::ES256 => key.kind == KeyKind::P256,
            Algorithm::ES384 => key.kind == KeyKind::P384,
            _ => false,
        };
        let alg_name = format!("{alg:?}");
        if !family_ok || key.alg.as_ref().is_some_and(|a| *a != alg_name) {
            return Err(OidcError::AlgNotAllowed(alg_name));
        }
        let mut v = Validation::new(alg);
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&[&self.cfg.audience]);
        v.leeway = self.cfg.leeway_secs;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &v)
            .map_err(map_jwt_error)?;
        drop(keys);
        let exp = data.claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        Ok((self.identity(&data.claims)?, exp))
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, OidcError> {
        let string_claim = |name: &str| -> Result<Option<&str>, OidcError> {
            match claims.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(OidcError::BadClaim {
                    claim: name.to_string(),
                    why: "not a string".into(),
                }),
            }
        };
        let sub = string_claim("sub")?.ok_or_else(|| OidcError::MissingClaim("sub".into()))?;
        let tenant_name = string_claim(&self.cfg.tenant_claim)?
            .ok_or_else(|| OidcError::MissingClaim(self.cfg.tenant_claim.clone()))?;
        // A JWT is always one tenant's: `*` (host scope) is not a tenant name and is refused.
        let tenant = Tenant::new(tenant_name).map_err(|e| OidcError::BadClaim {
            claim: self.cfg.tenant_claim.clone(),
            why: e.to_string(),
        })?;
        let role = match string_claim(&self.cfg.role_claim)? {
            Some(r) => r.parse::<Role>().map_err(|e| OidcError::BadClaim {
                claim: self.cfg.role_claim.clone(),
                why: e.to_string(),
            })?,
            None => self
                .cfg
                .default_role
                .ok_or_else(|| OidcError::MissingClaim(self.cfg.role_claim.clone()))?,
        };
        Ok(Identity {
            tenant: TenantScope::Tenant(tenant),
            principal: sub.to_string(),
            role,
            method: AuthMethod::Jwt,
        })
    }
}

/// Whether a bearer token looks like a JWT (three base64url parts), to route it here rather
/// than to the key store.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && !token.starts_with(crate::apikey::PREFIX)
}

/// The header, read by hand so that `alg: none` (which `jsonwebtoken` cannot even parse)
/// is reported as a refused algorithm rather than as garbage.
fn raw_header(token: &str) -> Result<RawHeader, OidcError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(OidcError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h.trim_end_matches('='))
        .map_err(|_| OidcError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| OidcError::Malformed)
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> OidcError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => OidcError::BadSignature,
        K::InvalidAudience => OidcError::WrongAudience,
        K::InvalidIssuer => OidcError::WrongIssuer,
        K::ExpiredSignature => OidcError::Expired,
        K::ImmatureSignature => OidcError::NotYetValid,
        K::InvalidAlgorithm | K::MissingAlgorithm | K::InvalidAlgorithmName => {
            OidcError::AlgNotAllowed("?".into())
        }
        K::MissingRequiredClaim(c) => OidcError::MissingClaim(c.clone()),
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => OidcError::Malformed,
        _ => OidcError::Invalid(e),
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> Result<T, OidcError> {
    let fetch = |source| OidcError::Fetch {
        url: url.to_string(),
        source,
    };
    let resp = http.get(url).send().await.map_err(fetch)?;
    if !resp.status().is_success() {
        return Err(OidcError::FetchStatus {
            url: url.to_string(),
            status: resp.status().as_u16(),
        });
    }
    resp.json().await.map_err(fetch)
}

async fn fetch_keys(http: &reqwest::Client, uri: &str) -> Result<KeySet, OidcError> {
    let set: JwkSet = get_json(http, uri).await?;
    key_set(set)
}

/// Keys without a `kid`, or of a type we do not verify, are skipped.
fn key_set(set: JwkSet) -> Result<KeySet, OidcError> {
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => KeyKind::P256,
                EllipticCurve::P384 => KeyKind::P384,
                _ => KeyKind::Other,
            },
            _ => KeyKind::Other,
        };
        if kind == KeyKind::Other {
            continue;
        }
        let decoding = DecodingKey::from_jwk(jwk)
            .map_err(|e| OidcError::BadJwks(format!("key {kid}: {e}")))?;
        let alg = jwk.common.key_algorithm.map(|a| format!("{a:?}"));
        keys.insert(
            kid,
            Key {
                decoding,
                kind,
                alg,
            },
        );
    }
    Ok(KeySet {
        keys,
        fetched_at: Instant::now(),
    })
}

/// The public JWK of a P-256 key from its uncompressed point (`0x04 || X || Y`, as rcgen's
/// `public_key_raw` gives it): for offline verifiers, tests and benchmarks.
pub fn p256_jwk(kid: &str, public_key_raw: &[u8]) -> Option<Value> {
    if public_key_raw.len() != 65 || public_key_raw[0] != 4 {
        return None;
    }
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    Some(serde_json::json!({
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
        "x": b64(&public_key_raw[1..33]), "y": b64(&public_key_raw[33..]),
    }))
}
