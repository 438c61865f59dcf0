//! PID 1: mounts, hostname, network, the agent, signals, reaping and power-off.

mod console;
mod net;
mod overlay;

use std::ffi::CString;
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent::Agent;
use crate::cmdline::Cmdline;
use crate::reaper::Reaper;
use crate::vsock::VsockListener;
use crate::xstate;
use crate::DEFAULT_AGENT_PORT;

pub use net::NetError;
pub use overlay::OverlayError;

/// Errors of PID 1 set-up.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("Cannot mount {what} on {target}")]
    Mount {
        what: &'static str,
        target: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("Cannot set the hostname to '{0}'")]
    Hostname(String, #[source] io::Error),
    #[error("Cannot read the kernel command line")]
    Cmdline(#[source] io::Error),
    #[error("Bad kernel command line")]
    BadCmdline(#[from] crate::cmdline::CmdlineError),
    #[error("Cannot start the reaper")]
    Reaper(#[from] crate::reaper::ReaperError),
}

/// The line printed on the console once the guest is up.
pub const READY_LINE: &str = "tartarus-init: ready";
const DEFAULT_HOSTNAME: &str = "tartarus";

/// Prints a line on the console (stdout, which the kernel points at /dev/console).
pub fn log(msg: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "tartarus-init: {msg}");
    let _ = out.flush();
}

static POWERING_OFF: AtomicBool = AtomicBool::new(false);

/// Syncs file systems and ends the VM. Never returns.
///
/// A microVM without ACPI (the usual case) has no power-off device: the kernel would only halt
/// the CPU. There the VM is ended with a reset instead (`reboot=k` on the command line makes it
/// a keyboard-controller reset, on which the VMM exits with code 0). With ACPI it powers off.
pub fn power_off() -> ! {
    POWERING_OFF.store(true, Ordering::SeqCst);
    // SAFETY: sync has no arguments and no memory effects.
    unsafe { libc::sync() };
    let cmd = if Path::new("/sys/firmware/acpi").exists() {
        libc::RB_POWER_OFF
    } else {
        libc::RB_AUTOBOOT
    };
    // SAFETY: reboot(2) only acts on the system; on success it does not return.
    unsafe { libc::reboot(cmd) };
    log(&format!("reboot failed: {}", io::Error::last_os_error()));
    // As PID 1, exiting makes the kernel panic, and `panic=1` resets the VM.
    std::process::exit(1);
}

fn mount(
    what: &'static str,
    target: &'static str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), InitError> {
    let err = |source| InitError::Mount {
        what,
        target,
        source,
    };
    std::fs::create_dir_all(target).map_err(err)?;
    let c = |s: &str| CString::new(s).expect("no NUL in mount arguments");
    let (src, tgt, fs, dat) = (c(what), c(target), c(fstype), c(data));
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fs.as_ptr(),
            flags,
            dat.as_ptr().cast(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        // Already mounted (e.g. devtmpfs with DEVTMPFS_MOUNT on a disk root) is fine.
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(err(e));
        }
    }
    Ok(())
}

fn mount_all() {
    let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let mounts: [(&'static str, &'static str, &str, libc::c_ulong, &str); 7] = [
        ("proc", "/proc", "proc", nodev, ""),
        ("sysfs", "/sys", "sysfs", nodev, ""),
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "mode=0620,ptmxmode=0666",
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755",
        ),
    ];
    for (what, target, fstype, flags, data) in mounts {
        if let Err(e) = mount(what, target, fstype, flags, data) {
            log(&error_chain(&e));
        }
    }
}

fn set_hostname(name: &str) -> Result<(), InitError> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } < 0 {
        return Err(InitError::Hostname(name.into(), io::Error::last_os_error()));
    }
    Ok(())
}

/// Formats an error with its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

extern "C" fn ignore_signal(_: libc::c_int) {}

const HANDLED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPWR];

