//! `template ls|inspect|build|rm|init`.

use std::path::Path;

use hyper::Method;
use indicatif::{ProgressBar, ProgressStyle};
use tartarus_types::{BuildEvent, List, Template, TemplateSpec};

use super::image::registry_auth_from_process;
use super::{CmdError, Ctx};
use crate::cli::TemplateBuildArgs;
use crate::client::{encode_segment, ApiClient, Body, ClientError};
use crate::output::{print, print_json, template_details, template_table};
use crate::spec;

pub async fn ls(ctx: &Ctx) -> Result<i32, CmdError> {
    let body: serde_json::Value = ctx.client.get("/templates").await?;
    if ctx.json() {
        print_json(&body)?;
        return Ok(0);
    }
    let list: List<Template> =
        serde_json::from_value(body).map_err(|e| ClientError::Decode(e.to_string()))?;
    print(&template_table(&list.items))?;
    Ok(0)
}

pub async fn inspect(ctx: &Ctx, name: &str) -> Result<i32, CmdError> {
    let body: serde_json::Value = ctx
        .client
        .get(&format!("/templates/{}", encode_segment(name)))
        .await?;
    if ctx.json() {
        print_json(&body)?;
        return Ok(0);
    }
    let t: Template =
        serde_json::from_value(body).map_err(|e| ClientError::Decode(e.to_string()))?;
    print(&template_details(&t))?;
    Ok(0)
}

pub async fn rm(ctx: &Ctx, name: &str) -> Result<i32, CmdError> {
    let path = format!("/templates/{}", encode_segment(name));
    ctx.client.call(Method::DELETE, &path, Body::Empty).await?;
    print(&format!("{name}\n"))?;
    Ok(0)
}

pub fn init(dir: &Path, name: Option<&str>) -> Result<i32, CmdError> {
    for f in spec::init_dir(dir, name)? {
        println!("wrote {}", f.display());
    }
    println!(
        "build it with: tartarus template build -f {}",
        dir.join("template.toml").display()
    );
    Ok(0)
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

pub async fn build(ctx: &Ctx, a: Box<TemplateBuildArgs>) -> Result<i32, CmdError> {
    let mut spec = spec::build_spec(&a)?;
    if spec.image.is_some() {
        spec.registry_auth = registry_auth_from_process(&a.auth)?;
    } else if a.auth.username.is_some() || a.auth.token.is_some() || a.auth.password_stdin {
        return Err(CmdError::Usage(
            "registry credentials are for templates made from an image (--from-image)".into(),
        ));
    }
    let template = build_stream(&ctx.client, &spec, a.verbose).await?;
    if ctx.json() {
        print_json(&template)?;
    } else {
        let secs = template.build_ms.unwrap_or(0) as f64 / 1000.0;
        eprintln!("built template {} in {secs:.1} s", template.name);
        print(&template_details(&template))?;
    }
    Ok(0)
}

/// `POST /templates` with the build's progress drawn on stderr; the built template.
pub async fn build_stream(
    client: &ApiClient,
    spec: &TemplateSpec,
    verbose: bool,
) -> Result<Template, CmdError> {
    let mut stream = client
        .stream(Method::POST, "/templates", Some(spec))
        .await?;
    let bar = ProgressBar::new(1).with_style(bar_style());
    bar.set_message(format!("building {}", spec.name));
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    while let Some(ev) = stream.next_json::<BuildEvent>().await? {
        match ev {
            BuildEvent::Progress {
                step,
                steps,
                message,
            } => {
                bar.set_length(u64::from(steps.max(1)));
                bar.set_position(u64::from(step));
                bar.set_message(message);
            }
            BuildEvent::Log { line } => {
                if verbose {
                    bar.println(line);
                }
            }
            BuildEvent::Done { template } => {
                bar.finish_and_clear();
                return Ok(*template);
            }
            BuildEvent::Error { error } => {
                bar.abandon();
                return Err(CmdError::Failed(format!(
                    "building {} failed: {}",
                    spec.name, error.message
                )));
            }
        }
    }
    bar.abandon();
    Err(CmdError::Failed(format!(
        "the build stream of {} ended without a result",
        spec.name
    )))
}
