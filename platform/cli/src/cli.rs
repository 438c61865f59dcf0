//! The command line, as clap derive types. Parsing only: the commands live in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod access;
mod code;
pub use access::*;
pub use code::*;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// The API's JSON body, pretty-printed (NDJSON, one object a line, for streams).
    Json,
}

/// The shells `tartarus completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// A sandbox's network, as the CLI spells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Network {
    /// No network interface at all.
    #[default]
    None,
    /// A NIC with NAT egress through the host.
    Nat,
}

impl From<Network> for tartarus_types::NetworkMode {
    fn from(n: Network) -> Self {
        match n {
            Network::None => tartarus_types::NetworkMode::None,
            Network::Nat => tartarus_types::NetworkMode::Nat,
        }
    }
}

/// tartarus: run commands in Tartarus microVM sandboxes (a client of tartarusd's REST API).
#[derive(Debug, Parser)]
#[command(
    name = "tartarus",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Daemon address: `unix:///path/to.sock`, `http://HOST:PORT` or `https://HOST:PORT`
    /// [env: TARTARUS_HOST; default: unix:///run/tartarus/tartarusd.sock]
    #[arg(long, global = true, value_name = "URL")]
    pub host: Option<String>,

    /// Profile of ~/.config/tartarus/config.toml to use [env: TARTARUS_PROFILE]
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,

    /// Output format (default: the profile's `output`, else table)
    #[arg(short = 'o', long, global = true, value_enum)]
    pub output: Option<OutputFormat>,

    /// API key (`tts_...`) or JWT, sent as `Authorization: Bearer` (not needed on the Unix
    /// socket) [env: TARTARUS_API_KEY; profile: api_key]
    #[arg(long, global = true, value_name = "KEY")]
    pub api_key: Option<String>,

    /// CA certificate (PEM) the daemon's https:// certificate must chain to (default: the
    /// system's trust store) [env: TARTARUS_TLS_CA; profile: tls_ca]
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for an https:// daemon that wants mTLS
    /// [env: TARTARUS_TLS_CERT; profile: tls_cert]
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM) [env: TARTARUS_TLS_KEY; profile: tls_key]
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a sandbox, run a command in it with live output, delete it; exits with the
    /// command's exit code
    Run(RunArgs),
    /// Manage sandboxes
    #[command(subcommand, visible_alias = "sb")]
    Sandbox(SandboxCmd),
    /// List sandboxes (same as `sandbox ls`)
    Ps(SandboxLsArgs),
    /// Delete sandboxes (same as `sandbox rm`)
    Rm(SandboxRmArgs),
    /// Run a command in a running sandbox
    Exec(ExecArgs),
    /// Run code in a sandbox's warm runtime (state kept between calls); exits 1 when it raises
    RunCode(RunCodeArgs),
    /// Print a sandbox's console and background processes' output
    Logs(LogsArgs),
    /// Copy a file into or out of a sandbox (`ID:/path` names the sandbox side)
    Cp(CpArgs),
    /// Forward a host TCP port to a port inside a sandbox
    PortForward(PortForwardArgs),
    /// Manage sandbox snapshots
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Manage templates (kernel + root file system + warm-up, snapshotted once booted)
    #[command(subcommand)]
    Template(TemplateCmd),
    /// Manage warm pools: sandboxes of a template restored and paused ahead of creates
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Manage OCI images in the daemon's cache (pull, list, inspect, remove)
    #[command(subcommand)]
    Image(ImageCmd),
    /// Print the daemon's events (sandboxes, templates, snapshots)
    Events(EventsArgs),
    /// Manage API keys (create, list, rotate, revoke)
    #[command(subcommand)]
    Key(KeyCmd),
    /// A local certificate authority for the daemon's mTLS listener (no daemon needed)
    #[command(subcommand)]
    Ca(CaCmd),
    /// Read the daemon's audit log (`ls`, over the API) or check its integrity (`verify`,
    /// on the log file)
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Check that the daemon answers
    Health,
    /// Write a shell completion script to stdout
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
}

/// Options of the exec a command runs, shared by `run` and `exec`.
#[derive(Debug, Clone, Default, Args)]
pub struct ExecOpts {
    /// Environment variable for the command (repeatable)
    #[arg(short = 'e', long = "env", value_name = "K=V", value_parser = parse_key_val)]
    pub env: Vec<(String, String)>,
    /// Working directory in the guest
    #[arg(short = 'w', long = "workdir", value_name = "CWD")]
    pub workdir: Option<String>,
    /// Run as this user: name, uid, name:group or uid:gid (default: the image's user, else
    /// root)
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,
}

