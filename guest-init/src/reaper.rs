//! Waiting for children. As PID 1, `tartarus-init` inherits every orphan and must reap them all,
//! while the agent needs the exit status of the processes it started. One [`Reaper`] does both:
//!
//! - [`Reaper::per_child`] (tests, or any process that is not PID 1) waits for each started child
//!   on its own thread with `waitpid(pid)`, leaving other children alone.
//! - [`Reaper::global`] (PID 1) runs one thread that reaps every child. It peeks with
//!   `waitid(P_ALL, WNOWAIT)`, then reaps under the registry lock; the agent spawns under the same
//!   lock, so a child's waiter is always registered before its status can be dispatched, and the
//!   C library's own `waitpid` after a failed exec never races with the reaper.

use std::collections::HashMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

/// Errors of the reaper.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("Cannot start the reaper thread")]
    Thread(#[source] io::Error),
}

#[derive(Default)]
struct Registry {
    waiters: HashMap<i32, Sender<ExitStatus>>,
}

/// Reaps children and hands exit statuses to whoever started them.
#[derive(Clone)]
pub struct Reaper {
    global: Option<Arc<Mutex<Registry>>>,
}

impl Reaper {
    /// Waits for each child started through [`Reaper::spawn`] individually.
    pub fn per_child() -> Self {
        Reaper { global: None }
    }

    /// Reaps every child of this process on a dedicated thread (for PID 1).
    pub fn global() -> Result<Self, ReaperError> {
        let registry = Arc::new(Mutex::new(Registry::default()));
        let reg = registry.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reap_all(&reg))
            .map_err(ReaperError::Thread)?;
        Ok(Reaper {
            global: Some(registry),
        })
    }

    /// Runs `spawn` and returns the child with a receiver for its exit status.
    pub fn spawn<F>(&self, spawn: F) -> io::Result<(Child, Receiver<ExitStatus>)>
    where
        F: FnOnce() -> io::Result<Child>,
    {
        let (tx, rx) = channel();
        match &self.global {
            Some(registry) => {
                let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
                let child = spawn()?;
                reg.waiters.insert(child.id() as i32, tx);
                Ok((child, rx))
            }
            None => {
                let child = spawn()?;
                let pid = child.id() as i32;
                std::thread::Builder::new()
                    .name(format!("wait-{pid}"))
                    .spawn(move || {
                        if let Some(status) = wait_pid(pid, 0) {
                            let _ = tx.send(status);
                        }
                    })?;
                Ok((child, rx))
            }
        }
    }
}

/// `waitpid(pid, flags)`, retried on EINTR; None when there is nothing (more) to reap.
fn wait_pid(pid: i32, flags: i32) -> Option<ExitStatus> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid only writes the status into the valid local it is given.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r > 0 {
            return Some(ExitStatus::from_raw(status));
        }
        if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return None;
    }
}

fn reap_all(registry: &Mutex<Registry>) {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes only into `info`; WNOWAIT leaves the child waitable.
        let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                // No children right now: look again a little later.
                _ => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    continue;
                }
            }
        }
        // SAFETY: waitid succeeded for a child, so si_pid is the field it filled in.
        let pid = unsafe { info.si_pid() };
        let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(status) = wait_pid(pid, libc::WNOHANG) {
            if let Some(tx) = reg.waiters.remove(&pid) {
                let _ = tx.send(status);
            }
        }
    }
}
