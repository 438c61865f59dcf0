//! `tartarus-seccomp-gen` (Typhon): turns `strace -f` output of a tartarus-vmm workload into a
//! seccompiler JSON filter file for `tartarus-vmm --seccomp-filter`. See seccomp/README.md.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use seccomp::strace::{Grouping, Profile, Trace};

#[derive(Parser, Debug)]
#[command(
    name = "tartarus-seccomp-gen",
    version,
    about = "Generate a seccompiler JSON allow-list from `strace -f` output (threads named by \
             their PR_SET_NAME: api, vcpuN -> vcpu; the main thread is vmm)."
)]
struct Args {
    /// strace output to read ("-" for stdin); several files are combined.
    #[arg(value_name = "TRACE", required_unless_present = "print_defaults")]
    traces: Vec<PathBuf>,
    /// Write the JSON here instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Put every thread into one filter with this name.
    #[arg(long, value_name = "NAME", conflicts_with = "thread")]
    name: Option<String>,
    /// Assign a thread id to a filter (repeatable), overriding names from the trace.
    #[arg(long, value_name = "NAME=TID", value_parser = parse_thread)]
    thread: Vec<(String, u32)>,
    /// Filter name of the first process's main thread.
    #[arg(long, value_name = "NAME", default_value = "vmm")]
    main_name: String,
    /// Do not add the "vcpu" syscalls to the "vmm" filter (tartarus-vmm needs them there: vCPU
    /// threads started after the VMM thread's filter run under both).
    #[arg(long)]
    no_merge: bool,
    /// Print tartarus-vmm's built-in filters as JSON and exit.
    #[arg(long)]
    print_defaults: bool,
    /// Do not add the runtime baseline (allocation, futex, signals, exit) to every filter.
    #[arg(long)]
    no_baseline: bool,
}

fn parse_thread(s: &str) -> Result<(String, u32), String> {
    let (name, tid) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not NAME=TID"))?;
    let tid = tid
        .parse()
        .map_err(|_| format!("'{tid}' in '{s}' is not a thread id"))?;
    if name.is_empty() {
        return Err(format!("'{s}' has an empty name"));
    }
    Ok((name.to_string(), tid))
}

fn read_input(path: &PathBuf) -> Result<String, String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        return Ok(s);
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn run(args: Args) -> Result<(), String> {
    let json = if args.print_defaults {
        seccomp::built_in_json()
    } else {
        let mut text = String::new();
        for p in &args.traces {
            text.push_str(&read_input(p)?);
            text.push('\n');
        }
        let trace = Trace::parse(&text);
        for line in trace.skipped.iter().take(5) {
            eprintln!("tartarus-seccomp-gen: warning: skipped unreadable line: {line}");
        }
        let grouping = Grouping {
            single: args.name,
            threads: args.thread,
            main_name: args.main_name,
            merge_vcpu_into_vmm: !args.no_merge,
        };
        let mut profile = Profile::from_trace(&trace, &grouping).map_err(|e| e.to_string())?;
        if !args.no_baseline {
            profile.add_baseline(&seccomp::defaults::runtime_baseline());
        }
        let dropped = profile.drop_unknown_syscalls();
        if !dropped.is_empty() {
            eprintln!(
                "tartarus-seccomp-gen: warning: left out syscalls seccompiler does not know: {}",
                dropped.join(", ")
            );
        }
        for (name, f) in &profile.filters {
            eprintln!(
                "tartarus-seccomp-gen: {name}: {} syscalls, {} ioctl requests",
                f.syscalls.len(),
                f.ioctls.len()
            );
        }
        profile.to_json()
    };
    let mut text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    text.push('\n');
    match &args.output {
        Some(p) => {
            std::fs::write(p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tartarus-seccomp-gen: {e}");
            ExitCode::FAILURE
        }
    }
}
