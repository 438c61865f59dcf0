//! Snapshots of a microVM: creating one from a paused VM and loading one into a fresh VMM.
//!
//! * `file`: what the state file holds ([`file::MicroVmState`]), with snapshot-owned copies of
//!   the configurations so the file accepts fields a newer writer added.
//! * `check`: every field of a state file validated before anything is built.
//! * `memory`: guest memory to and from the memory file (File and Uffd backends).
//! * `kvm`: the KVM state of the VM and its vCPUs.
//! * `devices`: the one loop over MMIO slots that saves and restores virtio devices; each
//!   kind's own state lives beside the kind in `crate::virtio`.

pub(crate) mod check;
pub(crate) mod devices;
pub(crate) mod file;
pub(crate) mod kvm;
pub(crate) mod memory;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use api::models::{
    BootSourceConfig, MachineConfig, SnapshotCreateParams, SnapshotLoadParams, SnapshotType,
};

use self::devices::DeviceStateError;
use self::file::MicroVmState;
use self::memory::SnapshotMemoryError;
use crate::builder::{self, BuildContext, BuildError, ContextError};
use crate::microvm::MicroVm;
use crate::vcpu::VcpuError;
use crate::virtio::DeviceConfigs;

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("a Diff snapshot needs track_dirty_pages (set it in machine-config, or when loading)")]
    DiffNeedsDirtyTracking,
    #[error(transparent)]
    Devices(#[from] DeviceStateError),
    #[error(transparent)]
    Kvm(#[from] kvm::PersistError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Memory(#[from] SnapshotMemoryError),
}

impl CreateError {
    /// True when the VMM, not the request, is at fault (KVM or a vCPU thread failed).
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            CreateError::Kvm(_)
                | CreateError::Vcpu(_)
                | CreateError::Devices(DeviceStateError::Transport { .. })
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("a boot source is configured: load a snapshot into a fresh VMM instead")]
    BootSourceConfigured,
    #[error(transparent)]
    Check(#[from] check::SnapshotCheckError),
    /// A load parameter or saved configuration the API's own checks refuse.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Devices(#[from] DeviceStateError),
    #[error(transparent)]
    Memory(#[from] SnapshotMemoryError),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// What the VMM knows about the microVM besides its KVM and device state.
pub struct VmIdentity<'a> {
    pub id: &'a str,
    pub machine: &'a MachineConfig,
    pub boot: Option<&'a BootSourceConfig>,
    /// The current device configurations (updated by PATCH).
    pub devices: &'a DeviceConfigs,
}

/// Writes a snapshot of the paused `vm`: devices first (finishing their in-flight requests
/// writes memory and may raise interrupts), then vCPUs, VM and memory; the state file last, so
/// it only ever exists next to complete memory.
pub fn create(
    vm: &MicroVm,
    who: &VmIdentity<'_>,
    p: &SnapshotCreateParams,
) -> Result<(), CreateError> {
    crate::parity::log_create_version(p);
    if p.snapshot_type == SnapshotType::Diff && !who.machine.track_dirty_pages {
        return Err(CreateError::DiffNeedsDirtyTracking);
    }
    let virtio = devices::save_all(&vm.devices, who.devices)?;
    let msr_list = Arc::new(kvm::msr_index_list(&vm.kvm)?);
    let vcpus = vm
        .vcpus
        .iter()
        .map(|v| v.save_state(msr_list.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let state = MicroVmState {
        vmm_version: crate::VMM_VERSION.to_string(),
        id: who.id.to_string(),
        machine: who.machine.into(),
        boot: who.boot.map(Into::into),
        cmdline: vm.cmdline.clone(),
        memory: memory::memory_layout(&vm.mem),
        vm: kvm::save_vm(&vm.vm)?,
        vcpus,
        serial: ::devices::bus::lock(&vm.serial).save(),
        i8042: ::devices::bus::lock(&vm.i8042).save(),
        devices: virtio,
    };
    let track = who.machine.track_dirty_pages;
    match p.snapshot_type {
        SnapshotType::Full => memory::write_full_memory(&vm.vm, &vm.mem, &p.mem_file_path, track)?,
        SnapshotType::Diff => memory::write_diff_memory(&vm.vm, &vm.mem, &p.mem_file_path)?,
    }
    memory::write_state(&p.snapshot_path, &state)?;
    tracing::info!(
        "{:?} snapshot written to {} (memory {})",
        p.snapshot_type,
        p.snapshot_path,
        p.mem_file_path
    );
    Ok(())
}

/// A loaded snapshot: the microVM (paused) and the configuration it now runs with.
pub struct Loaded {
    pub vm: MicroVm,
    pub machine: MachineConfig,
    pub devices: DeviceConfigs,
}

/// Loads a snapshot into a fresh VMM: every field of the state file is checked before anything
/// is built (see [`check`]), the load's overrides applied, the devices checked on this host,
/// guest memory opened from the requested backend, and the microVM rebuilt paused.
/// `allow_tap_create` is the VMM's `--allow-tap-create`; `ctx` makes the builder's context.
pub fn load(
    p: &SnapshotLoadParams,
    boot_configured: bool,
    allow_tap_create: bool,
    ctx: impl FnOnce() -> Result<BuildContext, ContextError>,
) -> Result<Loaded, LoadError> {
    if boot_configured {
        return Err(LoadError::BootSourceConfigured);
    }
    let t0 = Instant::now();
    let mut state = check::read_checked(Path::new(&p.snapshot_path))?;
    crate::parity::apply_load_overrides(&mut state.devices, p).map_err(LoadError::Invalid)?;
    devices::check(&state.devices, allow_tap_create)?;
    let t_state = t0.elapsed();
    let mut machine = state.machine.config();
    machine.track_dirty_pages = p.track_dirty_pages || p.enable_diff_snapshots;
    machine.validate().map_err(LoadError::Invalid)?;
    let backend = p.backend().map_err(LoadError::Invalid)?;
    let opened = memory::open_memory(&state, &backend, p.prefetch.as_ref())?;
    let t_mem = t0.elapsed();
    let device_cfgs = devices::configs(&state.devices, allow_tap_create);
    let mut vm = builder::restore(
        &state,
        &machine,
        opened.mem.clone(),
        &device_cfgs,
        ctx()?,
        true,
    )?;
    vm.memory_backend = Some(opened.backend);
    let t_vm = t0.elapsed();
    tracing::info!(
        "snapshot {} loaded in {:?} (state file {:?}, memory {:?}, VM {:?})",
        p.snapshot_path,
        t_vm,
        t_state,
        t_mem - t_state,
        t_vm - t_mem
    );
    Ok(Loaded {
        vm,
        machine,
        devices: device_cfgs,
    })
}
