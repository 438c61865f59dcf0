//! `tartarus-jailer`: starts `tartarus-vmm` in a jail, with Firecracker's jailer flags.
//!
//! The steps, in an order that cannot leak privileges (see README.md):
//! 1. validate every argument against the host, changing nothing ([`args`]), including that
//!    the VMM binary is a static ELF executable ([`elf`]);
//! 2. close inherited file descriptors, clear the environment ([`process`]); open the netns
//!    and /dev/null while host paths are still reachable;
//! 3. create `<base>/<exec name>/<id>/root`, copy the VMM in, give the root to uid:gid
//!    ([`chroot`]); set the rlimits ([`rlimits`]); create the cgroups and move in ([`cgroup`]);
//!    a failure here removes what was created ([`cleanup`]);
//! 4. new mount namespace, pivot_root into the jail, old root detached ([`chroot`]);
//! 5. device nodes ([`devices`]); join the netns; new PID namespace ([`namespaces`]);
//! 6. new session; drop to uid/gid with no capabilities and no_new_privs, verified
//!    ([`privileges`]); stdio to /dev/null; exec `/<exec name> --id <id> <args>`.

mod args;
mod cgroup;
mod chroot;
mod cleanup;
mod devices;
mod elf;
mod namespaces;
mod privileges;
mod process;
mod rlimits;

use std::convert::Infallible;
use std::path::Path;

use clap::Parser;

use args::{Cli, JailConfig};
use cleanup::Undo;
use namespaces::Forked;

#[derive(Debug, thiserror::Error)]
enum JailerError {
    #[error(transparent)]
    Args(#[from] args::ArgsError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Chroot(#[from] chroot::ChrootError),
    #[error(transparent)]
    Device(#[from] devices::DeviceError),
    #[error(transparent)]
    Namespace(#[from] namespaces::NamespaceError),
    #[error(transparent)]
    Privilege(#[from] privileges::PrivilegeError),
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    #[error(transparent)]
    Rlimit(#[from] rlimits::RlimitError),
}

/// `error: source: source...` on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn main() {
    // Usage errors, --help and --version exit here (code 2 for errors, 0 otherwise).
    let cli = Cli::parse();
    match run(cli) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("tartarus-jailer: {}", chain(&e));
            std::process::exit(1);
        }
    }
}

/// Builds the jail and execs the VMM; returns only on failure.
fn run(cli: Cli) -> Result<Infallible, JailerError> {
    // 1. Nothing on the system changes before every argument has been checked.
    let cfg = cli.validate()?;

    // 2. Start from a clean process.
    process::close_inherited_fds()?;
    process::clear_env();
    let netns = cfg
        .netns
        .as_deref()
        .map(namespaces::open_netns)
        .transpose()?;
    let dev_null = if cfg.daemonize {
        Some(process::open_dev_null()?)
    } else {
        None
    };

    // 3. Host-side preparation, undone if any part fails.
    let mut undo = Undo::default();
    if let Err(e) = prepare(&cfg, &mut undo) {
        undo.run();
        return Err(e);
    }
    // 4. Into the jail. Nothing on the host is reachable afterwards, so nothing is undone.
    if let Err(e) = chroot::enter(&cfg.root) {
        undo.run();
        return Err(e.into());
    }
    undo.forget();

    // 5. Devices and namespaces.
    cfg.devices.create(Path::new("/"), cfg.uid, cfg.gid)?;
    if let Some(ns) = netns {
        ns.join()?;
    }
    let pid_file = cfg.pid_file_in_jail();
    let must_fork = cfg.new_pid_ns || (cfg.daemonize && process::is_group_leader());
    if must_fork {
        let forked = if cfg.new_pid_ns {
            namespaces::new_pid_namespace()?
        } else {
            namespaces::fork()?
        };
        if let Forked::Parent { child } = forked {
            // The parent's work is done once the child's (host) pid is recorded.
            if let Err(e) = chroot::write_pid_file(&pid_file, child) {
                // SAFETY: `child` is our own child process.
                unsafe { libc::kill(child, libc::SIGKILL) };
                return Err(e.into());
            }
            std::process::exit(0);
        }
    } else {
        // SAFETY: getpid cannot fail.
        chroot::write_pid_file(&pid_file, unsafe { libc::getpid() })?;
    }

    // 6. Session, privileges, exec.
    if cfg.daemonize {
        process::setsid()?;
    }
    privileges::drop_to(cfg.uid, cfg.gid)?;
    if let Some(null) = dev_null {
        process::redirect_stdio(null)?;
    }
    let argv = process::vmm_argv(&cfg.exec_in_jail(), &cfg.id, &cfg.exec_args);
    Err(process::exec(&argv).into())
}

/// Step 3: the jail directory and binary, rlimits and cgroups.
fn prepare(cfg: &JailConfig, undo: &mut Undo) -> Result<(), JailerError> {
    chroot::create_dirs(&cfg.root, undo)?;
    chroot::copy_exec(&cfg.exec_file, &cfg.root, &cfg.exec_name, undo)?;
    chroot::chown_root(&cfg.root, cfg.uid, cfg.gid)?;
    // After the copy: RLIMIT_FSIZE applies to the jailer's own writes too.
    rlimits::apply(&cfg.rlimits)?;
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() } as u32;
    cfg.cgroups.apply(pid, undo)?;
    Ok(())
}
