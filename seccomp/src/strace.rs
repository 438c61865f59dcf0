//! Typhon: turns `strace -f` output of a workload into a seccompiler JSON allow-list.
//!
//! Accepted input: `strace -f` (with `-o FILE`, lines start with the thread id; on stderr with
//! `[pid N]`), with or without `-t`/`-tt`/`-ttt`/`-r` timestamps and `-T` durations, split
//! calls (`<unfinished ...>` / `<... x resumed>`), decoded (`KVM_RUN`, `_IOC(...)`) or raw
//! (`-e raw=ioctl`) ioctl requests. Threads are named from their `prctl(PR_SET_NAME, "...")`
//! (trailing digits dropped: `vcpu0` → `vcpu`), inherit their creator's name until then, and the
//! first process is the main thread; `--thread NAME=TID` overrides, `--name` puts everything in
//! one filter.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Value};

use crate::ioctls;
use crate::rules::Cond;

#[derive(Debug, thiserror::Error)]
pub enum StraceError {
    #[error("The trace has no syscalls")]
    Empty,
    #[error(
        "Cannot read the request number of ioctl(..., {0}, ...): rerun strace with `-e raw=ioctl` \
         so it prints numbers"
    )]
    UnknownIoctl(String),
}

/// What one thread did.
#[derive(Debug, Default, Clone)]
struct ThreadTrace {
    /// Its last `PR_SET_NAME`.
    name: Option<String>,
    /// The thread that created it.
    parent: Option<u32>,
    syscalls: BTreeSet<String>,
    /// ioctl request arguments as strace printed them.
    ioctls: BTreeSet<String>,
}

/// A parsed trace: every thread id with its syscalls.
#[derive(Debug, Default, Clone)]
pub struct Trace {
    threads: BTreeMap<u32, ThreadTrace>,
    main: Option<u32>,
    /// Lines starting with a call that could not be read (e.g. strace's `syscall_0x1b8`).
    pub skipped: Vec<String>,
}

/// Splits the optional thread id (`123 ` or `[pid 123] `) and timestamp off a line.
fn split_prefix(line: &str) -> (Option<u32>, &str) {
    let mut rest = line.trim_start();
    let mut pid = None;
    if let Some(r) = rest.strip_prefix("[pid") {
        if let Some((n, r)) = r.split_once(']') {
            pid = n.trim().parse().ok();
            rest = r.trim_start();
        }
    } else if let Some((n, r)) = rest.split_once(' ') {
        if let Ok(p) = n.parse() {
            pid = Some(p);
            rest = r.trim_start();
        }
    }
    // -t 12:34:56, -tt 12:34:56.123456, -ttt 1700000000.123456, -r 0.000123
    if let Some((ts, r)) = rest.split_once(' ') {
        let is_ts = !ts.is_empty()
            && ts.chars().next().is_some_and(|c| c.is_ascii_digit())
            && ts
                .chars()
                .all(|c| c.is_ascii_digit() || c == ':' || c == '.');
        if is_ts {
            rest = r.trim_start();
        }
    }
    (pid, rest)
}

/// `name(args...` → (name, args text).
fn split_call(text: &str) -> Option<(&str, &str)> {
    let (name, args) = text.split_once('(')?;
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("syscall_");
    ok.then_some((name, args))
}

/// The `n`th top-level argument (0-based) of an argument list text.
fn nth_arg(args: &str, n: usize) -> Option<&str> {
    let mut depth = 0i32;
    let mut in_str = false;
    let mut escaped = false;
    let mut start = 0;
    let mut index = 0;
    for (i, c) in args.char_indices() {
        if in_str {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => {
                return (index == n).then(|| args[start..i].trim());
            }
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                if index == n {
                    return Some(args[start..i].trim());
                }
                index += 1;
                start = i + 1;
            }
            _ => {}
        }
    }
    (index == n)
        .then(|| args[start..].trim())
        .filter(|s| !s.is_empty())
}

