//! `tartarus.shell`: an interactive shell on the serial console, for people at the console
//! (`make run-linux`). The shell is a session leader with the console as its controlling
//! terminal, so job control and Ctrl-C work; when it exits the VM powers off.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::reaper::Reaper;

/// The shells tried, in order.
const SHELLS: [&str; 2] = ["/bin/bash", "/bin/sh"];

/// Starts the console shell on its own thread; when it ends, `on_exit` runs.
pub fn spawn_shell(reaper: Reaper, on_exit: fn() -> !) -> io::Result<()> {
    let shell = SHELLS
        .iter()
        .find(|s| std::path::Path::new(s).exists())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no /bin/sh in the root fs"))?;
    let console = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")?;
    let mut cmd = Command::new(shell);
    cmd.arg("-l")
        .env("TERM", "linux")
        .current_dir("/root")
        .stdin(Stdio::from(console.try_clone()?))
        .stdout(Stdio::from(console.try_clone()?))
        .stderr(Stdio::from(console));
    // SAFETY: the closure only calls async-signal-safe functions (setsid, ioctl) between fork
    // and exec.
    unsafe {
        cmd.pre_exec(|| {
            super::unblock_signals()?;
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // Make the console (fd 0) this session's controlling terminal.
            if libc::ioctl(io::stdin().as_raw_fd(), libc::TIOCSCTTY, 1) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (_child, status) = reaper.spawn(|| cmd.spawn())?;
    super::log(&format!(
        "shell {shell} on the console; exit it to power off"
    ));
    std::thread::Builder::new()
        .name("console-shell".into())
        .spawn(move || {
            let status = status.recv();
            super::log(&format!("console shell ended ({status:?}); powering off"));
            on_exit();
        })?;
    Ok(())
}
