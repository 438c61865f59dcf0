//! A stand-in for tartarusd, for the CLI's tests only: a small hyper server on a temporary Unix
//! socket (and a TCP port) answering the API's routes with canned bodies, NDJSON streams, and
//! upgrades (agent connections are served by the real guest-init agent, in-process; port
//! connections echo). It records every request.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

type Body = BoxBody<Bytes, Infallible>;

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub uri: String,
    pub authorization: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    files: HashMap<String, Vec<u8>>,
    /// Templates built from an image (`img-*` templates exist only once built), by name: the
    /// image reference.
    image_templates: HashMap<String, String>,
    /// Why TLS handshakes on the TCP listener failed.
    tls_failures: Vec<String>,
}

pub struct StandIn {
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub tcp: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
}

impl StandIn {
    pub fn unix_host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    pub fn tcp_host(&self) -> String {
        format!("http://{}", self.tcp)
    }

    pub fn https_host(&self) -> String {
        format!("https://{}", self.tcp)
    }

    pub fn tls_failures(&self) -> Vec<String> {
        self.state.lock().unwrap().tls_failures.clone()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn last(&self, method: &str, prefix: &str) -> Option<Recorded> {
        self.requests()
            .into_iter()
            .rev()
            .find(|r| r.method == method && r.uri.starts_with(prefix))
    }

    pub fn exact(&self, method: &str, uri: &str) -> Option<Recorded> {
        self.requests()
            .into_iter()
            .rev()
            .find(|r| r.method == method && r.uri == uri)
    }

    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.state.lock().unwrap().files.get(path).cloned()
    }

    pub fn put_file(&self, path: &str, data: &[u8]) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.to_string(), data.to_vec());
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "tartarus-cli-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts a stand-in daemon on its own thread and runtime.
pub fn start() -> StandIn {
    start_inner(None)
}

/// Like [`start`], but its TCP listener speaks TLS with this configuration (a connection whose
/// handshake fails is dropped).
pub fn start_tls(config: Arc<rustls::ServerConfig>) -> StandIn {
    start_inner(Some(config))
}

fn start_inner(tls: Option<Arc<rustls::ServerConfig>>) -> StandIn {
    let dir = temp_dir("standin");
    let sock = dir.join("tartarusd.sock");
    let state = Arc::new(Mutex::new(State::default()));
    let (tx, rx) = std::sync::mpsc::channel();
    let st = state.clone();
    let sock2 = sock.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let unix = tokio::net::UnixListener::bind(&sock2).unwrap();
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(tcp.local_addr().unwrap()).unwrap();
            let st2 = st.clone();
            tokio::spawn(async move {
                loop {
                    let (s, _) = tcp.accept().await.unwrap();
                    let st3 = st2.clone();
                    match &tls {
                        None => {
                            tokio::spawn(serve(TokioIo::new(s), st3));
                        }
                        Some(cfg) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
                            tokio::spawn(async move {
                                match acceptor.accept(s).await {
                                    Ok(t) => serve(TokioIo::new(t), st3).await,
                                    Err(e) => st3.lock().unwrap().tls_failures.push(e.to_string()),
                                }
                            });
                        }
                    }
                }
            });
            loop {
                let (s, _) = unix.accept().await.unwrap();
                tokio::spawn(serve(TokioIo::new(s), st.clone()));
            }
        });
    });
    let tcp = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    StandIn {
        dir,
        sock,
        tcp,
        state,
    }
}

async fn serve<I>(io: I, st: Arc<Mutex<State>>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| handle(req, st.clone()));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, svc)
        .with_upgrades()
        .await;
}

/// A streamed body fed from a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn full(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        serde_json::json!({"error": {"code": code, "message": message}}),
    )
}

/// An NDJSON (or text) stream: each item is sent as its own chunk, a little apart.
fn stream(ctype: &str, items: Vec<String>) -> Response<Body> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        for i in items {
            if tx.send(Bytes::from(i)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", ctype)
        .body(ChannelBody(rx).boxed())
        .unwrap()
}

fn ndjson(events: Vec<serde_json::Value>) -> Response<Body> {
    stream(
        "application/x-ndjson",
        events.into_iter().map(|e| format!("{e}\n")).collect(),
    )
}

pub fn sandbox(id: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "state": "running", "template": "base", "snapshot": null, "pid": 4242,
        "vcpus": 1, "memory_mib": 256, "network": "none", "guest_ip": null, "timeout_s": null,
        "labels": {}, "created_at": "2026-01-01T00:00:00Z", "age_s": 125, "create_ms": 12.5,
        "restore_ms": 3.0, "rss_kib": 40960, "reason": null
    })
}

