//! The one builder: turns a validated configuration into a running microVM (KVM VM, guest
//! memory, kernel and boot data, legacy devices, vCPU threads).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use api::models::{BootSourceConfig, MachineConfig};
use devices::legacy::i8042::I8042State;
use devices::legacy::serial::SerialDeviceState;
use devices::legacy::{EventFdTrigger, SerialDevice, I8042};
use devices::Bus;
use devices::GuestMemoryMmap;
use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::{boot_params, cpuid, layout::*, mptable, msr, regs};
use crate::memory;
use crate::microvm::MicroVm;
use crate::persist::file::MicroVmState;
use crate::persist::kvm as persist;
use crate::vcpu::{self, Vcpu, VcpuCounters, VcpuEvent, VcpuResponse};
use crate::virtio::block as drives;
use crate::virtio::{self as virtio_devices, DeviceConfigs};

/// Boot arguments used when `boot-source` gives none.
pub const DEFAULT_BOOT_ARGS: &str =
    "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.dumbkbd";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("Cannot start the microVM without a kernel: PUT /boot-source first")]
    MissingBootSource,
    #[error("Cannot open kernel image {0}")]
    OpenKernel(String, #[source] std::io::Error),
    #[error("Kernel image {0} is neither an ELF vmlinux nor a bzImage")]
    UnknownKernelFormat(String),
    #[error("Cannot load kernel image {0}")]
    LoadKernel(String, #[source] linux_loader::loader::Error),
    #[error("Cannot read initrd {0}")]
    ReadInitrd(String, #[source] std::io::Error),
    #[error("Initrd {0} ({1} bytes) does not fit in guest memory")]
    InitrdTooLarge(String, u64),
    #[error("Invalid kernel command line: {0}")]
    Cmdline(String),
    #[error("Cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("The host's KVM lacks a required capability: {0:?}")]
    MissingCap(Cap),
    #[error("KVM {0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("Failed to create an EventFd")]
    EventFd(#[source] std::io::Error),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error("Failed to write boot data to guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
    #[error(transparent)]
    BootParams(#[from] boot_params::BootParamsError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Msr(#[from] msr::MsrError),
    #[error("Failed to place a device on the bus")]
    Bus(#[from] devices::BusError),
    #[error(transparent)]
    Vcpu(#[from] crate::vcpu::VcpuError),
    #[error(transparent)]
    Devices(#[from] virtio_devices::VirtioDeviceError),
    #[error("Cannot restore the serial port: {0}")]
    SerialState(String),
    #[error("the snapshot holds {states} vCPU states for {vcpus} vCPUs")]
    VcpuCount { states: usize, vcpus: u8 },
    #[error(transparent)]
    Persist(#[from] persist::PersistError),
    #[error("Cannot restore virtio device state")]
    VirtioState(#[from] crate::persist::devices::DeviceStateError),
}

type Result<T> = std::result::Result<T, BuildError>;

impl BuildError {
    /// True when the VMM or the host, not the request, is at fault (KVM refused, no event fd,
    /// a vCPU thread could not start).
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            BuildError::OpenKvm(_)
                | BuildError::MissingCap(_)
                | BuildError::Kvm(..)
                | BuildError::EventFd(_)
                | BuildError::Bus(_)
                | BuildError::Vcpu(_)
        )
    }
}

/// Why the VMM could not make a [`BuildContext`].
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("Cannot open serial output file {0}")]
    SerialOut(String, #[source] std::io::Error),
    #[error("Failed to duplicate an event fd")]
    EventFd(#[source] std::io::Error),
}

/// What the builder needs from the VMM besides the configuration.
pub struct BuildContext {
    pub serial_out: Box<dyn Write + Send>,
    pub reset_evt: EventFd,
    pub vcpu_events: Sender<VcpuEvent>,
    pub vcpu_wake: EventFd,
    /// Whether to add the PVM work-arounds to a booted kernel's command line.
    pub pvm: crate::pvm::PvmMode,
}

struct LoadedKernel {
    entry: u64,
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
    end: u64,
}

/// Recognises the image by its magic numbers and loads it with linux-loader.
fn load_kernel(mem: &GuestMemoryMmap, path: &str) -> Result<LoadedKernel> {
    let mut file = File::open(path).map_err(|e| BuildError::OpenKernel(path.to_string(), e))?;
    let mut head = [0u8; 0x206];
    let n = read_up_to(&mut file, &mut head).map_err(|e| BuildError::OpenKernel(path.into(), e))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| BuildError::OpenKernel(path.into(), e))?;
    let high = Some(GuestAddress(HIMEM_START));
    if n >= 4 && head[..4] == *b"\x7fELF" {
        let r = Elf::load(mem, None, &mut file, high)
            .map_err(|e| BuildError::LoadKernel(path.into(), e))?;
        Ok(LoadedKernel {
            entry: r.kernel_load.0,
            setup_header: None,
            end: r.kernel_end,
        })
    } else if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        let r = BzImage::load(mem, None, &mut file, high)
            .map_err(|e| BuildError::LoadKernel(path.into(), e))?;
        // The 64-bit entry point (startup_64) sits 0x200 bytes into the protected-mode kernel.
        Ok(LoadedKernel {
            entry: r.kernel_load.0 + 0x200,
            setup_header: r.setup_header,
            end: r.kernel_end,
        })
    } else {
        Err(BuildError::UnknownKernelFormat(path.to_string()))
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Loads the initrd page-aligned at the top of low RAM; returns (address, size).
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &str,
    mem_bytes: u64,
    kernel_end: u64,
) -> Result<(u64, u64)> {
    let mut file = File::open(path).map_err(|e| BuildError::ReadInitrd(path.into(), e))?;
    let size = file
        .metadata()
        .map_err(|e| BuildError::ReadInitrd(path.into(), e))?
        .len();
    let low_end = mem_bytes.min(MMIO_GAP_START);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end.max(HIMEM_START))
        .ok_or_else(|| BuildError::InitrdTooLarge(path.into(), size))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(BuildError::GuestMemory)?;
    Ok((addr, size))
}

fn kvm_checks(kvm: &Kvm) -> Result<()> {
    for cap in [
        Cap::Irqchip,
        Cap::UserMemory,
        Cap::SetTssAddr,
        Cap::Pit2,
        Cap::Irqfd,
        Cap::Ioeventfd,
        Cap::ImmediateExit,
    ] {
        if !kvm.check_extension(cap) {
            return Err(BuildError::MissingCap(cap));
        }
    }
    Ok(())
}

fn new_evt() -> Result<EventFd> {
    EventFd::new(EFD_NONBLOCK).map_err(BuildError::EventFd)
}

/// Builds the command line: the user's boot args (or the default), nothing hidden.
pub fn kernel_cmdline(boot: &BootSourceConfig) -> Result<Cmdline> {
    let args = boot.boot_args.as_deref().unwrap_or(DEFAULT_BOOT_ARGS);
    let mut cmdline =
        Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BuildError::Cmdline(e.to_string()))?;
    if !args.trim().is_empty() {
        cmdline
            .insert_str(args.trim())
            .map_err(|e| BuildError::Cmdline(e.to_string()))?;
    }
    Ok(cmdline)
}

/// Saved state of the legacy devices, for a restore.
pub struct LegacyState<'a> {
    pub serial: &'a SerialDeviceState,
    pub i8042: &'a I8042State,
}

/// What boot and restore share: the KVM VM with its in-kernel devices, guest memory registered
/// with KVM, the legacy devices, and the vCPU fds (not yet configured), each holding the buses.
struct VmCore {
    kvm: Kvm,
    vm: VmFd,
    mem: GuestMemoryMmap,
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042>>,
    counters: Arc<VcpuCounters>,
    vcpus: Vec<Vcpu>,
    attached: virtio_devices::Attached,
}

fn create_core(
    machine: &MachineConfig,
    mem: GuestMemoryMmap,
    ctx: BuildContext,
    legacy: Option<LegacyState>,
    devices: &DeviceConfigs,
) -> Result<VmCore> {
    let kvm = Kvm::new().map_err(BuildError::OpenKvm)?;
    kvm_checks(&kvm)?;
    let vm = kvm
        .create_vm()
        .map_err(|e| BuildError::Kvm("create VM", e))?;
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(|e| BuildError::Kvm("set TSS address", e))?;
    // Memory slots first: once the irqchip and PIT exist, every memslot change waits for a KVM
    // synchronisation that cost ~7 ms per boot or restore on the nested hosts we measured.
    memory::register(&vm, &mem, machine.track_dirty_pages)?;
    vm.create_irq_chip()
        .map_err(|e| BuildError::Kvm("create irqchip", e))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| BuildError::Kvm("create PIT", e))?;

    // Legacy devices on the port-I/O bus, interrupts through irqfds.
    let mut pio_bus = Bus::new();
    let com1_irq = new_evt()?;
    vm.register_irqfd(&com1_irq, IRQ_COM1)
        .map_err(|e| BuildError::Kvm("register COM1 irqfd", e))?;
    let kbd_irq = new_evt()?;
    vm.register_irqfd(&kbd_irq, IRQ_KEYBOARD)
        .map_err(|e| BuildError::Kvm("register keyboard irqfd", e))?;
    let com1 = EventFdTrigger::new(com1_irq);
    let reset = EventFdTrigger::new(ctx.reset_evt);
    let kbd = EventFdTrigger::new(kbd_irq);
    let (serial, i8042) = match legacy {
        Some(s) => (
            SerialDevice::from_state(s.serial, com1, ctx.serial_out)
                .map_err(BuildError::SerialState)?,
            I8042::from_state(s.i8042, reset, kbd),
        ),
        None => (
            SerialDevice::new(com1, ctx.serial_out),
            I8042::new(reset, kbd),
        ),
    };
    let serial = Arc::new(Mutex::new(serial));
    let i8042 = Arc::new(Mutex::new(i8042));
    pio_bus.insert(serial.clone(), 0x3f8, 8)?;
    pio_bus.insert(i8042.clone(), 0x60, 5)?;
    // virtio devices go on the MMIO bus before the vCPUs take their copies of it.
    let mut mmio_bus = Bus::new();
    let attached = virtio_devices::attach_all(&vm, &mem, &mut mmio_bus, devices)?;

    let counters = Arc::new(VcpuCounters::default());
    let mut vcpus = Vec::with_capacity(machine.vcpu_count as usize);
    for id in 0..machine.vcpu_count {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| BuildError::Kvm("create vCPU", e))?;
        let wake = ctx.vcpu_wake.try_clone().map_err(BuildError::EventFd)?;
        vcpus.push(Vcpu::new(
            id,
            fd,
            pio_bus.clone(),
            mmio_bus.clone(),
            counters.clone(),
            ctx.vcpu_events.clone(),
            wake,
        ));
    }
    Ok(VmCore {
        kvm,
        vm,
        mem,
        serial,
        i8042,
        counters,
        vcpus,
        attached,
    })
}

/// Starts the vCPU threads (paused or running) and hands out the finished microVM.
fn finish(core: VmCore, paused: bool, cmdline: String) -> Result<MicroVm> {
    vcpu::register_kick_signal()?;
    let mut handles = Vec::with_capacity(core.vcpus.len());
    for vcpu in core.vcpus {
        handles.push(vcpu.start(paused)?);
    }
    if paused {
        for h in &handles {
            h.expect(&VcpuResponse::Paused)?;
        }
    }
    Ok(MicroVm {
        kvm: core.kvm,
        vm: core.vm,
        mem: core.mem,
        serial: core.serial,
        i8042: core.i8042,
        vcpu_counters: core.counters,
        vcpus: handles,
        cmdline,
        memory_backend: None,
        devices: core.attached.devices,
        subscribers: core.attached.subscribers,
    })
}

/// Boots a new microVM from its configuration.
pub fn build(
    machine: &MachineConfig,
    boot: Option<&BootSourceConfig>,
    devices: &DeviceConfigs,
    ctx: BuildContext,
) -> Result<MicroVm> {
    let boot = boot.ok_or(BuildError::MissingBootSource)?;
    let mem = memory::create(machine.mem_size_mib)?;
    let mem_bytes = (machine.mem_size_mib as u64) << 20;

    // Kernel and initrd; then the VM with its devices, whose command-line entries complete the
    // kernel command line; then zero page, MP table and boot tables.
    let kernel = load_kernel(&mem, &boot.kernel_image_path)?;
    let initrd = match &boot.initrd_path {
        Some(p) => Some(load_initrd(&mem, p, mem_bytes, kernel.end)?),
        None => None,
    };
    let mut cmdline = kernel_cmdline(boot)?;
    let pvm_words = if ctx.pvm.enabled() {
        crate::pvm::missing_words(boot.boot_args.as_deref().unwrap_or(DEFAULT_BOOT_ARGS))
    } else {
        Vec::new()
    };
    if !pvm_words.is_empty() {
        tracing::info!(
            "PVM host: adding {} to the kernel command line (--pvm-workarounds off for PVM guest kernels)",
            pvm_words.join(" ")
        );
    }
    let core = create_core(machine, mem, ctx, None, devices)?;
    let mem = &core.mem;
    let mut extra: Vec<String> = pvm_words.iter().map(|w| w.to_string()).collect();
    extra.extend(drives::root_args(&devices.drives));
    extra.extend(core.attached.cmdline.iter().cloned());
    for word in extra {
        cmdline
            .insert_str(&word)
            .map_err(|e| BuildError::Cmdline(e.to_string()))?;
    }
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(|e| BuildError::Cmdline(e.to_string()))?;
    let cmdline_str = cmdline
        .as_cstring()
        .map_err(|e| BuildError::Cmdline(e.to_string()))?
        .into_string()
        .unwrap_or_default();
    let params = boot_params::build(&boot_params::BootInfo {
        setup_header: kernel.setup_header,
        cmdline_size: cmdline_str.len() + 1,
        initrd,
        mem_bytes,
    })?;
    boot_params::write(mem, &params)?;
    mptable::setup(mem, machine.vcpu_count)?;
    regs::write_boot_tables(mem)?;

    let supported: CpuId = core
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| BuildError::Kvm("get supported CPUID", e))?;
    for v in &core.vcpus {
        let topo = cpuid::Topology {
            cpu_id: v.id,
            count: machine.vcpu_count,
            smt: machine.smt,
        };
        v.fd.set_cpuid2(&cpuid::for_vcpu(&supported, topo))
            .map_err(|e| BuildError::Kvm("set CPUID", e))?;
        msr::setup_msrs(&v.fd)?;
        regs::setup_regs(&v.fd, kernel.entry)?;
        regs::setup_sregs(&v.fd)?;
        regs::setup_fpu(&v.fd)?;
        regs::setup_lint(&v.fd)?;
    }
    tracing::info!(
        "microVM started: {} vCPUs, {} MiB, kernel {} entered at {:#x}, cmdline \"{}\"",
        machine.vcpu_count,
        machine.mem_size_mib,
        boot.kernel_image_path,
        kernel.entry,
        cmdline_str
    );
    finish(core, false, cmdline_str)
}

