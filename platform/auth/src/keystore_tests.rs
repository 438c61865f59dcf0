use std::sync::atomic::{AtomicI64, Ordering};

use super::*;
use crate::identity::Tenant;

fn acme() -> TenantScope {
    TenantScope::Tenant(Tenant::new("acme").unwrap())
}
fn other() -> TenantScope {
    TenantScope::Tenant(Tenant::new("other").unwrap())
}

fn store() -> (KeyStore, Arc<AtomicI64>) {
    let t = Arc::new(AtomicI64::new(1_000_000));
    let t2 = t.clone();
    let s = KeyStore::open_in_memory()
        .unwrap()
        .with_clock(move || t2.load(Ordering::SeqCst));
    (s, t)
}

fn spec(tenant: TenantScope, role: Role) -> KeySpec {
    KeySpec {
        tenant,
        role,
        name: "ci".into(),
        expires_at: None,
    }
}

#[test]
fn create_authenticate_list() {
    let (s, _) = store();
    let k = s
        .create(&TenantScope::All, spec(acme(), Role::Developer))
        .unwrap();
    let id = s.authenticate(&k.key).unwrap();
    assert_eq!(id.tenant, acme());
    assert_eq!(id.role, Role::Developer);
    assert_eq!(id.method, AuthMethod::ApiKey);
    assert_eq!(id.principal, format!("key:{}", k.info.id));
    s.create(&TenantScope::All, spec(other(), Role::Admin))
        .unwrap();
    let listed = s.list(&acme()).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, k.info.id);
    assert!(listed[0].last_used_at.is_some());
    assert_eq!(s.list(&TenantScope::All).unwrap().len(), 2);
}

