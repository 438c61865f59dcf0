//! Tenancy, roles and the audit trail from the attacker's side, on every route of
//! platform/openapi.yaml: the real gate, real API keys in SQLite, a real audit log; the
//! resources are rows in a real state database (no VM is needed to prove a request never
//! reaches another tenant's sandbox).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tartarus_auth::keystore::KeySpec;
use tartarus_auth::{Role, TenantScope};
use tartarus_types::{NetworkMode, SandboxState, TemplateState};
use tower::ServiceExt;

use crate::daemon::Daemon;
use crate::routes_tests::{app, as_root, daemon, spec_routes};
use crate::store::{SandboxRow, StoredSpec};

const SB: &str = "sb-acme00000001";
const SNAP: &str = "snap-acme0000001";
const TPL: &str = "acmeonly";

struct World {
    d: Arc<Daemon>,
    dir: std::path::PathBuf,
    acme_admin: String,
    acme_dev: String,
    acme_viewer: String,
    evil_admin: String,
    acme_key_id: String,
}

fn key(d: &Daemon, tenant: &str, role: Role) -> (String, String) {
    let k = d
        .keys
        .create(
            &TenantScope::All,
            KeySpec {
                tenant: TenantScope::parse(tenant).unwrap(),
                role,
                name: format!("{tenant}-{}", role.as_str()),
                expires_at: None,
            },
        )
        .unwrap();
    (k.key, k.info.id)
}

fn spec() -> StoredSpec {
    StoredSpec {
        kernel: "/k".into(),
        rootfs: "/r".into(),
        boot_args: String::new(),
        vcpus: 1,
        memory_mib: 128,
        disk_mib: 64,
        env: Default::default(),
        warmup: vec![],
        image: None,
        rootfs_key: None,
        runtime: None,
    }
}

/// Tenant acme owns a running sandbox, a snapshot, a template and keys; tenant evil has an
/// admin key and nothing else.
fn world() -> World {
    let (d, dir) = daemon();
    let (acme_admin, acme_key_id) = key(&d, "acme", Role::Admin);
    let (acme_dev, _) = key(&d, "acme", Role::Developer);
    let (acme_viewer, _) = key(&d, "acme", Role::Viewer);
    let (evil_admin, _) = key(&d, "evil", Role::Admin);
    let tdir = dir.join("tpl");
    d.store
        .put_template(
            "acme",
            TPL,
            TemplateState::Ready,
            &spec(),
            &tdir.display().to_string(),
        )
        .unwrap();
    d.store
        .insert_sandbox(&SandboxRow {
            id: SB.into(),
            tenant: "acme".into(),
            state: SandboxState::Running,
            template: TPL.into(),
            snapshot: None,
            pid: None,
            pid_start: None,
            uid: 900_001,
            vcpus: 1,
            memory_mib: 128,
            network: NetworkMode::None,
            timeout_s: None,
            labels: Default::default(),
            created_ms: 1,
            create_ms: None,
            restore_ms: None,
            reason: None,
            template_dir: tdir.display().to_string(),
            net_index: None,
            idle_timeout_s: None,
            hibernated_ms: None,
            hibernated_bytes: None,
            memory_freed_kib: None,
            wake_ms: None,
            wakes: 0,
            pool: None,
            from_pool: false,
        })
        .unwrap();
    d.store
        .insert_snapshot(
            "acme",
            SNAP,
            SB,
            TPL,
            &tdir.display().to_string(),
            &dir.join("snap").display().to_string(),
            1,
            128,
            1,
        )
        .unwrap();
    d.event("acme", "sandbox.created", |e| e.sandbox = Some(SB.into()));
    World {
        d,
        dir,
        acme_admin,
        acme_dev,
        acme_viewer,
        evil_admin,
        acme_key_id,
    }
}

