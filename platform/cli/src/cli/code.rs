//! The command line of `run-code` (issue #13): code for a sandbox's warm runtime.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Clone, Default, Args)]
#[command(
    after_help = "Examples:\n  tartarus run-code sb-0123456789ab -c 'import pandas as pd; pd.__version__'\n  \
                        tartarus run-code sb-0123456789ab -f job.py\n  \
                        echo 'print(6 * 7)' | tartarus run-code sb-0123456789ab -f -\n  \
                        tartarus run-code --template python-ds -c '21 * 2'\n\n\
                  The runtime keeps its variables between calls. Output is streamed; the value of \
                  a last expression is printed after it; an exception's traceback goes to stderr \
                  and the exit status is 1."
)]
pub struct RunCodeArgs {
    /// Sandbox id (or --template)
    #[arg(value_name = "SANDBOX", required_unless_present = "template")]
    pub sandbox: Option<String>,
    /// Create a sandbox from this template, run the code in it, delete it
    #[arg(long, value_name = "NAME", conflicts_with = "sandbox")]
    pub template: Option<String>,
    /// The code
    #[arg(
        short = 'c',
        long = "code",
        value_name = "CODE",
        required_unless_present = "file"
    )]
    pub code: Option<String>,
    /// Read the code from this file (`-`: stdin)
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "code"
    )]
    pub file: Option<PathBuf>,
    /// The runtime's language
    #[arg(long, value_name = "LANG", default_value = "python")]
    pub language: String,
    /// Interrupt the code (a TimeoutError inside it) after this many seconds
    #[arg(long, value_name = "S")]
    pub timeout: Option<u64>,
    /// With --template: keep the sandbox afterwards (its id is printed on stderr)
    #[arg(long, requires = "template")]
    pub keep: bool,
}
