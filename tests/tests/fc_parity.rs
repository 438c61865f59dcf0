//! Parity with Firecracker (issue 10): its semantics where ours differed, every field of its API
//! on the endpoints we serve (accepted with its meaning, or refused as unsupported), its config
//! file keys and its command-line flags.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tartarus_tests::net::HostTap;
use tartarus_tests::{guests, TempDir, Vmm, GUEST_TIMEOUT};

const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

fn fault(r: &tartarus_tests::Response) -> String {
    r.fault_message().unwrap_or_default().to_string()
}

/// Asserts a 400 whose fault message contains every one of `words` (case-insensitive).
fn expect_400(r: tartarus_tests::Response, words: &[&str]) {
    assert_eq!(r.status, 400, "expected 400, got {r}");
    let msg = fault(&r).to_lowercase();
    for w in words {
        assert!(msg.contains(&w.to_lowercase()), "{msg:?} lacks {w:?}");
    }
}

fn bucket(size: u64) -> Value {
    json!({"size": size, "refill_time": 100})
}

fn disk(dir: &TempDir) -> PathBuf {
    let p = dir.join("disk.img");
    std::fs::write(&p, vec![0u8; 1 << 16]).unwrap();
    p
}

#[test]
fn patch_vm_to_the_current_state_is_a_noop() {
    let mut vmm = Vmm::start_api();
    vmm.configure(1, 64, &guests().hello_elf, "wait_cad");
    vmm.start();
    vmm.wait_for_output("waiting for ctrl-alt-del", GUEST_TIMEOUT);
    let r = vmm.patch("/vm", &json!({"state": "Resumed"}));
    assert_eq!(r.status, 204, "Resumed while running: {r}");
    assert_eq!(vmm.state(), "Running");
    vmm.patch_ok("/vm", &json!({"state": "Paused"}));
    let r = vmm.patch("/vm", &json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "Paused while paused: {r}");
    assert_eq!(vmm.state(), "Paused");
    vmm.patch_ok("/vm", &json!({"state": "Resumed"}));
    assert_eq!(vmm.action("SendCtrlAltDel").status, 204);
    vmm.wait_success();
}

#[test]
fn version_reports_a_firecracker_api_version_and_ours() {
    let vmm = Vmm::start_api();
    let v = vmm.get_json("/version");
    assert_eq!(v["firecracker_version"], "1.10.0", "{v}");
    let ours = vmm.get_json("/")["vmm_version"].clone();
    assert_eq!(v["tartarus_version"], ours, "{v}");
    assert_ne!(v["tartarus_version"], v["firecracker_version"], "{v}");
}

#[test]
fn patching_one_bucket_keeps_the_other_before_boot() {
    let vmm = Vmm::start_api();
    let dir = TempDir::new("fcbucket");
    let img = disk(&dir);
    let tap = HostTap::create().expect("create a tap (needs root)");
    vmm.put_ok(
        "/drives/d0",
        &json!({"drive_id": "d0", "path_on_host": img, "is_root_device": false,
                "rate_limiter": {"bandwidth": bucket(1 << 20), "ops": bucket(100)}}),
    );
    vmm.patch_ok(
        "/drives/d0",
        &json!({"drive_id": "d0", "rate_limiter": {"ops": bucket(200)}}),
    );
    vmm.put_ok(
        "/network-interfaces/eth0",
        &json!({"iface_id": "eth0", "host_dev_name": tap.name,
                "rx_rate_limiter": {"bandwidth": bucket(1 << 20), "ops": bucket(100)}}),
    );
    vmm.patch_ok(
        "/network-interfaces/eth0",
        &json!({"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": bucket(4096)}}),
    );
    let cfg = vmm.get_json("/vm/config");
    let d = &cfg["drives"][0]["rate_limiter"];
    assert_eq!(d["bandwidth"]["size"], 1 << 20, "{cfg}");
    assert_eq!(d["ops"]["size"], 200, "{cfg}");
    let n = &cfg["network-interfaces"][0]["rx_rate_limiter"];
    assert_eq!(n["bandwidth"]["size"], 4096, "{cfg}");
    assert_eq!(n["ops"]["size"], 100, "{cfg}");
}