pub fn template(name: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name, "state": "ready", "kernel": "/k/vmlinux", "rootfs": "/k/rootfs.ext4",
        "boot_args": "", "vcpus": 1, "memory_mib": 256, "disk_mib": 1024, "env": {},
        "warmup": [], "created_at": "2026-01-01T00:00:00Z", "build_ms": 1500,
        "snapshot_bytes": 1048576, "error": null
    })
}

/// An image as `GET /images` shows it; `entrypoint ["/entry"]`, `cmd ["default"]`.
pub fn image(id: &str, names: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "id": id, "names": names, "source": names.first().copied().unwrap_or("oci:/x"),
        "size": 3_250_000, "layers": ["sha256:1111111111111111", "sha256:2222222222222222"],
        "created": null, "pulled_at": "2026-01-01T00:00:00Z", "entrypoint": ["/entry"],
        "cmd": ["default"], "env": ["PATH=/bin"], "working_dir": "/", "user": "",
        "labels": {}, "exposed_ports": [], "rootfs_bytes": null, "templates": []
    })
}

pub const IMAGE_ID: &str =
    "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// `POST /images/pull`: `bad/ref` fails mid-stream; anything else resolves, downloads two
/// layers (one cached, one retried) and is done.
fn pull(body: &[u8]) -> Response<Body> {
    let req: tartarus_types::PullImage = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    let mut events = vec![
        serde_json::json!({"type": "resolved", "image": req.reference,
        "digest": IMAGE_ID, "layers": 2, "bytes": 3000}),
    ];
    if req.reference == "bad/ref" {
        events.push(serde_json::json!({"type": "error",
            "error": {"code": "not_found", "message": "manifest unknown"}}));
        return ndjson(events);
    }
    events.extend([
        serde_json::json!({"type": "layer", "digest": "sha256:1111", "bytes": 1000,
            "cached": true}),
        serde_json::json!({"type": "progress", "digest": "sha256:2222", "done": 500,
            "total": 2000}),
        serde_json::json!({"type": "retry", "what": "layer sha256:2222", "attempt": 1,
            "error": "connection reset"}),
        serde_json::json!({"type": "progress", "digest": "sha256:2222", "done": 2000,
            "total": 2000}),
        serde_json::json!({"type": "layer", "digest": "sha256:2222", "bytes": 2000,
            "cached": false}),
    ]);
    if req.build {
        events.push(serde_json::json!({"type": "build", "message": "unpacking"}));
    }
    let name = req.name.unwrap_or(req.reference);
    events.push(serde_json::json!({"type": "done", "image": image(IMAGE_ID, &[&name])}));
    ndjson(events)
}

fn freed(ids: &[&str]) -> serde_json::Value {
    serde_json::json!({"images": ids, "blobs": 3, "rootfs": 1, "bytes": 3_250_000})
}

fn query(uri: &hyper::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.replace("%2F", "/").replace("%20", " "))
    })
}

fn upgrade_response(req: &mut Request<Incoming>) -> Option<hyper::upgrade::OnUpgrade> {
    let ok = req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes() == b"tartarus");
    ok.then(|| hyper::upgrade::on(req))
}

fn switching() -> Response<Body> {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "tartarus")
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}

