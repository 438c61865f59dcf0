//! Booting the hello test guests through the API, the config file and with serial to a file;
//! instance state, `GET /vm/config`, Ctrl-Alt-Del, metrics and `PATCH /machine-config`.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tartarus_tests::{guests, GuestReport, TempDir, Vmm, GUEST_TIMEOUT};

const MEM_MIB: u64 = 64;

/// Boots `kernel` over the API with `boot_args`, waits for the reset and checks the report.
fn boot_hello(kernel: &Path, vcpus: u32, mem_mib: u64, boot_args: &str) -> String {
    let mut vmm = Vmm::start_api();
    assert_eq!(vmm.state(), "Not started");
    vmm.configure(vcpus, mem_mib, kernel, boot_args);
    vmm.start();
    let out = vmm.wait_success();
    let report = GuestReport::parse(&out);
    if let Err(e) = report.check(boot_args, mem_mib, vcpus) {
        panic!("guest output does not match: {e}");
    }
    out
}

#[test]
fn elf_one_vcpu() {
    boot_hello(&guests().hello_elf, 1, MEM_MIB, "foo=bar");
}

#[test]
fn elf_two_vcpus() {
    boot_hello(&guests().hello_elf, 2, MEM_MIB, "foo=bar");
}

#[test]
fn bzimage_one_vcpu() {
    boot_hello(&guests().hello_bzimage, 1, MEM_MIB, "foo=bar");
}

#[test]
fn bzimage_two_vcpus() {
    boot_hello(&guests().hello_bzimage, 2, MEM_MIB, "foo=bar");
}

#[test]
fn elf_larger_memory_and_args() {
    // Memory above the 32-bit hole would need a gap in e820; 256 MiB stays below it.
    boot_hello(&guests().hello_elf, 1, 256, "alpha=1 beta=two gamma");
}

