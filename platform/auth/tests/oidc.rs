//! OIDC/JWT verification against a real provider (oauth2-mock-server) on 127.0.0.1.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{json, Value};
use tartarus_auth::harness::Provider;
use tartarus_auth::oidc::{OidcConfig, OidcError, OidcVerifier};
use tartarus_auth::{AuthMethod, Role, TenantScope};

const AUD: &str = "tartarus";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims() -> Value {
    json!({"aud": AUD, "sub": "alice", "tenant": "acme", "role": "developer"})
}

async fn verifier(p: &Provider) -> OidcVerifier {
    OidcVerifier::discover(OidcConfig::new(&p.issuer, AUD))
        .await
        .expect("discovery")
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn part(token: &str, i: usize) -> Value {
    let p = token.split('.').nth(i).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}

/// A P-256 key the provider never saw, as a jsonwebtoken signing key.
fn foreign_es256() -> jsonwebtoken::EncodingKey {
    let kp = rcgen::KeyPair::generate().unwrap();
    jsonwebtoken::EncodingKey::from_ec_der(&kp.serialize_der())
}

fn sign_foreign(kid: &str, payload: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some(kid.to_string());
    jsonwebtoken::encode(&h, payload, &foreign_es256()).unwrap()
}

#[tokio::test]
async fn valid_token_maps_to_identity() {
    let mut p = Provider::start();
    let v = verifier(&p).await;
    let id = v.verify(&p.token(claims())).await.unwrap();
    assert_eq!(id.tenant, TenantScope::parse("acme").unwrap());
    assert_eq!(id.principal, "alice");
    assert_eq!(id.role, Role::Developer);
    assert_eq!(id.method, AuthMethod::Jwt);
}

#[tokio::test]
async fn es256_from_the_provider() {
    let mut p = Provider::start();
    p.rotate("ES256");
    let v = verifier(&p).await;
    let t = p.token(claims());
    assert_eq!(part(&t, 0)["alg"], "ES256");
    assert!(v.verify(&t).await.is_ok());
}

#[tokio::test]
async fn registered_claims_are_checked() {
    let mut p = Provider::start();
    let v = verifier(&p).await;
    let mut c = claims();
    c["aud"] = json!("someone-else");
    assert!(matches!(
        v.verify(&p.token(c)).await,
        Err(OidcError::WrongAudience)
    ));

    let t = p.token_with(claims(), -300);
    assert!(matches!(v.verify(&t).await, Err(OidcError::Expired)));
    // Within the leeway an expired token still passes.
    let t = p.token_with(claims(), -5);
    assert!(v.verify(&t).await.is_ok());

    let mut c = claims();
    c["nbf"] = json!(now() + 600);
    assert!(matches!(
        v.verify(&p.token(c)).await,
        Err(OidcError::NotYetValid)
    ));

    let mut c = claims();
    c["iss"] = json!("http://127.0.0.1:1");
    assert!(matches!(
        v.verify(&p.token(c)).await,
        Err(OidcError::WrongIssuer)
    ));
}

#[tokio::test]
async fn claim_mapping() {
    let mut p = Provider::start();
    let v = verifier(&p).await;
    let mut c = claims();
    c.as_object_mut().unwrap().remove("tenant");
    assert!(
        matches!(v.verify(&p.token(c)).await, Err(OidcError::MissingClaim(n)) if n == "tenant")
    );
    let mut c = claims();
    c["tenant"] = json!("*");
    assert!(matches!(
        v.verify(&p.token(c)).await,
        Err(OidcError::BadClaim { .. })
    ));
    let mut c = claims();
    c["role"] = json!("root");
    assert!(matches!(
        v.verify(&p.token(c)).await,
        Err(OidcError::BadClaim { .. })
    ));
    let mut c = claims();
    c.as_object_mut().unwrap().remove("role");
    let t = p.token(c);
    assert!(matches!(v.verify(&t).await, Err(OidcError::MissingClaim(n)) if n == "role"));
    // With a default role, and custom claim names.
    let mut cfg = OidcConfig::new(&p.issuer, AUD);
    cfg.default_role = Some(Role::Viewer);
    let v2 = OidcVerifier::discover(cfg).await.unwrap();
    assert_eq!(v2.verify(&t).await.unwrap().role, Role::Viewer);
    let mut cfg = OidcConfig::new(&p.issuer, AUD);
    cfg.tenant_claim = "org".into();
    cfg.role_claim = "tartarus_role".into();
    let v3 = OidcVerifier::discover(cfg).await.unwrap();
    let t = p.token(json!({"aud": AUD, "sub": "bob", "org": "blue", "tartarus_role": "admin"}));
    let id = v3.verify(&t).await.unwrap();
    assert_eq!((id.tenant.as_str(), id.role), ("blue", Role::Admin));
}

#[tokio::test]
async fn forged_tokens() {
    let mut p = Provider::start();
    let es_kid = p.rotate("ES256");
    let v = verifier(&p).await;
    let good = p.token(claims());

    // Tampered payload: another tenant, same signature.
    let mut payload = part(&good, 1);
    payload["tenant"] = json!("other");
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], b64(&payload), parts[2]);
    assert!(matches!(
        v.verify(&tampered).await,
        Err(OidcError::BadSignature)
    ));

    // Signed by a key the provider never published, under a kid it never published.
    let mut c = claims();
    c["iss"] = json!(p.issuer);
    c["exp"] = json!(now() + 600);
    let t = sign_foreign("never-published", &c);
    assert!(matches!(v.verify(&t).await, Err(OidcError::UnknownKid(k)) if k == "never-published"));

    // ... or under the kid of the provider's real P-256 key.
    let t = sign_foreign(&es_kid, &c);
    assert!(matches!(v.verify(&t).await, Err(OidcError::BadSignature)));

    // alg: none, no signature.
    let h = json!({"alg": "none", "typ": "JWT", "kid": es_kid});
    let t = format!("{}.{}.", b64(&h), b64(&c));
    assert!(matches!(v.verify(&t).await, Err(OidcError::AlgNotAllowed(a)) if a == "none"));

    // HS256 keyed with the RSA public key's bytes (the classic key-confusion attack).
    let jwks: Value = reqwest::get(format!("{}/jwks", p.issuer))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rsa = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kty"] == "RSA")
        .unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some(rsa["kid"].as_str().unwrap().to_string());
    let secret = jsonwebtoken::EncodingKey::from_secret(rsa["n"].as_str().unwrap().as_bytes());
    let t = jsonwebtoken::encode(&h, &c, &secret).unwrap();
    assert!(matches!(v.verify(&t).await, Err(OidcError::AlgNotAllowed(a)) if a == "HS256"));

    // An allowed algorithm against a key of the other family.
    let mut h = part(&good, 0);
    h["alg"] = json!("RS256");
    h["kid"] = json!(es_kid);
    let t = format!("{}.{}.{}", b64(&h), parts[1], parts[2]);
    assert!(matches!(
        v.verify(&t).await,
        Err(OidcError::AlgNotAllowed(_))
    ));

    // Garbage.
    assert!(matches!(v.verify("a.b.c").await, Err(OidcError::Malformed)));
    assert!(matches!(v.verify("nope").await, Err(OidcError::Malformed)));

    // HS* can't even be configured.
    let mut cfg = OidcConfig::new(&p.issuer, AUD);
    cfg.algorithms = vec!["HS256".into()];
    assert!(matches!(
        OidcVerifier::discover(cfg).await,
        Err(OidcError::Config(_))
    ));
    let mut cfg = OidcConfig::new(&p.issuer, AUD);
    cfg.algorithms = vec!["none".into()];
    assert!(matches!(
        OidcVerifier::discover(cfg).await,
        Err(OidcError::Config(_))
    ));

    // The real token still works.
    assert!(v.verify(&good).await.is_ok());
}