async fn handle(
    mut req: Request<Incoming>,
    st: Arc<Mutex<State>>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let uri = req.uri().clone();
    let path = uri.path().to_string();
    let authorization = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    let on_upgrade = upgrade_response(&mut req);
    let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
    st.lock().unwrap().requests.push(Recorded {
        method: method.clone(),
        uri: uri.to_string(),
        authorization: authorization.clone(),
        body: body.clone(),
    });
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if authorization.as_deref() == Some("Bearer revoked.jwt.token") {
        return Ok(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "API key revoked",
        ));
    }
    let resp = match (method.as_str(), parts.as_slice()) {
        ("GET", ["health"]) => json(
            StatusCode::OK,
            serde_json::json!({"status": "ok", "version": "0.1.0", "sandboxes": 1, "templates": 2}),
        ),
        ("GET", ["plain-error"]) => full(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "boom"),
        ("GET", ["sandboxes"]) => json(
            StatusCode::OK,
            serde_json::json!({"items": [sandbox("sb-000000000001"), sandbox("sb-000000000002")]}),
        ),
        ("POST", ["sandboxes"]) => json(StatusCode::CREATED, sandbox("sb-000000000001")),
        ("GET", ["sandboxes", "sb-missing", ..]) | ("DELETE", ["sandboxes", "sb-missing"]) => {
            error(StatusCode::NOT_FOUND, "not_found", "No sandbox sb-missing")
        }
        ("GET", ["sandboxes", id]) => json(StatusCode::OK, sandbox(id)),
        ("DELETE", ["sandboxes", _]) => full(StatusCode::NO_CONTENT, "text/plain", ""),
        ("POST", ["sandboxes", id, "pause"]) => {
            let mut s = sandbox(id);
            s["state"] = "paused".into();
            json(StatusCode::OK, s)
        }
        ("POST", ["sandboxes", id, "resume"]) => json(StatusCode::OK, sandbox(id)),
        ("POST", ["sandboxes", _, "exec"]) => exec(&body),
        ("GET", ["sandboxes", _, "agent"]) => match on_upgrade {
            Some(on) => {
                tokio::spawn(async move {
                    let mut up = TokioIo::new(on.await.unwrap());
                    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
                    std::thread::spawn(move || {
                        let agent =
                            guest_init::agent::Agent::new(guest_init::reaper::Reaper::per_child());
                        agent.handle_connection(b)
                    });
                    a.set_nonblocking(true).unwrap();
                    let mut a = tokio::net::UnixStream::from_std(a).unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut up, &mut a).await;
                });
                switching()
            }
            None => error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "Upgrade: tartarus needed",
            ),
        },
        ("GET", ["sandboxes", _, "ports", _]) => match on_upgrade {
            Some(on) => {
                tokio::spawn(async move {
                    let up = TokioIo::new(on.await.unwrap());
                    let (mut r, mut w) = tokio::io::split(up);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
                switching()
            }
            None => error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "Upgrade: tartarus needed",
            ),
        },
        ("PUT", ["sandboxes", _, "files"]) => {
            let p = query(&uri, "path").unwrap_or_default();
            st.lock().unwrap().files.insert(p, body);
            full(StatusCode::NO_CONTENT, "text/plain", "")
        }
        ("GET", ["sandboxes", _, "files"]) => {
            let p = query(&uri, "path").unwrap_or_default();
            match st.lock().unwrap().files.get(&p) {
                Some(d) => full(StatusCode::OK, "application/octet-stream", d.clone()),
                None => error(StatusCode::NOT_FOUND, "not_found", &format!("No file {p}")),
            }
        }
        ("GET", ["sandboxes", _, "logs"]) => stream(
            "text/plain",
            vec!["boot line 1\n".into(), "boot ".into(), "line 2\n".into()],
        ),
        ("POST", ["sandboxes", id, "snapshots"]) => json(
            StatusCode::CREATED,
            serde_json::json!({"id": "snap-000000000001", "sandbox": id, "template": "base",
                "created_at": "2026-01-01T00:00:00Z", "size_bytes": 3145728}),
        ),
        ("GET", ["snapshots"]) => json(
            StatusCode::OK,
            serde_json::json!({"items": [{"id": "snap-000000000001", "sandbox": "sb-000000000001",
                "template": "base", "created_at": "2026-01-01T00:00:00Z", "size_bytes": 3145728}]}),
        ),
        ("DELETE", ["snapshots", _]) | ("DELETE", ["templates", _]) => {
            full(StatusCode::NO_CONTENT, "text/plain", "")
        }
        ("GET", ["templates"]) => json(
            StatusCode::OK,
            serde_json::json!({"items": [template("base"), template("python")]}),
        ),
        ("GET", ["templates", name]) if name.starts_with("img-") => {
            let built = st.lock().unwrap().image_templates.get(*name).cloned();
            match built {
                Some(reference) => json(StatusCode::OK, image_template(name, &reference)),
                None => error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("No template {name}"),
                ),
            }
        }
        ("GET", ["templates", name]) if *name == "nosuch" || name.contains('%') => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("No template {name}"),
        ),
        ("GET", ["templates", name]) => json(StatusCode::OK, template(name)),
        ("POST", ["templates"]) => build(&body, &st),
        ("POST", ["images", "pull"]) => pull(&body),
        ("POST", ["images", "prune"]) => json(StatusCode::OK, freed(&[IMAGE_ID])),
        ("GET", ["images"]) => json(
            StatusCode::OK,
            serde_json::json!({"items": [
                image(IMAGE_ID, &["docker.io/library/alpine:3.20", "alpine:latest"]),
                image("sha256:fedcba9876543210", &[]),
            ]}),
        ),
        ("GET", ["images", "missing"]) | ("DELETE", ["images", "missing"]) => {
            error(StatusCode::NOT_FOUND, "not_found", "No image missing")
        }
        ("GET", ["images", rest @ ..]) => json(StatusCode::OK, image(IMAGE_ID, &[&rest.join("/")])),
        ("DELETE", ["images", "used"]) if query(&uri, "force").as_deref() != Some("true") => error(
            StatusCode::CONFLICT,
            "conflict",
            "Image used is used by templates img-used",
        ),
        ("DELETE", ["images", ..]) => json(StatusCode::OK, freed(&[IMAGE_ID])),
        ("POST", ["keys"]) => {
            let req: tartarus_types::CreateKey = serde_json::from_slice(&body).unwrap();
            let mut info = key_info("", &req.name);
            info["role"] = req.role.into();
            info["tenant"] = req.tenant.unwrap_or_else(|| "*".into()).into();
            info["expires_at"] = req.expires_in_s.map(|s| KEY_CREATED + s as i64).into();
            created_key(info)
        }
        ("GET", ["keys"]) => {
            let mut revoked = key_info("Rev0ked1", "old laptop");
            revoked["revoked_at"] = (KEY_CREATED + 60).into();
            json(
                StatusCode::OK,
                serde_json::json!({"items": [key_info("Abcd1234", "ci"), revoked]}),
            )
        }
        ("GET", ["keys", "nosuch00"]) => {
            error(StatusCode::NOT_FOUND, "not_found", "No key nosuch00")
        }
        ("GET", ["keys", id]) => json(StatusCode::OK, key_info(id, "ci")),
        ("POST", ["keys", id, "rotate"]) => {
            let req: tartarus_types::RotateKey = serde_json::from_slice(&body).unwrap();
            let mut info = key_info("", &format!("ci (rotated from {id})"));
            info["expires_at"] = req.overlap_s.map(|s| s as i64).into();
            created_key(info)
        }
        ("DELETE", ["keys", id]) => {
            let mut info = key_info(id, "ci");
            info["revoked_at"] = (KEY_CREATED + 60).into();
            json(StatusCode::OK, info)
        }
        ("GET", ["audit"]) if query(&uri, "tenant").as_deref() == Some("other") => error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Role viewer may not audit_read",
        ),
        ("GET", ["audit"]) => json(
            StatusCode::OK,
            serde_json::json!({"items": [
                audit_entry(1, "unix:uid=0", "key.create", "key/Abcd1234", "ok"),
                audit_entry(2, "key:Abcd1234", "sandbox.create", "sandbox/sb-000000000001", "denied"),
            ]}),
        ),
        ("GET", ["events"]) => ndjson(vec![
            serde_json::json!({"id": 1, "time": "2026-01-01T00:00:00Z", "kind": "sandbox.created",
                "sandbox": "sb-000000000001", "template": "base", "snapshot": null,
                "state": null, "message": null}),
            serde_json::json!({"id": 2, "time": "2026-01-01T00:00:01Z", "kind": "sandbox.state",
                "sandbox": "sb-000000000001", "template": null, "snapshot": null,
                "state": "running", "message": null}),
        ]),
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("No route {method} {path}"),
        ),
    };
    Ok(resp)
}

