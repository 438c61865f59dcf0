//! Template specs: loading `template.toml` / `.json` files (relative kernel and rootfs paths
//! resolve against the file's directory; `image = "REF"` instead of `rootfs` makes the root
//! file system from an OCI image), applying `template build` flags on top, and the `template
//! init` scaffold.

use std::path::{Path, PathBuf};

use tartarus_types::{TemplateSpec, WarmupCommand};

use crate::cli::TemplateBuildArgs;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("missing {0}: give it in the spec file (-f) or as a flag (--{0})")]
    Missing(&'static str),
    #[error(
        "missing the root file system: give `rootfs` or `image` in the spec file (-f), or \
         --rootfs PATH or --from-image REF"
    )]
    MissingRoot,
    #[error("cannot find the current directory: {0}")]
    Cwd(std::io::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} already exists; not overwriting it")]
    Exists(String),
}

/// Parses a spec file's text: JSON when `path` ends in `.json`, else TOML. Relative `kernel`
/// and `rootfs` paths resolve against `path`'s directory.
pub fn parse_spec(text: &str, path: &Path) -> Result<TemplateSpec, SpecError> {
    let shown = path.display().to_string();
    let mut spec: TemplateSpec = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(text).map_err(|e| SpecError::Parse {
            path: shown,
            message: e.to_string(),
        })?
    } else {
        toml::from_str(text).map_err(|e| SpecError::Parse {
            path: shown,
            message: e.message().to_string(),
        })?
    };
    let dir = path.parent().unwrap_or(Path::new(""));
    spec.kernel = resolve_path(dir, &spec.kernel);
    spec.rootfs = resolve_path(dir, &spec.rootfs);
    Ok(spec)
}

/// Loads a spec file.
pub fn load_spec(path: &Path) -> Result<TemplateSpec, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.display().to_string(),
        source,
    })?;
    // The daemon runs elsewhere: make the file's own location absolute first.
    let abs = absolute(path)?;
    parse_spec(&text, &abs)
}

fn resolve_path(dir: &Path, p: &str) -> String {
    let path = Path::new(p);
    if path.is_absolute() || p.is_empty() {
        p.to_string()
    } else {
        normalize(&dir.join(path)).display().to_string()
    }
}

/// Drops `.` components and folds `..` lexically.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn absolute(p: &Path) -> Result<PathBuf, SpecError> {
    if p.is_absolute() {
        Ok(normalize(p))
    } else {
        let cwd = std::env::current_dir().map_err(SpecError::Cwd)?;
        Ok(normalize(&cwd.join(p)))
    }
}

fn shell(cmd: &str, background: bool) -> WarmupCommand {
    WarmupCommand {
        argv: vec!["sh".into(), "-c".into(), cmd.into()],
        background,
    }
}

/// The spec of `template build`: the file's (if any) with the flags on top. Flag paths are
/// relative to the current directory.
pub fn build_spec(args: &TemplateBuildArgs) -> Result<TemplateSpec, SpecError> {
    let mut spec = match &args.file {
        Some(f) => Some(load_spec(f)?),
        None => None,
    };
    let flag_path = |p: &Option<PathBuf>| -> Result<Option<String>, SpecError> {
        p.as_deref()
            .map(|p| absolute(p).map(|a| a.display().to_string()))
            .transpose()
    };
    let kernel = flag_path(&args.kernel)?;
    let rootfs = flag_path(&args.rootfs)?;
    let image = args.from_image.clone();
    let mut spec = match spec.take() {
        Some(s) => s,
        None => TemplateSpec {
            name: args.name.clone().ok_or(SpecError::Missing("name"))?,
            // From an image, no kernel means the daemon's default one.
            kernel: match (&kernel, &image) {
                (Some(k), _) => k.clone(),
                (None, Some(_)) => String::new(),
                (None, None) => return Err(SpecError::Missing("kernel")),
            },
            rootfs: match (&rootfs, &image) {
                (Some(r), _) => r.clone(),
                (None, Some(_)) => String::new(),
                (None, None) => return Err(SpecError::MissingRoot),
            },
            boot_args: None,
            vcpus: tartarus_types::default_vcpus(),
            memory_mib: tartarus_types::default_memory_mib(),
            disk_mib: tartarus_types::default_disk_mib(),
            env: Default::default(),
            warmup: Vec::new(),
            replace: false,
            runtime: None,
            image: None,
            registry_auth: None,
        },
    };
    if let Some(n) = &args.name {
        spec.name = n.clone();
    }
    if let Some(k) = kernel {
        spec.kernel = k;
    }
    // --rootfs and --from-image each replace the file's root file system, whichever kind.
    if let Some(r) = rootfs {
        spec.rootfs = r;
        spec.image = None;
    }
    if let Some(i) = image {
        spec.image = Some(i);
        spec.rootfs = String::new();
    }
    if spec.rootfs.is_empty() && spec.image.as_deref().is_none_or(str::is_empty) {
        return Err(SpecError::MissingRoot);
    }
    if let Some(b) = &args.boot_args {
        spec.boot_args = Some(b.clone());
    }
    if let Some(v) = args.vcpus {
        spec.vcpus = v;
    }
    if let Some(m) = args.memory {
        spec.memory_mib = m;
    }
    if let Some(d) = args.disk {
        spec.disk_mib = d;
    }
    for (k, v) in &args.env {
        spec.env.insert(k.clone(), v.clone());
    }
    spec.warmup
        .extend(args.warmup.iter().map(|c| shell(c, false)));
    spec.warmup
        .extend(args.warmup_bg.iter().map(|c| shell(c, true)));
    spec.replace |= args.replace;
    Ok(spec)
}