/// Blocks the signals PID 1 waits for (before any thread starts, so all threads inherit the mask).
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the handler is a valid extern "C" fn. A handler other
    // than SIG_DFL is needed because the kernel drops default-action signals sent to init.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in HANDLED {
            libc::sigaddset(&mut set, sig);
            libc::signal(
                sig,
                ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

/// For `pre_exec`: a child starts with no signal blocked. PID 1's threads block the signals
/// it waits for, and a blocked mask survives exec: without this every process the agent
/// started ignored SIGTERM, SIGINT and SIGHUP (a graceful stop, Ctrl-C and `kill` did nothing).
pub fn unblock_signals() -> std::io::Result<()> {
    // SAFETY: sigemptyset and sigprocmask are async-signal-safe; the set is on this stack.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs `f` (a spawn) with PID 1's waited-for signals unblocked on this thread only, so the
/// child inherits no blocked signal without a `pre_exec` (which would turn std's
/// posix_spawn into a fork of the whole multi-threaded init; with it, agent port forwards to
/// a process it had started stopped answering). A SIGTERM meanwhile still goes to the main
/// thread: a thread waiting in sigwait gets first pick of a process-directed signal.
pub fn with_signals_unblocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t is plain data; pthread_sigmask fills it before it is read.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: a zeroed sigset_t initialised by sigemptyset; only this thread's mask changes,
    // and it is restored below.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in HANDLED {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, &mut old);
    }
    let out = f();
    // SAFETY: `old` is the mask pthread_sigmask returned above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    out
}

/// SIGTERM to every other process, a grace period, SIGKILL to the rest.
fn stop_everything(grace: Duration) {
    // SAFETY: kill(-1, ...) signals every process but init; no memory effects.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < grace {
        if !user_processes_left() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
}

/// The stop sequence: SIGTERM to every process, up to `grace`, SIGKILL the rest, sync, power
/// off. Signals to PID 1 and the agent's `shutdown` request both end here; a second caller
/// waits for the first, which never returns.
fn stop_and_power_off(grace: Duration, why: &str) -> ! {
    static STOPPING: Mutex<()> = Mutex::new(());
    let _once = STOPPING.lock().unwrap_or_else(|e| e.into_inner());
    log(&format!(
        "{why}: stopping all processes ({} ms grace) and powering off",
        grace.as_millis()
    ));
    stop_everything(grace);
    power_off();
}

/// Whether any process but PID 1 is still alive. `kill(-1, 0)` cannot tell: it also succeeds
/// for kernel threads, so the whole grace period would always pass. Kernel threads and zombies
/// have an empty /proc/<pid>/cmdline; without /proc, assume some are left.
fn user_processes_left() -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    dir.flatten().any(|e| {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            return false;
        };
        pid != 1 && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
    })
}

/// In the environment of PID 1's re-executed image only (see [`guard_vector_state`]).
const REEXEC_MARK: &str = "TARTARUS_INIT_REEXEC";

/// Keeps every process's glibc on SSE code when user space may use vector state the kernel does
/// not save on a context switch (nested PVM hosts; see [`crate::xstate`]). Needs /proc.
///
/// PID 1 is itself a static glibc program whose string functions were chosen before `main`, and
/// its threads (agent, exec pumps, reaper) would clobber each other's vector registers, so it
/// re-executes itself (still PID 1) with the tunables in its environment; the new image finds
/// them there and goes on (`reexecuted`: this is that image, marked by [`REEXEC_MARK`]).
fn guard_vector_state(reexecuted: bool) {
    let x = xstate::probe();
    let tunables = x.glibc_tunables();
    xstate::set_guard(tunables);
    let Some(ours) = tunables else { return };
    if reexecuted {
        return;
    }
    let current = std::env::var("GLIBC_TUNABLES").ok();
    log(&format!(
        "the kernel saves only x87/SSE state but user space runs with XCR0 {:#x}: \
         glibc limited to SSE code (GLIBC_TUNABLES={ours}); re-executing PID 1 with it",
        x.user_xcr0
    ));
    std::env::set_var(
        "GLIBC_TUNABLES",
        xstate::merge_tunables(ours, current.as_deref()),
    );
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "/sbin/init".into());
    let err = Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env(REEXEC_MARK, "1")
        .exec();
    log(&format!(
        "cannot re-execute PID 1 ({err}): it goes on with glibc's AVX code, the rest with SSE"
    ));
}

