//! The auth suite: what authentication costs per request, next to no auth in the same run.
//!
//! Each sample times `BATCH` requests and reports the mean per request (µs), so the timer's
//! own cost is spread thin; the metrics are the median, p10 and p90 of `--runs` samples.
//! - `auth_none_request_us`: a request through an axum router without the auth layer (the peer).
//! - `auth_{api_key,jwt,mtls,unix}_request_us`: the same router behind `require_identity`.
//! - `auth_api_key_cached_us`: `Authenticator::authenticate` with the key's row cached.
//! - `auth_api_key_uncached_us`: `KeyStore::authenticate` (parse, SHA-256, SQLite lookup in a
//!   WAL file, constant-time compare): what a cache miss costs (the layer runs it on the
//!   blocking pool).
//! - `auth_jwt_es256_cached_us`: an ES256 JWT seen before (verified-token cache hit: SHA-256 of
//!   the token and a map lookup); the request metrics use this path too, as a client reusing
//!   its token would.
//! - `auth_jwt_es256_uncached_us`: full verification (ES256 signature, claims) with the JWKS
//!   cached but the token cache off: a client's first request with a new token.
//! - `auth_mtls_identity_us`: the identity read from a client certificate (DER parse).
//! - `auth_*_overhead_us`: request with auth minus request without, median against median.
//!
//! Needs neither the VMM nor the test guests; not part of `all`.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tartarus_auth::ca::{self, CertKind};
use tartarus_auth::keystore::{KeySpec, KeyStore};
use tartarus_auth::layer::{require_identity, Authenticator, Transport};
use tartarus_auth::oidc::{self, OidcConfig, OidcVerifier};
use tartarus_auth::{Role, TenantScope};
use tower::ServiceExt;

use crate::{percentile, round3, summary, Options};

const BATCH: usize = 2000;
const ISS: &str = "https://issuer.example";

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Per-request microseconds of `BATCH` calls of `f`, `runs` times.
async fn sample<F, Fut>(runs: usize, mut f: F) -> Result<Vec<f64>, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    // Warm up (caches, allocator, branch predictors).
    for _ in 0..BATCH / 4 {
        f().await?;
    }
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        for _ in 0..BATCH {
            f().await?;
        }
        out.push(t.elapsed().as_secs_f64() * 1e6 / BATCH as f64);
    }
    Ok(out)
}

fn request(headers: &[(&str, &str)], transport: Option<&Transport>) -> Request {
    let mut b = axum::http::Request::builder().uri("/whoami");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut r = b.body(Body::empty()).expect("request");
    if let Some(t) = transport {
        r.extensions_mut().insert(t.clone());
    }
    r
}

async fn through(app: &Router, req: Request) -> Result<(), String> {
    let resp = app.clone().oneshot(req).await.map_err(err)?;
    if resp.status() != 200 {
        return Err(format!("request answered {}", resp.status()));
    }
    Ok(())
}

pub fn run(opts: &Options) -> Result<(Value, Vec<Value>), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(err)?;
    rt.block_on(run_async(opts.runs))
}