/// Exec: `nosuch` is a missing program; `exit N` exits N; `kill` dies of SIGKILL; `fail` sends
/// an error event mid-stream; anything else echoes its argv on stdout and `err` on stderr.
fn exec(body: &[u8]) -> Response<Body> {
    let req: tartarus_types::ExecRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    let argv0 = req.argv.first().cloned().unwrap_or_default();
    if argv0 == "nosuch" {
        return error(
            StatusCode::BAD_REQUEST,
            "agent_error",
            "cannot execute 'nosuch': No such file or directory (os error 2)",
        );
    }
    if req.background {
        return json(StatusCode::ACCEPTED, serde_json::json!({"pid": 42}));
    }
    let (code, signal) = match argv0.as_str() {
        "exit" => (req.argv.get(1).and_then(|c| c.parse().ok()), None),
        "kill" => (None, Some(9)),
        _ => (Some(0), None),
    };
    let mut events = vec![serde_json::json!({"type": "started", "pid": 7})];
    let env: Vec<String> = req.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    events.push(
        serde_json::json!({"type": "stdout", "data": format!("argv={} env={} cwd={}\n",
        req.argv.join(" "), env.join(","), req.cwd.unwrap_or_default())}),
    );
    events.push(serde_json::json!({"type": "stderr", "data": "err\n"}));
    if argv0 == "fail" {
        events.push(serde_json::json!({"type": "error",
            "error": {"code": "unavailable", "message": "The sandbox's agent is not answering"}}));
    } else {
        events.push(
            serde_json::json!({"type": "exit", "exit_code": code, "signal": signal,
            "duration_ms": 3}),
        );
    }
    ndjson(events)
}

