//! `cp` (files in and out of a sandbox) and `logs`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hyper::body::Bytes;
use hyper::Method;

use super::{CmdError, Ctx};
use crate::cli::{CpArgs, LogsArgs};
use crate::client::{encode_query, encode_segment, Body};

/// One side of `cp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// `-`: stdin or stdout.
    Stdio,
    Local(PathBuf),
    Remote {
        id: String,
        path: String,
    },
}

/// `ID:/abs/path` is a sandbox path (the id has no `/`); `-` is stdio; anything else is local.
pub fn parse_side(s: &str) -> Side {
    if s == "-" {
        return Side::Stdio;
    }
    if let Some((id, path)) = s.split_once(':') {
        if !id.is_empty() && !id.contains('/') && path.starts_with('/') {
            return Side::Remote {
                id: id.to_string(),
                path: path.to_string(),
            };
        }
    }
    Side::Local(PathBuf::from(s))
}

fn files_path(id: &str, path: &str, mode: Option<u32>) -> String {
    let mut p = format!(
        "/sandboxes/{}/files?path={}",
        encode_segment(id),
        encode_query(path)
    );
    if let Some(m) = mode {
        p.push_str(&format!("&mode={m:04o}"));
    }
    p
}

fn base_name(p: &str) -> Option<&str> {
    Path::new(p).file_name().and_then(|n| n.to_str())
}

pub async fn cp(ctx: &Ctx, a: CpArgs) -> Result<i32, CmdError> {
    match (parse_side(&a.src), parse_side(&a.dst)) {
        (Side::Remote { .. }, Side::Remote { .. }) => Err(CmdError::Usage(
            "cp copies between the host and a sandbox, not between two sandboxes".into(),
        )),
        (src, Side::Remote { id, path }) => upload(ctx, src, &id, &path, a.mode).await,
        (Side::Remote { id, path }, dst) => download(ctx, &id, &path, dst).await,
        _ => Err(CmdError::Usage(
            "one side of cp must be a sandbox path, ID:/abs/path".into(),
        )),
    }
}

async fn upload(
    ctx: &Ctx,
    src: Side,
    id: &str,
    path: &str,
    mode: Option<u32>,
) -> Result<i32, CmdError> {
    let (data, local_mode, name) = match &src {
        Side::Stdio => {
            let mut d = Vec::new();
            std::io::stdin()
                .read_to_end(&mut d)
                .map_err(CmdError::io("cannot read stdin"))?;
            (d, None, None)
        }
        Side::Local(p) => {
            let shown = p.display().to_string();
            let d = std::fs::read(p).map_err(CmdError::io(format!("cannot read {shown}")))?;
            let m = std::fs::metadata(p).ok().map(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.permissions().mode() & 0o7777
            });
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            (d, m, name)
        }
        Side::Remote { .. } => unreachable!("checked by cp"),
    };
    let mut target = path.to_string();
    if target.ends_with('/') {
        match name {
            Some(n) => target.push_str(&n),
            None => {
                return Err(CmdError::Usage(format!(
                    "{path} names a directory; give the file's name when copying from stdin"
                )))
            }
        }
    }
    let n = data.len();
    ctx.client
        .call(
            Method::PUT,
            &files_path(id, &target, mode.or(local_mode)),
            Body::Raw(Bytes::from(data)),
        )
        .await?;
    eprintln!("copied {n} bytes to {id}:{target}");
    Ok(0)
}

async fn download(ctx: &Ctx, id: &str, path: &str, dst: Side) -> Result<i32, CmdError> {
    let data = ctx
        .client
        .bytes(Method::GET, &files_path(id, path, None))
        .await?;
    match dst {
        Side::Stdio => {
            let mut out = std::io::stdout().lock();
            out.write_all(&data)
                .and_then(|_| out.flush())
                .map_err(CmdError::io("cannot write to stdout"))?;
        }
        Side::Local(mut p) => {
            if p.is_dir() {
                let name = base_name(path).ok_or_else(|| {
                    CmdError::Usage(format!("{path} has no file name to copy into a directory"))
                })?;
                p.push(name);
            }
            let shown = p.display().to_string();
            std::fs::write(&p, &data).map_err(CmdError::io(format!("cannot write {shown}")))?;
            eprintln!("copied {} bytes to {shown}", data.len());
        }
        Side::Remote { .. } => unreachable!("checked by cp"),
    }
    Ok(0)
}

pub async fn logs(ctx: &Ctx, a: LogsArgs) -> Result<i32, CmdError> {
    let mut path = format!(
        "/sandboxes/{}/logs?follow={}",
        encode_segment(&a.id),
        a.follow
    );
    if let Some(t) = a.tail {
        path.push_str(&format!("&tail={t}"));
    }
    let mut stream = ctx.client.stream(Method::GET, &path, None::<&()>).await?;
    loop {
        let chunk = tokio::select! {
            c = stream.next_chunk() => c?,
            _ = tokio::signal::ctrl_c() => return Ok(0),
        };
        let Some(chunk) = chunk else { return Ok(0) };
        let mut out = std::io::stdout().lock();
        out.write_all(&chunk)
            .and_then(|_| out.flush())
            .map_err(CmdError::io("cannot write to stdout"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp_sides() {
        assert_eq!(parse_side("-"), Side::Stdio);
        assert_eq!(
            parse_side("sb-0123:/tmp/x"),
            Side::Remote {
                id: "sb-0123".into(),
                path: "/tmp/x".into()
            }
        );
        // Relative sandbox paths, and host paths with a colon, are host paths.
        assert_eq!(parse_side("sb-1:tmp"), Side::Local("sb-1:tmp".into()));
        assert_eq!(parse_side("./a:/b"), Side::Local("./a:/b".into()));
        assert_eq!(parse_side("/a:/b"), Side::Local("/a:/b".into()));
        assert_eq!(
            files_path("sb-1", "/a b/c", Some(0o644)),
            "/sandboxes/sb-1/files?path=/a%20b/c&mode=0644"
        );
    }
}
