//! Per-thread seccomp filters for `tartarus-vmm`, built with seccompiler.
//!
//! Three thread kinds each get an allow-list ([`ThreadKind`]): the API thread, the VMM thread
//! (event loop, builder) and the vCPU threads. A syscall outside a thread's list kills the whole
//! process with SIGSYS (`SECCOMP_RET_KILL_PROCESS`); the kernel records the syscall number in
//! the audit log (`dmesg`: `audit: type=1326 ... sig=31 ... syscall=N`).
//!
//! [`Filters`] are built once, from the built-in lists ([`defaults`]) or from a JSON file in
//! seccompiler's format with one filter per thread name (`"api"`, `"vmm"`, `"vcpu"`), made
//! process-wide with [`set_global`], and each thread installs its own with [`install_thread`].
//! [`strace`] turns `strace -f` output into such a JSON file (`tartarus-seccomp-gen`).

pub mod defaults;
pub mod ioctls;
pub mod rules;
pub mod strace;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

use seccompiler::TargetArch;
pub use seccompiler::{sock_filter, BpfProgram};
use serde_json::{json, Value};

/// The kinds of threads in tartarus-vmm, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    Api,
    Vmm,
    Vcpu,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Api, ThreadKind::Vmm, ThreadKind::Vcpu];

    /// The filter's name in the JSON format.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Api => "api",
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The built-in allow-list of this thread kind.
    pub fn default_list(self) -> rules::AllowList {
        match self {
            ThreadKind::Api => defaults::api(),
            ThreadKind::Vmm => defaults::vmm(),
            ThreadKind::Vcpu => defaults::vcpu(),
        }
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ThreadKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        ThreadKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown thread kind '{s}': use api, vmm or vcpu"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("Cannot build the built-in {0} seccomp filter")]
    Default(ThreadKind, #[source] rules::RulesError),
    #[error("Cannot read seccomp filter file {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("Invalid seccomp filter file {0}: {1}")]
    Json(PathBuf, String),
    #[error(
        "Seccomp filter file {0} has no filter for the \"{1}\" thread: it needs \"api\", \"vmm\" \
         and \"vcpu\""
    )]
    MissingThread(PathBuf, ThreadKind),
    #[error(
        "Seccomp filter file {0} has a filter for an unknown thread \"{1}\": the threads are \
         \"api\", \"vmm\" and \"vcpu\""
    )]
    UnknownThread(PathBuf, String),
    #[error("Cannot install the {0} seccomp filter")]
    Install(ThreadKind, #[source] seccompiler::Error),
    #[error("The process-wide seccomp filters are already set")]
    AlreadySet,
}

type Result<T> = std::result::Result<T, SeccompError>;

/// Where a set of filters came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    BuiltIn,
    File(PathBuf),
    /// `--no-seccomp`: no thread installs a filter.
    Disabled,
}

/// The compiled filters of the three thread kinds (or none, when disabled).
#[derive(Clone, Debug)]
pub struct Filters {
    origin: Origin,
    programs: Option<[BpfProgram; 3]>,
    /// Test builds: the thread that calls a forbidden syscall after installing its filter.
    #[cfg(feature = "test-trigger")]
    trigger: Option<ThreadKind>,
}

impl Filters {
    fn new(origin: Origin, programs: Option<[BpfProgram; 3]>) -> Filters {
        Filters {
            origin,
            programs,
            #[cfg(feature = "test-trigger")]
            trigger: trigger_from_env(),
        }
    }

    /// The built-in allow-lists.
    pub fn built_in() -> Result<Filters> {
        let compile = |k: ThreadKind| {
            k.default_list()
                .to_bpf()
                .map_err(|e| SeccompError::Default(k, e))
        };
        let programs = [
            compile(ThreadKind::Api)?,
            compile(ThreadKind::Vmm)?,
            compile(ThreadKind::Vcpu)?,
        ];
        Ok(Filters::new(Origin::BuiltIn, Some(programs)))
    }

    /// No filters (`--no-seccomp`).
    pub fn disabled() -> Filters {
        Filters::new(Origin::Disabled, None)
    }

    /// Filters from a seccompiler JSON file with exactly the filters "api", "vmm" and "vcpu".
    pub fn from_json_file(path: &Path) -> Result<Filters> {
        let file =
            std::fs::File::open(path).map_err(|e| SeccompError::Read(path.to_path_buf(), e))?;
        Filters::from_json(file, path)
    }