/// Re-creates a microVM from a snapshot: the same VM as `build`, with the saved state applied
/// instead of boot data, and the saved virtio devices attached in the same slots with their
/// transport and queue state (`device_cfgs`: from `device_state::configs`). `mem` already holds (or will serve) the guest's memory.
pub fn restore(
    state: &MicroVmState,
    machine: &MachineConfig,
    mem: GuestMemoryMmap,
    device_cfgs: &DeviceConfigs,
    ctx: BuildContext,
    paused: bool,
) -> Result<MicroVm> {
    if state.vcpus.len() != machine.vcpu_count as usize {
        return Err(BuildError::VcpuCount {
            states: state.vcpus.len(),
            vcpus: machine.vcpu_count,
        });
    }
    let legacy = LegacyState {
        serial: &state.serial,
        i8042: &state.i8042,
    };
    let t0 = std::time::Instant::now();
    let core = create_core(machine, mem, ctx, Some(legacy), device_cfgs)?;
    let t_core = t0.elapsed();
    persist::restore_vm(&core.vm, &state.vm)?;
    let t_vm = t0.elapsed();
    for (v, s) in core.vcpus.iter().zip(&state.vcpus) {
        persist::restore_vcpu(&v.fd, s)?;
    }
    // After the irqchip: a restored device may raise its pending interrupt again.
    crate::persist::devices::restore_all(&core.attached.devices, &state.devices)?;
    let t_vcpus = t0.elapsed();
    let vm = finish(core, paused, state.cmdline.clone());
    tracing::debug!(
        "restore: VM and devices {:?}, VM state {:?}, vCPU state {:?}, vCPU threads {:?}",
        t_core,
        t_vm - t_core,
        t_vcpus - t_vm,
        t0.elapsed() - t_vcpus
    );
    vm
}
