//! A running microVM: what the builder made and the controller, metrics and snapshots use.

use std::sync::{Arc, Mutex};

use devices::legacy::{SerialDevice, I8042};
use devices::GuestMemoryMmap;
use kvm_ioctls::{Kvm, VmFd};

use crate::persist::memory::MemoryBackendHandle;
use crate::vcpu::{VcpuCounters, VcpuHandle};
use crate::virtio::AttachedDevices;

/// A booted microVM. Dropping it does not stop the vCPU threads: the VMM exits the process.
pub struct MicroVm {
    pub kvm: Kvm,
    pub vm: VmFd,
    pub mem: GuestMemoryMmap,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub i8042: Arc<Mutex<I8042>>,
    pub vcpu_counters: Arc<VcpuCounters>,
    pub vcpus: Vec<VcpuHandle>,
    pub cmdline: String,
    /// What serves guest memory after a restore (kept alive with the VM).
    pub memory_backend: Option<MemoryBackendHandle>,
    /// virtio devices, for PATCH, metrics and snapshots.
    pub devices: AttachedDevices,
    /// Device event handlers the VMM's event loop must add (taken once).
    pub subscribers: Vec<Arc<Mutex<dyn event_manager::MutEventSubscriber + Send>>>,
}
