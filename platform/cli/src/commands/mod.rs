//! The commands. [`run`] resolves the settings, builds the runtime and dispatches; each module
//! holds one group of commands and returns the process's exit code.

mod exec;
mod files;
mod image;
mod interactive;
mod misc;
mod port_forward;
mod sandbox;
mod snapshot;
mod template;
pub mod tty;

use crate::cli::{Cli, Command, ImageCmd, OutputFormat, TemplateCmd};
use crate::client::{ApiClient, ClientError, Endpoint};
use crate::config::{self, ConfigError, Overrides, Settings};
use crate::output::OutputError;
use crate::spec::SpecError;

pub use exec::{compose_argv, exec_request, image_template_name, looks_like_image_ref};
pub use files::{parse_side, Side};
pub use image::registry_auth;
pub use misc::completion_script as misc_completion_script;
pub use misc::event_line;

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("{0}")]
    Usage(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("agent: {0}")]
    Agent(#[from] guest_init::client::ClientError),
    #[error(transparent)]
    Tty(#[from] tty::TtyError),
    #[error("{0}")]
    Failed(String),
}

impl CmdError {
    /// 2 for usage and configuration errors, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            CmdError::Usage(_)
            | CmdError::Config(_)
            | CmdError::Spec(SpecError::Missing(_))
            | CmdError::Spec(SpecError::MissingRoot) => 2,
            CmdError::Client(ClientError::BadHost(_)) => 2,
            _ => 1,
        }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CmdError {
        let context = context.into();
        move |source| CmdError::Io { context, source }
    }
}

/// What every command gets.
pub struct Ctx {
    pub client: ApiClient,
    pub output: OutputFormat,
}

impl Ctx {
    pub fn json(&self) -> bool {
        self.output == OutputFormat::Json
    }
}

/// Builds the context from the settings.
pub fn context(settings: &Settings) -> Result<Ctx, CmdError> {
    let endpoint = Endpoint::parse(&settings.host)?;
    Ok(Ctx {
        client: ApiClient::new(endpoint, settings.api_key.clone()),
        output: settings.output,
    })
}

/// Runs a parsed command line; returns the exit code.
pub fn run(cli: Cli) -> Result<i32, CmdError> {
    // Commands that need neither the config nor the daemon.
    match &cli.command {
        Command::Completions { shell } => return misc::completions(*shell),
        Command::Template(TemplateCmd::Init { dir, name }) => {
            return template::init(dir, name.as_deref())
        }
        _ => {}
    }
    let settings = config::load_settings(&Overrides {
        host: cli.host.clone(),
        profile: cli.profile.clone(),
        output: cli.output,
    })?;
    let ctx = context(&settings)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CmdError::io("cannot start the async runtime"))?;
    let code = rt.block_on(dispatch(&ctx, cli.command));
    // Blocked stdin readers must not hold the process open.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}

async fn dispatch(ctx: &Ctx, cmd: Command) -> Result<i32, CmdError> {
    use crate::cli::{SandboxCmd, SnapshotCmd};
    match cmd {
        Command::Run(a) => exec::run(ctx, a).await,
        Command::Exec(a) => exec::exec(ctx, a).await,
        Command::Sandbox(SandboxCmd::Create(a)) => sandbox::create(ctx, a).await,
        Command::Sandbox(SandboxCmd::Ls(a)) | Command::Ps(a) => sandbox::ls(ctx, a).await,
        Command::Sandbox(SandboxCmd::Inspect { id }) => sandbox::inspect(ctx, &id).await,
        Command::Sandbox(SandboxCmd::Rm(a)) | Command::Rm(a) => sandbox::rm(ctx, a).await,
        Command::Sandbox(SandboxCmd::Pause { id }) => sandbox::pause(ctx, &id, "pause").await,
        Command::Sandbox(SandboxCmd::Resume { id }) => sandbox::pause(ctx, &id, "resume").await,
        Command::Logs(a) => files::logs(ctx, a).await,
        Command::Cp(a) => files::cp(ctx, a).await,
        Command::PortForward(a) => port_forward::run(ctx, a).await,
        Command::Snapshot(SnapshotCmd::Create { id, leave_paused }) => {
            snapshot::create(ctx, &id, leave_paused).await
        }
        Command::Snapshot(SnapshotCmd::Ls { sandbox }) => snapshot::ls(ctx, sandbox).await,
        Command::Snapshot(SnapshotCmd::Inspect { id }) => snapshot::inspect(ctx, &id).await,
        Command::Snapshot(SnapshotCmd::Rm { ids }) => snapshot::rm(ctx, ids).await,
        Command::Template(TemplateCmd::Ls) => template::ls(ctx).await,
        Command::Template(TemplateCmd::Inspect { name }) => template::inspect(ctx, &name).await,
        Command::Template(TemplateCmd::Build(a)) => template::build(ctx, a).await,
        Command::Template(TemplateCmd::Rm { name }) => template::rm(ctx, &name).await,
        Command::Template(TemplateCmd::Init { dir, name }) => template::init(&dir, name.as_deref()),
        Command::Image(ImageCmd::Pull(a)) => image::pull(ctx, a).await,
        Command::Image(ImageCmd::Ls(a)) => image::ls(ctx, a).await,
        Command::Image(ImageCmd::Inspect { names }) => image::inspect(ctx, &names).await,
        Command::Image(ImageCmd::Rm(a)) => image::rm(ctx, a).await,
        Command::Image(ImageCmd::Prune) => image::prune(ctx).await,
        Command::Events(a) => misc::events(ctx, a).await,
        Command::Health => misc::health(ctx).await,
        Command::Completions { shell } => misc::completions(shell),
    }
}