impl Trace {
    /// Parses strace output. Lines that are not syscalls (signals, exits) are ignored.
    pub fn parse(text: &str) -> Trace {
        let mut t = Trace::default();
        let mut pending: HashMap<u32, String> = HashMap::new();
        for line in text.lines() {
            let (pid, rest) = split_prefix(line);
            let pid = match (pid, t.main) {
                (Some(p), _) => p,
                (None, Some(m)) => m,
                // Without -f there is one process; give it a stable id.
                (None, None) => 0,
            };
            if t.main.is_none() {
                t.main = Some(pid);
            }
            if rest.starts_with("+++") || rest.starts_with("---") || rest.is_empty() {
                continue;
            }
            let call = if let Some(r) = rest.strip_prefix("<...") {
                // `<... name resumed>rest`: complete the call started earlier.
                let Some((_, after)) = r.split_once("resumed>") else {
                    continue;
                };
                // A thread that dies mid-call prints `<... x resumed> <unfinished ...>) = ?`.
                let after = after.replace("<unfinished ...>", "");
                match pending.remove(&pid) {
                    Some(start) => format!("{start}{after}"),
                    None => continue,
                }
            } else if let Some((start, _)) = rest.split_once("<unfinished ...>") {
                pending.insert(pid, start.to_string());
                continue;
            } else {
                rest.to_string()
            };
            t.record(pid, &call, line);
        }
        // Calls that never resumed (the process died) still happened.
        let mut left: Vec<_> = pending.into_iter().collect();
        left.sort();
        for (pid, start) in left {
            t.record(pid, &start, &start);
        }
        t
    }

    fn record(&mut self, pid: u32, call: &str, line: &str) {
        let Some((name, args)) = split_call(call) else {
            if call.contains('(') {
                self.skipped.push(line.to_string());
            }
            return;
        };
        let th = self.threads.entry(pid).or_default();
        th.syscalls.insert(name.to_string());
        match name {
            "ioctl" => {
                if let Some(req) = nth_arg(args, 1) {
                    th.ioctls.insert(req.to_string());
                }
            }
            "prctl" if nth_arg(args, 0) == Some("PR_SET_NAME") => {
                if let Some(n) = nth_arg(args, 1) {
                    th.name = Some(n.trim_matches('"').to_string());
                }
            }
            "clone" | "clone3" | "fork" | "vfork" => {
                let child = call
                    .rsplit_once(" = ")
                    .and_then(|(_, r)| r.split_whitespace().next())
                    .and_then(|r| r.parse::<u32>().ok());
                if let Some(c) = child {
                    self.threads.entry(c).or_default().parent = Some(pid);
                }
            }
            _ => {}
        }
    }

    /// Thread ids in the trace.
    pub fn thread_ids(&self) -> Vec<u32> {
        self.threads.keys().copied().collect()
    }

    /// The filter name of a thread: its PR_SET_NAME without trailing digits, else its creator's,
    /// else `main_name` for the first process.
    fn kind_of(&self, tid: u32, main_name: &str) -> String {
        let mut cur = Some(tid);
        let mut hops = 0;
        while let Some(t) = cur {
            let th = &self.threads[&t];
            if let Some(n) = &th.name {
                return n.trim_end_matches(|c: char| c.is_ascii_digit()).to_string();
            }
            if Some(t) == self.main {
                break;
            }
            cur = th.parent.filter(|p| self.threads.contains_key(p));
            hops += 1;
            if hops > self.threads.len() {
                break;
            }
        }
        main_name.to_string()
    }
}

/// How to group threads into filters.
#[derive(Clone, Debug)]
pub struct Grouping {
    /// Put every thread into this one filter.
    pub single: Option<String>,
    /// Explicit thread id → filter name assignments.
    pub threads: Vec<(String, u32)>,
    /// The name of the first process's main thread (default "vmm").
    pub main_name: String,
    /// Let the "vmm" filter also allow what "vcpu" does, and installing a filter (tartarus-vmm
    /// stacks them, see [`crate::defaults`]).
    pub merge_vcpu_into_vmm: bool,
}

impl Default for Grouping {
    fn default() -> Self {
        Grouping {
            single: None,
            threads: Vec::new(),
            main_name: "vmm".into(),
            merge_vcpu_into_vmm: true,
        }
    }
}

/// One generated filter.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ThreadProfile {
    pub syscalls: BTreeSet<String>,
    pub ioctls: BTreeSet<u32>,
}

/// Generated filters by name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Profile {
    pub filters: BTreeMap<String, ThreadProfile>,
}