async fn run_async(runs: usize) -> Result<(Value, Vec<Value>), String> {
    let dir = std::env::temp_dir().join(format!("tartarus-bench-auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(err)?;

    // API keys in a real SQLite file (WAL), as the daemon would have them.
    let keys = Arc::new(KeyStore::open(&dir.join("keys.db")).map_err(err)?);
    for i in 0..1000 {
        // A realistic table: the looked-up key is one of many.
        keys.create(
            &TenantScope::All,
            KeySpec {
                tenant: TenantScope::parse(&format!("t{}", i % 50)).map_err(err)?,
                role: Role::Developer,
                name: format!("k{i}"),
                expires_at: None,
            },
        )
        .map_err(err)?;
    }
    let key = keys
        .create(
            &TenantScope::All,
            KeySpec {
                tenant: TenantScope::parse("acme").map_err(err)?,
                role: Role::Developer,
                name: "bench".into(),
                expires_at: None,
            },
        )
        .map_err(err)?
        .key;

    // OIDC with a cached JWKS (one P-256 key).
    let kp = rcgen::KeyPair::generate().map_err(err)?;
    let jwk = oidc::p256_jwk("k1", kp.public_key_raw()).ok_or("P-256 key")?;
    let jwks = json!({ "keys": [jwk] }).to_string();
    let verifier = OidcVerifier::from_jwks(OidcConfig::new(ISS, "tartarus"), &jwks).map_err(err)?;
    // The same without the verified-token cache: every call checks the signature.
    let mut no_cache = OidcConfig::new(ISS, "tartarus");
    no_cache.token_cache_secs = 0;
    let verifier_uncached = OidcVerifier::from_jwks(no_cache, &jwks).map_err(err)?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(err)?
        .as_secs()
        + 3600;
    let claims = json!({"iss": ISS, "aud": "tartarus", "sub": "alice", "tenant": "acme",
        "role": "developer", "exp": exp});
    let jwt = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_der(&kp.serialize_der()),
    )
    .map_err(err)?;

    // A client certificate from our CA.
    ca::init_ca(&dir.join("ca"), "bench CA").map_err(err)?;
    let kind = CertKind::Client {
        tenant: TenantScope::parse("acme").map_err(err)?,
        role: Role::Operator,
    };
    let pem = ca::issue(&dir.join("ca"), &kind, "node-1", &[], 1)
        .map_err(err)?
        .cert_pem;
    let der: rustls::pki_types::CertificateDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).map_err(err)?;
    let mtls = Transport::MtlsTcp { peer_cert: der };
    let unix = Transport::UnixSocket { uid: Some(0) };

    let auth = Arc::new(
        Authenticator::new()
            .with_keys(keys.clone())
            .with_oidc(Arc::new(verifier)),
    );
    let plain: Router = Router::new().route("/whoami", get(|| async { "ok" }));
    let guarded = plain.clone().layer(axum::middleware::from_fn_with_state(
        auth.clone(),
        require_identity,
    ));

    // Direct costs.
    let mut key_headers = HeaderMap::new();
    key_headers.insert("x-api-key", key.parse().map_err(err)?);
    let mut jwt_headers = HeaderMap::new();
    jwt_headers.insert(
        "authorization",
        format!("Bearer {jwt}").parse().map_err(err)?,
    );
    let empty = HeaderMap::new();
    let key_cached = sample(runs, || async {
        auth.authenticate(None, &key_headers)
            .await
            .map(|_| ())
            .map_err(err)
    })
    .await?;
    let key_uncached = sample(runs, || async {
        keys.authenticate(&key).map(|_| ()).map_err(err)
    })
    .await?;
    let jwt_direct = sample(runs, || async {
        auth.authenticate(None, &jwt_headers)
            .await
            .map(|_| ())
            .map_err(err)
    })
    .await?;
    let jwt_uncached = sample(runs, || async {
        verifier_uncached
            .verify(&jwt)
            .await
            .map(|_| ())
            .map_err(err)
    })
    .await?;
    let mtls_direct = sample(runs, || async {
        auth.authenticate(Some(&mtls), &empty)
            .await
            .map(|_| ())
            .map_err(err)
    })
    .await?;

    // Whole requests through a router, with and without the layer, interleaved per sample so
    // that machine noise hits all of them alike.
    let mut none = Vec::new();
    let mut with_key = Vec::new();
    let mut with_jwt = Vec::new();
    let mut with_mtls = Vec::new();
    let mut with_unix = Vec::new();
    for _ in 0..runs {
        none.extend(sample(1, || through(&plain, request(&[], None))).await?);
        with_key.extend(
            sample(1, || {
                through(&guarded, request(&[("x-api-key", &key)], None))
            })
            .await?,
        );
        let bearer = format!("Bearer {jwt}");
        with_jwt.extend(
            sample(1, || {
                through(&guarded, request(&[("authorization", &bearer)], None))
            })
            .await?,
        );
        with_mtls.extend(sample(1, || through(&guarded, request(&[], Some(&mtls)))).await?);
        with_unix.extend(sample(1, || through(&guarded, request(&[], Some(&unix)))).await?);
    }
    let _ = std::fs::remove_dir_all(&dir);

    let median = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        percentile(&s, 50.0)
    };
    let base = median(&none);
    let overhead = |name: &str, v: &[f64]| json!({"name": name, "unit": "us", "median": round3(median(v) - base)});
    let metrics = vec![
        summary("auth_none_request_us", "us", &none),
        summary("auth_api_key_request_us", "us", &with_key),
        summary("auth_jwt_request_us", "us", &with_jwt),
        summary("auth_mtls_request_us", "us", &with_mtls),
        summary("auth_unix_request_us", "us", &with_unix),
        summary("auth_api_key_cached_us", "us", &key_cached),
        summary("auth_api_key_uncached_us", "us", &key_uncached),
        summary("auth_jwt_es256_cached_us", "us", &jwt_direct),
        summary("auth_jwt_es256_uncached_us", "us", &jwt_uncached),
        summary("auth_mtls_identity_us", "us", &mtls_direct),
    ];
    let report = json!({
        "batch": BATCH,
        "keys_in_store": 1001,
        "target_median_us": 50,
        "overhead_vs_no_auth": [
            overhead("auth_api_key_overhead_us", &with_key),
            overhead("auth_jwt_overhead_us", &with_jwt),
            overhead("auth_mtls_overhead_us", &with_mtls),
            overhead("auth_unix_overhead_us", &with_unix),
        ],
    });
    Ok((report, metrics))
}
