//! `tartarus-vmm`: one process per microVM.
//!
//! Threads: the API thread serves HTTP on a Unix socket and hands typed requests to the VMM
//! thread (channel + EventFd); the VMM thread runs an event-manager loop with the
//! [`controller::Vmm`] as its subscriber; each vCPU runs `KVM_RUN` on its own thread.

pub mod allocator;
pub mod arch;
pub mod builder;
pub mod controller;
pub mod device_state;
pub mod drives;
pub mod logger;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod parity;
pub mod persist;
pub mod pvm;
pub mod snapshot_check;
pub mod snapshot_io;
pub mod snapshot_state;
pub mod state;
pub mod vcpu;
pub mod virtio_devices;
pub mod vsock;
