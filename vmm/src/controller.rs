//! The VMM thread's controller: it owns the configuration and the running microVM, applies API
//! requests according to the state machine, and reacts to guest events (reset, vCPU stops,
//! serial input, metrics timer) as an event-manager subscriber.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use api::models::*;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::terminal::Terminal;
use vmm_sys_util::timerfd::TimerFd;

use std::sync::{Arc, Mutex};

use crate::builder::{self, BuildContext, MicroVm};
use crate::device_state;
use crate::drives;
use crate::logger::{self, LogSettings};
use crate::metrics::{self, MetricsSink, VmmCounters};
use crate::net;
use crate::persist;
use crate::snapshot_io;
use crate::snapshot_state::MicroVmState;
use crate::state::{accepts, valid_transition, RequestKind, VmState};
use crate::vcpu::{VcpuCommand, VcpuEvent, VcpuResponse, VcpuStop};
use crate::virtio_devices::DeviceConfigs;

/// Version reported by `GET /` and `GET /version`.
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");
pub const APP_NAME: &str = "Tartarus";

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("Failed to create an event fd or timer")]
    Setup(#[source] std::io::Error),
    #[error("{0}")]
    Config(String),
}

/// Where the guest's serial output goes.
#[derive(Clone, Debug)]
pub enum SerialOut {
    Stdout,
    File(String),
}

/// The API thread's end of the request channel, as seen from the VMM thread.
pub struct ApiLink {
    pub evt: EventFd,
    pub requests: Receiver<VmmAction>,
    pub responses: Sender<VmmResponse>,
}

pub struct Vmm {
    id: String,
    state: VmState,
    machine: MachineConfig,
    boot: Option<BootSourceConfig>,
    devices: DeviceConfigs,
    logger_cfg: Option<LoggerConfig>,
    log: LogSettings,
    metrics_cfg: Option<MetricsConfig>,
    metrics: Option<MetricsSink>,
    metrics_timer: TimerFd,
    /// Ends working-set recording after a restore.
    record_timer: TimerFd,
    counters: VmmCounters,
    serial_out: SerialOut,
    reset_evt: EventFd,
    vcpu_evt: EventFd,
    vcpu_tx: Sender<VcpuEvent>,
    vcpu_rx: Receiver<VcpuEvent>,
    api: Option<ApiLink>,
    pvm: crate::pvm::PvmMode,
    stdin_registered: bool,
    stdin_raw: bool,
    vm: Option<MicroVm>,
    exit_code: Option<i32>,
}

fn check_readable_file(field: &str, path: &str) -> Result<(), String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("Invalid boot-source: {field} '{path}' cannot be accessed: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "Invalid boot-source: {field} '{path}' is not a regular file"
        ));
    }
    File::open(path)
        .map(|_| ())
        .map_err(|e| format!("Invalid boot-source: {field} '{path}' cannot be opened: {e}"))
}

impl Vmm {
    pub fn new(
        id: String,
        log: LogSettings,
        serial_out: SerialOut,
        api: Option<ApiLink>,
    ) -> Result<Self, ControllerError> {
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(ControllerError::Setup);
        let (vcpu_tx, vcpu_rx) = channel();
        Ok(Vmm {
            id,
            state: VmState::NotStarted,
            machine: MachineConfig::default(),
            boot: None,
            devices: DeviceConfigs::default(),
            logger_cfg: None,
            log,
            metrics_cfg: None,
            metrics: None,
            metrics_timer: TimerFd::new().map_err(|e| ControllerError::Setup(e.into()))?,
            record_timer: TimerFd::new().map_err(|e| ControllerError::Setup(e.into()))?,
            counters: VmmCounters::default(),
            serial_out,
            reset_evt: evt()?,
            vcpu_evt: evt()?,
            vcpu_tx,
            vcpu_rx,
            api,
            pvm: crate::pvm::PvmMode::default(),
            stdin_registered: false,
            stdin_raw: false,
            vm: None,
            exit_code: None,
        })
    }

    /// Sets `--pvm-workarounds`.
    pub fn set_pvm_mode(&mut self, mode: crate::pvm::PvmMode) {
        self.pvm = mode;
    }