#[test]
fn stored_only_as_hash() {
    let dir = std::env::temp_dir().join(format!("tartarus-auth-hash-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let s = KeyStore::open(&dir).unwrap();
    let k = s
        .create(&TenantScope::All, spec(acme(), Role::Viewer))
        .unwrap();
    drop(s);
    let bytes = std::fs::read(&dir).unwrap();
    let secret = &k.key[4 + 8..4 + 8 + 32];
    assert!(
        !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the secret is in the database file"
    );
    // Reopening keeps the key (and runs the migrations again harmlessly).
    let s = KeyStore::open(&dir).unwrap();
    assert!(s.authenticate(&k.key).is_ok());
    let _ = std::fs::remove_file(&dir);
}

#[test]
fn attacker_side_failures() {
    let (s, _) = store();
    let k = s
        .create(&TenantScope::All, spec(acme(), Role::Admin))
        .unwrap();
    assert!(matches!(
        s.authenticate("tts_nope"),
        Err(KeyError::Malformed)
    ));
    assert!(matches!(s.authenticate(""), Err(KeyError::Malformed)));
    // A typo: caught by the checksum.
    let mut typo = k.key.clone().into_bytes();
    typo[20] = if typo[20] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();
    assert!(matches!(s.authenticate(&typo), Err(KeyError::BadChecksum)));
    // A well-formed key nobody issued.
    let forged = ApiKey::generate().unwrap().expose();
    assert!(matches!(s.authenticate(&forged), Err(KeyError::Unknown)));
    // A forged key that reuses a real (public) key id, with a valid checksum.
    let real_id = &k.info.id;
    let fake = ApiKey::generate().unwrap().expose();
    let payload = format!("{real_id}{}", &fake[12..44]);
    let forged_same_id = format!("tts_{payload}{}", crate::apikey::test_checksum(&payload));
    assert!(ApiKey::parse(&forged_same_id).is_ok());
    assert!(matches!(
        s.authenticate(&forged_same_id),
        Err(KeyError::Unknown)
    ));
    // The real one still works.
    assert!(s.authenticate(&k.key).is_ok());
}

#[test]
fn tenant_scoping_of_management() {
    let (s, _) = store();
    let mine = s.create(&acme(), spec(acme(), Role::Developer)).unwrap();
    // A tenant admin cannot make keys for another tenant, nor host keys.
    assert!(matches!(
        s.create(&acme(), spec(other(), Role::Admin)),
        Err(KeyError::OutOfScope { .. })
    ));
    assert!(matches!(
        s.create(&acme(), spec(TenantScope::All, Role::Viewer)),
        Err(KeyError::OutOfScope { .. })
    ));
    // Another tenant sees nothing, and cannot get, revoke or rotate it: NotFound.
    assert!(s.list(&other()).unwrap().is_empty());
    let id = &mine.info.id;
    assert!(matches!(s.get(&other(), id), Err(KeyError::NotFound(_))));
    assert!(matches!(s.revoke(&other(), id), Err(KeyError::NotFound(_))));
    assert!(matches!(
        s.rotate(&other(), id, Duration::from_secs(60)),
        Err(KeyError::NotFound(_))
    ));
    assert!(s.authenticate(&mine.key).is_ok());
    // The host can.
    s.revoke(&TenantScope::All, id).unwrap();
    assert!(matches!(s.authenticate(&mine.key), Err(KeyError::Revoked)));
}

#[test]
fn revocation_beats_the_cache() {
    let (s, _) = store();
    let k = s
        .create(&TenantScope::All, spec(acme(), Role::Viewer))
        .unwrap();
    assert!(s.authenticate(&k.key).is_ok());
    assert!(matches!(s.authenticate_cached(&k.key), Some(Ok(_))));
    let info = s.revoke(&acme(), &k.info.id).unwrap();
    assert!(info.revoked_at.is_some());
    assert!(s.authenticate_cached(&k.key).is_none());
    assert!(matches!(s.authenticate(&k.key), Err(KeyError::Revoked)));
    // Revoked keys are never cached as good.
    assert!(s.authenticate_cached(&k.key).is_none());
    // Revoking twice is fine; revoking a missing key is not.
    assert!(s.revoke(&acme(), &k.info.id).is_ok());
    assert!(matches!(
        s.revoke(&acme(), "zzzzzzzz"),
        Err(KeyError::NotFound(_))
    ));
}

#[test]
fn cached_path_checks_the_secret() {
    let (s, _) = store();
    let k = s
        .create(&TenantScope::All, spec(acme(), Role::Viewer))
        .unwrap();
    s.authenticate(&k.key).unwrap();
    let payload = format!("{}{}", k.info.id, "A".repeat(32));
    let forged = format!("tts_{payload}{}", crate::apikey::test_checksum(&payload));
    assert!(matches!(
        s.authenticate_cached(&forged),
        Some(Err(KeyError::Unknown))
    ));
    assert!(matches!(
        s.authenticate_cached("junk"),
        Some(Err(KeyError::Malformed))
    ));
}

#[test]
fn expiry() {
    let (s, t) = store();
    let now = t.load(Ordering::SeqCst);
    let mut sp = spec(acme(), Role::Viewer);
    sp.expires_at = Some(now + 100);
    let k = s.create(&TenantScope::All, sp).unwrap();
    assert!(s.authenticate(&k.key).is_ok());
    t.store(now + 100, Ordering::SeqCst);
    assert!(matches!(s.authenticate(&k.key), Err(KeyError::Expired)));
    assert!(matches!(
        s.authenticate_cached(&k.key),
        None | Some(Err(KeyError::Expired))
    ));
}

#[test]
fn rotation_overlap() {
    let (s, t) = store();
    let now = t.load(Ordering::SeqCst);
    let old = s
        .create(&TenantScope::All, spec(acme(), Role::Operator))
        .unwrap();
    let new = s
        .rotate(&acme(), &old.info.id, Duration::from_secs(300))
        .unwrap();
    assert_ne!(new.key, old.key);
    assert_eq!(new.info.role, Role::Operator);
    assert_eq!(new.info.tenant, acme());
    let o = s.get(&acme(), &old.info.id).unwrap();
    assert_eq!(o.replaced_by.as_deref(), Some(new.info.id.as_str()));
    assert_eq!(o.expires_at, Some(now + 300));
    // During the overlap both work.
    t.store(now + 299, Ordering::SeqCst);
    assert!(s.authenticate(&old.key).is_ok());
    assert!(s.authenticate(&new.key).is_ok());
    // After it only the new one.
    t.store(now + 300, Ordering::SeqCst);
    assert!(matches!(s.authenticate(&old.key), Err(KeyError::Expired)));
    assert!(s.authenticate(&new.key).is_ok());
    // An expired or revoked key cannot be rotated.
    assert!(matches!(
        s.rotate(&acme(), &old.info.id, Duration::from_secs(1)),
        Err(KeyError::Inactive(_))
    ));
}

#[test]
fn rotation_keeps_lifetime_and_never_extends_old() {
    let (s, t) = store();
    let now = t.load(Ordering::SeqCst);
    let mut sp = spec(acme(), Role::Viewer);
    sp.expires_at = Some(now + 50);
    let old = s.create(&TenantScope::All, sp).unwrap();
    t.store(now + 10, Ordering::SeqCst);
    let new = s
        .rotate(&acme(), &old.info.id, Duration::from_secs(3600))
        .unwrap();
    assert_eq!(new.info.expires_at, Some(now + 10 + 50));
    assert_eq!(
        s.get(&acme(), &old.info.id).unwrap().expires_at,
        Some(now + 50)
    );
}

#[test]
fn last_used_is_written_at_most_once_a_minute() {
    let (s, t) = store();
    let now = t.load(Ordering::SeqCst);
    let k = s
        .create(&TenantScope::All, spec(acme(), Role::Viewer))
        .unwrap();
    s.authenticate(&k.key).unwrap();
    assert_eq!(s.get(&acme(), &k.info.id).unwrap().last_used_at, Some(now));
    t.store(now + 30, Ordering::SeqCst);
    s.authenticate(&k.key).unwrap();
    assert_eq!(s.get(&acme(), &k.info.id).unwrap().last_used_at, Some(now));
    // Within the minute the cache answers; after it, the database must be asked.
    assert!(matches!(s.authenticate_cached(&k.key), Some(Ok(_))));
    t.store(now + 61, Ordering::SeqCst);
    assert!(s.authenticate_cached(&k.key).is_none());
    s.authenticate(&k.key).unwrap();
    assert_eq!(
        s.get(&acme(), &k.info.id).unwrap().last_used_at,
        Some(now + 61)
    );
}
