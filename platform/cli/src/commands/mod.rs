//! The commands. [`run`] resolves the settings, builds the runtime and dispatches; each module
//! holds one group of commands and returns the process's exit code.

mod audit;
mod ca;
mod code;
mod exec;
mod files;
mod image;
mod interactive;
mod key;
mod misc;
mod pool;
mod port_forward;
mod sandbox;
mod snapshot;
mod template;
pub mod tty;

use crate::cli::{AuditCmd, Cli, Command, ImageCmd, KeyCmd, OutputFormat, TemplateCmd};
use crate::client::{ApiClient, ClientError, Endpoint};
use crate::config::{self, ConfigError, Overrides, Settings};
use crate::output::OutputError;
use crate::spec::SpecError;

pub use audit::{problem_json, report_json};
pub use ca::ca_dir;
pub use exec::{compose_argv, exec_request, image_template_name, looks_like_image_ref};
pub use files::{parse_side, Side};
pub use image::registry_auth;
pub use key::key_id;
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
    #[error("CA: {}", with_sources(.0))]
    Ca(#[from] tartarus_auth::ca::CaError),
    #[error("cannot verify the audit log: {}", with_sources(.0))]
    AuditVerify(#[from] tartarus_audit::VerifyError),
    #[error("cannot verify the audit log: {}", with_sources(.0))]
    AuditKey(#[from] tartarus_audit::KeyError),
    /// An error with a line of advice printed below it.
    #[error("{source}")]
    Hinted { source: Box<CmdError>, hint: String },
}

impl CmdError {
    /// 2 for usage and configuration errors, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            CmdError::Hinted { source, .. } => source.exit_code(),
            CmdError::Usage(_)
            | CmdError::Config(_)
            | CmdError::Spec(SpecError::Missing(_))
            | CmdError::Spec(SpecError::MissingRoot) => 2,
            CmdError::Client(ClientError::BadHost(_) | ClientError::Tls(_)) => 2,
            // `audit verify`: 1 means "not intact", so "could not check" is 2.
            CmdError::AuditVerify(_) | CmdError::AuditKey(_) => 2,
            _ => 1,
        }
    }

    /// A second line for errors a user can fix by changing how they call: missing or bad
    /// credentials (401), a role or tenant that may not do this (403), TLS trouble.
    pub fn with_hint(self, sent_credentials: bool) -> CmdError {
        match self.hint(sent_credentials) {
            Some(hint) => CmdError::Hinted {
                source: Box::new(self),
                hint,
            },
            None => self,
        }
    }

    fn hint(&self, sent_credentials: bool) -> Option<String> {
        match self {
            CmdError::Client(c) => match c.auth_status() {
                Some(401) if sent_credentials => Some(
                    "the daemon refused the credential sent: check --api-key / TARTARUS_API_KEY \
                     (or the profile's api_key); a revoked or expired key needs a new one \
                     (`tartarus key create`, run by an admin)"
                        .into(),
                ),
                Some(401) => Some(
                    "no credential was sent: set --api-key / TARTARUS_API_KEY (or api_key in \
                     the profile), or present a client certificate (--tls-cert, --tls-key); \
                     root on the daemon's host can use the Unix socket instead"
                        .into(),
                ),
                Some(_) => Some(
                    "the credential is valid but its role or tenant may not do this: ask an \
                     admin for a key with a role that allows it (see `tartarus key ls`)"
                        .into(),
                ),
                None => match c {
                    ClientError::Handshake { .. } => Some(
                        "check --tls-ca (the CA that signed the daemon's certificate), and \
                         --tls-cert / --tls-key if the daemon wants a client certificate"
                            .into(),
                    ),
                    _ => None,
                },
            },
            _ => None,
        }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CmdError {
        let context = context.into();
        move |source| CmdError::Io { context, source }
    }
}

/// An error of the libraries (whose messages leave the cause to `source()`) with its causes:
/// `Cannot read or write key file /x: No such file or directory (os error 2)`.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
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

/// Builds the context from the settings: a `tts_` API key is checked for typos before it is
/// ever sent (a JWT or another bearer token is sent as is); an `https://` host gets the TLS
/// client.
pub fn context(settings: &Settings) -> Result<Ctx, CmdError> {
    let endpoint = Endpoint::parse(&settings.host)?;
    if let Some(key) = &settings.api_key {
        if key.starts_with(tartarus_auth::apikey::PREFIX) {
            tartarus_auth::apikey::ApiKey::parse(key).map_err(|e| {
                CmdError::Usage(format!(
                    "the API key (--api-key, TARTARUS_API_KEY or the profile's api_key): {e}"
                ))
            })?;
        }
    }
    let mut client = ApiClient::new(endpoint.clone(), settings.api_key.clone());
    if endpoint.is_tls() {
        client =
            client.with_tls(crate::tls::client_config(&settings.tls).map_err(ClientError::from)?);
    }
    Ok(Ctx {
        client,
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
        api_key: cli.api_key.clone(),
        tls_ca: cli.tls_ca.clone(),
        tls_cert: cli.tls_cert.clone(),
        tls_key: cli.tls_key.clone(),
    })?;
    // Local commands: the config only gives the output format.
    match cli.command {
        Command::Ca(c) => return ca::run(c, settings.output),
        Command::Audit(AuditCmd::Verify(a)) => return audit::verify_cmd(a, settings.output),
        _ => {}
    }
    let ctx = context(&settings)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CmdError::io("cannot start the async runtime"))?;
    let sent_credentials = settings.api_key.is_some() || settings.tls.cert.is_some();
    let code = rt
        .block_on(dispatch(&ctx, cli.command))
        .map_err(|e| e.with_hint(sent_credentials));
    // Blocked stdin readers must not hold the process open.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}

async fn dispatch(ctx: &Ctx, cmd: Command) -> Result<i32, CmdError> {
    use crate::cli::{PoolCmd, SandboxCmd, SnapshotCmd};
    match cmd {
        Command::Run(a) => exec::run(ctx, a).await,
        Command::Exec(a) => exec::exec(ctx, a).await,
        Command::RunCode(a) => code::run_code(ctx, a).await,
        Command::Sandbox(SandboxCmd::Create(a)) => sandbox::create(ctx, a).await,
        Command::Sandbox(SandboxCmd::Ls(a)) | Command::Ps(a) => sandbox::ls(ctx, a).await,
        Command::Sandbox(SandboxCmd::Inspect { id }) => sandbox::inspect(ctx, &id).await,
        Command::Sandbox(SandboxCmd::Rm(a)) | Command::Rm(a) => sandbox::rm(ctx, a).await,
        Command::Sandbox(SandboxCmd::Pause { id }) => sandbox::pause(ctx, &id, "pause").await,
        Command::Sandbox(SandboxCmd::Resume { id }) => sandbox::pause(ctx, &id, "resume").await,
        Command::Sandbox(SandboxCmd::Hibernate { id }) => {
            sandbox::pause(ctx, &id, "hibernate").await
        }
        Command::Sandbox(SandboxCmd::Wake { id }) => sandbox::pause(ctx, &id, "wake").await,
        Command::Logs(a) => files::logs(ctx, a).await,
        Command::Cp(a) => files::cp(ctx, a).await,
        Command::PortForward(a) => port_forward::run(ctx, a).await,
        Command::Snapshot(SnapshotCmd::Create { id, leave_paused }) => {
            snapshot::create(ctx, &id, leave_paused).await
        }
        Command::Snapshot(SnapshotCmd::Ls { sandbox }) => snapshot::ls(ctx, sandbox).await,
        Command::Pool(PoolCmd::Set {
            template,
            min,
            max,
            max_memory,
        }) => pool::set(ctx, &template, min, max, max_memory).await,
        Command::Pool(PoolCmd::Ls) => pool::ls(ctx).await,
        Command::Pool(PoolCmd::Inspect { template }) => pool::inspect(ctx, &template).await,
        Command::Pool(PoolCmd::Rm { template }) => pool::rm(ctx, &template).await,
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
        Command::Key(KeyCmd::Create(a)) => key::create(ctx, a).await,
        Command::Key(KeyCmd::Ls) => key::ls(ctx).await,
        Command::Key(KeyCmd::Get { id }) => key::get(ctx, &id).await,
        Command::Key(KeyCmd::Rotate { id, overlap }) => key::rotate(ctx, &id, overlap).await,
        Command::Key(KeyCmd::Revoke { ids }) => key::revoke(ctx, &ids).await,
        Command::Audit(AuditCmd::Ls(a)) => audit::ls(ctx, a).await,
        Command::Audit(AuditCmd::Verify(a)) => audit::verify_cmd(a, ctx.output),
        Command::Ca(c) => ca::run(c, ctx.output),
        Command::Health => misc::health(ctx).await,
        Command::Completions { shell } => misc::completions(shell),
    }
}
