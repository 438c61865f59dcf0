//! `run-code`: code for a sandbox's warm runtime (`POST /sandboxes/{id}/code`), streamed;
//! with `--template`, in a sandbox made for it and deleted afterwards (like `run`).

use std::io::{Read, Write};

use hyper::Method;
use tartarus_types::{CodeEvent, CodeRequest, CodeResult, CreateSandbox};

use super::sandbox::{create_sandbox, delete_sandbox};
use super::{CmdError, Ctx};
use crate::cli::RunCodeArgs;
use crate::client::{encode_segment, ApiClient};
use crate::output::print_json;

/// The code: `-c`, or the file `-f` (`-`: stdin).
fn code_of(a: &RunCodeArgs) -> Result<String, CmdError> {
    if let Some(c) = &a.code {
        return Ok(c.clone());
    }
    match a.file.as_deref() {
        Some(p) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(CmdError::io("cannot read the code from stdin"))?;
            Ok(s)
        }
        Some(p) => {
            std::fs::read_to_string(p).map_err(CmdError::io(format!("cannot read {}", p.display())))
        }
        None => Err(CmdError::Usage(
            "give the code with -c CODE or -f FILE".into(),
        )),
    }
}

fn out(text: &str) -> Result<(), CmdError> {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes())
        .and_then(|_| o.flush())
        .map_err(CmdError::io("cannot write to stdout"))
}

fn err(text: &str) {
    let mut e = std::io::stderr().lock();
    let _ = e.write_all(text.as_bytes()).and_then(|_| e.flush());
}

/// An error's text for stderr: its traceback, else `name: value`.
fn error_text(name: &str, value: &str, traceback: &str) -> String {
    let mut t = if traceback.is_empty() {
        format!("{name}: {value}")
    } else {
        traceback.to_string()
    };
    if !t.ends_with('\n') {
        t.push('\n');
    }
    t
}

/// Streams one call; 0 when the code ran without an error, else 1.
async fn stream_code(client: &ApiClient, id: &str, req: &CodeRequest) -> Result<i32, CmdError> {
    let path = format!("/sandboxes/{}/code", encode_segment(id));
    let mut req = req.clone();
    req.stream = true;
    let mut stream = client.stream(Method::POST, &path, Some(&req)).await?;
    while let Some(ev) = stream.next_json::<CodeEvent>().await? {
        match ev {
            CodeEvent::Stdout { data } => out(&data)?,
            CodeEvent::Stderr { data } => err(&data),
            CodeEvent::Result { text } => out(&format!("{text}\n"))?,
            CodeEvent::Error {
                name,
                value,
                traceback,
            } => err(&error_text(&name, &value, &traceback)),
            CodeEvent::Done { ok, restarted, .. } => {
                if restarted {
                    err(
                        "tartarus: the runtime was restarted: its variables and imports are gone\n",
                    );
                }
                return Ok(if ok { 0 } else { 1 });
            }
        }
    }
    Err(CmdError::Failed(
        "the code stream ended before the runtime said it was done".into(),
    ))
}

/// One call, as the API's collected JSON body (`-o json`).
async fn json_code(client: &ApiClient, id: &str, req: &CodeRequest) -> Result<i32, CmdError> {
    let path = format!("/sandboxes/{}/code", encode_segment(id));
    let r: CodeResult = client.json(Method::POST, &path, Some(req)).await?;
    print_json(&r)?;
    Ok(if r.error.is_some() { 1 } else { 0 })
}

async fn call(ctx: &Ctx, id: &str, req: &CodeRequest) -> Result<i32, CmdError> {
    if ctx.json() {
        json_code(&ctx.client, id, req).await
    } else {
        stream_code(&ctx.client, id, req).await
    }
}

pub async fn run_code(ctx: &Ctx, a: RunCodeArgs) -> Result<i32, CmdError> {
    let req = CodeRequest {
        language: a.language.clone(),
        code: code_of(&a)?,
        stream: false,
        timeout_s: a.timeout,
    };
    let Some(template) = &a.template else {
        let id = a.sandbox.as_deref().unwrap_or_default();
        return tokio::select! {
            r = call(ctx, id, &req) => r,
            _ = tokio::signal::ctrl_c() => Ok(130),
        };
    };
    let create = CreateSandbox {
        template: Some(template.clone()),
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
        tokio::select! {
            r = call(ctx, &id, &req) => r,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_their_traceback_or_name_and_value() {
        assert_eq!(error_text("E", "v", ""), "E: v\n");
        assert_eq!(
            error_text("E", "v", "Traceback\nE: v\n"),
            "Traceback\nE: v\n"
        );
        assert_eq!(error_text("E", "v", "tb"), "tb\n");
    }

    #[test]
    fn a_spec_file_takes_a_runtime_table() {
        let s: tartarus_types::TemplateSpec = toml::from_str(
            "name = \"python-ds\"\nimage = \"x/y\"\n\n[runtime]\nlanguage = \"python\"\n\
             preload = [\"numpy\", \"pandas\"]\n",
        )
        .unwrap();
        let rt = s.runtime.unwrap();
        assert_eq!((rt.language.as_str(), rt.preload.len()), ("python", 2));
    }
}