/// A concrete request for a spec route, aimed at acme's resources, with a valid body.
fn request(w: &World, method: &str, path: &str) -> (String, Body) {
    let mut p = path
        .replace("/sandboxes/{id}", &format!("/sandboxes/{SB}"))
        .replace("/snapshots/{id}", &format!("/snapshots/{SNAP}"))
        .replace("/keys/{id}", &format!("/keys/{}", w.acme_key_id))
        .replace("{name}", TPL)
        .replace("{port}", "80");
    let body = match (method, path) {
        ("post", "/sandboxes/{id}/exec") => r#"{"argv": ["true"]}"#,
        ("post", "/sandboxes/{id}/code") => r#"{"code": "1"}"#,
        ("post", "/sandboxes") => r#"{"template": "acmeonly"}"#,
        ("post", "/templates") => {
            r#"{"name": "x", "rootfs": "/nonexistent", "kernel": "/nonexistent"}"#
        }
        ("post", "/keys") => r#"{"name": "n", "role": "viewer"}"#,
        ("post", "/images/pull") => r#"{"reference": "127.0.0.1:1/none:latest"}"#,
        ("put", "/sandboxes/{id}/files") => "data",
        ("put", "/templates/{name}/pool") => r#"{"max": 1}"#,
        _ => "",
    };
    if path.ends_with("/files") {
        p.push_str("?path=/tmp/x");
    }
    (p, Body::from(body))
}

