use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::Request as HttpRequest;
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::ca::{self, CertKind};
use crate::identity::{Role, TenantScope};
use crate::keystore::KeySpec;
use crate::oidc::OidcConfig;

const ISS: &str = "https://issuer.example";

struct Fixture {
    app: Router,
    keys: Arc<KeyStore>,
    jwt_key: jsonwebtoken::EncodingKey,
}

fn fixture() -> Fixture {
    let keys = Arc::new(KeyStore::open_in_memory().unwrap());
    let kp = rcgen::KeyPair::generate().unwrap();
    let jwk = oidc::p256_jwk("k1", kp.public_key_raw()).unwrap();
    let jwks = json!({ "keys": [jwk] }).to_string();
    let verifier = OidcVerifier::from_jwks(OidcConfig::new(ISS, "tartarus"), &jwks).unwrap();
    let auth = Arc::new(
        Authenticator::new()
            .with_keys(keys.clone())
            .with_oidc(Arc::new(verifier)),
    );
    let app = Router::new()
        .route(
            "/whoami",
            get(|Extension(id): Extension<Identity>| async move { axum::Json(id) }),
        )
        .route(
            "/keys",
            get(|Extension(id): Extension<Identity>| async move {
                match authorize(&id, Action::KeyCreate) {
                    Ok(()) => "ok".into_response(),
                    Err(r) => r.into_response(),
                }
            }),
        )
        .layer(axum::middleware::from_fn_with_state(auth, require_identity));
    Fixture {
        app,
        keys,
        jwt_key: jsonwebtoken::EncodingKey::from_ec_der(&kp.serialize_der()),
    }
}

async fn call(
    app: &Router,
    path: &str,
    headers: &[(&str, &str)],
    transport: Option<Transport>,
) -> (StatusCode, HeaderMap, Value) {
    let mut req = HttpRequest::builder().uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req.body(Body::empty()).unwrap();
    if let Some(t) = transport {
        req.extensions_mut().insert(t);
    }
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, body)
}

fn key(f: &Fixture, tenant: &str, role: Role) -> (String, String) {
    let k = f
        .keys
        .create(
            &TenantScope::All,
            KeySpec {
                tenant: TenantScope::parse(tenant).unwrap(),
                role,
                name: "t".into(),
                expires_at: None,
            },
        )
        .unwrap();
    (k.key, k.info.id)
}