/// A running VM with a drive, a NIC and vsock: PATCHes of one bucket keep the other in the
/// snapshot, and the load's overrides re-point the NIC and the vsock socket.
#[test]
fn snapshot_keeps_patched_buckets_and_load_takes_overrides() {
    let dir = TempDir::new("fcsnap");
    let img = disk(&dir);
    let tap = HostTap::create().expect("create a tap (needs root)");
    let tap2 = HostTap::create().expect("create a second tap");
    let vmm = Vmm::start_api();
    vmm.put_ok(
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "None", "huge_pages": "None"}),
    );
    vmm.put_ok(
        "/drives/d0",
        &json!({"drive_id": "d0", "path_on_host": img, "is_root_device": false,
                "io_engine": "Sync",
                "rate_limiter": {"bandwidth": bucket(1 << 20), "ops": bucket(100)}}),
    );
    vmm.put_ok(
        "/network-interfaces/eth0",
        &json!({"iface_id": "eth0", "host_dev_name": tap.name,
                "tx_rate_limiter": {"bandwidth": bucket(1 << 20), "ops": bucket(100)}}),
    );
    let uds = vmm.dir().join("v.sock");
    vmm.put_ok(
        "/vsock",
        &json!({"vsock_id": "vsock0", "guest_cid": 3, "uds_path": uds}),
    );
    vmm.configure(1, 64, &guests().hello_elf, "wait_cad");
    vmm.start();
    vmm.wait_for_output("waiting for ctrl-alt-del", GUEST_TIMEOUT);
    vmm.patch_ok(
        "/drives/d0",
        &json!({"drive_id": "d0", "rate_limiter": {"ops": bucket(300)}}),
    );
    vmm.patch_ok(
        "/network-interfaces/eth0",
        &json!({"iface_id": "eth0", "tx_rate_limiter": {"bandwidth": bucket(8192)}}),
    );
    vmm.patch_ok("/vm", &json!({"state": "Paused"}));
    let state = dir.join("vm.state");
    let mem = dir.join("vm.mem");
    let r = vmm.put(
        "/snapshot/create",
        &json!({"snapshot_path": state, "mem_file_path": mem, "version": "1.0.0"}),
    );
    assert_eq!(r.status, 204, "{}\n{}", fault(&r), vmm.diagnostics());

    let mut restored = Vmm::start_api();
    // An override naming an interface the snapshot lacks is refused before anything is built.
    let r = restored.put(
        "/snapshot/load",
        &json!({"snapshot_path": state, "mem_file_path": mem,
                "network_overrides": [{"iface_id": "eth9", "host_dev_name": tap2.name}]}),
    );
    expect_400(r, &["eth9"]);
    let uds2 = restored.dir().join("v2.sock");
    let r = restored.put(
        "/snapshot/load",
        &json!({"snapshot_path": state,
                "mem_backend": {"backend_type": "File", "backend_path": mem},
                "enable_diff_snapshots": true, "clock_realtime": true,
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": tap2.name}],
                "vsock_override": {"uds_path": uds2}}),
    );
    assert_eq!(r.status, 204, "{}\n{}", fault(&r), restored.diagnostics());
    let cfg = restored.get_json("/vm/config");
    let d = &cfg["drives"][0]["rate_limiter"];
    assert_eq!(d["bandwidth"]["size"], 1 << 20, "{cfg}");
    assert_eq!(d["ops"]["size"], 300, "{cfg}");
    let n = &cfg["network-interfaces"][0];
    assert_eq!(n["host_dev_name"], tap2.name.as_str(), "{cfg}");
    assert_eq!(n["tx_rate_limiter"]["bandwidth"]["size"], 8192, "{cfg}");
    assert_eq!(n["tx_rate_limiter"]["ops"]["size"], 100, "{cfg}");
    assert_eq!(cfg["vsock"]["uds_path"], uds2.to_str().unwrap(), "{cfg}");
    assert_eq!(cfg["machine-config"]["track_dirty_pages"], true, "{cfg}");
    assert!(uds2.exists(), "the vsock override's socket is not there");
    drop(vmm);
    restored.patch_ok("/vm", &json!({"state": "Resumed"}));
    assert_eq!(restored.action("SendCtrlAltDel").status, 204);
    restored.wait_success();
}