/// Reads an ioctl request as strace prints it: a name (`KVM_RUN`, `A or B`), `_IOC(...)`, or a
/// number (`0xae80`, `44672`, `0xae80 /* KVM_RUN */`).
pub fn parse_ioctl_request(text: &str) -> Option<u32> {
    let text = text.trim();
    let first = text.split_whitespace().next()?;
    if let Some(n) = parse_number(first) {
        return Some(n);
    }
    if let Some(inner) = text.strip_prefix("_IOC(").and_then(|s| s.strip_suffix(')')) {
        let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
        let [dir, ty, nr, size] = parts.as_slice() else {
            return None;
        };
        let mut d = 0;
        for flag in dir.split('|') {
            d |= match flag.trim() {
                "_IOC_NONE" => 0,
                "_IOC_WRITE" => 1,
                "_IOC_READ" => 2,
                other => parse_number(other)?,
            };
        }
        let (ty, nr, size) = (parse_number(ty)?, parse_number(nr)?, parse_number(size)?);
        return Some(ioctls::ioc(d, ty, nr, size as usize));
    }
    text.split(" or ").find_map(|n| ioctls::by_name(n.trim()))
}

fn parse_number(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

impl Profile {
    /// Groups the threads of `trace` into filters.
    pub fn from_trace(trace: &Trace, grouping: &Grouping) -> Result<Profile, StraceError> {
        if trace.threads.values().all(|t| t.syscalls.is_empty()) {
            return Err(StraceError::Empty);
        }
        let mut p = Profile::default();
        for (tid, th) in &trace.threads {
            let name = match (
                &grouping.single,
                grouping.threads.iter().find(|(_, t)| t == tid),
            ) {
                (Some(n), _) => n.clone(),
                (None, Some((n, _))) => n.clone(),
                (None, None) => trace.kind_of(*tid, &grouping.main_name),
            };
            if th.syscalls.is_empty() {
                continue;
            }
            let f = p.filters.entry(name).or_default();
            f.syscalls.extend(th.syscalls.iter().cloned());
            for req in &th.ioctls {
                let n = parse_ioctl_request(req)
                    .ok_or_else(|| StraceError::UnknownIoctl(req.clone()))?;
                f.ioctls.insert(n);
            }
        }
        if grouping.merge_vcpu_into_vmm {
            if let Some(vcpu) = p.filters.get("vcpu").cloned() {
                if let Some(vmm) = p.filters.get_mut("vmm") {
                    vmm.syscalls.extend(vcpu.syscalls);
                    // A vCPU thread installs its own filter while under the VMM's (a trace
                    // taken with --no-seccomp does not show it).
                    vmm.syscalls.extend(["prctl", "seccomp"].map(String::from));
                    vmm.ioctls.extend(vcpu.ioctls);
                }
            }
        }
        Ok(p)
    }

    /// Removes syscall names seccompiler does not know (returned, for a warning).
    /// Adds `names` to every filter (see `defaults::runtime_baseline`): a trace only shows
    /// what happened to happen, e.g. a thread that never contended a lock shows no futex.
    pub fn add_baseline(&mut self, names: &[&str]) {
        for f in self.filters.values_mut() {
            f.syscalls.extend(names.iter().map(|n| n.to_string()));
        }
    }

    pub fn drop_unknown_syscalls(&mut self) -> Vec<String> {
        let mut dropped = BTreeSet::new();
        for f in self.filters.values_mut() {
            f.syscalls.retain(|s| {
                let known = known_syscall(s);
                if !known {
                    dropped.insert(s.clone());
                }
                known
            });
        }
        dropped.into_iter().collect()
    }

    /// The profile in seccompiler's JSON format: sorted syscalls, ioctl allowed only with the
    /// request numbers seen, anything else kills the process.
    pub fn to_json(&self) -> Value {
        let mut out = json!({});
        for (name, f) in &self.filters {
            let mut rules = Vec::new();
            for s in &f.syscalls {
                if s == "ioctl" && !f.ioctls.is_empty() {
                    for req in &f.ioctls {
                        let comment = ioctls::name_of(*req);
                        let mut rule = json!({
                            "syscall": "ioctl",
                            "args": [Cond::eq(1, u64::from(*req), comment).to_json()],
                        });
                        if let Some(c) = comment {
                            rule["comment"] = json!(c);
                        }
                        rules.push(rule);
                    }
                } else {
                    rules.push(json!({ "syscall": s }));
                }
            }
            out[name] = json!({
                "mismatch_action": "kill_process",
                "match_action": "allow",
                "filter": rules,
            });
        }
        out
    }
}

/// Whether seccompiler knows this syscall name on x86_64.
fn known_syscall(name: &str) -> bool {
    let probe = json!({ "t": {
        "mismatch_action": "kill_process",
        "match_action": "allow",
        "filter": [{ "syscall": name }],
    }});
    seccompiler::compile_from_json(
        probe.to_string().as_bytes(),
        seccompiler::TargetArch::x86_64,
    )
    .is_ok()
}

#[cfg(test)]
#[path = "strace_tests.rs"]
mod tests;
