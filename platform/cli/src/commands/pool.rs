//! `pool set|ls|inspect|rm`: warm pools of templates.

use hyper::Method;
use tartarus_types::{List, Pool, PoolSpec};

use super::{CmdError, Ctx};
use crate::client::{encode_segment, Body, ClientError};
use crate::output::{print, print_json, Table};

fn path(template: &str) -> String {
    format!("/templates/{}/pool", encode_segment(template))
}

fn table(pools: &[Pool]) -> String {
    let mut t = Table::new([
        "TEMPLATE",
        "TENANT",
        "MIN",
        "MAX",
        "TARGET",
        "READY",
        "FILLING",
        "CLAIMS",
        "MISSES",
        "DEMAND/MIN",
    ]);
    for p in pools {
        let target = if p.memory_pressure {
            format!("{} (memory pressure)", p.target)
        } else {
            p.target.to_string()
        };
        t.row([
            p.template.clone(),
            p.tenant.clone(),
            p.min.to_string(),
            p.max.to_string(),
            target,
            p.ready.to_string(),
            p.filling.to_string(),
            p.claims.to_string(),
            p.misses.to_string(),
            format!("{:.1}", p.demand_per_min),
        ]);
    }
    t.render()
}

fn show(ctx: &Ctx, body: serde_json::Value) -> Result<i32, CmdError> {
    if ctx.json() {
        print_json(&body)?;
        return Ok(0);
    }
    let p: Pool = serde_json::from_value(body).map_err(|e| ClientError::Decode(e.to_string()))?;
    print(&table(&[p]))?;
    Ok(0)
}

pub async fn set(
    ctx: &Ctx,
    template: &str,
    min: u32,
    max: u32,
    max_memory_mib: Option<u64>,
) -> Result<i32, CmdError> {
    let spec = PoolSpec {
        min,
        max,
        max_memory_mib,
    };
    let body = ctx
        .client
        .json_value(Method::PUT, &path(template), Some(&spec))
        .await?;
    show(ctx, body)
}

pub async fn inspect(ctx: &Ctx, template: &str) -> Result<i32, CmdError> {
    let body: serde_json::Value = ctx.client.get(&path(template)).await?;
    show(ctx, body)
}

pub async fn ls(ctx: &Ctx) -> Result<i32, CmdError> {
    let body: serde_json::Value = ctx.client.get("/pools").await?;
    if ctx.json() {
        print_json(&body)?;
        return Ok(0);
    }
    let list: List<Pool> =
        serde_json::from_value(body).map_err(|e| ClientError::Decode(e.to_string()))?;
    print(&table(&list.items))?;
    Ok(0)
}

pub async fn rm(ctx: &Ctx, template: &str) -> Result<i32, CmdError> {
    ctx.client
        .call(Method::DELETE, &path(template), Body::Empty)
        .await?;
    print(&format!("{template}\n"))?;
    Ok(0)
}
