//! `run` and `exec` (streaming and background; interactive ones are in `interactive`).

use std::io::Write;

use hyper::Method;
use tartarus_types::{CreateSandbox, ExecEvent, ExecRequest};

use super::sandbox::{create_sandbox, delete_sandbox};
use super::{interactive, CmdError, Ctx};
use crate::cli::{ExecArgs, ExecOpts, RunArgs};
use crate::client::{encode_segment, ApiClient, ClientError};
use crate::output::{exec_error_status, exit_status, print, print_json};

/// The API request for `cmd` with the shared exec options.
pub fn exec_request(opts: &ExecOpts, cmd: &[String]) -> ExecRequest {
    ExecRequest {
        argv: cmd.to_vec(),
        env: opts.env.iter().cloned().collect(),
        cwd: opts.workdir.clone(),
        ..Default::default()
    }
}

/// Exit code of an exec the daemon refused: 127/126 when the program is missing or not
/// executable (the message is printed), else the error itself.
fn refused(e: ClientError) -> Result<i32, CmdError> {
    if let ClientError::Api { message, .. } = &e {
        if let Some(code) = exec_error_status(message) {
            eprintln!("tartarus: {message}");
            return Ok(code);
        }
    }
    Err(e.into())
}

/// A streaming exec: output is copied to stdout/stderr as it arrives; returns the exit code.
pub async fn stream_exec(client: &ApiClient, id: &str, req: &ExecRequest) -> Result<i32, CmdError> {
    let mut req = req.clone();
    req.stream = true;
    let path = format!("/sandboxes/{}/exec", encode_segment(id));
    let mut stream = match client.stream(Method::POST, &path, Some(&req)).await {
        Ok(s) => s,
        Err(e) => return refused(e),
    };
    while let Some(ev) = stream.next_json::<ExecEvent>().await? {
        match ev {
            ExecEvent::Started { .. } => {}
            ExecEvent::Stdout { data } => {
                let mut out = std::io::stdout().lock();
                out.write_all(data.as_bytes())
                    .and_then(|_| out.flush())
                    .map_err(CmdError::io("cannot write to stdout"))?;
            }
            ExecEvent::Stderr { data } => {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(data.as_bytes()).and_then(|_| err.flush());
            }
            ExecEvent::Exit {
                exit_code, signal, ..
            } => return Ok(exit_status(exit_code, signal)),
            ExecEvent::Error { error } => {
                eprintln!("tartarus: {}", error.message);
                return Ok(exec_error_status(&error.message).unwrap_or(1));
            }
        }
    }
    Err(CmdError::Failed(
        "the exec stream ended without the command's exit status".into(),
    ))
}

pub async fn run(ctx: &Ctx, a: RunArgs) -> Result<i32, CmdError> {
    let create = CreateSandbox {
        template: Some(a.template.clone()),
        timeout_s: a.timeout,
        network: a.network.into(),
        ..Default::default()
    };
    // Listen for Ctrl-C from the start, so that a sandbox being created is still deleted.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    let creating = create_sandbox(&ctx.client, &create);
    tokio::pin!(creating);
    let sandbox = loop {
        tokio::select! {
            r = &mut creating => break r?,
            _ = &mut ctrl_c, if !interrupted => interrupted = true,
        }
    };
    let id = sandbox.id;
    let result = if interrupted {
        Ok(130)
    } else {
        let req = exec_request(&a.exec, &a.cmd);
        tokio::select! {
            r = stream_exec(&ctx.client, &id, &req) => r,
            _ = &mut ctrl_c => Ok(130),
        }
    };
    if a.keep {
        eprintln!("{id}");
    } else if let Err(e) = delete_sandbox(&ctx.client, &id, None).await {
        eprintln!("tartarus: cannot delete sandbox {id}: {e}");
    }
    result
}

pub async fn exec(ctx: &Ctx, a: ExecArgs) -> Result<i32, CmdError> {
    let mut req = exec_request(&a.exec, &a.cmd);
    req.timeout_s = a.timeout;
    if a.interactive || a.tty {
        return interactive::exec(ctx, &a.id, &req, a.tty).await;
    }
    if a.detach {
        req.background = true;
        let path = format!("/sandboxes/{}/exec", encode_segment(&a.id));
        let body = match ctx.client.json_value(Method::POST, &path, Some(&req)).await {
            Ok(b) => b,
            Err(e) => return refused(e),
        };
        if ctx.json() {
            print_json(&body)?;
        } else {
            let pid = body.get("pid").and_then(|p| p.as_i64()).unwrap_or(-1);
            print(&format!("{pid}\n"))?;
        }
        return Ok(0);
    }
    tokio::select! {
        r = stream_exec(&ctx.client, &a.id, &req) => r,
        // Dropping the stream closes the connection, and the agent kills the process group.
        _ = tokio::signal::ctrl_c() => Ok(130),
    }
}
