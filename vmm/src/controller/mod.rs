//! The VMM thread's controller: it owns the configuration and the running microVM, applies API
//! requests according to the state machine, and reacts to guest events (reset, vCPU stops,
//! serial input, metrics timer) as an event-manager subscriber.
//!
//! Every action returns `Result<_, ActionError>` ([`error`]); [`Vmm::handle`] turns that into
//! the response in one place. Device `PUT`/`PATCH` live beside each device kind in
//! `crate::virtio`, snapshots in `crate::persist`, terminal input in [`terminal`].

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::models::*;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::builder::{self, BuildContext, ContextError};
use crate::lifecycle::{accepts, valid_transition, RequestKind, VmState};
use crate::logger::{self, LogSettings};
use crate::metrics::{self, MetricsSink, VmmCounters};
use crate::microvm::MicroVm;
use crate::persist;
use crate::vcpu::{VcpuCommand, VcpuEvent, VcpuResponse, VcpuStop};
use crate::virtio::{self, DeviceConfigs};

pub mod error;
mod terminal;
#[cfg(test)]
mod tests;

pub use error::ActionError;

pub use crate::{APP_NAME, VMM_VERSION};

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

fn check_readable_file(field: &'static str, path: &str) -> Result<(), ActionError> {
    let meta = std::fs::metadata(path).map_err(|source| ActionError::BootFileAccess {
        field,
        path: path.into(),
        source,
    })?;
    if !meta.is_file() {
        return Err(ActionError::BootFileKind {
            field,
            path: path.into(),
        });
    }
    File::open(path)
        .map(drop)
        .map_err(|source| ActionError::BootFileOpen {
            field,
            path: path.into(),
            source,
        })
}

type ActionResult = Result<VmmResponse, ActionError>;