    /// Sets `--allow-tap-create`.
    pub fn set_allow_tap_create(&mut self, allow: bool) {
        self.devices.allow_tap_create = allow;
    }

    pub fn state(&self) -> VmState {
        self.state
    }

    /// Some(code) once the microVM has ended and the process should exit.
    pub fn exit_code(&self) -> Option<i32> {
        self.exit_code
    }

    fn transition(&mut self, to: VmState) {
        if valid_transition(self.state, to) {
            tracing::debug!("state {} -> {}", self.state, to);
            self.state = to;
        } else {
            tracing::warn!("ignored invalid state transition {} -> {}", self.state, to);
        }
    }

    /// Applies a whole configuration file, then boots.
    pub fn boot_from_config(&mut self, cfg: VmConfig) -> Result<(), ControllerError> {
        let mut actions = Vec::new();
        if let Some(l) = cfg.logger {
            actions.push(VmmAction::PutLogger(l));
        }
        if let Some(m) = cfg.metrics {
            actions.push(VmmAction::PutMetrics(m));
        }
        if let Some(m) = cfg.machine_config {
            actions.push(VmmAction::PutMachineConfig(m));
        }
        for d in cfg.drives {
            actions.push(VmmAction::PutDrive(d));
        }
        actions.extend(
            cfg.network_interfaces
                .into_iter()
                .map(VmmAction::PutNetworkInterface),
        );
        actions.extend(cfg.vsock.map(VmmAction::PutVsock));
        match cfg.boot_source {
            Some(b) => actions.push(VmmAction::PutBootSource(b)),
            None => {
                return Err(ControllerError::Config(
                    "the \"boot-source\" key is required".into(),
                ))
            }
        }
        actions.push(VmmAction::Action(ActionType::InstanceStart));
        for a in actions {
            if let VmmResponse::Error(_, msg) = self.handle(a) {
                return Err(ControllerError::Config(msg));
            }
        }
        Ok(())
    }

    fn kind(action: &VmmAction) -> RequestKind {
        use VmmAction::*;
        match action {
            PutMachineConfig(_) | PatchMachineConfig(_) | PutBootSource(_) => RequestKind::PreBoot,
            Action(ActionType::InstanceStart) => RequestKind::Start,
            Action(ActionType::SendCtrlAltDel) => RequestKind::Running,
            PatchVmState(RequestedVmState::Paused) => RequestKind::Running,
            PatchVmState(RequestedVmState::Resumed) => RequestKind::Paused,
            CreateSnapshot(_) => RequestKind::Paused,
            PutDrive(_) | PutNetworkInterface(_) | PutVsock(_) => RequestKind::PreBoot,
            LoadSnapshot(_) => RequestKind::Start,
            _ => RequestKind::Always,
        }
    }