#[test]
fn firecracker_fields_are_accepted_or_refused_as_unsupported() {
    let vmm = Vmm::start_api();
    let dir = TempDir::new("fcfields");
    let img = disk(&dir);
    vmm.put_ok(
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": 64, "smt": false,
                "cpu_template": "None", "huge_pages": "None", "track_dirty_pages": false}),
    );
    for (body, field, value) in [
        (
            json!({"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "T2"}),
            "cpu_template",
            "T2",
        ),
        (
            json!({"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "2M"}),
            "huge_pages",
            "2M",
        ),
    ] {
        expect_400(
            vmm.put("/machine-config", &body),
            &[field, value, "not supported"],
        );
    }
    expect_400(
        vmm.patch("/machine-config", &json!({"cpu_template": "C3"})),
        &["cpu_template", "not supported"],
    );
    vmm.patch_ok("/machine-config", &json!({"huge_pages": "None"}));
    expect_400(
        vmm.put(
            "/drives/vu",
            &json!({"drive_id": "vu", "is_root_device": false, "socket": "/run/vhost.sock"}),
        ),
        &["socket", "vhost-user", "not supported"],
    );
    vmm.put_ok(
        "/drives/d0",
        &json!({"drive_id": "d0", "path_on_host": img, "is_root_device": false,
                "is_read_only": true, "cache_type": "Unsafe", "io_engine": "Sync"}),
    );
    vmm.put_ok(
        "/logger",
        &json!({"log_path": dir.join("log"), "level": "Info", "show_level": true,
                "show_log_origin": true, "module": "vmm"}),
    );
    let metrics = dir.join("metrics.json");
    vmm.put_ok("/metrics", &json!({"metrics_path": metrics}));
    // FlushMetrics before boot, as Firecracker allows.
    assert_eq!(vmm.action("FlushMetrics").status, 204);
    assert!(!std::fs::read(&metrics).unwrap().is_empty());
    vmm.put_ok(
        "/vsock",
        &json!({"vsock_id": "vsock0", "guest_cid": 3, "uds_path": dir.join("v.sock")}),
    );
    // Fields that are not Firecracker's are still refused as unknown.
    expect_400(
        vmm.put(
            "/machine-config",
            &json!({"vcpu_count": 1, "mem_size_mib": 64, "mtu": 1500}),
        ),
        &["unknown field", "mtu"],
    );
    expect_400(
        vmm.put(
            "/snapshot/load",
            &json!({"snapshot_path": "/s", "mem_file_path": "/m", "turbo": true}),
        ),
        &["unknown field", "turbo"],
    );
    // GET /vm/config shows Firecracker's keys, null where unset.
    let cfg = vmm.get_json("/vm/config");
    for key in [
        "balloon",
        "mmds-config",
        "entropy",
        "cpu-config",
        "boot-source",
    ] {
        assert!(cfg.get(key).is_some_and(Value::is_null), "{key}: {cfg}");
    }
    assert_eq!(cfg["machine-config"]["cpu_template"], "None", "{cfg}");
}

fn write_config(dir: &TempDir, extra: &[(&str, Value)]) -> PathBuf {
    let mut cfg = json!({
        "boot-source": {"kernel_image_path": guests().hello_elf},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
    });
    for (k, v) in extra {
        cfg[*k] = v.clone();
    }
    let p = dir.join("vm.json");
    std::fs::write(&p, cfg.to_string()).unwrap();
    p
}

#[test]
fn config_file_firecracker_keys() {
    let dir = TempDir::new("fccfg");
    let nulls: Vec<(&str, Value)> = ["balloon", "mmds-config", "entropy", "cpu-config", "serial"]
        .into_iter()
        .map(|k| (k, Value::Null))
        .collect();
    let cfg = write_config(&dir, &nulls);
    let mut vmm = Vmm::builder()
        .api(false)
        .arg("--no-api")
        .arg("--config-file")
        .arg(&cfg)
        .spawn_in(dir);
    vmm.wait_success();

    for key in ["balloon", "mmds-config", "entropy", "cpu-config", "serial"] {
        let dir = TempDir::new("fccfg");
        let cfg = write_config(&dir, &[(key, json!({"some": 1}))]);
        let mut vmm = Vmm::builder()
            .api(false)
            .arg("--no-api")
            .arg("--config-file")
            .arg(&cfg)
            .spawn_in(dir);
        let status = vmm.wait_exit(EXIT_TIMEOUT);
        assert_eq!(status.code(), Some(1), "{key}: {}", vmm.diagnostics());
        let log = vmm.log();
        assert!(
            log.contains(&format!("\"{key}\"")) && log.contains("not support"),
            "{key}: {}",
            vmm.diagnostics()
        );
    }
}

#[test]
fn firecracker_command_line_flags() {
    let mut vmm = Vmm::builder().api(false).arg("--enable-pci").spawn();
    let status = vmm.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(2), "{}", vmm.diagnostics());
    assert!(vmm.log().contains("virtio-mmio"), "{}", vmm.diagnostics());

    let mut vmm = Vmm::builder().api(false).arg("--snapshot-version").spawn();
    let status = vmm.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", vmm.diagnostics());
    assert!(vmm.output().starts_with('v'), "{}", vmm.diagnostics());

    let dir = TempDir::new("fcflags");
    let metrics = dir.join("metrics.json");
    let vmm = Vmm::builder()
        .args([
            "--level",
            "Info",
            "--module",
            "tartarus_vmm",
            "--show-level",
            "--show-log-origin",
        ])
        .args([
            "--boot-timer",
            "--start-time-us",
            "1",
            "--start-time-cpu-us",
            "2",
        ])
        .args(["--parent-cpu-time-us", "3", "--mmds-size-limit", "4096"])
        .arg("--metrics-path")
        .arg(&metrics)
        .spawn_in(dir);
    vmm.wait_for_socket();
    assert_eq!(
        vmm.action("FlushMetrics").status,
        204,
        "{}",
        vmm.diagnostics()
    );
    assert!(!std::fs::read(&metrics).unwrap().is_empty());
    let log = vmm.log();
    for flag in ["--boot-timer", "--start-time-us", "--mmds-size-limit"] {
        assert!(
            log.contains(flag),
            "{flag} not logged: {}",
            vmm.diagnostics()
        );
    }
}