/// 204 No Content.
fn empty<E: Into<ActionError>>(r: Result<(), E>) -> ActionResult {
    r.map(|()| VmmResponse::Empty).map_err(Into::into)
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
        match self.dispatch(action) {
            Ok(resp) => resp,
            Err(e) => {
                self.counters.api_failures += 1;
                e.response()
            }
        }
    }

    fn dispatch(&mut self, action: VmmAction) -> ActionResult {
        if crate::parity::is_noop_state_change(self.state, &action) {
            return Ok(VmmResponse::Empty);
        }
        let kind = Self::kind(&action);
        if !accepts(self.state, kind) {
            let when = match kind {
                RequestKind::PreBoot | RequestKind::Start => "only before the microVM starts",
                RequestKind::Running => "only while the microVM is running",
                RequestKind::Paused => "only while the microVM is paused",
                RequestKind::Always => "only while the VMM is alive",
            };
            return Err(ActionError::NotAllowed {
                what: Self::describe(&action),
                state: self.state,
                when,
            });
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
            PutMachineConfig(m) => {
                m.validate().map_err(ActionError::Invalid)?;
                self.machine = m;
                Ok(VmmResponse::Empty)
            }
            PatchMachineConfig(u) => {
                self.machine = self.machine.apply(&u).map_err(ActionError::Invalid)?;
                Ok(VmmResponse::Empty)
            }
            PutBootSource(b) => empty(self.put_boot_source(b)),
            PutDrive(d) => empty(virtio::block::put(&mut self.devices, d)),
            PatchDrive(u) => {
                let attached = self.vm.as_ref().map(|vm| vm.devices.drives.as_slice());
                empty(virtio::block::patch(&mut self.devices, attached, &u))
            }
            PutVsock(v) => empty(virtio::vsock::put(&mut self.devices, v)),
            PutNetworkInterface(n) => empty(virtio::net::put(&mut self.devices, n)),
            PatchNetworkInterface(u) => {
                let attached = self.vm.as_ref().map(|vm| vm.devices.nets.as_slice());
                empty(virtio::net::patch(&mut self.devices, attached, &u))
            }
            PutLogger(l) => {
                self.log = logger::apply(&self.log, &l).map_err(ActionError::Logger)?;
                self.logger_cfg = Some(l);
                Ok(VmmResponse::Empty)
            }
            PutMetrics(m) => {
                let sink = MetricsSink::open(&m.metrics_path).map_err(ActionError::Metrics)?;
                self.metrics = Some(sink);
                self.metrics_cfg = Some(m);
                let period = Duration::from_secs(metrics::FLUSH_INTERVAL_SECS);
                if let Err(e) = self.metrics_timer.reset(period, Some(period)) {
                    tracing::warn!("periodic metrics flush disabled: {e}");
                }
                Ok(VmmResponse::Empty)
            }
            Action(ActionType::InstanceStart) => empty(self.start()),
            PatchVmState(RequestedVmState::Paused) => empty(self.pause()),
            PatchVmState(RequestedVmState::Resumed) => empty(self.resume()),
            CreateSnapshot(p) => empty(self.create_snapshot(&p)),
            LoadSnapshot(p) => empty(self.load_snapshot(&p)),
            Action(ActionType::SendCtrlAltDel) => empty(self.ctrl_alt_del()),
            Action(ActionType::FlushMetrics) => empty(self.flush_metrics()),
        }
    }

    fn put_boot_source(&mut self, b: BootSourceConfig) -> Result<(), ActionError> {
        check_readable_file("kernel_image_path", &b.kernel_image_path)?;
        if let Some(p) = &b.initrd_path {
            check_readable_file("initrd_path", p)?;
        }
        builder::kernel_cmdline(&b).map_err(ActionError::BootArgs)?;
        self.boot = Some(b);
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
    fn build_context(&self) -> Result<BuildContext, ContextError> {
        Ok(BuildContext {
            serial_out: self.open_serial_out()?,
            reset_evt: self.reset_evt.try_clone().map_err(ContextError::EventFd)?,
            vcpu_events: self.vcpu_tx.clone(),
            vcpu_wake: self.vcpu_evt.try_clone().map_err(ContextError::EventFd)?,
            pvm: self.pvm,
        })
    }

    fn open_serial_out(&self) -> Result<Box<dyn Write + Send>, ContextError> {
        match &self.serial_out {
            SerialOut::Stdout => Ok(Box::new(std::io::stdout())),
            SerialOut::File(p) => OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map(|f| Box::new(f) as Box<dyn Write + Send>)
                .map_err(|e| ContextError::SerialOut(p.clone(), e)),
        }
    }

    fn start(&mut self) -> Result<(), ActionError> {
        self.counters.instance_starts += 1;
        let result = self
            .build_context()
            .map_err(ActionError::StartContext)
            .and_then(|ctx| {
                builder::build(&self.machine, self.boot.as_ref(), &self.devices, ctx)
                    .map_err(ActionError::Start)
            });
        match result {
            Ok(vm) => {
                self.vm = Some(vm);
                self.transition(VmState::Running);
                Ok(())
            }
            Err(e) => {
                self.counters.instance_start_failures += 1;
                tracing::error!("InstanceStart failed: {}", crate::error::error_chain(&e));
                Err(e)
            }
        }
    }

    /// Stops every vCPU at an instruction boundary; answers once all have stopped.
    fn pause(&mut self) -> Result<(), ActionError> {
        let vm = self
            .vm
            .as_ref()
            .ok_or(ActionError::NoMicroVm("Pausing needs a running microVM"))?;
        if let Err(e) = command_all(vm, VcpuCommand::Pause, VcpuResponse::Paused) {
            // Let whoever did stop run again rather than leave the VM half paused.
            for v in &vm.vcpus {
                let _ = v.send(VcpuCommand::Resume);
            }
            return Err(ActionError::Pause(e));
        }
        self.transition(VmState::Paused);
        self.stop_recording();
        Ok(())
    }

    fn resume(&mut self) -> Result<(), ActionError> {
        let vm = self
            .vm
            .as_ref()
            .ok_or(ActionError::NoMicroVm("Resuming needs a paused microVM"))?;
        command_all(vm, VcpuCommand::Resume, VcpuResponse::Resumed).map_err(ActionError::Resume)?;
        let record_for = vm.memory_backend.as_ref().and_then(|b| b.record_for());
        self.transition(VmState::Running);
        if let Some(d) = record_for {
            if let Err(e) = self.record_timer.reset(d, None) {
                tracing::warn!("cannot time the working-set recording: {e}");
            }
        }
        Ok(())
    }

    fn stop_recording(&mut self) {
        let _ = self.record_timer.clear();
        if let Some(b) = self.vm.as_mut().and_then(|vm| vm.memory_backend.as_mut()) {
            if let Err(e) = b.stop_recording() {
                tracing::warn!("{}", crate::error::error_chain(&e));
            }
        }
    }

    fn create_snapshot(&mut self, p: &SnapshotCreateParams) -> Result<(), ActionError> {
        let vm = self.vm.as_ref().ok_or(ActionError::NoMicroVm(
            "Creating a snapshot needs a paused microVM",
        ))?;
        let who = persist::VmIdentity {
            id: &self.id,
            machine: &self.machine,
            boot: self.boot.as_ref(),
            devices: &self.devices,
        };
        persist::create(vm, &who, p).map_err(|e| ActionError::CreateSnapshot(Box::new(e)))
    }

    fn load_snapshot(&mut self, p: &SnapshotLoadParams) -> Result<(), ActionError> {
        let loaded = persist::load(
            p,
            self.boot.is_some(),
            self.devices.allow_tap_create,
            || self.build_context(),
        )
        .map_err(|e| ActionError::LoadSnapshot(Box::new(e)))?;
        self.machine = loaded.machine;
        self.devices = loaded.devices;
        self.vm = Some(loaded.vm);
        self.transition(VmState::Paused);
        if p.resume_vm {
            self.resume()?;
        }
        Ok(())
    }

    fn ctrl_alt_del(&mut self) -> Result<(), ActionError> {
        let vm = self.vm.as_ref().ok_or(ActionError::NoMicroVm(
            "SendCtrlAltDel needs a running microVM",
        ))?;
        self.counters.ctrl_alt_del += 1;
        devices::bus::lock(&vm.i8042)
            .trigger_ctrl_alt_del()
            .map_err(ActionError::CtrlAltDel)
    }

    fn flush_metrics(&mut self) -> Result<(), ActionError> {
        self.counters.flushes += 1;
        let record = metrics::render(&self.counters, self.vm.as_ref());
        let sink = self
            .metrics
            .as_mut()
            .ok_or(ActionError::MetricsNotConfigured)?;
        sink.write(&record).map_err(ActionError::FlushMetrics)
    }

    fn end(&mut self, code: i32, why: &str) {
        if self.exit_code.is_none() {
            tracing::info!("microVM {} exiting: {why} (exit code {code})", self.id);
            if self.metrics.is_some() {
                let _ = self.flush_metrics();
            }
            self.restore_terminal();
            virtio::vsock::remove_socket(self.vm.as_ref().and_then(|vm| vm.devices.vsock.as_ref()));
            self.transition(VmState::Exited);
            self.exit_code = Some(code);
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

fn json<T: serde::Serialize>(v: &T) -> ActionResult {
    serde_json::to_value(v)
        .map(VmmResponse::Json)
        .map_err(ActionError::Serialise)
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