    fn describe(action: &VmmAction) -> &'static str {
        use VmmAction::*;
        match action {
            PutMachineConfig(_) | PatchMachineConfig(_) => "Changing the machine configuration",
            PutBootSource(_) => "Changing the boot source",
            Action(ActionType::InstanceStart) => "InstanceStart",
            Action(ActionType::SendCtrlAltDel) => "SendCtrlAltDel",
            PatchVmState(RequestedVmState::Paused) => "Pausing",
            PatchVmState(RequestedVmState::Resumed) => "Resuming",
            CreateSnapshot(_) => "Creating a snapshot",
            PutDrive(_) => "Adding or replacing a drive (hot-plug is not supported)",
            PutNetworkInterface(_) => "Adding or replacing a network interface (no hot-plug)",
            PutVsock(_) => "Configuring vsock (hot-plug is not supported)",
            LoadSnapshot(_) => "Loading a snapshot",
            _ => "This request",
        }
    }

    /// Applies one request and answers it.
    pub fn handle(&mut self, action: VmmAction) -> VmmResponse {
        self.counters.api_requests += 1;
        let resp = self.dispatch(action);
        if matches!(resp, VmmResponse::Error(..)) {
            self.counters.api_failures += 1;
        }
        resp
    }

    fn dispatch(&mut self, action: VmmAction) -> VmmResponse {
        if crate::parity::is_noop_state_change(self.state, &action) {
            return VmmResponse::Empty;
        }
        let kind = Self::kind(&action);
        if !accepts(self.state, kind) {
            let when = match kind {
                RequestKind::PreBoot | RequestKind::Start => "only before the microVM starts",
                RequestKind::Running => "only while the microVM is running",
                RequestKind::Paused => "only while the microVM is paused",
                RequestKind::Always => "only while the VMM is alive",
            };
            return VmmResponse::bad_request(format!(
                "{} is not allowed in state {}: it is accepted {when}",
                Self::describe(&action),
                self.state
            ));
        }
        use VmmAction::*;
        match action {
            GetInstanceInfo => json(&InstanceInfo {
                id: self.id.clone(),
                state: self.state.to_string(),
                vmm_version: VMM_VERSION.to_string(),
                app_name: APP_NAME.to_string(),
            }),
            GetVersion => json(&VersionInfo {
                firecracker_version: crate::parity::FIRECRACKER_API_VERSION.to_string(),
                tartarus_version: VMM_VERSION.to_string(),
            }),
            GetMachineConfig => json(&self.machine),
            GetVmConfig => json(&self.vm_config()),
            PutMachineConfig(m) => match m.validate() {
                Ok(()) => {
                    self.machine = m;
                    VmmResponse::Empty
                }
                Err(e) => VmmResponse::bad_request(e),
            },
            PatchMachineConfig(u) => match self.machine.apply(&u) {
                Ok(m) => {
                    self.machine = m;
                    VmmResponse::Empty
                }
                Err(e) => VmmResponse::bad_request(e),
            },
            PutBootSource(b) => self.put_boot_source(b),
            PutDrive(d) => match self.put_drive(d) {
                Ok(()) => VmmResponse::Empty,
                Err(e) => VmmResponse::bad_request(e),
            },
            PutVsock(v) => crate::vsock::put(&mut self.devices, v),
            PatchDrive(u) => match self.patch_drive(&u) {
                Ok(()) => VmmResponse::Empty,
                Err(e) => VmmResponse::bad_request(e),
            },
            PutNetworkInterface(n) => net::empty_or_400(net::put(&mut self.devices, n)),
            PatchNetworkInterface(u) => {
                let attached = self.vm.as_ref().map(|vm| vm.devices.nets.as_slice());
                net::empty_or_400(net::patch(&mut self.devices, attached, &u))
            }
            PutLogger(l) => match logger::apply(&self.log, &l) {
                Ok(s) => {
                    self.log = s;
                    self.logger_cfg = Some(l);
                    VmmResponse::Empty
                }
                Err(e) => VmmResponse::bad_request(format!(
                    "Invalid logger configuration: {e}: {}",
                    source_text(&e)
                )),
            },
            PutMetrics(m) => match MetricsSink::open(&m.metrics_path) {
                Ok(sink) => {
                    self.metrics = Some(sink);
                    self.metrics_cfg = Some(m);
                    let period = Duration::from_secs(metrics::FLUSH_INTERVAL_SECS);
                    if let Err(e) = self.metrics_timer.reset(period, Some(period)) {
                        tracing::warn!("periodic metrics flush disabled: {e}");
                    }
                    VmmResponse::Empty
                }
                Err(e) => VmmResponse::bad_request(format!(
                    "Invalid metrics configuration: {e}: {}",
                    source_text(&e)
                )),
            },
            Action(ActionType::InstanceStart) => self.start(),
            PatchVmState(RequestedVmState::Paused) => self.pause(),
            PatchVmState(RequestedVmState::Resumed) => self.resume(),
            CreateSnapshot(p) => match self.create_snapshot(&p) {
                Ok(()) => VmmResponse::Empty,
                Err(e) => VmmResponse::bad_request(format!("Cannot create snapshot: {e}")),
            },
            LoadSnapshot(p) => match self.load_snapshot(&p) {
                Ok(()) => VmmResponse::Empty,
                Err(e) => VmmResponse::bad_request(format!("Cannot load snapshot: {e}")),
            },
            Action(ActionType::SendCtrlAltDel) => self.ctrl_alt_del(),
            Action(ActionType::FlushMetrics) => match self.flush_metrics() {
                Ok(()) => VmmResponse::Empty,
                Err(e) => VmmResponse::bad_request(e),
            },
        }
    }

    fn put_boot_source(&mut self, b: BootSourceConfig) -> VmmResponse {
        if let Err(e) = check_readable_file("kernel_image_path", &b.kernel_image_path) {
            return VmmResponse::bad_request(e);
        }
        if let Some(p) = &b.initrd_path {
            if let Err(e) = check_readable_file("initrd_path", p) {
                return VmmResponse::bad_request(e);
            }
        }
        if let Err(e) = builder::kernel_cmdline(&b) {
            return VmmResponse::bad_request(format!("Invalid boot-source: boot_args: {e}"));
        }
        self.boot = Some(b);
        VmmResponse::Empty
    }

    fn put_drive(&mut self, d: BlockDeviceConfig) -> Result<(), String> {
        if d.is_root_device {
            if let Some(other) = self
                .devices
                .drives
                .iter()
                .find(|o| o.is_root_device && o.drive_id != d.drive_id)
            {
                return Err(format!(
                    "Invalid drive {}: drive {} is already the root device",
                    d.drive_id, other.drive_id
                ));
            }
        }
        drives::check(&d)?;
        match self
            .devices
            .drives
            .iter_mut()
            .find(|o| o.drive_id == d.drive_id)
        {
            Some(slot) => *slot = d,
            None => self.devices.drives.push(d),
        }
        Ok(())
    }

    fn patch_drive(&mut self, u: &BlockDeviceUpdate) -> Result<(), String> {
        if let Some(vm) = &self.vm {
            drives::patch(&vm.devices.drives, u)?;
        }
        let Some(d) = self
            .devices
            .drives
            .iter_mut()
            .find(|d| d.drive_id == u.drive_id)
        else {
            return Err(format!("Invalid drive: no drive with id '{}'", u.drive_id));
        };
        let mut updated = d.clone();
        if let Some(p) = &u.path_on_host {
            updated.path_on_host = p.clone();
        }
        if let Some(r) = &u.rate_limiter {
            updated.rate_limiter =
                Some(RateLimiterConfig::merged(updated.rate_limiter.as_ref(), r));
        }
        if self.vm.is_none() {
            drives::check(&updated)?;
        }
        *d = updated;
        Ok(())
    }

    /// Event handlers of devices created since the last call, for the event loop to add.
    pub fn take_subscribers(&mut self) -> Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>> {
        self.vm
            .as_mut()
            .map(|vm| std::mem::take(&mut vm.subscribers))
            .unwrap_or_default()
    }

    fn vm_config(&self) -> VmConfig {
        VmConfig {
            drives: self.devices.drives.clone(),
            network_interfaces: self.devices.nets.clone(),
            boot_source: self.boot.clone(),
            machine_config: Some(self.machine.clone()),
            logger: self.logger_cfg.clone(),
            metrics: self.metrics_cfg.clone(),
            vsock: self.devices.vsock.clone(),
            ..Default::default()
        }
    }

    /// What the builder needs from the VMM, for a boot or a restore.
    fn build_context(&self) -> Result<BuildContext, String> {
        Ok(BuildContext {
            serial_out: self.open_serial_out()?,
            reset_evt: self.reset_evt.try_clone().map_err(|e| e.to_string())?,
            vcpu_events: self.vcpu_tx.clone(),
            vcpu_wake: self.vcpu_evt.try_clone().map_err(|e| e.to_string())?,
            pvm: self.pvm,
        })
    }

    fn open_serial_out(&self) -> Result<Box<dyn Write + Send>, String> {
        match &self.serial_out {
            SerialOut::Stdout => Ok(Box::new(std::io::stdout())),
            SerialOut::File(p) => OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map(|f| Box::new(f) as Box<dyn Write + Send>)
                .map_err(|e| format!("Cannot open serial output file {p}: {e}")),
        }
    }

    fn start(&mut self) -> VmmResponse {
        self.counters.instance_starts += 1;
        let result = (|| -> Result<MicroVm, String> {
            let ctx = self.build_context()?;
            builder::build(&self.machine, self.boot.as_ref(), &self.devices, ctx)
                .map_err(|e| error_chain(&e))
        })();
        match result {
            Ok(vm) => {
                self.vm = Some(vm);
                self.transition(VmState::Running);
                VmmResponse::Empty
            }
            Err(e) => {
                self.counters.instance_start_failures += 1;
                tracing::error!("InstanceStart failed: {e}");
                VmmResponse::bad_request(format!("Cannot start microVM: {e}"))
            }
        }
    }

    /// Stops every vCPU at an instruction boundary; answers once all have stopped.
    fn pause(&mut self) -> VmmResponse {
        let Some(vm) = &self.vm else {
            return VmmResponse::bad_request("Pausing needs a running microVM");
        };
        let result = command_all(vm, VcpuCommand::Pause, VcpuResponse::Paused);
        match result {
            Ok(()) => {
                self.transition(VmState::Paused);
                self.stop_recording();
                VmmResponse::Empty
            }
            Err(e) => {
                // Let whoever did stop run again rather than leave the VM half paused.
                for v in &vm.vcpus {
                    let _ = v.send(VcpuCommand::Resume);
                }
                VmmResponse::bad_request(format!("Cannot pause the microVM: {e}"))
            }
        }
    }

    fn resume(&mut self) -> VmmResponse {
        let Some(vm) = &self.vm else {
            return VmmResponse::bad_request("Resuming needs a paused microVM");
        };
        let result = command_all(vm, VcpuCommand::Resume, VcpuResponse::Resumed);
        match result {
            Ok(()) => {
                self.transition(VmState::Running);
                let record_for = self
                    .vm
                    .as_ref()
                    .and_then(|vm| vm.memory_backend.as_ref())
                    .and_then(|b| b.record_for());
                if let Some(d) = record_for {
                    if let Err(e) = self.record_timer.reset(d, None) {
                        tracing::warn!("cannot time the working-set recording: {e}");
                    }
                }
                VmmResponse::Empty
            }
            Err(e) => VmmResponse::bad_request(format!("Cannot resume the microVM: {e}")),
        }
    }

    fn stop_recording(&mut self) {
        let _ = self.record_timer.clear();
        if let Some(b) = self.vm.as_mut().and_then(|vm| vm.memory_backend.as_mut()) {
            if let Err(e) = b.stop_recording() {
                tracing::warn!("working-set recording failed: {e}");
            }
        }
    }

    fn create_snapshot(&mut self, p: &SnapshotCreateParams) -> Result<(), String> {
        let vm = self.vm.as_ref().ok_or("no microVM is running")?;
        crate::parity::log_create_version(p);
        if p.snapshot_type == SnapshotType::Diff && !self.machine.track_dirty_pages {
            return Err(
                "a Diff snapshot needs track_dirty_pages (set it in machine-config, or when loading)"
                    .into(),
            );
        }
        // Devices first: finishing their in-flight requests writes memory, may raise interrupts.
        let virtio =
            device_state::save_all(&vm.devices, &self.devices).map_err(|e| e.to_string())?;
        let msr_list =
            std::sync::Arc::new(persist::msr_index_list(&vm.kvm).map_err(|e| error_chain(&e))?);
        let vcpus = vm
            .vcpus
            .iter()
            .map(|v| v.save_state(msr_list.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let arch = persist::save_vm(&vm.vm).map_err(|e| error_chain(&e))?;
        let state = MicroVmState {
            vmm_version: VMM_VERSION.to_string(),
            id: self.id.clone(),
            machine: self.machine.clone(),
            boot: self.boot.clone(),
            cmdline: vm.cmdline.clone(),
            memory: snapshot_io::memory_layout(&vm.mem),
            vm: arch,
            vcpus,
            serial: devices::bus::lock(&vm.serial).save(),
            i8042: devices::bus::lock(&vm.i8042).save(),
            devices: virtio,
        };
        // Memory first: a state file only ever exists next to complete memory.
        match p.snapshot_type {
            SnapshotType::Full => snapshot_io::write_full_memory(
                vm,
                &p.mem_file_path,
                self.machine.track_dirty_pages,
            )?,
            SnapshotType::Diff => snapshot_io::write_diff_memory(vm, &p.mem_file_path)?,
        }
        snapshot_io::write_state(&p.snapshot_path, &state)?;
        tracing::info!(
            "{:?} snapshot written to {} (memory {})",
            p.snapshot_type,
            p.snapshot_path,
            p.mem_file_path
        );
        Ok(())
    }

    fn load_snapshot(&mut self, p: &SnapshotLoadParams) -> Result<(), String> {
        if self.boot.is_some() {
            return Err(
                "a boot source is configured: load a snapshot into a fresh VMM instead".into(),
            );
        }
        let t0 = std::time::Instant::now();
        // Every field is checked before anything is built (see snapshot_check).
        let mut state: MicroVmState =
            crate::snapshot_check::read_checked(std::path::Path::new(&p.snapshot_path))
                .map_err(|e| e.to_string())?;
        crate::parity::apply_load_overrides(&mut state.devices, p)?;
        let allow_tap_create = self.devices.allow_tap_create;
        device_state::check(&state.devices, allow_tap_create)?;
        let t_state = t0.elapsed();
        let mut machine = state.machine.clone();
        machine.track_dirty_pages = p.track_dirty_pages || p.enable_diff_snapshots;
        machine.validate()?;
        let backend = p.backend()?;
        let memory = snapshot_io::open_memory(&state, &backend, p.prefetch.as_ref())?;
        let t_mem = t0.elapsed();
        let ctx = self.build_context()?;
        let device_cfgs = device_state::configs(&state.devices, allow_tap_create);
        let mut vm = builder::restore(
            &state,
            &machine,
            memory.mem.clone(),
            &device_cfgs,
            ctx,
            true,
        )
        .map_err(|e| error_chain(&e))?;
        vm.memory_backend = Some(memory.backend);
        self.machine = machine;
        self.devices = device_cfgs;
        self.vm = Some(vm);
        self.transition(VmState::Paused);
        let t_vm = t0.elapsed();
        tracing::info!(
            "snapshot {} loaded in {:?} (state file {:?}, memory {:?}, VM {:?})",
            p.snapshot_path,
            t_vm,
            t_state,
            t_mem - t_state,
            t_vm - t_mem
        );
        if p.resume_vm {
            if let VmmResponse::Error(_, e) = self.resume() {
                return Err(e);
            }
        }
        Ok(())
    }

    fn ctrl_alt_del(&mut self) -> VmmResponse {
        let Some(vm) = &self.vm else {
            return VmmResponse::bad_request("SendCtrlAltDel needs a running microVM");
        };
        self.counters.ctrl_alt_del += 1;
        match devices::bus::lock(&vm.i8042).trigger_ctrl_alt_del() {
            Ok(()) => VmmResponse::Empty,
            Err(e) => VmmResponse::bad_request(format!("Cannot send Ctrl-Alt-Del: {e}")),
        }
    }

    fn flush_metrics(&mut self) -> Result<(), String> {
        self.counters.flushes += 1;
        let record = metrics::render(&self.counters, self.vm.as_ref());
        let sink = self.metrics.as_mut().ok_or(
            "Cannot flush metrics: the metrics file is not configured (PUT /metrics first)",
        )?;
        sink.write(&record)
            .map_err(|e| format!("{e}: {}", source_text(&e)))
    }

    fn end(&mut self, code: i32, why: &str) {
        if self.exit_code.is_none() {
            tracing::info!("microVM {} exiting: {why} (exit code {code})", self.id);
            if self.metrics.is_some() {
                let _ = self.flush_metrics();
            }
            self.restore_terminal();
            crate::vsock::remove_socket(self.vm.as_ref());
            self.transition(VmState::Exited);
            self.exit_code = Some(code);
        }
    }

    fn restore_terminal(&mut self) {
        if self.stdin_raw {
            let _ = std::io::stdin().lock().set_canon_mode();
            self.stdin_raw = false;
        }
    }

    fn maybe_register_stdin(&mut self, ops: &mut EventOps) {
        if self.stdin_registered
            || self.vm.is_none()
            || !matches!(self.serial_out, SerialOut::Stdout)
        {
            return;
        }
        let stdin = std::io::stdin();
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(stdin.as_raw_fd()) } != 1 {
            return;
        }
        if stdin.lock().set_raw_mode().is_ok() {
            self.stdin_raw = true;
        }
        if ops.add(Events::new(&stdin, EventSet::IN)).is_ok() {
            self.stdin_registered = true;
        }
    }

    fn on_stdin(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let stdin = std::io::stdin();
        let room = self
            .vm
            .as_ref()
            .map(|vm| devices::bus::lock(&vm.serial).input_capacity())
            .unwrap_or(0)
            .min(buf.len());
        if room == 0 {
            return;
        }
        match stdin.lock().read(&mut buf[..room]) {
            Ok(0) | Err(_) => {
                let _ = ops.remove(Events::new(&stdin, EventSet::IN));
                self.stdin_registered = false;
            }
            Ok(n) => {
                if let Some(vm) = &self.vm {
                    devices::bus::lock(&vm.serial).enqueue_input(&buf[..n]);
                }
            }
        }
    }

    fn on_api(&mut self, ops: &mut EventOps) {
        let Some(link) = &self.api else { return };
        let _ = link.evt.read();
        loop {
            let Some(link) = &self.api else { return };
            let Ok(req) = link.requests.try_recv() else {
                break;
            };
            let resp = self.handle(req);
            let Some(link) = &self.api else { return };
            if link.responses.send(resp).is_err() {
                tracing::warn!("the API thread is gone");
            }
        }
        self.maybe_register_stdin(ops);
    }

    fn on_vcpu_event(&mut self) {
        let _ = self.vcpu_evt.read();
        while let Ok(ev) = self.vcpu_rx.try_recv() {
            match ev.stop {
                VcpuStop::GuestShutdown(why) => self.end(0, &format!("vCPU {}: {why}", ev.id)),
                VcpuStop::Error(why) => self.end(1, &format!("vCPU {}: {why}", ev.id)),
            }
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.restore_terminal();
    }
}

/// Sends `cmd` to every vCPU (all kicked first, so they stop together), then waits for each
/// to answer `expected`.
fn command_all(
    vm: &MicroVm,
    cmd: VcpuCommand,
    expected: VcpuResponse,
) -> Result<(), crate::vcpu::VcpuError> {
    for v in &vm.vcpus {
        v.send(cmd.clone())?;
    }
    vm.vcpus.iter().try_for_each(|v| v.expect(&expected))
}

fn json<T: serde::Serialize>(v: &T) -> VmmResponse {
    match serde_json::to_value(v) {
        Ok(v) => VmmResponse::Json(v),
        Err(e) => VmmResponse::Error(500, format!("Cannot serialise the response: {e}")),
    }
}

/// "error: cause: cause" for an error and its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn source_text(e: &dyn std::error::Error) -> String {
    e.source().map(|s| s.to_string()).unwrap_or_default()
}