/// The whole life of PID 1. Never returns.
pub fn run() -> ! {
    std::panic::set_hook(Box::new(|info| {
        log(&format!("panic: {info}"));
        if !POWERING_OFF.load(Ordering::SeqCst) {
            power_off();
        }
    }));
    let set = block_signals();
    let reexecuted = std::env::var_os(REEXEC_MARK).is_some();
    std::env::remove_var(REEXEC_MARK);
    if !reexecuted {
        // The overlay first: the mounts below and the re-exec (which finds the binary through
        // /proc/self/exe) then happen inside it. The re-executed image keeps the new root and
        // the mounts (same process) and must not repeat either.
        overlay::setup();
        mount_all();
    }
    guard_vector_state(reexecuted);
    std::env::set_var(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    std::env::set_var("HOME", "/root");
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(InitError::Cmdline)
        .and_then(|l| Cmdline::parse(&l).map_err(InitError::from))
        .unwrap_or_else(|e| {
            log(&error_chain(&e));
            Cmdline::default()
        });
    let hostname = cmdline
        .hostname
        .clone()
        .or_else(|| cmdline.ip.as_ref().and_then(|ip| ip.hostname.clone()))
        .unwrap_or_else(|| DEFAULT_HOSTNAME.into());
    if let Err(e) = set_hostname(&hostname) {
        log(&error_chain(&e));
    }
    if let Err(e) = net::configure(cmdline.ip.as_ref()) {
        log(&error_chain(&e));
    }
    let reaper = match Reaper::global() {
        Ok(r) => r,
        Err(e) => panic!("{}", error_chain(&e)),
    };
    let port = cmdline.agent_port.unwrap_or(DEFAULT_AGENT_PORT);
    match VsockListener::bind(port) {
        Ok(listener) => {
            let agent = Agent::with_shutdown(
                reaper.clone(),
                Arc::new(|grace| stop_and_power_off(grace, "shutdown requested by the agent")),
            );
            let _ = std::thread::Builder::new()
                .name("agent".into())
                .spawn(move || {
                    if let Err(e) = agent.serve(listener) {
                        log(&format!("agent stopped: {}", error_chain(&e)));
                    }
                });
            log(&format!("agent listening on vsock port {port}"));
        }
        Err(e) => log(&format!("agent not started: no vsock on port {port}: {e}")),
    }
    // The uptime makes the boot phases measurable from the guest's side (benches, `--suite linux`).
    match std::fs::read_to_string("/proc/uptime") {
        Ok(u) => log(&format!(
            "ready (uptime {} s)",
            u.split_whitespace().next().unwrap_or("?")
        )),
        Err(_) => log("ready"),
    }
    if cmdline.shell {
        if let Err(e) = console::spawn_shell(reaper.clone(), power_off) {
            log(&format!("no console shell: {e}"));
        }
    }
    if cmdline.poweroff_after_ready {
        log("powering off (tartarus.poweroff_after_ready)");
        power_off();
    }
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is an initialised sigset_t and `sig` a valid out-pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        stop_and_power_off(Duration::from_secs(3), &format!("signal {sig}"));
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    /// A thread that blocks SIGTERM (as PID 1's do) starts a child: the child blocks nothing.
    #[test]
    fn children_start_with_no_signal_blocked() {
        let out = std::thread::spawn(|| {
            // SAFETY: a zeroed sigset_t initialised by sigemptyset; only this thread's mask.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTERM);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            }
            let blocked = |fix: bool| {
                let mut cmd = std::process::Command::new("grep");
                cmd.args(["SigBlk", "/proc/self/status"]);
                if fix {
                    // SAFETY: unblock_signals is async-signal-safe.
                    unsafe { cmd.pre_exec(super::unblock_signals) };
                }
                String::from_utf8(cmd.output().unwrap().stdout).unwrap()
            };
            let spawned = super::with_signals_unblocked(|| {
                std::process::Command::new("grep")
                    .args(["SigBlk", "/proc/self/status"])
                    .output()
            });
            let spawned = String::from_utf8(spawned.unwrap().stdout).unwrap();
            // The thread's own mask is back as it was.
            let own = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            (blocked(false), blocked(true), spawned, own)
        })
        .join()
        .unwrap();
        // SIGTERM is signal 15: bit 14 of the mask.
        assert!(out.0.trim().ends_with("4000"), "without: {}", out.0);
        assert_eq!(out.1.trim(), "SigBlk:\t0000000000000000");
        assert_eq!(out.2.trim(), "SigBlk:\t0000000000000000");
        let own = out.3.lines().find(|l| l.starts_with("SigBlk")).unwrap();
        assert!(own.ends_with("4000"), "{own}");
    }
}
