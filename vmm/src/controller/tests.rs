//! Controller tests that need no KVM: every refusal before boot, the error-to-status mapping,
//! and the counters. (What needs a running microVM is tested end to end in tests/.)

use super::*;
use crate::vcpu::VcpuError;

fn vmm() -> Vmm {
    let log = LogSettings {
        level: LogLevel::Warning,
        show_level: false,
        show_log_origin: false,
        module: None,
        file: None,
        id: "test".into(),
    };
    Vmm::new("test".into(), log, SerialOut::Stdout, None).unwrap()
}

/// The status and message of an error response (panics on success).
fn refused(vmm: &mut Vmm, action: VmmAction) -> (u16, String) {
    match vmm.handle(action) {
        VmmResponse::Error(status, msg) => (status, msg),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tartarus-ctl-{}-{name}", std::process::id()))
}

#[test]
fn run_time_actions_are_refused_before_boot_with_the_state_named() {
    let mut v = vmm();
    let snapshot = SnapshotCreateParams {
        snapshot_type: SnapshotType::Full,
        snapshot_path: "/tmp/s".into(),
        mem_file_path: "/tmp/m".into(),
        version: None,
    };
    for (action, what) in [
        (VmmAction::PatchVmState(RequestedVmState::Paused), "Pausing"),
        (
            VmmAction::PatchVmState(RequestedVmState::Resumed),
            "Resuming",
        ),
        (VmmAction::CreateSnapshot(snapshot), "Creating a snapshot"),
        (
            VmmAction::Action(ActionType::SendCtrlAltDel),
            "SendCtrlAltDel",
        ),
    ] {
        let (status, msg) = refused(&mut v, action);
        assert_eq!(status, 400, "{msg}");
        assert!(msg.starts_with(what), "{msg}");
        assert!(msg.contains("Not started"), "{msg}");
    }
    assert_eq!(v.counters.api_failures, 4);
    assert_eq!(v.state(), VmState::NotStarted);
}

#[test]
fn instance_start_without_a_kernel_names_the_missing_request() {
    let mut v = vmm();
    let (status, msg) = refused(&mut v, VmmAction::Action(ActionType::InstanceStart));
    assert_eq!(status, 400);
    assert!(msg.contains("PUT /boot-source first"), "{msg}");
    assert_eq!(v.counters.instance_start_failures, 1);
    assert_eq!(v.state(), VmState::NotStarted);
}

#[test]
fn boot_sources_that_cannot_be_read_are_refused() {
    let mut v = vmm();
    let boot = |path: &str| {
        VmmAction::PutBootSource(BootSourceConfig {
            kernel_image_path: path.into(),
            initrd_path: None,
            boot_args: None,
        })
    };
    let (status, msg) = refused(&mut v, boot("/nonexistent/vmlinux"));
    assert_eq!(status, 400);
    assert!(
        msg.contains("kernel_image_path '/nonexistent/vmlinux' cannot be accessed: "),
        "{msg}"
    );
    let (_, msg) = refused(&mut v, boot("/tmp"));
    assert!(msg.contains("is not a regular file"), "{msg}");
    assert!(v.boot.is_none());
}

#[test]
fn drives_are_checked_and_the_second_root_refused() {
    let mut v = vmm();
    let disk = temp_path("disk");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let drive = |id: &str, path: &str, root: bool| BlockDeviceConfig {
        drive_id: id.into(),
        path_on_host: path.into(),
        is_root_device: root,
        is_read_only: false,
        partuuid: None,
        cache_type: Default::default(),
        io_engine: Default::default(),
        rate_limiter: None,
        socket: None,
    };
    let path = disk.to_str().unwrap();
    assert_eq!(
        v.handle(VmmAction::PutDrive(drive("root", path, true))),
        VmmResponse::Empty
    );
    let (status, msg) = refused(&mut v, VmmAction::PutDrive(drive("other", path, true)));
    assert_eq!(status, 400);
    assert!(
        msg.contains("drive root is already the root device"),
        "{msg}"
    );
    let (_, msg) = refused(
        &mut v,
        VmmAction::PutDrive(drive("data", "/nonexistent/disk", false)),
    );
    assert!(
        msg.contains("Invalid drive data: path_on_host '/nonexistent/disk' cannot be accessed"),
        "{msg}"
    );
    // A PATCH before boot checks the new file too, and leaves the drive as it was.
    let (_, msg) = refused(
        &mut v,
        VmmAction::PatchDrive(BlockDeviceUpdate {
            drive_id: "root".into(),
            path_on_host: Some("/nonexistent/other".into()),
            rate_limiter: None,
        }),
    );
    assert!(msg.contains("/nonexistent/other"), "{msg}");
    assert_eq!(v.devices.drives[0].path_on_host, path);
    let (_, msg) = refused(
        &mut v,
        VmmAction::PatchDrive(BlockDeviceUpdate {
            drive_id: "nope".into(),
            path_on_host: None,
            rate_limiter: None,
        }),
    );
    assert!(msg.contains("no drive with id 'nope'"), "{msg}");
    std::fs::remove_file(&disk).unwrap();
}

#[test]
fn metrics_must_be_configured_before_a_flush() {
    let mut v = vmm();
    let (status, msg) = refused(&mut v, VmmAction::Action(ActionType::FlushMetrics));
    assert_eq!(status, 400);
    assert!(msg.contains("PUT /metrics first"), "{msg}");
    let (status, msg) = refused(
        &mut v,
        VmmAction::PutMetrics(MetricsConfig {
            metrics_path: "/nonexistent/dir/metrics".into(),
        }),
    );
    assert_eq!(status, 400);
    assert!(
        msg.starts_with("Invalid metrics configuration: Cannot open metrics file"),
        "{msg}"
    );
    let path = temp_path("metrics");
    let m = MetricsConfig {
        metrics_path: path.to_str().unwrap().into(),
    };
    assert_eq!(v.handle(VmmAction::PutMetrics(m)), VmmResponse::Empty);
    assert_eq!(
        v.handle(VmmAction::Action(ActionType::FlushMetrics)),
        VmmResponse::Empty
    );
    let line = std::fs::read_to_string(&path).unwrap();
    assert!(
        line.contains("\"api_server\":{\"failures\":2,\"requests\":4}"),
        "{line}"
    );
    std::fs::remove_file(&path).unwrap();
}

fn load(path: &str) -> VmmAction {
    VmmAction::LoadSnapshot(SnapshotLoadParams {
        snapshot_path: path.into(),
        mem_backend: None,
        mem_file_path: Some("/nonexistent/mem".into()),
        track_dirty_pages: false,
        enable_diff_snapshots: false,
        resume_vm: false,
        prefetch: None,
        network_overrides: Vec::new(),
        vsock_override: None,
        clock_realtime: false,
    })
}

#[test]
fn snapshot_loads_refuse_bad_files_and_a_configured_boot_source() {
    let mut v = vmm();
    let (status, msg) = refused(&mut v, load("/nonexistent/state"));
    assert_eq!(status, 400);
    assert!(msg.starts_with("Cannot load snapshot: "), "{msg}");
    assert!(msg.contains("/nonexistent/state"), "{msg}");
    let junk = temp_path("junk-state");
    std::fs::write(&junk, b"not a snapshot").unwrap();
    let (status, _) = refused(&mut v, load(junk.to_str().unwrap()));
    assert_eq!(status, 400);
    std::fs::remove_file(&junk).unwrap();
    // Still able to load (or boot) afterwards.
    assert_eq!(v.state(), VmState::NotStarted);
    let kernel = temp_path("kernel");
    std::fs::write(&kernel, b"x").unwrap();
    let boot = BootSourceConfig {
        kernel_image_path: kernel.to_str().unwrap().into(),
        initrd_path: None,
        boot_args: None,
    };
    assert_eq!(v.handle(VmmAction::PutBootSource(boot)), VmmResponse::Empty);
    let (_, msg) = refused(&mut v, load("/nonexistent/state"));
    assert!(msg.contains("a boot source is configured"), "{msg}");
    std::fs::remove_file(&kernel).unwrap();
}

#[test]
fn queries_answer_json() {
    let mut v = vmm();
    let VmmResponse::Json(info) = v.handle(VmmAction::GetInstanceInfo) else {
        panic!("not JSON")
    };
    assert_eq!(info["state"], "Not started");
    let VmmResponse::Json(cfg) = v.handle(VmmAction::GetVmConfig) else {
        panic!("not JSON")
    };
    assert_eq!(cfg["machine-config"]["vcpu_count"], 1);
}

#[test]
fn host_and_vmm_failures_are_500_and_input_errors_400() {
    let gone = ActionError::Pause(VcpuError::Gone(0));
    assert_eq!(gone.status(), 500);
    assert_eq!(
        ActionError::Start(crate::builder::BuildError::MissingBootSource).status(),
        400
    );
    assert_eq!(ActionError::Invalid("x".into()).status(), 400);
    let e = ActionError::FlushMetrics(crate::metrics::MetricsError::Write(
        "/m".into(),
        std::io::Error::other("disk full"),
    ));
    assert_eq!(
        e.response(),
        VmmResponse::Error(
            500,
            "Cannot flush metrics: Cannot write metrics to /m: disk full".into()
        )
    );
}
