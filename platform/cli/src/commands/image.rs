//! `image pull|ls|inspect|rm|prune`, and the registry credentials `template build` shares.

use std::collections::HashMap;
use std::io::Read;

use hyper::Method;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tartarus_types::{Image, ImagesFreed, List, PullEvent, PullImage, RegistryAuth};

use super::{CmdError, Ctx};
use crate::cli::{ImageLsArgs, ImagePullArgs, ImageRmArgs, RegistryAuthArgs};
use crate::client::{encode_path, ClientError};
use crate::output::{bytes, freed_text, image_table, now_unix, print, print_json, short_id};

/// The registry credentials of the flags, else of `TARTARUS_REGISTRY_USER` and
/// `TARTARUS_REGISTRY_PASSWORD` (`env`). `stdin` is read only for `--password-stdin`.
pub fn registry_auth(
    a: &RegistryAuthArgs,
    env: impl Fn(&str) -> Option<String>,
    stdin: impl FnOnce() -> std::io::Result<String>,
) -> Result<Option<RegistryAuth>, CmdError> {
    if let Some(token) = &a.token {
        return Ok(Some(RegistryAuth::Bearer {
            token: token.clone(),
        }));
    }
    let env = |k: &str| env(k).filter(|v| !v.is_empty());
    let Some(username) = a.username.clone().or_else(|| env("TARTARUS_REGISTRY_USER")) else {
        if a.password.is_some() || a.password_stdin {
            return Err(CmdError::Usage(
                "a registry password needs a user name: --username USER".into(),
            ));
        }
        return Ok(None);
    };
    let password = if let Some(p) = &a.password {
        p.clone()
    } else if a.password_stdin {
        let text = stdin().map_err(CmdError::io("cannot read the password from stdin"))?;
        let p = text.trim_end_matches(['\n', '\r']).to_string();
        if p.is_empty() {
            return Err(CmdError::Usage("--password-stdin: stdin is empty".into()));
        }
        p
    } else if let Some(p) = env("TARTARUS_REGISTRY_PASSWORD") {
        p
    } else {
        return Err(CmdError::Usage(format!(
            "no registry password for user {username}: use --password-stdin, --password or \
             TARTARUS_REGISTRY_PASSWORD"
        )));
    };
    Ok(Some(RegistryAuth::Basic { username, password }))
}

/// [`registry_auth`] with the process's environment and stdin.
pub fn registry_auth_from_process(a: &RegistryAuthArgs) -> Result<Option<RegistryAuth>, CmdError> {
    if a.password.is_some() {
        eprintln!("warning: --password is visible to other users (ps); prefer --password-stdin");
    }
    registry_auth(
        a,
        |k| std::env::var(k).ok(),
        || {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map(|_| s)
        },
    )
}

/// `/images/{name}`: names keep their `/` and `:`.
fn image_path(name: &str) -> String {
    format!("/images/{}", encode_path(name))
}

fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, CmdError> {
    serde_json::from_value(v).map_err(|e| ClientError::Decode(e.to_string()).into())
}

fn layer_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn status_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// Draws a pull's NDJSON stream on stderr: a status line, then one bar per layer by bytes.
struct PullProgress {
    multi: MultiProgress,
    status: ProgressBar,
    layers: HashMap<String, ProgressBar>,
}

impl PullProgress {
    fn new(reference: &str, quiet: bool) -> Self {
        let multi = MultiProgress::with_draw_target(if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        });
        let status = multi.add(ProgressBar::new_spinner().with_style(status_style()));
        status.set_message(format!("resolving {reference}"));
        status.enable_steady_tick(std::time::Duration::from_millis(120));
        PullProgress {
            multi,
            status,
            layers: HashMap::new(),
        }
    }

    fn layer(&mut self, digest: &str, total: u64) -> &ProgressBar {
        let multi = &self.multi;
        let bar = self.layers.entry(digest.to_string()).or_insert_with(|| {
            let b = multi.add(ProgressBar::new(total).with_style(layer_style()));
            b.set_prefix(short_id(digest));
            b
        });
        if total > 0 && bar.length() != Some(total) {
            bar.set_length(total);
        }
        bar
    }

    /// Draws one event; the end of the stream gives the image (or the error).
    fn event(&mut self, ev: PullEvent, reference: &str) -> Option<Result<Image, CmdError>> {
        match ev {
            PullEvent::Resolved {
                image,
                digest,
                layers,
                bytes: total,
            } => self.status.set_message(format!(
                "pulling {image} ({}): {layers} layers, {}",
                short_id(&digest),
                bytes(total)
            )),
            PullEvent::Progress {
                digest,
                done,
                total,
            } => {
                self.layer(&digest, total).set_position(done);
            }
            PullEvent::Layer {
                digest,
                bytes,
                cached,
            } => {
                let bar = self.layer(&digest, bytes);
                bar.set_position(bytes);
                bar.finish_with_message(if cached { "cached" } else { "done" });
            }
            PullEvent::Retry {
                what,
                attempt,
                error,
            } => {
                let _ = self.multi.println(format!(
                    "warning: {what}: attempt {attempt} failed ({error}); retrying"
                ));
            }
            PullEvent::Build { message } => self.status.set_message(message),
            PullEvent::Done { image } => {
                self.clear();
                return Some(Ok(*image));
            }
            PullEvent::Error { error } => {
                self.abandon();
                return Some(Err(CmdError::Failed(format!(
                    "pulling {reference} failed: {}",
                    error.message
                ))));
            }
        }
        None
    }

    fn clear(&self) {
        self.status.finish_and_clear();
        for b in self.layers.values() {
            b.finish_and_clear();
        }
        let _ = self.multi.clear();
    }

    fn abandon(&self) {
        self.status.abandon();
        for b in self.layers.values() {
            b.abandon();
        }
    }
}