/// A template made from `reference` (entrypoint `/entry`, cmd `default`), but with an empty
/// image when the reference is `noentry/x`.
pub fn image_template(name: &str, reference: &str) -> serde_json::Value {
    let mut t = template(name);
    let (entrypoint, cmd) = if reference == "noentry/x" {
        (vec![], vec![])
    } else {
        (vec!["/entry"], vec!["default"])
    };
    t["image"] = serde_json::json!({"reference": reference, "id": IMAGE_ID,
        "entrypoint": entrypoint, "cmd": cmd, "env": [], "working_dir": "/", "user": ""});
    t
}

/// Template build: a spec named `bad` fails after its first step; one with an image is
/// remembered (its `img-*` template then exists).
fn build(body: &[u8], st: &Arc<Mutex<State>>) -> Response<Body> {
    let spec: tartarus_types::TemplateSpec = match serde_json::from_slice(body) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    if let Some(reference) = &spec.image {
        st.lock()
            .unwrap()
            .image_templates
            .insert(spec.name.clone(), reference.clone());
        return ndjson(vec![
            serde_json::json!({"type": "progress", "step": 1, "steps": 2, "message": "pulling"}),
            serde_json::json!({"type": "done", "template": image_template(&spec.name, reference)}),
        ]);
    }
    let mut events = vec![
        serde_json::json!({"type": "progress", "step": 1, "steps": 2, "message": "booting"}),
        serde_json::json!({"type": "log", "line": "guest: hello from the console"}),
    ];
    if spec.name == "bad" {
        events.push(serde_json::json!({"type": "error",
            "error": {"code": "internal", "message": "warm-up command exited with 1"}}));
    } else {
        events.push(
            serde_json::json!({"type": "progress", "step": 2, "steps": 2, "message": "snapshotting"}),
        );
        events.push(serde_json::json!({"type": "done", "template": template(&spec.name)}));
    }
    ndjson(events)
}

/// When the stand-in's keys were created (Unix seconds).
pub const KEY_CREATED: i64 = 1_764_950_400;

/// A key as `GET /keys` shows it; an empty id gets a fresh one.
pub fn key_info(id: &str, name: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "tenant": "acme", "role": "developer", "name": name,
        "created_at": KEY_CREATED, "expires_at": null, "last_used_at": null,
        "revoked_at": null, "replaced_by": null})
}

/// A `201` with a real, checksummed key whose id is the info's.
fn created_key(mut info: serde_json::Value) -> Response<Body> {
    let key = tartarus_auth::apikey::ApiKey::generate().unwrap();
    info["id"] = key.id().into();
    info["key"] = key.expose().into();
    json(StatusCode::CREATED, info)
}

fn audit_entry(
    seq: u64,
    principal: &str,
    action: &str,
    resource: &str,
    result: &str,
) -> serde_json::Value {
    serde_json::json!({"seq": seq, "time": format!("2026-12-05T17:00:0{seq}.123Z"),
        "request_id": format!("r{seq}"), "tenant": "acme", "principal": principal,
        "action": action, "resource": resource, "result": result, "source": "unix",
        "hash": "ab".repeat(32)})
}
