//! The REST API (spec: platform/openapi.yaml): routes, bodies, and the upgrade endpoints.

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tartarus_types::{
    CreateSandbox, CreateSnapshot, ExecRequest, Health, Image, ImagesFreed, List, Pool, PoolSpec,
    PullImage, Sandbox, SandboxState, Snapshot, Template, TemplateSpec, UPGRADE_PROTOCOL,
};
use tokio::sync::mpsc;

use tartarus_auth::{Action, TenantScope};

use crate::access::Caller;
use crate::daemon::Shared;
use crate::error::ApiError;
use crate::{code, exec, hibernate, images, keys, pool, sandbox, template};

/// Largest body `PUT /files` takes.
pub const MAX_FILE: usize = 512 << 20;

/// The API's routes behind the auth gate (`gate`: [`crate::access::gate`]'s state).
pub fn router(d: Shared, gate: std::sync::Arc<crate::access::Gate>) -> Router {
    routes(d).layer(axum::middleware::from_fn_with_state(
        gate,
        crate::access::gate,
    ))
}

fn routes(d: Shared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/templates", get(list_templates).post(build_template))
        .route(
            "/templates/{name}",
            get(get_template).delete(delete_template),
        )
        .route(
            "/templates/{name}/pool",
            get(get_pool).put(set_pool).delete(delete_pool),
        )
        .route("/pools", get(list_pools))
        .route("/sandboxes", get(list_sandboxes).post(create_sandbox))
        .route("/sandboxes/{id}", get(get_sandbox).delete(delete_sandbox))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/hibernate", post(hibernate_sandbox))
        .route("/sandboxes/{id}/wake", post(wake_sandbox))
        .route("/sandboxes/{id}/exec", post(exec_handler))
        .route("/sandboxes/{id}/code", post(code_handler))
        .route(
            "/sandboxes/{id}/files",
            get(get_file)
                .put(put_file)
                .layer(DefaultBodyLimit::max(MAX_FILE)),
        )
        .route("/sandboxes/{id}/logs", get(logs))
        .route(
            "/sandboxes/{id}/snapshots",
            get(list_sandbox_snapshots).post(create_snapshot),
        )
        .route("/sandboxes/{id}/agent", get(agent_upgrade))
        .route("/sandboxes/{id}/ports/{port}", get(port_upgrade))
        .route("/images", get(list_images))
        .route("/images/pull", post(pull_image))
        .route("/images/prune", post(prune_images))
        .route("/images/{*name}", get(get_image).delete(delete_image))
        .route("/snapshots", get(list_snapshots))
        .route("/snapshots/{id}", get(get_snapshot).delete(delete_snapshot))
        .route("/events", get(events))
        .route("/keys", get(keys::list_keys).post(keys::create_key))
        .route("/keys/{id}", get(keys::get_key).delete(keys::revoke_key))
        .route("/keys/{id}/rotate", post(keys::rotate_key))
        .route("/audit", get(keys::audit))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(d)
}

/// JSON bodies whose errors come out in our error shape, naming the field.
pub struct Body2<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for Body2<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("Cannot read the body: {e}")))?;
        if bytes.is_empty() {
            return Err(ApiError::BadRequest(
                "The body is empty; JSON expected".into(),
            ));
        }
        parse_body(&bytes).map(Body2)
    }
}

/// Parses a JSON body; errors name the field's path (`labels.a: invalid type ...`).
pub fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            ApiError::BadRequest(format!("Invalid body: {}", e.inner()))
        } else {
            ApiError::BadRequest(format!("Invalid body: {path}: {}", e.inner()))
        }
    })
}

/// Query strings with errors in our shape.
pub struct Q<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Q<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Q(v))
            .map_err(|e| ApiError::BadRequest(format!("Invalid query: {}", e.body_text())))
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "No such endpoint: {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> Response {
    let e = tartarus_types::ErrorBody {
        error: tartarus_types::ErrorDetail {
            code: "method_not_allowed".into(),
            message: format!("{} is not allowed on {}", req.method(), req.uri().path()),
        },
    };
    (StatusCode::METHOD_NOT_ALLOWED, Json(e)).into_response()
}

