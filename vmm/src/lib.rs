//! `tartarus-vmm`: one process per microVM.
//!
//! Threads: the API thread serves HTTP on a Unix socket and hands typed requests to the VMM
//! thread (channel + EventFd); the VMM thread runs an event-manager loop with the
//! [`controller::Vmm`] as its subscriber; each vCPU runs `KVM_RUN` on its own thread.
//!
//! Modules, from the API down:
//! * [`controller`]: the VMM thread: dispatch of API requests through the [`lifecycle`] table,
//!   one error type for every action, guest events, terminal input.
//! * `builder` / `microvm`: creating a microVM (boot or restore) and what a running one holds.
//! * `virtio`: the virtio devices by kind (`block`, `net`, `vsock`): API configuration, attach,
//!   run-time PATCH, and each kind's snapshot state beside it.
//! * `persist`: snapshots: create and load, the state file, its checks, guest memory, KVM state,
//!   and the one loop over MMIO slots that saves and restores devices.
//! * `arch`, `memory`, `vcpu`: x86-64 set-up, guest memory, vCPU threads (with [`vcpu::install_seccomp`]).
//! * [`logger`], `metrics`, [`pvm`], `parity`: logging, metrics, PVM work-arounds, Firecracker parity.

pub mod allocator;
pub(crate) mod arch;
pub(crate) mod builder;
pub mod controller;
pub mod error;
pub(crate) mod lifecycle;
pub mod logger;
pub(crate) mod memory;
pub(crate) mod metrics;
pub(crate) mod microvm;
pub(crate) mod parity;
pub(crate) mod persist;
pub mod pvm;
pub mod vcpu;
pub(crate) mod virtio;

/// Version reported by `GET /` and `GET /version`, and written into snapshots.
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Name reported by `GET /`.
pub const APP_NAME: &str = "Tartarus";