pub async fn pull(ctx: &Ctx, a: ImagePullArgs) -> Result<i32, CmdError> {
    let req = PullImage {
        reference: a.reference.clone(),
        name: a.name.clone(),
        auth: registry_auth_from_process(&a.auth)?,
        build: a.build,
    };
    let mut stream = ctx
        .client
        .stream(Method::POST, "/images/pull", Some(&req))
        .await?;
    let mut progress = PullProgress::new(&a.reference, a.quiet || ctx.json());
    let image = loop {
        let next = tokio::select! {
            n = stream.next_json::<PullEvent>() => n?,
            _ = tokio::signal::ctrl_c() => {
                progress.abandon();
                return Ok(130);
            }
        };
        let Some(ev) = next else {
            progress.abandon();
            return Err(CmdError::Failed(format!(
                "the pull stream of {} ended without a result",
                a.reference
            )));
        };
        if let Some(done) = progress.event(ev, &a.reference) {
            break done?;
        }
    };
    if ctx.json() {
        print_json(&image)?;
    } else if a.quiet {
        print(&format!("{}\n", image.id))?;
    } else {
        let name = image.names.first().cloned().unwrap_or(a.reference.clone());
        eprintln!(
            "pulled {name}: {} layers, {}",
            image.layers.len(),
            bytes(image.size)
        );
        print(&format!("{}\n", image.id))?;
    }
    Ok(0)
}

pub async fn ls(ctx: &Ctx, a: ImageLsArgs) -> Result<i32, CmdError> {
    let body: serde_json::Value = ctx.client.get("/images").await?;
    if a.json || (ctx.json() && !a.quiet) {
        print_json(&body)?;
        return Ok(0);
    }
    let list: List<Image> = decode(body)?;
    if a.quiet {
        let mut seen = std::collections::HashSet::new();
        let mut out = String::new();
        for img in &list.items {
            let id = short_id(&img.id);
            if seen.insert(id.clone()) {
                out.push_str(&id);
                out.push('\n');
            }
        }
        print(&out)?;
        return Ok(0);
    }
    print(&image_table(&list.items, now_unix()))?;
    Ok(0)
}

/// Pretty JSON: the image for one name, an array for several (missing ones are reported on
/// stderr and make the exit code 1).
pub async fn inspect(ctx: &Ctx, names: &[String]) -> Result<i32, CmdError> {
    if let [name] = names {
        let body: serde_json::Value = ctx.client.get(&image_path(name)).await?;
        print_json(&body)?;
        return Ok(0);
    }
    let mut code = 0;
    let mut found = Vec::new();
    for name in names {
        match ctx.client.get::<serde_json::Value>(&image_path(name)).await {
            Ok(v) => found.push(v),
            Err(e) => {
                eprintln!("tartarus: {name}: {e}");
                code = 1;
            }
        }
    }
    print_json(&found)?;
    Ok(code)
}

pub async fn rm(ctx: &Ctx, a: ImageRmArgs) -> Result<i32, CmdError> {
    let mut code = 0;
    for name in &a.names {
        let path = format!("{}?force={}", image_path(name), a.force);
        match ctx
            .client
            .json_value(Method::DELETE, &path, None::<&()>)
            .await
        {
            Ok(body) if ctx.json() => print_json(&body)?,
            Ok(body) => print(&freed_text(&decode::<ImagesFreed>(body)?))?,
            Err(e) => {
                let hint = if e.api_code() == Some("conflict") && !a.force {
                    " (-f deletes it anyway)"
                } else {
                    ""
                };
                eprintln!("tartarus: {name}: {e}{hint}");
                code = 1;
            }
        }
    }
    Ok(code)
}

pub async fn prune(ctx: &Ctx) -> Result<i32, CmdError> {
    let body = ctx
        .client
        .json_value(Method::POST, "/images/prune", None::<&()>)
        .await?;
    if ctx.json() {
        print_json(&body)?;
    } else {
        print(&freed_text(&decode::<ImagesFreed>(body)?))?;
    }
    Ok(0)
}