#[test]
fn boot_from_config_file_without_api() {
    let dir = TempDir::new("cfgfile");
    let cfg = dir.join("vm.json");
    let config = json!({
        "boot-source": {"kernel_image_path": guests().hello_elf, "boot_args": "foo=bar cfg=1"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": MEM_MIB},
    });
    std::fs::write(&cfg, config.to_string()).unwrap();
    let mut vmm = Vmm::builder()
        .api(false)
        .arg("--no-api")
        .arg("--config-file")
        .arg(&cfg)
        .spawn_in(dir);
    let out = vmm.wait_success();
    GuestReport::parse(&out)
        .check("foo=bar cfg=1", MEM_MIB, 2)
        .unwrap_or_else(|e| panic!("guest output does not match: {e}"));
    assert!(
        !vmm.socket_path().exists(),
        "--no-api must not create an API socket"
    );
}

#[test]
fn boot_from_config_file_with_api() {
    // --config-file boots at once; the API still answers and reports the config.
    let dir = TempDir::new("cfgapi");
    let cfg = dir.join("vm.json");
    let config = json!({
        "boot-source": {"kernel_image_path": guests().hello_elf, "boot_args": "wait_cad foo=bar"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": MEM_MIB},
    });
    std::fs::write(&cfg, config.to_string()).unwrap();
    let mut vmm = Vmm::builder().arg("--config-file").arg(&cfg).spawn_in(dir);
    vmm.wait_for_socket();
    vmm.wait_for_output("waiting for ctrl-alt-del", GUEST_TIMEOUT);
    assert_eq!(vmm.state(), "Running");
    let cfg = vmm.get_json("/vm/config");
    assert_eq!(
        cfg["machine-config"]["mem_size_mib"],
        json!(MEM_MIB),
        "{cfg}"
    );
    assert_eq!(
        cfg["boot-source"]["boot_args"],
        json!("wait_cad foo=bar"),
        "{cfg}"
    );
    let r = vmm.action("SendCtrlAltDel");
    assert_eq!(r.status, 204, "SendCtrlAltDel -> {r}");
    let out = vmm.wait_success();
    assert!(out.contains("ctrl-alt-del received"), "{out}");
}

#[test]
fn serial_out_file() {
    let dir = TempDir::new("serialout");
    let serial = dir.join("serial.log");
    let mut vmm = Vmm::builder()
        .arg("--serial-out")
        .arg(&serial)
        .spawn_in(dir);
    vmm.wait_for_socket();
    vmm.configure(1, MEM_MIB, &guests().hello_elf, "foo=bar");
    vmm.start();
    let stdout = vmm.wait_success();
    let text = std::fs::read_to_string(&serial)
        .unwrap_or_else(|e| panic!("reading --serial-out file {}: {e}", serial.display()));
    GuestReport::parse(&text)
        .check("foo=bar", MEM_MIB, 1)
        .unwrap_or_else(|e| panic!("serial file does not match: {e}\n--- file:\n{text}"));
    assert!(
        !stdout.contains("tartarus-guest: hello"),
        "with --serial-out the guest output must not go to stdout; stdout was:\n{stdout}"
    );
}

#[test]
fn instance_info_and_version() {
    let vmm = Vmm::builder().arg("--id").arg("test-vm-7").spawn();
    vmm.wait_for_socket();
    let info = vmm.get_json("/");
    assert_eq!(info["id"], json!("test-vm-7"), "{info}");
    assert_eq!(info["state"], json!("Not started"), "{info}");
    assert_eq!(info["app_name"], json!("Tartarus"), "{info}");
    assert!(
        info["vmm_version"].as_str().is_some_and(|v| !v.is_empty()),
        "{info}"
    );
    let v = vmm.get_json("/version");
    assert!(
        v["firecracker_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{v}"
    );
    assert_eq!(
        v["tartarus_version"],
        json!(env!("CARGO_PKG_VERSION")),
        "{v}"
    );
}

#[test]
fn state_before_and_after_start() {
    let mut vmm = Vmm::start_api();
    assert_eq!(vmm.state(), "Not started");
    vmm.configure(1, MEM_MIB, &guests().hello_elf, "wait_cad");
    assert_eq!(vmm.state(), "Not started");
    vmm.start();
    assert_eq!(vmm.state(), "Running");
    vmm.wait_for_output("waiting for ctrl-alt-del", GUEST_TIMEOUT);
    assert_eq!(vmm.state(), "Running");
    let r = vmm.action("SendCtrlAltDel");
    assert_eq!(r.status, 204, "SendCtrlAltDel -> {r}");
    vmm.wait_success();
}

#[test]
fn ctrl_alt_del() {
    let mut vmm = Vmm::start_api();
    vmm.configure(2, MEM_MIB, &guests().hello_bzimage, "wait_cad foo=bar");
    vmm.start();
    let out = vmm.wait_for_output("waiting for ctrl-alt-del", GUEST_TIMEOUT);
    assert!(
        !out.contains("resetting"),
        "guest reset before Ctrl-Alt-Del:\n{out}"
    );
    // The guest stays up until asked.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        vmm.try_wait_exit(Duration::ZERO, Duration::from_millis(1))
            .is_none(),
        "the VMM exited before SendCtrlAltDel"
    );
    let r = vmm.action("SendCtrlAltDel");
    assert_eq!(r.status, 204, "SendCtrlAltDel -> {r}");
    vmm.wait_for_output("ctrl-alt-del received", GUEST_TIMEOUT);
    let out = vmm.wait_success();
    let report = GuestReport::parse(&out);
    assert!(
        report.waiting_for_cad && report.cad_received && report.resetting,
        "{out}"
    );
    report
        .check("wait_cad foo=bar", MEM_MIB, 2)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn vm_config_reflects_configuration() {
    let vmm = Vmm::start_api();
    let dir = vmm.dir().to_path_buf();
    let metrics = dir.join("metrics.json");
    let log = dir.join("vmm.log");
    std::fs::write(&metrics, b"").unwrap();
    std::fs::write(&log, b"").unwrap();
    vmm.put_ok(
        "/machine-config",
        &json!({"vcpu_count": 2, "mem_size_mib": 96, "smt": false, "track_dirty_pages": true}),
    );
    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": guests().hello_elf, "boot_args": "a=b c"}),
    );
    vmm.put_ok("/metrics", &json!({ "metrics_path": metrics }));
    vmm.put_ok("/logger", &json!({"log_path": log, "level": "Info"}));

    let mc = vmm.get_json("/machine-config");
    assert_eq!(mc["vcpu_count"], json!(2), "{mc}");
    assert_eq!(mc["mem_size_mib"], json!(96), "{mc}");
    assert_eq!(mc["track_dirty_pages"], json!(true), "{mc}");

    let cfg = vmm.get_json("/vm/config");
    assert_eq!(cfg["machine-config"], mc, "{cfg}");
    assert_eq!(
        cfg["boot-source"]["kernel_image_path"],
        json!(guests().hello_elf),
        "{cfg}"
    );
    assert_eq!(cfg["boot-source"]["boot_args"], json!("a=b c"), "{cfg}");
    assert_eq!(cfg["metrics"]["metrics_path"], json!(metrics), "{cfg}");
    assert_eq!(cfg["logger"]["log_path"], json!(log), "{cfg}");
    assert_eq!(cfg["logger"]["level"], json!("Info"), "{cfg}");
}

#[test]
fn vm_config_round_trips_as_config_file() {
    // What GET /vm/config returns must be accepted as a --config-file.
    let vmm = Vmm::start_api();
    vmm.configure(1, MEM_MIB, &guests().hello_elf, "roundtrip=1");
    let cfg = vmm.get_json("/vm/config");
    drop(vmm);

    let dir = TempDir::new("roundtrip");
    let file = dir.join("vm.json");
    std::fs::write(&file, cfg.to_string()).unwrap();
    let mut vmm = Vmm::builder()
        .api(false)
        .arg("--no-api")
        .arg("--config-file")
        .arg(&file)
        .spawn_in(dir);
    let out = vmm.wait_success();
    GuestReport::parse(&out)
        .check("roundtrip=1", MEM_MIB, 1)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn flush_metrics_appends_json_lines() {
    let mut vmm = Vmm::start_api();
    let metrics = vmm.dir().join("metrics.json");
    std::fs::write(&metrics, b"").unwrap();
    vmm.put_ok("/metrics", &json!({ "metrics_path": metrics }));
    vmm.configure(1, MEM_MIB, &guests().hello_elf, "wait_cad");
    vmm.start();
    vmm.wait_for_output("waiting for ctrl-alt-del", GUEST_TIMEOUT);

    let r = vmm.action("FlushMetrics");
    assert_eq!(r.status, 204, "FlushMetrics -> {r}");
    let lines = read_json_lines(&metrics);
    assert!(
        !lines.is_empty(),
        "FlushMetrics wrote nothing to {}",
        metrics.display()
    );
    let before = lines.len();

    let r = vmm.action("FlushMetrics");
    assert_eq!(r.status, 204, "second FlushMetrics -> {r}");
    let lines = read_json_lines(&metrics);
    assert_eq!(
        lines.len(),
        before + 1,
        "each FlushMetrics appends one line"
    );
    assert!(lines.iter().all(|v| v.is_object()), "{lines:?}");

    let r = vmm.action("SendCtrlAltDel");
    assert_eq!(r.status, 204, "SendCtrlAltDel -> {r}");
    vmm.wait_success();
}

fn read_json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("metrics line is not JSON ({e}): {l:?}"))
        })
        .collect()
}

