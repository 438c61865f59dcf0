//! vCPU threads: each one owns its KVM vCPU fd and runs `KVM_RUN`, dispatching port and MMIO
//! exits to the buses. When the guest stops (reset, shutdown, error) the thread reports why to
//! the VMM thread over a channel and wakes it through an EventFd.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use devices::Bus;
use kvm_bindings::{
    kvm_run, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use seccomp::ThreadKind;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::persist::kvm::{self as persist, VcpuState};

/// The real-time signal (SIGRTMIN + this) that kicks a vCPU out of KVM_RUN.
const KICK_SIGNAL_OFFSET: i32 = 0;

/// How long the VMM waits for a vCPU to answer a command before giving up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

thread_local! {
    /// This thread's kvm_run area, for the kick signal handler.
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN_PTR.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's own kvm_run mapping, set by the vCPU thread
            // before its first KVM_RUN and valid for as long as the VcpuFd it belongs to, which
            // outlives the thread's run loop. A volatile byte store is async-signal-safe.
            unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
        }
    });
}

/// Installs the kick handler; call once before starting vCPUs.
pub fn register_kick_signal() -> Result<(), VcpuError> {
    register_signal_handler(SIGRTMIN() + KICK_SIGNAL_OFFSET, kick_handler)
        .map_err(VcpuError::Signal)
}

/// Installs this thread's seccomp filter from the process-wide set (if any) and logs it.
pub fn install_seccomp(kind: ThreadKind) -> Result<(), String> {
    match seccomp::install_thread(kind) {
        Ok(true) => {
            tracing::info!("seccomp: installed the {kind} filter");
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) => Err(crate::error::error_chain(&e)),
    }
}

/// Requests the VMM thread sends to a vCPU thread.
#[derive(Clone, Debug)]
pub enum VcpuCommand {
    Pause,
    Resume,
    /// Save the vCPU's state; only answered while paused. Carries KVM's MSR index list (read
    /// on the VMM thread: vCPU threads may not open /dev/kvm under their seccomp filter).
    SaveState(Arc<Vec<u32>>),
}

/// A vCPU thread's answers.
#[derive(Debug)]
pub enum VcpuResponse {
    Paused,
    Resumed,
    State(Box<Result<VcpuState, String>>),
    /// The command does not fit the vCPU's current state.
    NotAllowed(&'static str),
}

impl VcpuResponse {
    fn same_kind(&self, other: &VcpuResponse) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// Why a vCPU stopped running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuStop {
    /// The guest asked for a reset or power-off, or triple-faulted: a clean end of the VM.
    GuestShutdown(String),
    /// Something went wrong: the VM cannot continue.
    Error(String),
}

#[derive(Debug)]
pub struct VcpuEvent {
    pub id: u8,
    pub stop: VcpuStop,
}

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("Failed to spawn the thread of vCPU {0}")]
    Spawn(u8, #[source] std::io::Error),
    #[error("Failed to install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    #[error("Failed to kick vCPU {0}")]
    Kick(u8, #[source] vmm_sys_util::errno::Error),
    #[error("vCPU {0} did not answer within {1:?}")]
    Timeout(u8, Duration),
    #[error("vCPU {0} has stopped")]
    Gone(u8),
    #[error("vCPU {0} answered {1:?}")]
    Unexpected(u8, VcpuResponse),
    #[error("Cannot save the state of vCPU {0}: {1}")]
    Save(u8, String),
}

/// The VMM thread's handle on a running vCPU thread.
pub struct VcpuHandle {
    pub id: u8,
    thread: JoinHandle<()>,
    commands: Sender<VcpuCommand>,
    responses: Receiver<VcpuResponse>,
}

impl VcpuHandle {
    /// Sends a command and kicks the thread out of KVM_RUN so it sees it.
    pub fn send(&self, cmd: VcpuCommand) -> Result<(), VcpuError> {
        self.commands
            .send(cmd)
            .map_err(|_| VcpuError::Gone(self.id))?;
        if self.thread.is_finished() {
            return Err(VcpuError::Gone(self.id));
        }
        self.thread
            .kill(SIGRTMIN() + KICK_SIGNAL_OFFSET)
            .map_err(|e| VcpuError::Kick(self.id, e))
    }

    /// Asks a paused vCPU for its state.
    pub fn save_state(&self, msr_list: Arc<Vec<u32>>) -> Result<VcpuState, VcpuError> {
        self.commands
            .send(VcpuCommand::SaveState(msr_list))
            .map_err(|_| VcpuError::Gone(self.id))?;
        match self.responses.recv_timeout(COMMAND_TIMEOUT) {
            Ok(VcpuResponse::State(s)) => (*s).map_err(|e| VcpuError::Save(self.id, e)),
            Ok(r) => Err(VcpuError::Unexpected(self.id, r)),
            Err(RecvTimeoutError::Timeout) => Err(VcpuError::Timeout(self.id, COMMAND_TIMEOUT)),
            Err(RecvTimeoutError::Disconnected) => Err(VcpuError::Gone(self.id)),
        }
    }

    /// Waits for the thread's answer and checks it is `expected`.
    pub fn expect(&self, expected: &VcpuResponse) -> Result<(), VcpuError> {
        match self.responses.recv_timeout(COMMAND_TIMEOUT) {
            Ok(r) if r.same_kind(expected) => Ok(()),
            Ok(r) => Err(VcpuError::Unexpected(self.id, r)),
            Err(RecvTimeoutError::Timeout) => Err(VcpuError::Timeout(self.id, COMMAND_TIMEOUT)),
            Err(RecvTimeoutError::Disconnected) => Err(VcpuError::Gone(self.id)),
        }
    }
}

/// Exit counters, shared by all vCPUs, reported in the metrics.
#[derive(Debug, Default)]
pub struct VcpuCounters {
    pub exits_io_in: AtomicU64,
    pub exits_io_out: AtomicU64,
    pub exits_mmio_read: AtomicU64,
    pub exits_mmio_write: AtomicU64,
    pub unhandled_accesses: AtomicU64,
    pub failures: AtomicU64,
}

pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    msr_indices: Option<Vec<u32>>,
    pio: Bus,
    mmio: Bus,
    counters: Arc<VcpuCounters>,
    events: Sender<VcpuEvent>,
    wake: EventFd,
}