async fn health(State(d): State<Shared>, c: Caller) -> Result<Json<Health>, ApiError> {
    let scope = c.allow(Action::Health)?;
    let sandboxes = d.store.sandboxes(scope)?.len() as u64;
    let templates = d.store.templates(scope)?.len() as u64;
    Ok(Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        sandboxes,
        templates,
    }))
}

async fn list_templates(
    State(d): State<Shared>,
    c: Caller,
) -> Result<Json<List<Template>>, ApiError> {
    let scope = c.allow(Action::TemplateList)?;
    Ok(Json(List {
        items: d
            .store
            .templates(scope)?
            .into_iter()
            .map(|t| t.api)
            .collect(),
    }))
}

/// `?tenant=`: which tenant's template a host-scope caller means (default `*`, the shared
/// ones); a tenant's caller may leave it out or name its own tenant.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnerQuery {
    tenant: Option<String>,
}

fn owner_of<'a>(scope: &TenantScope, q: &'a OwnerQuery) -> Result<Option<&'a str>, ApiError> {
    match (scope, q.tenant.as_deref()) {
        (_, None) => Ok(None),
        (TenantScope::All, Some(t)) => Ok(Some(t)),
        (TenantScope::Tenant(own), Some(t)) if t == own.as_str() => Ok(None),
        (TenantScope::Tenant(_), Some(_)) => Err(ApiError::BadRequest(
            "tenant: only the host scope may name another tenant".into(),
        )),
    }
}

async fn get_pool(
    State(d): State<Shared>,
    c: Caller,
    Path(name): Path<String>,
    Q(q): Q<OwnerQuery>,
) -> Result<Json<Pool>, ApiError> {
    let scope = c.allow(Action::PoolList)?;
    let owner = owner_of(scope, &q)?;
    Ok(Json(pool::get(&d, scope, &name, owner)?))
}

async fn set_pool(
    State(d): State<Shared>,
    c: Caller,
    Path(name): Path<String>,
    Q(q): Q<OwnerQuery>,
    Body2(spec): Body2<PoolSpec>,
) -> Result<Json<Pool>, ApiError> {
    let scope = c.allow(Action::PoolSet)?;
    let owner = owner_of(scope, &q)?;
    Ok(Json(pool::set(&d, scope, &name, owner, spec)?))
}

async fn delete_pool(
    State(d): State<Shared>,
    c: Caller,
    Path(name): Path<String>,
    Q(q): Q<OwnerQuery>,
) -> Result<StatusCode, ApiError> {
    let scope = c.allow(Action::PoolDelete)?;
    let owner = owner_of(scope, &q)?;
    pool::delete(&d, scope, &name, owner)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_pools(State(d): State<Shared>, c: Caller) -> Result<Json<List<Pool>>, ApiError> {
    let scope = c.allow(Action::PoolList)?;
    Ok(Json(List {
        items: pool::list(&d, scope)?,
    }))
}

async fn get_template(
    State(d): State<Shared>,
    c: Caller,
    Path(name): Path<String>,
    Q(q): Q<OwnerQuery>,
) -> Result<Json<Template>, ApiError> {
    let scope = c.allow(Action::TemplateGet)?;
    let owner = owner_of(scope, &q)?;
    Ok(Json(template::visible(&d, scope, &name, owner)?.api))
}

async fn delete_template(
    State(d): State<Shared>,
    c: Caller,
    Path(name): Path<String>,
    Q(q): Q<OwnerQuery>,
) -> Result<StatusCode, ApiError> {
    let scope = c.allow(Action::TemplateDelete)?;
    let owner = owner_of(scope, &q)?;
    template::delete(&d, scope, &name, owner)?;
    Ok(StatusCode::NO_CONTENT)
}

fn ndjson(body: Body) -> Response {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

async fn build_template(
    State(d): State<Shared>,
    c: Caller,
    Body2(spec): Body2<TemplateSpec>,
) -> Result<Response, ApiError> {
    let scope = c.allow(Action::TemplateBuild)?;
    c.resource(format!("template/{}", spec.name));
    // The build goes on when the client leaves.
    Ok(ndjson_of(template::start_build(&d, scope, spec)?))
}

/// Sends each item of `rx` as one NDJSON line; the work behind it goes on if the client leaves.
fn ndjson_of<T: serde::Serialize + Send + 'static>(mut rx: mpsc::Receiver<T>) -> Response {
    let (tx, out) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            let mut line = serde_json::to_vec(&ev).unwrap_or_default();
            line.push(b'\n');
            let _ = tx.send(Ok(Bytes::from(line))).await;
        }
    });
    ndjson(exec::channel_body(out))
}

