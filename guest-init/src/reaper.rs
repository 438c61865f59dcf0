//! Waiting for children. As PID 1, `tartarus-init` inherits every orphan and must reap them all,
//! while the agent needs the exit status of the processes it started. One [`Reaper`] does both:
//!
//! - [`Reaper::per_child`] (tests, or any process that is not PID 1) waits for each started child
//!   on its own thread with `waitpid(pid)`, leaving other children alone.
//! - [`Reaper::global`] (PID 1) runs one thread that reaps every child. It peeks with
//!   `waitid(P_ALL, WNOWAIT)`, then reaps under the registry lock; the agent spawns under the same
//!   lock, so a child's waiter is always registered before its status can be dispatched, and the
//!   C library's own `waitpid` after a failed exec never races with the reaper. With no child
//!   at all it sleeps until the next spawn (not on a timer: an idle guest must not wake up,
//!   each wake-up costs an emulated guest kernel milliseconds; a 50 ms poll here made an idle
//!   sandbox cost ~5% of a host core). Without children there are no orphans to come either:
//!   an orphan is the descendant of a child.

use std::collections::HashMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Errors of the reaper.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("Cannot start the reaper thread")]
    Thread(#[source] io::Error),
}

#[derive(Default)]
struct Registry {
    waiters: HashMap<i32, Sender<ExitStatus>>,
    /// Children started through [`Reaper::spawn`] so far (the reaper's wake-up condition).
    spawned: u64,
}

/// The registry and the reaper's wake-up when a child is spawned.
#[derive(Default)]
struct Shared {
    registry: Mutex<Registry>,
    spawned: Condvar,
}

/// How long the reaper sleeps without children before it looks again anyway (children
/// started without [`Reaper::spawn`]: none in tartarus-init, a safety net).
const IDLE_RECHECK: Duration = Duration::from_secs(600);

/// Reaps children and hands exit statuses to whoever started them.
#[derive(Clone)]
pub struct Reaper {
    global: Option<Arc<Shared>>,
}

impl Reaper {
    /// Waits for each child started through [`Reaper::spawn`] individually.
    pub fn per_child() -> Self {
        Reaper { global: None }
    }

    /// Reaps every child of this process on a dedicated thread (for PID 1).
    pub fn global() -> Result<Self, ReaperError> {
        let shared = Arc::new(Shared::default());
        let reg = shared.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reap_all(&reg))
            .map_err(ReaperError::Thread)?;
        Ok(Reaper {
            global: Some(shared),
        })
    }

    /// Runs `spawn` and returns the child with a receiver for its exit status.
    pub fn spawn<F>(&self, spawn: F) -> io::Result<(Child, Receiver<ExitStatus>)>
    where
        F: FnOnce() -> io::Result<Child>,
    {
        let (tx, rx) = channel();
        match &self.global {
            Some(shared) => {
                let mut reg = shared.registry.lock().unwrap_or_else(|e| e.into_inner());
                let child = spawn()?;
                reg.waiters.insert(child.id() as i32, tx);
                reg.spawned += 1;
                shared.spawned.notify_one();
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

fn reap_all(shared: &Shared) {
    let registry = &shared.registry;
    loop {
        let seen = registry.lock().unwrap_or_else(|e| e.into_inner()).spawned;
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes only into `info`; WNOWAIT leaves the child waitable.
        let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                // No children: sleep until one is spawned (one spawned since `seen` was read
                // is not missed: the count moved).
                Some(libc::ECHILD) => {
                    let reg = registry.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = shared
                        .spawned
                        .wait_timeout_while(reg, IDLE_RECHECK, |r| r.spawned == seen);
                    continue;
                }
                _ => {
                    std::thread::sleep(Duration::from_millis(50));
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
