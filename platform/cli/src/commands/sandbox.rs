//! `sandbox create|ls|inspect|rm|pause|resume|hibernate|wake` (and the `ps`, `rm` aliases).

use hyper::Method;
use tartarus_types::{CreateSandbox, List, Sandbox};

use super::{CmdError, Ctx};
use crate::cli::{SandboxCreateArgs, SandboxLsArgs, SandboxRmArgs};
use crate::client::{encode_query, encode_segment, ApiClient, Body, ClientError};
use crate::output::{print, print_json, sandbox_details, sandbox_table};

pub async fn create(ctx: &Ctx, a: SandboxCreateArgs) -> Result<i32, CmdError> {
    let req = CreateSandbox {
        template: a.template,
        snapshot: a.snapshot,
        timeout_s: a.timeout,
        idle_timeout_s: a.idle_timeout,
        network: a.network.into(),
        labels: a.labels.into_iter().collect(),
    };
    let body = ctx
        .client
        .json_value(Method::POST, "/sandboxes", Some(&req))
        .await?;
    if ctx.json() {
        print_json(&body)?;
    } else {
        let id = body.get("id").and_then(|v| v.as_str()).unwrap_or_default();
        print(&format!("{id}\n"))?;
    }
    Ok(0)
}

/// `POST /sandboxes` for `run`.
pub async fn create_sandbox(
    client: &ApiClient,
    req: &CreateSandbox,
) -> Result<Sandbox, ClientError> {
    client.json(Method::POST, "/sandboxes", Some(req)).await
}

/// `DELETE /sandboxes/{id}`.
pub async fn delete_sandbox(
    client: &ApiClient,
    id: &str,
    grace: Option<u64>,
) -> Result<(), ClientError> {
    let mut path = format!("/sandboxes/{}", encode_segment(id));
    if let Some(g) = grace {
        path.push_str(&format!("?grace_s={g}"));
    }
    client.call(Method::DELETE, &path, Body::Empty).await
}

/// `DELETE /sandboxes/{id}?checkpoint=true`: the kept snapshot's id.
pub async fn delete_with_checkpoint(
    client: &ApiClient,
    id: &str,
    grace: Option<u64>,
) -> Result<String, ClientError> {
    let mut path = format!("/sandboxes/{}?checkpoint=true", encode_segment(id));
    if let Some(g) = grace {
        path.push_str(&format!("&grace_s={g}"));
    }
    let body: serde_json::Value = client.json(Method::DELETE, &path, None::<&()>).await?;
    body.pointer("/snapshot/id")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| ClientError::Decode(format!("no snapshot id in {body}")))
}

pub async fn ls(ctx: &Ctx, a: SandboxLsArgs) -> Result<i32, CmdError> {
    let path = match &a.state {
        Some(s) => format!("/sandboxes?state={}", encode_query(s)),
        None => "/sandboxes".to_string(),
    };
    let body: serde_json::Value = ctx.client.get(&path).await?;
    if ctx.json() {
        print_json(&body)?;
        return Ok(0);
    }
    let list: List<Sandbox> =
        serde_json::from_value(body).map_err(|e| ClientError::Decode(e.to_string()))?;
    print(&sandbox_table(&list.items))?;
    Ok(0)
}

pub async fn inspect(ctx: &Ctx, id: &str) -> Result<i32, CmdError> {
    let body: serde_json::Value = ctx
        .client
        .get(&format!("/sandboxes/{}", encode_segment(id)))
        .await?;
    if ctx.json() {
        print_json(&body)?;
        return Ok(0);
    }
    let sb: Sandbox =
        serde_json::from_value(body).map_err(|e| ClientError::Decode(e.to_string()))?;
    print(&sandbox_details(&sb))?;
    Ok(0)
}

pub async fn rm(ctx: &Ctx, a: SandboxRmArgs) -> Result<i32, CmdError> {
    let mut code = 0;
    for id in &a.ids {
        if a.checkpoint {
            match delete_with_checkpoint(&ctx.client, id, a.grace).await {
                Ok(snap) => print(&format!("{id} {snap}\n"))?,
                Err(e) => {
                    eprintln!("tartarus: {id}: {e}");
                    code = 1;
                }
            }
            continue;
        }
        match delete_sandbox(&ctx.client, id, a.grace).await {
            Ok(()) => print(&format!("{id}\n"))?,
            Err(e) => {
                eprintln!("tartarus: {id}: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

/// `pause` or `resume`.
pub async fn pause(ctx: &Ctx, id: &str, action: &str) -> Result<i32, CmdError> {
    let body = ctx
        .client
        .json_value(
            Method::POST,
            &format!("/sandboxes/{}/{action}", encode_segment(id)),
            None::<&()>,
        )
        .await?;
    if ctx.json() {
        print_json(&body)?;
    } else {
        let state = body.get("state").and_then(|v| v.as_str()).unwrap_or("?");
        print(&format!("{id} {state}\n"))?;
    }
    Ok(0)
}