fn jwt(f: &Fixture, claims: Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some("k1".into());
    jsonwebtoken::encode(&h, &claims, &f.jwt_key).unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn no_credentials_is_401_in_the_daemon_shape() {
    let f = fixture();
    let (s, h, b) = call(&f.app, "/whoami", &[], None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(h.get("www-authenticate").unwrap(), "Bearer");
    assert_eq!(b["error"]["code"], "unauthorized");
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("No credentials"));
    let (s, _, _) = call(&f.app, "/whoami", &[], Some(Transport::Tcp)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn api_key_in_either_header() {
    let f = fixture();
    let (k, id) = key(&f, "acme", Role::Developer);
    for h in [
        ("x-api-key", k.clone()),
        ("authorization", format!("Bearer {k}")),
    ] {
        let (s, _, b) = call(&f.app, "/whoami", &[(h.0, &h.1)], None).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["tenant"], "acme");
        assert_eq!(b["role"], "developer");
        assert_eq!(b["method"], "api_key");
        assert_eq!(b["principal"], format!("key:{id}"));
    }
    // Twice more: the second comes from the cache, and must agree.
    for _ in 0..2 {
        let (s, _, _) = call(&f.app, "/whoami", &[("x-api-key", &k)], None).await;
        assert_eq!(s, StatusCode::OK);
    }
}

#[tokio::test]
async fn bad_keys_are_401_with_a_reason() {
    let f = fixture();
    let (k, id) = key(&f, "acme", Role::Developer);
    let mut typo = k.clone().into_bytes();
    typo[10] = if typo[10] == b'Q' { b'R' } else { b'Q' };
    let typo = String::from_utf8(typo).unwrap();
    let forged = crate::apikey::ApiKey::generate().unwrap().expose();
    for (presented, why) in [
        ("tts_short", "Malformed"),
        (typo.as_str(), "checksum"),
        (forged.as_str(), "Unknown"),
    ] {
        let (s, _, b) = call(&f.app, "/whoami", &[("x-api-key", presented)], None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(b["error"]["message"].as_str().unwrap().contains(why), "{b}");
    }
    // Warm the cache, then revoke: the next request is refused.
    assert_eq!(
        call(&f.app, "/whoami", &[("x-api-key", &k)], None).await.0,
        StatusCode::OK
    );
    f.keys.revoke(&TenantScope::All, &id).unwrap();
    let (s, _, b) = call(&f.app, "/whoami", &[("x-api-key", &k)], None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        b["error"]["message"].as_str().unwrap().contains("revoked"),
        "{b}"
    );
    // A bearer that is neither a key nor a JWT.
    let (s, _, _) = call(
        &f.app,
        "/whoami",
        &[("authorization", "Bearer hello")],
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn jwt_bearer() {
    let f = fixture();
    let claims = json!({"iss": ISS, "aud": "tartarus", "sub": "alice", "tenant": "blue",
        "role": "viewer", "exp": now() + 300});
    let t = jwt(&f, claims.clone());
    let (s, _, b) = call(
        &f.app,
        "/whoami",
        &[("authorization", &format!("Bearer {t}"))],
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        (b["principal"].as_str(), b["method"].as_str()),
        (Some("alice"), Some("jwt"))
    );
    let mut c = claims;
    c["aud"] = json!("other");
    let t = jwt(&f, c);
    let (s, _, b) = call(
        &f.app,
        "/whoami",
        &[("authorization", &format!("Bearer {t}"))],
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        b["error"]["message"].as_str().unwrap().contains("audience"),
        "{b}"
    );
}

#[tokio::test]
async fn unix_socket_is_host_admin_and_mtls_identifies() {
    let f = fixture();
    let (s, _, b) = call(
        &f.app,
        "/whoami",
        &[],
        Some(Transport::UnixSocket { uid: Some(0) }),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["tenant"], "*");
    assert_eq!(b["role"], "admin");
    assert_eq!(b["principal"], "unix:uid=0");

    let dir = std::env::temp_dir().join(format!("tartarus-auth-layer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    ca::init_ca(&dir, "CA").unwrap();
    let kind = CertKind::Client {
        tenant: TenantScope::parse("acme").unwrap(),
        role: Role::Operator,
    };
    let pem = ca::issue(&dir, &kind, "node-1", &[], 1).unwrap().cert_pem;
    let der: CertificateDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).unwrap();
    let mtls = Transport::MtlsTcp { peer_cert: der };
    let (s, _, b) = call(&f.app, "/whoami", &[], Some(mtls.clone())).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (b["principal"].as_str(), b["role"].as_str()),
        (Some("node-1"), Some("operator"))
    );
    // An explicit credential in the headers wins over the connection's certificate...
    let (k, _) = key(&f, "blue", Role::Viewer);
    let (_, _, b) = call(&f.app, "/whoami", &[("x-api-key", &k)], Some(mtls.clone())).await;
    assert_eq!(b["tenant"], "blue");
    // ... and a bad one is refused, not silently replaced by the certificate.
    let (s, _, _) = call(&f.app, "/whoami", &[("x-api-key", "tts_bad")], Some(mtls)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // The socket ignores headers entirely.
    let (s, _, b) = call(
        &f.app,
        "/whoami",
        &[("x-api-key", "tts_bad")],
        Some(Transport::UnixSocket { uid: None }),
    )
    .await;
    assert_eq!((s, b["role"].as_str()), (StatusCode::OK, Some("admin")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn authorize_gives_403_in_the_daemon_shape() {
    let f = fixture();
    let (dev, _) = key(&f, "acme", Role::Developer);
    let (s, _, b) = call(&f.app, "/keys", &[("x-api-key", &dev)], None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(b["error"]["code"], "forbidden");
    let (adm, _) = key(&f, "acme", Role::Admin);
    let (s, _, _) = call(&f.app, "/keys", &[("x-api-key", &adm)], None).await;
    assert_eq!(s, StatusCode::OK);
}
