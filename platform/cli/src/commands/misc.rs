//! `events`, `health`, `completions`.

use clap::CommandFactory;
use tartarus_types::{Event, Health};

use super::{CmdError, Ctx};
use crate::cli::{Cli, CompletionShell, EventsArgs};
use crate::client::ClientError;
use crate::output::{print, print_json, Table};

pub async fn health(ctx: &Ctx) -> Result<i32, CmdError> {
    let body: serde_json::Value = ctx.client.get("/health").await?;
    if ctx.json() {
        print_json(&body)?;
        return Ok(0);
    }
    let h: Health = serde_json::from_value(body).map_err(|e| ClientError::Decode(e.to_string()))?;
    let mut t = Table::new(["Status:", h.status.as_str()]);
    t.row(["Version:".to_string(), h.version]);
    t.row(["Daemon:".to_string(), ctx.client.endpoint().to_string()]);
    t.row(["Sandboxes:".to_string(), h.sandboxes.to_string()]);
    t.row(["Templates:".to_string(), h.templates.to_string()]);
    print(&t.render())?;
    Ok(if h.status == "ok" { 0 } else { 1 })
}

/// One line of `tartarus events`.
pub fn event_line(e: &Event) -> String {
    let mut parts = vec![e.id.to_string(), e.time.clone(), e.kind.clone()];
    for v in [&e.sandbox, &e.template, &e.snapshot, &e.state]
        .into_iter()
        .flatten()
    {
        parts.push(v.clone());
    }
    if let Some(m) = &e.message {
        parts.push(format!("({m})"));
    }
    parts.join(" ")
}

pub async fn events(ctx: &Ctx, a: EventsArgs) -> Result<i32, CmdError> {
    let mut path = format!("/events?follow={}", a.follow);
    if let Some(s) = a.since {
        path.push_str(&format!("&since={s}"));
    }
    let mut stream = ctx
        .client
        .stream(hyper::Method::GET, &path, None::<&()>)
        .await?;
    loop {
        let next = tokio::select! {
            n = stream.next_json::<serde_json::Value>() => n?,
            _ = tokio::signal::ctrl_c() => return Ok(0),
        };
        let Some(v) = next else { return Ok(0) };
        if ctx.json() {
            print(&format!("{v}\n"))?;
        } else {
            let e: Event =
                serde_json::from_value(v).map_err(|e| ClientError::Decode(e.to_string()))?;
            print(&format!("{}\n", event_line(&e)))?;
        }
    }
}

/// The completion script for `shell`.
pub fn completion_script(shell: CompletionShell) -> Vec<u8> {
    use clap_complete::Shell;
    let sh = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(sh, &mut Cli::command(), "tartarus", &mut out);
    out
}

pub fn completions(shell: CompletionShell) -> Result<i32, CmdError> {
    use std::io::Write;
    std::io::stdout()
        .write_all(&completion_script(shell))
        .map_err(CmdError::io("cannot write the completion script"))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines() {
        let e = Event {
            id: 7,
            time: "t".into(),
            kind: "sandbox.state".into(),
            tenant: String::new(),
            sandbox: Some("sb-1".into()),
            template: None,
            snapshot: None,
            state: Some("paused".into()),
            message: Some("by request".into()),
        };
        assert_eq!(event_line(&e), "7 t sandbox.state sb-1 paused (by request)");
    }
}