#[test]
fn patch_machine_config() {
    let mut vmm = Vmm::start_api();
    vmm.put_ok(
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": 32}),
    );
    vmm.patch_ok("/machine-config", &json!({"vcpu_count": 2}));
    let mc = vmm.get_json("/machine-config");
    assert_eq!(mc["vcpu_count"], json!(2), "{mc}");
    assert_eq!(
        mc["mem_size_mib"],
        json!(32),
        "PATCH must keep other fields: {mc}"
    );
    vmm.patch_ok("/machine-config", &json!({"mem_size_mib": MEM_MIB}));
    let mc = vmm.get_json("/machine-config");
    assert_eq!(mc["vcpu_count"], json!(2), "{mc}");
    assert_eq!(mc["mem_size_mib"], json!(MEM_MIB), "{mc}");

    // An invalid PATCH changes nothing.
    let r = vmm.patch("/machine-config", &json!({"vcpu_count": 0}));
    assert_eq!(r.status, 400, "PATCH vcpu_count 0 -> {r}");
    assert_eq!(vmm.get_json("/machine-config"), mc);

    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": guests().hello_elf, "boot_args": "patched"}),
    );
    vmm.start();
    let out = vmm.wait_success();
    GuestReport::parse(&out)
        .check("patched", MEM_MIB, 2)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn default_machine_config_boots() {
    // Only a boot source: the defaults (1 vCPU, 128 MiB) apply.
    let mut vmm = Vmm::start_api();
    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": guests().hello_elf, "boot_args": "defaults"}),
    );
    let mc = vmm.get_json("/machine-config");
    assert_eq!(mc["vcpu_count"], json!(1), "{mc}");
    assert_eq!(mc["mem_size_mib"], json!(128), "{mc}");
    vmm.start();
    let out = vmm.wait_success();
    GuestReport::parse(&out)
        .check("defaults", 128, 1)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn keep_alive_requests_on_one_connection() {
    // Clients such as the Firecracker SDKs reuse one connection for several requests.
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let vmm = Vmm::start_api();
    let mut s = UnixStream::connect(vmm.socket_path()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    for _ in 0..3 {
        s.write_all(&tartarus_tests::http::format_request("GET", "/", None))
            .unwrap();
        let r = tartarus_tests::http::read_response(&mut s).unwrap();
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(
            r.body.as_ref().unwrap()["state"],
            json!("Not started"),
            "{r}"
        );
    }
    let body = json!({"vcpu_count": 1, "mem_size_mib": MEM_MIB}).to_string();
    s.write_all(&tartarus_tests::http::format_request(
        "PUT",
        "/machine-config",
        Some(body.as_bytes()),
    ))
    .unwrap();
    let r = tartarus_tests::http::read_response(&mut s).unwrap();
    assert_eq!(r.status, 204, "{r}");
}
