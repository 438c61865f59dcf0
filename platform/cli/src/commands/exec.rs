//! `run` and `exec` (streaming and background; interactive ones are in `interactive`), and how
//! `run` turns an image reference into a template and a command.

use std::io::Write;

use hyper::Method;
use tartarus_types::{
    CreateSandbox, ExecEvent, ExecRequest, Template, TemplateImage, TemplateSpec, TemplateState,
};

use super::image::registry_auth_from_process;
use super::sandbox::{create_sandbox, delete_sandbox};
use super::template::build_stream;
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
        user: opts.user.clone(),
        ..Default::default()
    }
}

/// Whether `run NAME` may mean an image when no template NAME exists: it has a `/`, `:` or
/// `.` (a registry, a tag, a digest), which a plain template name rarely has.
pub fn looks_like_image_ref(name: &str) -> bool {
    name.contains(['/', ':', '.'])
}

/// The template `run` makes from an image: `img-` and the reference, lowercased, with every
/// character outside `[a-z0-9_.-]` replaced by `-`; a name longer than 63 characters is cut
/// and ends in `-` and 12 hex digits of the reference's SHA-256 instead, so it stays unique.
/// Always a valid template name (`[a-z0-9][a-z0-9_.-]{0,62}`).
pub fn image_template_name(reference: &str) -> String {
    const MAX: usize = 63;
    const HASH: usize = 12;
    let cleaned: String = reference
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = format!("img-{cleaned}");
    if name.len() <= MAX {
        return name;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(reference.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    // `name` is ASCII: cutting at any byte is a char boundary.
    format!("{}-{}", &name[..MAX - HASH - 1], &hex[..HASH])
}

/// The command `run` executes, as `docker run` composes it: for a template made from an image,
/// its entrypoint followed by `cmd` (or by the image's cmd when `cmd` is empty); otherwise
/// `cmd`, which must then be given.
pub fn compose_argv(
    template: &str,
    image: Option<&TemplateImage>,
    cmd: &[String],
) -> Result<Vec<String>, CmdError> {
    let Some(img) = image else {
        if cmd.is_empty() {
            return Err(CmdError::Usage(format!(
                "no command: template {template} was not made from an image, so give one: \
                 tartarus run {template} -- CMD [ARG...]"
            )));
        }
        return Ok(cmd.to_vec());
    };
    let tail = if cmd.is_empty() { &img.cmd } else { cmd };
    let argv: Vec<String> = img.entrypoint.iter().chain(tail).cloned().collect();
    if argv.is_empty() {
        return Err(CmdError::Usage(format!(
            "no command: image {} has neither an entrypoint nor a cmd, so give one: \
             tartarus run {template} -- CMD [ARG...]",
            img.reference
        )));
    }
    Ok(argv)
}

fn is_not_found(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { status: 404, .. }) || e.api_code() == Some("not_found")
}

/// `GET /templates/{name}`; None when there is none.
async fn find_template(client: &ApiClient, name: &str) -> Result<Option<Template>, CmdError> {
    match client
        .get::<Template>(&format!("/templates/{}", encode_segment(name)))
        .await
    {
        Ok(t) => Ok(Some(t)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The template `run` starts from, with what it knows of it: the one named `a.template`, or,
/// for an image reference, its `img-...` template, built first when missing (or failed).
async fn run_template(ctx: &Ctx, a: &RunArgs) -> Result<(String, Option<Template>), CmdError> {
    if !a.image {
        // A plain template with a command: as before, the sandbox create says if it is missing.
        if !a.cmd.is_empty() && !looks_like_image_ref(&a.template) {
            return Ok((a.template.clone(), None));
        }
        if let Some(t) = find_template(&ctx.client, &a.template).await? {
            return Ok((t.name.clone(), Some(t)));
        }
        if !looks_like_image_ref(&a.template) {
            return Err(CmdError::Failed(format!(
                "no template {} (for an image, use --image)",
                a.template
            )));
        }
    }
    let reference = &a.template;
    let name = image_template_name(reference);
    let existing = find_template(&ctx.client, &name).await?;
    if let Some(t) = &existing {
        if t.state != TemplateState::Failed {
            if let Some(img) = t.image.as_ref().filter(|i| i.reference != *reference) {
                eprintln!(
                    "warning: template {name} was made from {}, not {reference}",
                    img.reference
                );
            }
            return Ok((name, existing));
        }
    }
    eprintln!("building template {name} from image {reference}");
    let spec = TemplateSpec {
        name: name.clone(),
        kernel: String::new(),
        rootfs: String::new(),
        image: Some(reference.clone()),
        registry_auth: registry_auth_from_process(&Default::default())?,
        boot_args: None,
        vcpus: tartarus_types::default_vcpus(),
        memory_mib: tartarus_types::default_memory_mib(),
        disk_mib: tartarus_types::default_disk_mib(),
        env: Default::default(),
        warmup: Vec::new(),
        replace: existing.is_some(),
        runtime: None,
    };
    let t = build_stream(&ctx.client, &spec, a.verbose).await?;
    let secs = t.build_ms.unwrap_or(0) as f64 / 1000.0;
    eprintln!("built template {name} in {secs:.1} s");
    Ok((name, Some(t)))
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
    let (template, found) = tokio::select! {
        r = run_template(ctx, &a) => r?,
        _ = tokio::signal::ctrl_c() => return Ok(130),
    };
    let argv = match &found {
        Some(t) => compose_argv(&template, t.image.as_ref(), &a.cmd)?,
        None => a.cmd.clone(),
    };
    let create = CreateSandbox {
        template: Some(template),
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
        let req = exec_request(&a.exec, &argv);
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