/// The commented `template.toml` that `template init` writes.
pub fn template_toml(name: &str) -> String {
    format!(
        r#"# Tartarus template spec. Build it with:
#   tartarus template build -f template.toml
# Relative paths resolve against this file's directory.

# Template name: [a-z0-9][a-z0-9_.-]{{0,62}}
name = "{name}"

# Uncompressed guest kernel (vmlinux) built for Tartarus (`make kernel`).
kernel = "vmlinux"

# ext4 root file system image with tartarus-init as /sbin/init.
rootfs = "rootfs.ext4"

# Or, instead of rootfs: an OCI image made into the root file system (pulled by the daemon
# when not in its cache; its Env, WorkingDir and User become every command's defaults).
# Without `kernel`, the daemon's default kernel is used.
# image = "docker.io/library/python:3.12-slim"

# Extra kernel command-line words, appended to the daemon's.
# boot_args = "quiet"

# vCPUs and guest memory (MiB) of each sandbox.
vcpus = 1
memory_mib = 256

# Size of each sandbox's writable layer (a sparse ext4 image), MiB.
disk_mib = 1024

# Replace an existing template of the same name (its sandboxes keep running).
# replace = true

# Environment of every command run in this template's sandboxes.
[env]
# LANG = "C.UTF-8"

# Commands run in the booted guest before the ready snapshot, in order.
# [[warmup]]
# argv = ["python3", "-c", "import numpy"]
#
# A server left running in the snapshot:
# [[warmup]]
# argv = ["sh", "-c", "python3 -m http.server 8000"]
# background = true
"#
    )
}

/// The README.md that `template init` writes.
pub fn template_readme(name: &str) -> String {
    format!(
        "# Template `{name}`\n\nPut the guest kernel at `vmlinux` and the root file system at \
         `rootfs.ext4` (or edit `template.toml`), then build it with:\n\n    \
         tartarus template build -f template.toml\n\nand try it with:\n\n    \
         tartarus run {name} -- uname -a\n"
    )
}

/// Scaffolds `dir` with `template.toml` and `README.md`; refuses to overwrite either. Returns
/// the files written.
pub fn init_dir(dir: &Path, name: Option<&str>) -> Result<Vec<PathBuf>, SpecError> {
    let name = match name {
        Some(n) => n.to_string(),
        None => {
            let abs = absolute(dir)?;
            let base = abs
                .file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            let cleaned: String = base
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            let cleaned = cleaned.trim_start_matches(['-', '_', '.']).to_string();
            if cleaned.is_empty() {
                "template".to_string()
            } else {
                cleaned
            }
        }
    };
    let write_err = |p: &Path| {
        let path = p.display().to_string();
        move |source| SpecError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let files = [
        (dir.join("template.toml"), template_toml(&name)),
        (dir.join("README.md"), template_readme(&name)),
    ];
    for (p, _) in &files {
        if p.exists() {
            return Err(SpecError::Exists(p.display().to_string()));
        }
    }
    let mut written = Vec::new();
    for (p, text) in files {
        std::fs::write(&p, text).map_err(write_err(&p))?;
        written.push(p);
    }
    Ok(written)
}