    /// Like [`Filters::from_json_file`], reading the JSON from `reader`; `path` names it in
    /// errors.
    pub fn from_json(reader: impl Read, path: &Path) -> Result<Filters> {
        let mut map = seccompiler::compile_from_json(reader, TargetArch::x86_64)
            .map_err(|e| SeccompError::Json(path.to_path_buf(), e.to_string()))?;
        let mut take = |k: ThreadKind| {
            map.remove(k.name())
                .ok_or_else(|| SeccompError::MissingThread(path.to_path_buf(), k))
        };
        let programs = [
            take(ThreadKind::Api)?,
            take(ThreadKind::Vmm)?,
            take(ThreadKind::Vcpu)?,
        ];
        if let Some(name) = map.into_keys().min() {
            return Err(SeccompError::UnknownThread(path.to_path_buf(), name));
        }
        Ok(Filters::new(
            Origin::File(path.to_path_buf()),
            Some(programs),
        ))
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The BPF program of a thread kind; None when disabled.
    pub fn program(&self, kind: ThreadKind) -> Option<&BpfProgram> {
        self.programs.as_ref().map(|p| &p[kind.index()])
    }

    /// One line for the log: where the filters come from and their sizes.
    pub fn summary(&self) -> String {
        let from = match &self.origin {
            Origin::BuiltIn => "built-in allow-lists".to_string(),
            Origin::File(p) => format!("filter file {}", p.display()),
            Origin::Disabled => return "seccomp disabled (--no-seccomp)".to_string(),
        };
        let sizes: Vec<String> = ThreadKind::ALL
            .iter()
            .filter_map(|k| {
                self.program(*k)
                    .map(|p| format!("{k} {} BPF instructions", p.len()))
            })
            .collect();
        format!(
            "seccomp: {from} ({}); a forbidden syscall kills the process with SIGSYS",
            sizes.join(", ")
        )
    }

    /// Test builds: makes `kind` call a forbidden syscall after installing its filter (as
    /// [`TRIGGER_ENV`] does).
    #[cfg(feature = "test-trigger")]
    pub fn set_trigger(&mut self, kind: ThreadKind) {
        self.trigger = Some(kind);
    }

    /// Installs the filter of `kind` on the calling thread; false when disabled.
    pub fn install(&self, kind: ThreadKind) -> Result<bool> {
        let installed = match self.program(kind) {
            Some(p) => {
                install(p).map_err(|e| SeccompError::Install(kind, e))?;
                true
            }
            None => false,
        };
        #[cfg(feature = "test-trigger")]
        if self.trigger == Some(kind) {
            call_forbidden_syscall();
        }
        Ok(installed)
    }
}

/// Installs `filter` on the calling thread (sets `no_new_privs` first). Threads the caller
/// starts afterwards inherit it.
pub fn install(filter: &[sock_filter]) -> std::result::Result<(), seccompiler::Error> {
    seccompiler::apply_filter(filter)
}

static GLOBAL: OnceLock<Filters> = OnceLock::new();

/// Makes `filters` the process-wide set that [`install_thread`] uses. Once only.
pub fn set_global(filters: Filters) -> Result<()> {
    GLOBAL.set(filters).map_err(|_| SeccompError::AlreadySet)
}

/// Installs the process-wide filter of `kind` on the calling thread. Ok(false) when filters are
/// disabled or were never set (library users, unit tests).
pub fn install_thread(kind: ThreadKind) -> Result<bool> {
    match GLOBAL.get() {
        Some(f) => f.install(kind),
        None => Ok(false),
    }
}

/// The built-in allow-lists in seccompiler's JSON format: a starting point for custom filters.
pub fn built_in_json() -> Value {
    let mut v = json!({});
    for k in ThreadKind::ALL {
        v[k.name()] = k.default_list().to_json();
    }
    v
}

/// The environment variable that picks the thread the test trigger runs in.
#[cfg(feature = "test-trigger")]
pub const TRIGGER_ENV: &str = "TARTARUS_SECCOMP_TRIGGER";

#[cfg(feature = "test-trigger")]
fn trigger_from_env() -> Option<ThreadKind> {
    std::env::var(TRIGGER_ENV).ok().and_then(|v| v.parse().ok())
}

/// Calls a syscall that no built-in list allows; under a filter the process dies with SIGSYS.
#[cfg(feature = "test-trigger")]
fn call_forbidden_syscall() {
    // SAFETY: getppid takes no arguments and touches no memory.
    unsafe { libc::syscall(defaults::FORBIDDEN_FOR_TESTS) };
}

#[cfg(test)]
mod tests;