async fn pull_image(
    State(d): State<Shared>,
    c: Caller,
    Body2(req): Body2<PullImage>,
) -> Result<Response, ApiError> {
    let scope = c.allow(Action::ImagePull)?;
    c.resource(format!("image/{}", req.reference));
    template::tenant_may_use_image(scope, &req.reference)?;
    if req.reference.trim().is_empty() {
        return Err(ApiError::BadRequest("reference: empty".into()));
    }
    tartarus_images::source::Source::parse(&req.reference)
        .map_err(|e| ApiError::BadRequest(format!("reference: {e}")))?;
    Ok(ndjson_of(images::start_pull(&d, req)))
}

async fn list_images(State(d): State<Shared>, c: Caller) -> Result<Json<List<Image>>, ApiError> {
    c.allow(Action::ImageList)?;
    let d2 = d.clone();
    let items = tokio::task::spawn_blocking(move || images::list(&d2))
        .await
        .map_err(|e| ApiError::Internal(format!("task: {e}")))??;
    Ok(Json(List { items }))
}

async fn get_image(
    State(d): State<Shared>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<Image>, ApiError> {
    c.allow(Action::ImageGet)?;
    Ok(Json(images::get(&d, &name)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForceQuery {
    #[serde(default)]
    force: bool,
}

async fn delete_image(
    State(d): State<Shared>,
    c: Caller,
    Path(name): Path<String>,
    Q(q): Q<ForceQuery>,
) -> Result<Json<ImagesFreed>, ApiError> {
    c.allow(Action::ImageDelete)?;
    let d2 = d.clone();
    let freed = tokio::task::spawn_blocking(move || images::remove(&d2, &name, q.force))
        .await
        .map_err(|e| ApiError::Internal(format!("task: {e}")))??;
    Ok(Json(freed))
}

async fn prune_images(State(d): State<Shared>, c: Caller) -> Result<Json<ImagesFreed>, ApiError> {
    c.allow(Action::ImagePrune)?;
    let d2 = d.clone();
    let freed = tokio::task::spawn_blocking(move || images::prune(&d2))
        .await
        .map_err(|e| ApiError::Internal(format!("task: {e}")))??;
    Ok(Json(freed))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
}

async fn list_sandboxes(
    State(d): State<Shared>,
    c: Caller,
    Q(q): Q<ListQuery>,
) -> Result<Json<List<Sandbox>>, ApiError> {
    let scope = c.allow(Action::SandboxList)?;
    let want = match q.state.as_deref() {
        None => None,
        Some(s) => Some(SandboxState::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "state: '{s}' is not one of creating, running, paused, hibernated, stopped, failed"
            ))
        })?),
    };
    let items = d
        .store
        .sandboxes(scope)?
        .iter()
        .filter(|r| r.pool.is_none() && want.is_none_or(|w| r.state == w))
        .map(sandbox::view)
        .collect();
    Ok(Json(List { items }))
}

async fn create_sandbox(
    State(d): State<Shared>,
    c: Caller,
    Body2(req): Body2<CreateSandbox>,
) -> Result<(StatusCode, Json<Sandbox>), ApiError> {
    let scope = c.allow(Action::SandboxCreate)?;
    let s = sandbox::create(&d, scope, req).await?;
    c.resource(format!("sandbox/{}", s.id));
    Ok((StatusCode::CREATED, Json(s)))
}