async fn call(w: &World, key: Option<&str>, method: &str, path: &str) -> (StatusCode, String) {
    let (p, body) = request(w, method, path);
    let mut b = Request::builder()
        .method(method.to_ascii_uppercase().as_str())
        .uri(&p)
        .header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    let mut req = b.body(body).unwrap();
    req.extensions_mut().insert(crate::access::ConnInfo::tcp(
        "127.0.0.1:40000".parse().unwrap(),
    ));
    let resp = app(&w.d).oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Routes whose path names one of acme's resources.
fn targeted(path: &str) -> bool {
    path.contains("{id}") || path.starts_with("/templates/")
}

#[tokio::test]
async fn another_tenant_gets_404_on_every_route_and_sees_nothing_listed() {
    let w = world();
    let mut checked = 0;
    for (path, methods) in spec_routes() {
        for m in &methods {
            let (status, body) = call(&w, Some(&w.evil_admin), m, &path).await;
            if targeted(&path) {
                assert_eq!(
                    status,
                    StatusCode::NOT_FOUND,
                    "evil's {m} {path} reached acme's resource: {body}"
                );
                checked += 1;
            }
            // No answer to evil ever names acme's things (errors may echo the path asked for,
            // and evil's audit records its own attempts).
            if status.is_success() && path != "/audit" {
                for secret in [SB, SNAP, TPL, w.acme_key_id.as_str()] {
                    assert!(!body.contains(secret), "{m} {path} leaked {secret}: {body}");
                }
            }
        }
    }
    assert!(checked >= 19, "only {checked} targeted routes");
    // The sandbox, snapshot and template are still there for their owner.
    for path in [
        format!("/sandboxes/{SB}"),
        format!("/snapshots/{SNAP}"),
        format!("/templates/{TPL}"),
    ] {
        let (s, b) = call(&w, Some(&w.acme_viewer), "get", &path).await;
        assert_eq!(s, StatusCode::OK, "{path}: {b}");
    }
    let (s, b) = call(&w, Some(&w.acme_viewer), "get", "/sandboxes").await;
    assert!(s.is_success() && b.contains(SB), "{b}");
    std::fs::remove_dir_all(&w.dir).unwrap();
}

#[tokio::test]
async fn a_viewer_is_refused_every_change_with_403() {
    let w = world();
    for (path, methods) in spec_routes() {
        for m in &methods {
            let (status, body) = call(&w, Some(&w.acme_viewer), m, &path).await;
            let reads_into_sandbox = path.ends_with("/files")
                || path.ends_with("/logs")
                || path.ends_with("/agent")
                || path.contains("/ports/");
            let admin_only = path.starts_with("/keys") || path == "/audit";
            let host_only = path == "/metrics";
            if m != "get" || reads_into_sandbox || admin_only || host_only {
                assert_eq!(status, StatusCode::FORBIDDEN, "viewer {m} {path}: {body}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["error"]["code"], "forbidden", "{body}");
            } else {
                assert_ne!(status, StatusCode::FORBIDDEN, "viewer {m} {path}: {body}");
            }
        }
    }
    // A developer may not delete templates or make keys; a tenant admin may not prune the
    // host's image cache or read host metrics.
    let (s, _) = call(&w, Some(&w.acme_dev), "delete", "/templates/{name}").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call(&w, Some(&w.acme_dev), "post", "/keys").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, b) = call(&w, Some(&w.acme_admin), "post", "/images/prune").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    let (s, _) = call(&w, Some(&w.acme_admin), "get", "/metrics").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    std::fs::remove_dir_all(&w.dir).unwrap();
}

#[tokio::test]
async fn bad_keys_are_401_and_audited() {
    let w = world();
    let good = w.acme_admin.clone();
    let mut typo = good.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    // Well-formed with a valid checksum, but never issued (a real id with a forged secret is
    // tartarus-auth's keystore test).
    let forged = tartarus_auth::apikey::ApiKey::generate().unwrap().expose();
    let (revoked, rid) = key(&w.d, "acme", Role::Admin);
    w.d.keys.revoke(&TenantScope::All, &rid).unwrap();
    let expired =
        w.d.keys
            .create(
                &TenantScope::All,
                KeySpec {
                    tenant: TenantScope::parse("acme").unwrap(),
                    role: Role::Admin,
                    name: "old".into(),
                    expires_at: Some(1),
                },
            )
            .unwrap()
            .key;
    for (what, k, word) in [
        ("none", None, "No credentials"),
        ("malformed", Some("tts_short"), "Malformed"),
        ("typo", Some(typo.as_str()), "checksum"),
        ("forged", Some(forged.as_str()), "Unknown"),
        ("revoked", Some(revoked.as_str()), "revoked"),
        ("expired", Some(expired.as_str()), "expired"),
        ("jwt without issuer", Some("a.b.c"), "neither"),
    ] {
        let (s, b) = call(&w, k, "get", "/sandboxes").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{what}: {b}");
        assert!(b.contains(word), "{what}: {b}");
        assert!(!b.contains(SB), "{what}: {b}");
    }
    // The Unix socket as another uid is not root's admin.
    let mut req = Request::builder()
        .uri("/sandboxes")
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(crate::access::ConnInfo::unix(Some(1000)));
    let resp = app(&w.d).oneshot(req).await.unwrap();
    assert_ne!(resp.status(), StatusCode::OK);
    let records = audit_records(&w).await;
    let failed = records
        .iter()
        .filter(|r| r["action"] == "auth.failed" && r["result"] == "denied")
        .count();
    assert!(failed >= 7, "{records:?}");
    std::fs::remove_dir_all(&w.dir).unwrap();
}

async fn audit_records(w: &World) -> Vec<serde_json::Value> {
    let req = as_root(
        Request::builder()
            .uri("/audit")
            .body(Body::empty())
            .unwrap(),
    );
    let resp = app(&w.d).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn changes_are_audited_with_who_what_and_result_and_tenants_read_only_theirs() {
    let w = world();
    let (s, b) = call(&w, Some(&w.acme_admin), "delete", "/snapshots/{id}").await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let (s, _) = call(&w, Some(&w.evil_admin), "delete", "/sandboxes/{id}").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&w, Some(&w.acme_viewer), "post", "/sandboxes/{id}/pause").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let records = audit_records(&w).await;
    let find = |action: &str, tenant: &str| {
        records
            .iter()
            .find(|r| r["action"] == action && r["tenant"] == tenant)
            .unwrap_or_else(|| panic!("no {action} of {tenant} in {records:#?}"))
    };
    let del = find("snapshot.delete", "acme");
    assert_eq!(del["result"], "ok");
    assert_eq!(del["resource"], format!("snapshot/{SNAP}"));
    assert!(del["principal"].as_str().unwrap().starts_with("key:"));
    assert_eq!(del["source"], "127.0.0.1:40000");
    assert!(del["request_id"].as_str().unwrap().starts_with("req-"));
    let evil = find("sandbox.delete", "evil");
    assert!(
        evil["result"].as_str().unwrap().starts_with("error: 404"),
        "{evil}"
    );
    assert_eq!(find("sandbox.pause", "acme")["result"], "denied");
    // acme's admin reads acme's records only, even when it asks for evil's.
    for q in ["/audit", "/audit?tenant=evil"] {
        let (s, b) = call(&w, Some(&w.acme_admin), "get", q).await;
        assert_eq!(s, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert!(
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["tenant"] == "acme"),
            "{q}: {b}"
        );
    }
    // Events: evil sees none of acme's.
    let (s, b) = call(&w, Some(&w.evil_admin), "get", "/events").await;
    assert_eq!(s, StatusCode::OK);
    assert!(!b.contains(SB) && !b.contains(SNAP), "{b}");
    // The log verifies.
    let report = tartarus_audit::verify(w.d.audit.path(), &w.d.audit.public_key()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    std::fs::remove_dir_all(&w.dir).unwrap();
}

#[tokio::test]
async fn keys_stay_in_their_tenant() {
    let w = world();
    // evil cannot list, rotate or revoke acme's keys, nor make one for acme.
    let (s, b) = call(&w, Some(&w.evil_admin), "get", "/keys").await;
    assert_eq!(s, StatusCode::OK);
    assert!(!b.contains(&w.acme_key_id), "{b}");
    let req = Request::builder()
        .method("POST")
        .uri("/keys")
        .header("authorization", format!("Bearer {}", w.evil_admin))
        .body(Body::from(
            r#"{"name": "x", "role": "admin", "tenant": "acme"}"#,
        ))
        .unwrap();
    let resp = app(&w.d).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // acme's admin makes a developer key that works, rotates it, revokes the new one.
    let req = Request::builder()
        .method("POST")
        .uri("/keys")
        .header("authorization", format!("Bearer {}", w.acme_admin))
        .body(Body::from(r#"{"name": "ci", "role": "developer"}"#))
        .unwrap();
    let resp = app(&w.d).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let k: tartarus_types::CreatedKey = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (k.info.tenant.as_str(), k.info.role.as_str()),
        ("acme", "developer")
    );
    let (s, b) = call(&w, Some(&k.key), "get", &format!("/sandboxes/{SB}")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = call(
        &w,
        Some(&w.acme_admin),
        "delete",
        &format!("/keys/{}", k.info.id),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _) = call(&w, Some(&k.key), "get", "/sandboxes").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    std::fs::remove_dir_all(&w.dir).unwrap();
}

#[tokio::test]
async fn tenants_cannot_name_host_files() {
    let w = world();
    let post = |path: &'static str, body: &'static str, key: String| {
        let d = w.d.clone();
        async move {
            let mut req = Request::builder()
                .method("POST")
                .uri(path)
                .header("authorization", format!("Bearer {key}"))
                .body(Body::from(body))
                .unwrap();
            req.extensions_mut().insert(crate::access::ConnInfo::tcp(
                "127.0.0.1:40001".parse().unwrap(),
            ));
            let resp = app(&d).oneshot(req).await.unwrap();
            let s = resp.status();
            let b = resp.into_body().collect().await.unwrap().to_bytes();
            (s, String::from_utf8_lossy(&b).into_owned())
        }
    };
    for (path, body) in [
        ("/templates", r#"{"name": "t", "rootfs": "/etc/shadow"}"#),
        (
            "/templates",
            r#"{"name": "t", "kernel": "/boot/vmlinuz", "image": "127.0.0.1:1/x"}"#,
        ),
        ("/templates", r#"{"name": "t", "image": "oci:/var/lib"}"#),
        (
            "/templates",
            r#"{"name": "t", "image": "docker-archive:/etc/passwd"}"#,
        ),
        (
            "/images/pull",
            r#"{"reference": "docker-archive:/etc/passwd"}"#,
        ),
        ("/images/pull", r#"{"reference": "oci:/var/lib"}"#),
    ] {
        let (s, b) = post(path, body, w.acme_admin.clone()).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path} {body}: {b}");
        assert!(b.contains("host"), "{b}");
    }
    std::fs::remove_dir_all(&w.dir).unwrap();
}