/// Registry credentials for pulling an image. Without flags, `TARTARUS_REGISTRY_USER` and
/// `TARTARUS_REGISTRY_PASSWORD` are used when both are set.
#[derive(Debug, Clone, Default, Args)]
pub struct RegistryAuthArgs {
    /// Registry user name (with --password-stdin, --password or TARTARUS_REGISTRY_PASSWORD)
    #[arg(long, value_name = "USER", conflicts_with = "token")]
    pub username: Option<String>,
    /// Registry password (visible to other users in `ps`: prefer --password-stdin)
    #[arg(long, value_name = "PASSWORD", conflicts_with_all = ["password_stdin", "token"])]
    pub password: Option<String>,
    /// Read the registry password from stdin
    #[arg(long, conflicts_with = "token")]
    pub password_stdin: bool,
    /// Registry bearer token
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tartarus run python -- python3 -c 'print(6*7)'\n  \
                        tartarus run docker.io/library/alpine:3.20 -- cat /etc/os-release\n  \
                        tartarus run --image alpine          # the image's own entrypoint and cmd\n\n\
                  A NAME that is not a template but looks like an image reference (it has a `/`, \
                  `:` or `.`), or any NAME with --image, is built into the template \
                  img-<name> once (later runs reuse it)."
)]
pub struct RunArgs {
    /// Template to start the sandbox from, or an image reference
    #[arg(value_name = "NAME")]
    pub template: String,
    /// NAME is an image reference: run it through its template img-<name> (built first when
    /// missing)
    #[arg(long)]
    pub image: bool,
    /// Kill the sandbox after this many seconds
    #[arg(long, value_name = "S")]
    pub timeout: Option<u64>,
    /// Hibernate the sandbox after this many seconds without an exec, file transfer or stream
    #[arg(long, value_name = "S")]
    pub idle_timeout: Option<u64>,
    #[arg(long, value_enum, default_value = "none")]
    pub network: Network,
    #[command(flatten)]
    pub exec: ExecOpts,
    /// Keep the sandbox afterwards (its id is printed on stderr)
    #[arg(long)]
    pub keep: bool,
    /// Print the guest's console lines while a template is built from the image
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// The command and its arguments (after `--`); for a template made from an image it
    /// replaces the image's cmd (after its entrypoint) and may be left out
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub cmd: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SandboxCmd {
    /// Start a sandbox from a template (or a snapshot); prints its id
    Create(SandboxCreateArgs),
    /// List sandboxes
    #[command(visible_alias = "list")]
    Ls(SandboxLsArgs),
    /// Show everything about a sandbox
    Inspect { id: String },
    /// Delete sandboxes
    #[command(visible_alias = "delete")]
    Rm(SandboxRmArgs),
    /// Pause a sandbox's vCPUs
    Pause { id: String },
    /// Resume a paused sandbox (a hibernated one is woken)
    Resume { id: String },
    /// Snapshot a sandbox to disk and stop its VMM, giving its memory back; any request wakes it
    Hibernate { id: String },
    /// Wake a hibernated sandbox
    Wake { id: String },
}

#[derive(Debug, Args)]
pub struct SandboxCreateArgs {
    /// Template to start from (omit with --snapshot)
    #[arg(required_unless_present = "snapshot")]
    pub template: Option<String>,
    /// Start from this sandbox snapshot instead (a fork)
    #[arg(long, value_name = "SNAP", conflicts_with = "template")]
    pub snapshot: Option<String>,
    /// Kill the sandbox after this many seconds
    #[arg(long, value_name = "S")]
    pub timeout: Option<u64>,
    /// Hibernate the sandbox after this many seconds without an exec, file transfer or stream
    #[arg(long, value_name = "S")]
    pub idle_timeout: Option<u64>,
    #[arg(long, value_enum, default_value = "none")]
    pub network: Network,
    /// Label (repeatable)
    #[arg(long = "label", short = 'l', value_name = "K=V", value_parser = parse_key_val)]
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct SandboxLsArgs {
    /// Only sandboxes in this state (creating, running, paused, hibernated, stopped, failed)
    #[arg(long, value_name = "STATE", value_parser = parse_state)]
    pub state: Option<String>,
}

#[derive(Debug, Args)]
pub struct SandboxRmArgs {
    /// Sandbox ids
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
    /// Seconds between SIGTERM to the guest and the kill (default 0: kill at once)
    #[arg(long, value_name = "S")]
    pub grace: Option<u64>,
    /// Keep a snapshot of each sandbox first (prints `ID SNAPSHOT`; start again with
    /// `sandbox create --snapshot SNAPSHOT`)
    #[arg(long)]
    pub checkpoint: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tartarus exec sb-0123456789ab -- ls -l /\n  \
                        tartarus exec -it sb-0123456789ab -- sh\n  \
                        tartarus exec -d sb-0123456789ab -- python3 -m http.server 8000"
)]
pub struct ExecArgs {
    /// Stream this terminal's stdin to the command (through the agent connection)
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the command a terminal (needs agent protocol v2)
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Run in the background: print its pid; its output goes to `tartarus logs`
    #[arg(short = 'd', long, conflicts_with_all = ["interactive", "tty"])]
    pub detach: bool,
    #[command(flatten)]
    pub exec: ExecOpts,
    /// Kill the command after this many seconds
    #[arg(long, value_name = "S")]
    pub timeout: Option<u64>,
    /// Sandbox id
    pub id: String,
    /// The command and its arguments (after `--`)
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub cmd: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing as output arrives
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines
    #[arg(long, value_name = "N")]
    pub tail: Option<u64>,
    /// Sandbox id
    pub id: String,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tartarus cp ./data.csv sb-0123456789ab:/tmp/data.csv\n  \
                        tartarus cp sb-0123456789ab:/etc/os-release -\n  \
                        tar c . | tartarus cp - sb-0123456789ab:/tmp/src.tar"
)]
pub struct CpArgs {
    /// Source: a host path, `-` for stdin, or `ID:/path`
    pub src: String,
    /// Destination: a host path, `-` for stdout, or `ID:/path`
    pub dst: String,
    /// Mode of an uploaded file, octal (default: the host file's, or 0644)
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    pub mode: Option<u32>,
}