#[tokio::test]
async fn discovery_checks_the_issuer() {
    let p = Provider::start();
    let cfg = OidcConfig::new(&format!("{}/", p.issuer), AUD);
    assert!(matches!(
        OidcVerifier::discover(cfg).await,
        Err(OidcError::IssuerMismatch { .. } | OidcError::FetchStatus { .. })
    ));
    let cfg = OidcConfig::new("http://127.0.0.1:9", AUD);
    assert!(matches!(
        OidcVerifier::discover(cfg).await,
        Err(OidcError::Fetch { .. })
    ));
}

#[tokio::test]
async fn key_rotation_at_the_provider() {
    let mut p = Provider::start();
    let mut cfg = OidcConfig::new(&p.issuer, AUD);
    // Long enough that only `allow_refetch_now` lets a refetch through in this test.
    cfg.refetch_min_interval = Duration::from_secs(3600);
    let v = OidcVerifier::discover(cfg).await.unwrap();
    let old_kid = p.first_kid.clone();
    let old_token = p.token(claims());
    assert!(v.verify(&old_token).await.is_ok());

    // The provider rotates: new tokens carry the new kid.
    let new_kid = p.rotate("RS256");
    let new_token = p.token(claims());
    assert_eq!(part(&new_token, 0)["kid"], json!(new_kid));
    // Rate limit: the JWKS was fetched moments ago, so the unknown kid is refused for now.
    assert!(matches!(
        v.verify(&new_token).await,
        Err(OidcError::UnknownKid(_))
    ));
    assert_eq!(v.cached_kids(), vec![old_kid.clone()]);
    // Once the interval has passed, the unknown kid triggers a refetch and verifies.
    v.allow_refetch_now().await;
    assert!(v.verify(&new_token).await.is_ok());
    let mut both = vec![old_kid.clone(), new_kid.clone()];
    both.sort();
    assert_eq!(v.cached_kids(), both);
    // The old key is still published, so its tokens still verify.
    assert!(v.verify(&old_token).await.is_ok());

    // The provider retires the old key: after the next refetch its tokens are refused.
    assert_eq!(p.retire(&old_kid), vec![new_kid.clone()]);
    v.allow_refetch_now().await;
    assert!(v.refresh().await.unwrap());
    assert_eq!(v.cached_kids(), vec![new_kid.clone()]);
    assert!(matches!(v.verify(&old_token).await, Err(OidcError::UnknownKid(k)) if k == old_kid));
    assert!(v.verify(&new_token).await.is_ok());
}

#[tokio::test]
async fn jwks_ttl_refetches() {
    let mut p = Provider::start();
    let mut cfg = OidcConfig::new(&p.issuer, AUD);
    cfg.jwks_ttl = Duration::ZERO;
    cfg.refetch_min_interval = Duration::ZERO;
    let v = OidcVerifier::discover(cfg).await.unwrap();
    let t = p.token(claims());
    let old = p.first_kid.clone();
    let new = p.rotate("RS256");
    p.retire(&old);
    // A stale cache is refetched even for a known kid: the retired key is gone.
    assert!(matches!(v.verify(&t).await, Err(OidcError::UnknownKid(_))));
    assert_eq!(v.cached_kids(), vec![new]);
}