async fn get_sandbox(
    State(d): State<Shared>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    let scope = c.allow(Action::SandboxGet)?;
    Ok(Json(sandbox::view(&d.sandbox_row(scope, &id)?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    grace_s: Option<u64>,
    /// Keep a snapshot of the sandbox before it goes; answered with 200 and the snapshot.
    #[serde(default)]
    checkpoint: bool,
}

async fn delete_sandbox(
    State(d): State<Shared>,
    c: Caller,
    Path(id): Path<String>,
    Q(q): Q<DeleteQuery>,
) -> Result<Response, ApiError> {
    let scope = c.allow(Action::SandboxDelete)?;
    let grace = q.grace_s.unwrap_or(0).min(600);
    match sandbox::delete(&d, scope, &id, grace, q.checkpoint).await? {
        Some(snap) => {
            c.resource(format!("snapshot/{}", snap.id));
            Ok(Json(serde_json::json!({ "snapshot": snap })).into_response())
        }
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

async fn hibernate_sandbox(
    State(d): State<Shared>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    let scope = c.allow(Action::SandboxHibernate)?;
    Ok(Json(
        hibernate::hibernate(&d, scope, &id, hibernate::Why::Request).await?,
    ))
}

async fn wake_sandbox(
    State(d): State<Shared>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    let scope = c.allow(Action::SandboxWake)?;
    Ok(Json(hibernate::wake(&d, scope, &id).await?))
}

async fn pause(
    State(d): State<Shared>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    let scope = c.allow(Action::SandboxPause)?;
    Ok(Json(sandbox::set_paused(&d, scope, &id, true).await?))
}

async fn resume(
    State(d): State<Shared>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    let scope = c.allow(Action::SandboxResume)?;
    Ok(Json(sandbox::set_paused(&d, scope, &id, false).await?))
}

async fn exec_handler(
    State(d): State<Shared>,
    c: Caller,
    Path(id): Path<String>,
    Body2(req): Body2<ExecRequest>,
) -> Result<Response, ApiError> {
    let scope = c.allow(Action::SandboxExec)?;
    if req.background {
        let started = exec::exec_background(&d, scope, &id, req).await?;
        return Ok((StatusCode::ACCEPTED, Json(started)).into_response());
    }
    if req.stream {
        return Ok(ndjson(exec::exec_stream(&d, scope, &id, req).await?));
    }
    Ok(Json(exec::exec(&d, scope, &id, req).await?).into_response())
}

/// `POST /sandboxes/{id}/code`: code for the sandbox's warm runtime (the exec action's rights).
async fn code_handler(
    State(d): State<Shared>,
    c: Caller,
    Path(id): Path<String>,
    Body2(req): Body2<tartarus_types::CodeRequest>,
) -> Result<Response, ApiError> {
    let scope = c.allow(Action::SandboxExec)?;
    if req.stream {
        return Ok(ndjson(code::code_stream(&d, scope, &id, req).await?));
    }
    Ok(Json(code::code(&d, scope, &id, req).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQuery {
    path: String,
    mode: Option<String>,
}

async fn put_file(
    State(d): State<Shared>,
    c: Caller,
    Path(id): Path<String>,
    Q(q): Q<FileQuery>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let scope = c.allow(Action::SandboxFilesWrite)?;
    let mode = match q.mode.as_deref() {
        None => None,
        Some(m) => Some(
            u32::from_str_radix(m, 8)
                .ok()
                .filter(|v| *v <= 0o7777)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("mode: '{m}' is not an octal file mode"))
                })?,
        ),
    };
    exec::put_file(&d, scope, &id, q.path, mode, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_file(
    State(d): State<Shared>,
    c: Caller,
    Path(id): Path<String>,
    Q(q): Q<FileQuery>,
) -> Result<Response, ApiError> {
    let scope = c.allow(Action::SandboxFilesRead)?;
    c.audit_read();
    let data = exec::get_file(&d, scope, &id, q.path).await?;
    let mut r = Response::new(Body::from(data));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    #[serde(default)]
    follow: bool,
    tail: Option<usize>,
}

async fn logs(
    State(d): State<Shared>,
    c: Caller,
    Path(id): Path<String>,
    Q(q): Q<LogQuery>,
) -> Result<Response, ApiError> {
    let scope = c.allow(Action::SandboxLogs)?;
    c.audit_read();
    let body = exec::logs(&d, scope, &id, q.follow, q.tail).await?;
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(r)
}

async fn create_snapshot(
    State(d): State<Shared>,
    c: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Snapshot>), ApiError> {
    let scope = c.allow(Action::SnapshotCreate)?;
    let req: CreateSnapshot = if body.is_empty() {
        CreateSnapshot::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("Invalid body: {e}")))?
    };
    let s = sandbox::snapshot(&d, scope, &id, req.leave_paused).await?;
    c.resource(format!("snapshot/{}", s.id));
    Ok((StatusCode::CREATED, Json(s)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapQuery {
    sandbox: Option<String>,
}

async fn list_snapshots(
    State(d): State<Shared>,
    c: Caller,
    Q(q): Q<SnapQuery>,
) -> Result<Json<List<Snapshot>>, ApiError> {
    let scope = c.allow(Action::SnapshotList)?;
    let items = d
        .store
        .snapshots(scope)?
        .into_iter()
        .map(|s| s.api)
        .filter(|s| q.sandbox.as_ref().is_none_or(|id| &s.sandbox == id))
        .collect();
    Ok(Json(List { items }))
}

async fn list_sandbox_snapshots(
    State(d): State<Shared>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<List<Snapshot>>, ApiError> {
    d.sandbox_row(c.allow(Action::SnapshotList)?, &id)?;
    list_snapshots(State(d), c, Q(SnapQuery { sandbox: Some(id) })).await
}

async fn get_snapshot(
    State(d): State<Shared>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<Snapshot>, ApiError> {
    let scope = c.allow(Action::SnapshotGet)?;
    d.store
        .snapshot(scope, &id)?
        .map(|s| Json(s.api))
        .ok_or_else(|| ApiError::NotFound(format!("No snapshot '{id}'")))
}

async fn delete_snapshot(
    State(d): State<Shared>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let scope = c.allow(Action::SnapshotDelete)?;
    sandbox::delete_snapshot(&d, scope, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventQuery {
    #[serde(default)]
    follow: bool,
    since: Option<i64>,
}

async fn events(
    State(d): State<Shared>,
    c: Caller,
    Q(q): Q<EventQuery>,
) -> Result<Response, ApiError> {
    let scope = c.allow(Action::EventsRead)?.clone();
    // Subscribe first so nothing falls between the stored and the live events.
    let mut live = d.events.subscribe();
    let mut last = q.since.unwrap_or(0);
    let stored = d.store.events_since(&scope, last, 10_000)?;
    let (tx, rx) = mpsc::channel(64);
    let follow = q.follow;
    tokio::spawn(async move {
        let line = |e: &tartarus_types::Event| {
            let mut v = serde_json::to_vec(e).unwrap_or_default();
            v.push(b'\n');
            Ok(Bytes::from(v))
        };
        for e in &stored {
            last = e.id;
            if tx.send(line(e)).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        loop {
            match live.recv().await {
                Ok(e) if e.id > last && scope.covers(&e.tenant) => {
                    last = e.id;
                    if tx.send(line(&e)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
    Ok(ndjson(exec::channel_body(rx)))
}

async fn metrics(State(d): State<Shared>, c: Caller) -> Result<Response, ApiError> {
    c.allow(Action::MetricsRead)?;
    d.refresh_gauges();
    d.metrics.set_forwarder(
        d.forwarder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|f| f.health())
            .as_ref(),
    );
    let mut r = Response::new(Body::from(d.metrics.encode()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(r)
}

/// Checks the upgrade headers and answers 101; `then` runs on the upgraded connection.
fn upgrade<F, Fut>(mut req: Request, then: F) -> Result<Response, ApiError>
where
    F: FnOnce(hyper::upgrade::Upgraded) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let wanted = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE_PROTOCOL));
    if !wanted {
        return Err(ApiError::BadRequest(format!(
            "This endpoint needs 'Connection: Upgrade' and 'Upgrade: {UPGRADE_PROTOCOL}'"
        )));
    }
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on.await {
            Ok(up) => then(up).await,
            Err(e) => tracing::info!("upgrade failed: {e}"),
        }
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    r.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
    Ok(r)
}

async fn agent_upgrade(
    State(d): State<Shared>,
    c: Caller,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let scope = c.allow(Action::SandboxAgent)?;
    c.audit_read();
    let (_, activity) = hibernate::awake(&d, scope, &id).await?;
    upgrade(req, move |up| exec::pipe_agent(d, id, up, activity))
}

async fn port_upgrade(
    State(d): State<Shared>,
    c: Caller,
    Path((id, port)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let scope = c.allow(Action::SandboxPorts)?;
    c.audit_read();
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("port: '{port}' is not a TCP port")))?;
    let (_, activity) = hibernate::awake(&d, scope, &id).await?;
    upgrade(req, move |up| exec::pipe_port(d, id, port, up, activity))
}
