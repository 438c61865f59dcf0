//! Keeps platform/openapi.yaml true: every path and method it lists is routed, and no route
//! exists that it does not list.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::daemon::{Config, Daemon};
use crate::vmm::Launcher;

const SPEC: &str = include_str!("../../openapi.yaml");
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// (path, methods) of the spec's `paths:` section, read from its indentation.
pub fn spec_routes() -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_paths = false;
    for line in SPEC.lines() {
        if line == "paths:" {
            in_paths = true;
            continue;
        }
        if in_paths && !line.starts_with(' ') && !line.is_empty() {
            break;
        }
        if let Some(p) = line.strip_prefix("  /") {
            out.push((format!("/{}", p.trim_end_matches(':')), Vec::new()));
        } else if let Some(m) = line.strip_prefix("    ") {
            let m = m.trim_end_matches(':');
            if METHODS.contains(&m) {
                out.last_mut()
                    .expect("method before path")
                    .1
                    .push(m.to_string());
            }
        }
    }
    out
}

pub fn daemon() -> (Arc<Daemon>, std::path::PathBuf) {
    let dir =
        std::env::temp_dir().join(format!("tartarusd-routes-{}", crate::fsutil::random_hex(6)));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = Config {
        state_dir: dir.clone(),
        template_cache: dir.join("cache"),
        uid_base: 900_000,
        max_sandboxes: 1,
        max_memory_mib: 1,
        pool_reserve_mib: 0,
        launcher: Launcher {
            jailer: "/nonexistent".into(),
            vmm: "/nonexistent".into(),
            jail_dir: dir.join("jail"),
            pvm_workarounds: false,
            cgroup_version: 1,
        },
        default_kernel: None,
    };
    let store = crate::store::Store::open(&dir.join("state.db")).unwrap();
    let images = crate::images::Images {
        store: Arc::new(tartarus_images::ImageStore::open(&dir.join("images")).unwrap()),
        init: "/nonexistent".into(),
        insecure_registries: vec![],
        max_image_size: None,
    };
    let keys = Arc::new(tartarus_auth::keystore::KeyStore::open(&dir.join("auth.db")).unwrap());
    let (audit, _) = tartarus_audit::AuditLog::open(tartarus_audit::LogConfig::new(
        dir.join("audit.log"),
        dir.join("audit.key"),
    ))
    .unwrap();
    (
        Arc::new(Daemon::new(cfg, store, images, keys, Arc::new(audit))),
        dir,
    )
}

/// The router behind the real gate (keys of `d`, its audit log).
pub fn app(d: &Arc<Daemon>) -> axum::Router {
    let gate = Arc::new(crate::access::Gate {
        auth: tartarus_auth::layer::Authenticator::new().with_keys(d.keys.clone()),
        audit: d.audit.clone(),
        metrics: d.metrics.clone(),
    });
    crate::routes::router(d.clone(), gate)
}

/// A request as root on the Unix socket.
pub fn as_root(mut req: Request<Body>) -> Request<Body> {
    req.extensions_mut()
        .insert(crate::access::ConnInfo::unix(Some(0)));
    req
}

async fn call(d: &Arc<Daemon>, method: &str, path: &str) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method.to_ascii_uppercase().as_str())
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let resp = app(d).oneshot(as_root(req)).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn concrete(path: &str) -> String {
    path.replace("{id}", "sb-000000000000")
        .replace("{name}", "nothing")
        .replace("{port}", "80")
}

#[tokio::test]
async fn every_spec_route_is_served_and_nothing_else() {
    let (d, dir) = daemon();
    let routes = spec_routes();
    assert!(routes.len() >= 17, "spec parse found {routes:?}");
    for (path, methods) in &routes {
        assert!(!methods.is_empty(), "{path} has no methods in the spec");
        for m in METHODS {
            let (status, body) = call(&d, m, &concrete(path)).await;
            if methods.iter().any(|x| x == m) {
                assert!(
                    status != StatusCode::METHOD_NOT_ALLOWED && !body.contains("No such endpoint"),
                    "{m} {path} is in the spec but not routed: {status} {body}"
                );
                // Every error is in the documented shape.
                if !status.is_success() {
                    let v: serde_json::Value = serde_json::from_str(&body)
                        .unwrap_or_else(|_| panic!("{m} {path}: {body}"));
                    assert!(v["error"]["code"].is_string(), "{m} {path}: {body}");
                }
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{m} {path} is routed but not in the spec: {body}"
                );
            }
        }
    }
    let (status, body) = call(&d, "get", "/not/in/the/spec").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn bodies_name_the_bad_field() {
    let (d, dir) = daemon();
    let req = Request::builder()
        .method("POST")
        .uri("/sandboxes")
        .body(Body::from(r#"{"template": "base", "labels": {"a": 1}}"#))
        .unwrap();
    let resp = app(&d).oneshot(as_root(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("labels"), "{text}");
    let (status, body) = call(&d, "get", "/sandboxes?state=sleeping").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("sleeping"), "{body}");
    let (status, body) = call(&d, "get", "/sandboxes/sb-1/ports/0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    std::fs::remove_dir_all(dir).unwrap();
}