impl MutEventSubscriber for Vmm {
    fn init(&mut self, ops: &mut EventOps) {
        let mut add = |fd: &dyn AsRawFd, what: &str| {
            if let Err(e) = ops.add(Events::new_raw(fd.as_raw_fd(), EventSet::IN)) {
                tracing::error!("cannot watch the {what}: {e:?}");
            }
        };
        if let Some(link) = &self.api {
            add(&link.evt, "API event");
        }
        add(&self.reset_evt, "reset event");
        add(&self.vcpu_evt, "vCPU event");
        add(&self.metrics_timer, "metrics timer");
        add(&self.record_timer, "working-set timer");
        self.maybe_register_stdin(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if self.api.as_ref().is_some_and(|l| l.evt.as_raw_fd() == fd) {
            self.on_api(ops);
        } else if fd == self.reset_evt.as_raw_fd() {
            let _ = self.reset_evt.read();
            self.end(0, "the guest reset the machine through the i8042");
        } else if fd == self.vcpu_evt.as_raw_fd() {
            self.on_vcpu_event();
        } else if fd == self.metrics_timer.as_raw_fd() {
            let _ = self.metrics_timer.wait();
            if let Err(e) = self.flush_metrics() {
                tracing::warn!("periodic metrics flush failed: {e}");
            }
        } else if fd == self.record_timer.as_raw_fd() {
            let _ = self.record_timer.wait();
            self.stop_recording();
        } else if fd == libc::STDIN_FILENO {
            self.on_stdin(ops);
        }
    }
}