#[derive(Debug, Args)]
pub struct PortForwardArgs {
    /// Sandbox id
    pub id: String,
    /// HOSTPORT:GUESTPORT (or just PORT for both)
    #[arg(value_parser = parse_port_pair)]
    pub ports: (u16, u16),
    /// Host address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
}

#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// Keep between --min and --max sandboxes of TEMPLATE ready (sized by demand)
    Set {
        template: String,
        #[arg(long, default_value_t = 0)]
        min: u32,
        #[arg(long)]
        max: u32,
        /// Most guest memory the pool's ready sandboxes hold together, MiB
        #[arg(long, value_name = "MIB")]
        max_memory: Option<u64>,
    },
    /// List warm pools
    #[command(visible_alias = "list")]
    Ls,
    /// Show a template's pool
    Inspect { template: String },
    /// Remove a template's pool (its ready sandboxes go)
    #[command(visible_alias = "delete")]
    Rm { template: String },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot a running sandbox (it is paused meanwhile)
    Create {
        /// Sandbox id
        id: String,
        /// Keep the sandbox paused afterwards
        #[arg(long)]
        leave_paused: bool,
    },
    /// List snapshots
    #[command(visible_alias = "list")]
    Ls {
        /// Only snapshots of this sandbox
        #[arg(long, value_name = "ID")]
        sandbox: Option<String>,
    },
    /// Show a snapshot
    Inspect { id: String },
    /// Delete snapshots
    #[command(visible_alias = "delete")]
    Rm {
        #[arg(required = true, value_name = "SNAP")]
        ids: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// List templates
    #[command(visible_alias = "list")]
    Ls,
    /// Show a template
    Inspect { name: String },
    /// Build a template from a spec file and/or flags, with progress
    Build(Box<TemplateBuildArgs>),
    /// Delete a template
    #[command(visible_alias = "delete")]
    Rm { name: String },
    /// Scaffold a directory with a commented template.toml
    Init {
        /// Directory to create (or fill)
        dir: PathBuf,
        /// Template name (default: the directory's name)
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Default, Args)]
#[command(
    after_help = "Examples:\n  tartarus template build -f ./python/template.toml\n  \
                        tartarus template build --name base --kernel vmlinux --rootfs rootfs.ext4 \
                        --memory 512 --warmup 'python3 -c \"import numpy\"'\n  \
                        tartarus template build --name py --from-image python:3.12-slim \
                        --warmup 'python3 -c \"import json\"'"
)]
pub struct TemplateBuildArgs {
    /// Spec file (TOML, or JSON when it ends in .json); flags override its fields
    #[arg(short = 'f', long = "file", value_name = "SPEC")]
    pub file: Option<PathBuf>,
    /// Template name
    #[arg(long)]
    pub name: Option<String>,
    /// Host path of the guest kernel (vmlinux)
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Host path of the ext4 root file system image
    #[arg(long, value_name = "PATH")]
    pub rootfs: Option<PathBuf>,
    /// Make the root file system from this OCI image (pulled first when not in the daemon's
    /// cache); --kernel is then optional (the daemon's default kernel)
    #[arg(long, value_name = "REF", conflicts_with = "rootfs")]
    pub from_image: Option<String>,
    #[command(flatten)]
    pub auth: RegistryAuthArgs,
    #[arg(long)]
    pub vcpus: Option<u8>,
    /// Guest memory, MiB
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u32>,
    /// Size of each sandbox's writable layer, MiB
    #[arg(long, value_name = "MIB")]
    pub disk: Option<u32>,
    /// Extra kernel command-line words
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub boot_args: Option<String>,
    /// Environment of every exec in the template's sandboxes (repeatable)
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_key_val)]
    pub env: Vec<(String, String)>,
    /// Warm-up command run with `sh -c` before the snapshot (repeatable)
    #[arg(long = "warmup", value_name = "CMD")]
    pub warmup: Vec<String>,
    /// Warm-up command left running in the snapshot (a server), run with `sh -c` (repeatable)
    #[arg(long = "warmup-bg", value_name = "CMD")]
    pub warmup_bg: Vec<String>,
    /// Replace an existing template of that name
    #[arg(long)]
    pub replace: bool,
    /// Print the guest's console lines above the progress bar
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Pull an image into the daemon's cache, with progress; prints its id
    Pull(ImagePullArgs),
    /// List images
    #[command(visible_alias = "list")]
    Ls(ImageLsArgs),
    /// Show images (JSON)
    Inspect {
        /// Names (`repo:tag`, `host:port/repo:tag`), ids (`sha256:...`) or id prefixes
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Delete images (and the blobs and root file systems only they used)
    #[command(visible_alias = "delete")]
    Rm(ImageRmArgs),
    /// Delete images no name or template refers to, and unused blobs
    Prune,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tartarus image pull docker.io/library/python:3.12-slim\n  \
                        tartarus image pull 127.0.0.1:5000/edge:latest --name edge\n  \
                        echo \"$TOKEN\" | tartarus image pull ghcr.io/org/app:1 --username me \
                        --password-stdin\n  \
                        tartarus image pull oci:/srv/layouts/app:v1 --build -q\n\n\
                  REF: [docker://]host[:port]/repo[:tag][@digest] (no host: Docker Hub), \
                  oci:DIR[:TAG] or docker-archive:FILE[:NAME:TAG] (paths on the daemon's host)."
)]
pub struct ImagePullArgs {
    /// The image reference
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Store it under this name instead (`name[:tag]`)
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub auth: RegistryAuthArgs,
    /// Also build its root file system now (otherwise the first template build does)
    #[arg(long)]
    pub build: bool,
    /// No progress: print only the image id
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ImageLsArgs {
    /// Print only the image ids (12 hex digits, one per image)
    #[arg(short = 'q', long, conflicts_with = "json")]
    pub quiet: bool,
    /// Print the API's body (same as -o json)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImageRmArgs {
    /// Names, ids or id prefixes
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// Delete it even when templates were made from it (they keep their root file system)
    #[arg(short = 'f', long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing events as they happen
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only events after this id
    #[arg(long, value_name = "ID")]
    pub since: Option<i64>,
}

/// `K=V` into a pair.
pub fn parse_key_val(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected K=V, got '{s}'")),
    }
}

fn parse_state(s: &str) -> Result<String, String> {
    match tartarus_types::SandboxState::parse(s) {
        Some(st) => Ok(st.as_str().to_string()),
        None => Err(format!(
            "unknown state '{s}' (one of creating, running, paused, hibernated, stopped, failed)"
        )),
    }
}

/// An octal file mode such as `644` or `0755`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!("expected an octal mode such as 0644, got '{s}'")),
    }
}

/// `HOSTPORT:GUESTPORT`, or `PORT` for both.
pub fn parse_port_pair(s: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("'{p}' is not a port number (1-65535)"))
    };
    match s.split_once(':') {
        Some((h, g)) => Ok((port(h)?, port(g)?)),
        None => {
            let p = port(s)?;
            Ok((p, p))
        }
    }
}
