//! vCPU threads: each one owns its KVM vCPU fd and runs `KVM_RUN`, dispatching port and MMIO
//! exits to the buses. When the guest stops (reset, shutdown, error) the thread reports why to
//! the VMM thread over a channel and wakes it through an EventFd.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;

use devices::Bus;
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

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
            pio,
            mmio,
            counters,
            events,
            wake,
        }
    }

    /// Starts the vCPU on its own thread.
    pub fn start(mut self) -> Result<JoinHandle<()>, VcpuError> {
        let id = self.id;
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let stop = self.run();
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
            .map_err(|e| VcpuError::Spawn(id, e))
    }

    fn run(&mut self) -> VcpuStop {
        loop {
            if let Some(stop) = self.run_once() {
                return stop;
            }
        }
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
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(VcpuStop::Error(format!("KVM_RUN failed: {e}"))),
        }
    }
}