impl Vcpu {
    pub fn new(
        id: u8,
        fd: VcpuFd,
        pio: Bus,
        mmio: Bus,
        counters: Arc<VcpuCounters>,
        events: Sender<VcpuEvent>,
        wake: EventFd,
    ) -> Self {
        Vcpu {
            id,
            fd,
            msr_indices: None,
            pio,
            mmio,
            counters,
            events,
            wake,
        }
    }

    /// Starts the vCPU on its own thread.
    /// With `paused`, the thread stops before its first KVM_RUN (answering `Paused`) and waits
    /// for a resume.
    pub fn start(mut self, paused: bool) -> Result<VcpuHandle, VcpuError> {
        let id = self.id;
        let (cmd_tx, cmd_rx) = channel();
        let (resp_tx, resp_rx) = channel();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let stop = match install_seccomp(ThreadKind::Vcpu) {
                    Ok(()) => {
                        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
                        KVM_RUN_PTR.with(|p| p.set(run_ptr));
                        let early_stop = if paused {
                            self.command(VcpuCommand::Pause, &cmd_rx, &resp_tx)
                        } else {
                            None
                        };
                        let stop = match early_stop {
                            Some(stop) => stop,
                            None => self.run(&cmd_rx, &resp_tx),
                        };
                        KVM_RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
                        stop
                    }
                    Err(e) => VcpuStop::Error(e),
                };
                match &stop {
                    VcpuStop::GuestShutdown(why) => tracing::info!("vCPU {id} stopped: {why}"),
                    VcpuStop::Error(why) => {
                        self.counters.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("vCPU {id} failed: {why}")
                    }
                }
                // If the VMM thread is gone the process is exiting anyway.
                let _ = self.events.send(VcpuEvent { id, stop });
                let _ = self.wake.write(1);
            })
            .map_err(|e| VcpuError::Spawn(id, e))?;
        Ok(VcpuHandle {
            id,
            thread,
            commands: cmd_tx,
            responses: resp_rx,
        })
    }

    fn run(
        &mut self,
        commands: &Receiver<VcpuCommand>,
        responses: &Sender<VcpuResponse>,
    ) -> VcpuStop {
        loop {
            while let Ok(cmd) = commands.try_recv() {
                if let Some(stop) = self.command(cmd, commands, responses) {
                    return stop;
                }
            }
            if let Some(stop) = self.run_once() {
                return stop;
            }
        }
    }

    /// Handles one command; a pause blocks here until the matching resume.
    fn command(
        &mut self,
        cmd: VcpuCommand,
        commands: &Receiver<VcpuCommand>,
        responses: &Sender<VcpuResponse>,
    ) -> Option<VcpuStop> {
        match cmd {
            VcpuCommand::Resume => {
                let _ = responses.send(VcpuResponse::Resumed);
                None
            }
            VcpuCommand::SaveState(_) => {
                let _ = responses.send(VcpuResponse::NotAllowed("save state while running"));
                None
            }
            VcpuCommand::Pause => {
                let _ = responses.send(VcpuResponse::Paused);
                loop {
                    match commands.recv() {
                        Ok(VcpuCommand::Pause) => {
                            let _ = responses.send(VcpuResponse::Paused);
                        }
                        Ok(VcpuCommand::SaveState(list)) => {
                            let state = self.save_state(&list);
                            let _ = responses.send(VcpuResponse::State(Box::new(state)));
                        }
                        Ok(VcpuCommand::Resume) => {
                            let _ = responses.send(VcpuResponse::Resumed);
                            return None;
                        }
                        Err(_) => return Some(VcpuStop::Error("the VMM thread is gone".into())),
                    }
                }
            }
        }
    }

    fn save_state(&mut self, msr_list: &[u32]) -> Result<VcpuState, String> {
        if self.msr_indices.is_none() {
            let list = persist::readable_msrs(msr_list, &self.fd).map_err(|e| e.to_string())?;
            self.msr_indices = Some(list);
        }
        let indices = self.msr_indices.as_deref().unwrap_or_default();
        persist::save_vcpu(self.id, &self.fd, indices).map_err(|e| e.to_string())
    }

    /// One KVM_RUN and the handling of its exit; Some when the vCPU must stop.
    fn run_once(&mut self) -> Option<VcpuStop> {
        let c = &self.counters;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                c.exits_io_in.fetch_add(1, Ordering::Relaxed);
                if !self.pio.read(u64::from(port), data) {
                    c.unhandled_accesses.fetch_add(1, Ordering::Relaxed);
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                c.exits_io_out.fetch_add(1, Ordering::Relaxed);
                if !self.pio.write(u64::from(port), data) {
                    c.unhandled_accesses.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                c.exits_mmio_read.fetch_add(1, Ordering::Relaxed);
                if !self.mmio.read(addr, data) {
                    c.unhandled_accesses.fetch_add(1, Ordering::Relaxed);
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                c.exits_mmio_write.fetch_add(1, Ordering::Relaxed);
                if !self.mmio.write(addr, data) {
                    c.unhandled_accesses.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
            Ok(VcpuExit::Hlt) => Some(VcpuStop::GuestShutdown("the guest halted".into())),
            Ok(VcpuExit::Shutdown) => Some(VcpuStop::GuestShutdown(
                "the guest shut down (triple fault)".into(),
            )),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_RESET => Some(VcpuStop::GuestShutdown("the guest reset".into())),
                KVM_SYSTEM_EVENT_SHUTDOWN => {
                    Some(VcpuStop::GuestShutdown("the guest powered off".into()))
                }
                KVM_SYSTEM_EVENT_CRASH => Some(VcpuStop::Error("the guest crashed".into())),
                other => Some(VcpuStop::Error(format!("unexpected system event {other}"))),
            },
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(VcpuStop::Error(format!(
                "KVM entry failed: hardware reason {reason:#x} on cpu {cpu}"
            ))),
            Ok(VcpuExit::InternalError) => {
                let run = self.fd.get_kvm_run();
                // SAFETY: KVM filled the `internal` member of the exit union for this exit reason.
                let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                Some(VcpuStop::Error(format!(
                    "KVM internal error (suberror {suberror}); the guest ran an instruction this \
                     host's KVM cannot emulate"
                )))
            }
            Ok(VcpuExit::Intr) => None,
            Ok(other) => Some(VcpuStop::Error(format!("unexpected vCPU exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Kicked: clear the flag the signal handler set, then look at the commands.
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(VcpuStop::Error(format!("KVM_RUN failed: {e}"))),
        }
    }
}
