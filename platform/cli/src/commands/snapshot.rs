//! `snapshot create|ls|inspect|rm`.

use hyper::Method;
use tartarus_types::{CreateSnapshot, List, Snapshot};

use super::{CmdError, Ctx};
use crate::client::{encode_query, encode_segment, Body, ClientError};
use crate::output::{print, print_json, snapshot_table};

pub async fn create(ctx: &Ctx, id: &str, leave_paused: bool) -> Result<i32, CmdError> {
    let body = ctx
        .client
        .json_value(
            Method::POST,
            &format!("/sandboxes/{}/snapshots", encode_segment(id)),
            Some(&CreateSnapshot { leave_paused }),
        )
        .await?;
    if ctx.json() {
        print_json(&body)?;
    } else {
        let snap = body.get("id").and_then(|v| v.as_str()).unwrap_or_default();
        print(&format!("{snap}\n"))?;
    }
    Ok(0)
}

pub async fn ls(ctx: &Ctx, sandbox: Option<String>) -> Result<i32, CmdError> {
    let path = match sandbox {
        Some(s) => format!("/snapshots?sandbox={}", encode_query(&s)),
        None => "/snapshots".into(),
    };
    let body: serde_json::Value = ctx.client.get(&path).await?;
    if ctx.json() {
        print_json(&body)?;
        return Ok(0);
    }
    let list: List<Snapshot> =
        serde_json::from_value(body).map_err(|e| ClientError::Decode(e.to_string()))?;
    print(&snapshot_table(&list.items))?;
    Ok(0)
}

pub async fn inspect(ctx: &Ctx, id: &str) -> Result<i32, CmdError> {
    let body: serde_json::Value = ctx
        .client
        .get(&format!("/snapshots/{}", encode_segment(id)))
        .await?;
    if ctx.json() {
        print_json(&body)?;
        return Ok(0);
    }
    let s: Snapshot =
        serde_json::from_value(body).map_err(|e| ClientError::Decode(e.to_string()))?;
    print(&snapshot_table(std::slice::from_ref(&s)))?;
    Ok(0)
}

pub async fn rm(ctx: &Ctx, ids: Vec<String>) -> Result<i32, CmdError> {
    let mut code = 0;
    for id in &ids {
        let path = format!("/snapshots/{}", encode_segment(id));
        match ctx.client.call(Method::DELETE, &path, Body::Empty).await {
            Ok(()) => print(&format!("{id}\n"))?,
            Err(e) => {
                eprintln!("tartarus: {id}: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}
