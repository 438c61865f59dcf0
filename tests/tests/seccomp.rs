//! Per-thread seccomp in tartarus-vmm: every thread runs filtered, the VMM works normally with
//! the filters on, a forbidden syscall kills the process with SIGSYS in each thread kind,
//! `--no-seccomp` turns filtering off, `--seccomp-filter` takes a JSON file (and refuses a bad
//! one), and a profile generated from strace output by `tartarus-seccomp-gen` boots the VMM.
//!
//! The trigger tests use a second `tartarus-vmm` built once per test process with the
//! `seccomp-test-trigger` feature (into `<target>/seccomp-trigger`).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use tartarus_tests::{guests, vmm_binary, TempDir, Vmm, VmmBuilder, GUEST_TIMEOUT};

const TRIGGER_ENV: &str = "TARTARUS_SECCOMP_TRIGGER";

/// `tartarus-vmm` with the test trigger compiled in (`$TARTARUS_TRIGGER_VMM`, or built once).
fn trigger_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("TARTARUS_TRIGGER_VMM") {
            return p.into();
        }
        // vmm_binary() is <target>/<profile>/tartarus-vmm.
        let normal = vmm_binary();
        let profile_dir = normal.parent().expect("binary directory");
        let target = profile_dir.parent().expect("target directory");
        let target_dir = target.join("seccomp-trigger");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "vmm", "--bin", "tartarus-vmm"])
            .args(["--features", "seccomp-test-trigger", "--target-dir"])
            .arg(&target_dir)
            .current_dir(tartarus_tests::repo_root());
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        if release {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "building the trigger binary failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target_dir
            .join(if release { "release" } else { "debug" })
            .join("tartarus-vmm")
    })
}

/// `Seccomp:` of every thread of `pid`, with the thread names.
fn seccomp_modes(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let dir = format!("/proc/{pid}/task");
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let path = entry.unwrap().path();
        let status = std::fs::read_to_string(path.join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_else(|| panic!("no {name} in {}", path.display()))
                .to_string()
        };
        out.push((field("Name:"), field("Seccomp:").parse().unwrap()));
    }
    out.sort();
    out
}

/// Boots hello with 2 vCPUs, waiting for Ctrl-Alt-Del.
fn boot_waiting(vmm: &Vmm) {
    vmm.wait_for_socket();
    vmm.configure(2, 64, &guests().hello_elf, "wait_cad");
    vmm.start();
    vmm.wait_for_output("waiting for ctrl-alt-del", GUEST_TIMEOUT);
}

fn assert_sigsys(status: ExitStatus, what: &str, vmm: &Vmm) {
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{what}: expected death by SIGSYS (31), got {status}\n{}",
        vmm.diagnostics()
    );
}

#[test]
fn every_thread_is_filtered_and_the_vm_works() {
    let mut vmm = VmmBuilder::new().args(["--log-level", "Info"]).spawn();
    boot_waiting(&vmm);
    let modes = seccomp_modes(vmm.pid());
    // Besides ours, the kernel may attach worker threads (kvm-nx-lpage-recovery); they
    // inherit the filter of the thread that created the VM.
    for name in ["api", "tartarus-vmm", "vcpu0", "vcpu1"] {
        assert!(modes.iter().any(|(n, _)| n == name), "{name}: {modes:?}");
    }
    assert!(modes.iter().all(|(_, m)| *m == 2), "{modes:?}");

    for _ in 0..3 {
        assert_eq!(vmm.patch("/vm", &json!({"state": "Paused"})).status, 204);
        assert_eq!(vmm.patch("/vm", &json!({"state": "Resumed"})).status, 204);
    }
    let metrics = vmm.dir().join("metrics.json");
    vmm.put_ok("/metrics", &json!({ "metrics_path": metrics }));
    assert_eq!(vmm.action("FlushMetrics").status, 204);
    assert_eq!(vmm.get_json("/")["state"], "Running");
    assert_eq!(vmm.action("SendCtrlAltDel").status, 204);
    vmm.wait_success();
    let log = vmm.log();
    for kind in ["api", "vmm", "vcpu"] {
        assert!(
            log.contains(&format!("seccomp: installed the {kind} filter")),
            "{log}"
        );
    }
    assert!(std::fs::read_to_string(&metrics).unwrap().lines().count() >= 2);
}

#[test]
fn config_file_boot_works_with_filters() {
    let dir = TempDir::new("seccomp-cfg");
    let cfg = dir.join("vm.json");
    let body = json!({
        "boot-source": {"kernel_image_path": guests().hello_elf, "boot_args": "count=20"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 64},
    });
    std::fs::write(&cfg, body.to_string()).unwrap();
    let mut vmm = VmmBuilder::new()
        .api(false)
        .args(["--no-api", "--config-file"])
        .arg(&cfg)
        .spawn_in(dir);
    let out = vmm.wait_success();
    assert!(out.contains("count: 20"), "{out}");
}

#[test]
fn a_forbidden_syscall_kills_each_thread_kind_with_sigsys() {
    for kind in ["api", "vmm", "vcpu"] {
        let mut vmm = VmmBuilder::new()
            .binary(trigger_binary())
            .env(TRIGGER_ENV, kind)
            .spawn();
        if kind == "vcpu" {
            // The API works until a vCPU starts; InstanceStart may or may not get its answer.
            vmm.wait_for_socket();
            vmm.configure(1, 64, &guests().hello_elf, "wait_cad");
            let _ = vmm.try_request(
                "PUT",
                "/actions",
                Some(br#"{"action_type": "InstanceStart"}"#),
            );
        }
        let status = vmm.wait_exit(GUEST_TIMEOUT);
        assert_sigsys(status, kind, &vmm);
    }
}

#[test]
fn no_seccomp_turns_filtering_off() {
    for kind in ["api", "vmm", "vcpu"] {
        let mut vmm = VmmBuilder::new()
            .binary(trigger_binary())
            .env(TRIGGER_ENV, kind)
            .arg("--no-seccomp")
            .spawn();
        boot_waiting(&vmm);
        let modes = seccomp_modes(vmm.pid());
        assert!(modes.iter().all(|(_, m)| *m == 0), "{modes:?}");
        assert_eq!(vmm.action("SendCtrlAltDel").status, 204);
        vmm.wait_success();
    }
}

fn write_json(dir: &TempDir, name: &str, v: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    p
}

/// `tartarus-seccomp-gen`, next to `tartarus-vmm`.
fn generator() -> PathBuf {
    let p = vmm_binary().with_file_name("tartarus-seccomp-gen");
    assert!(p.is_file(), "{} not built", p.display());
    p
}

fn built_in_filters() -> Value {
    let out = Command::new(generator())
        .arg("--print-defaults")
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn seccomp_filter_file_is_used() {
    // The built-in lists as a file: the VM works.
    let dir = TempDir::new("seccomp-file");
    let path = write_json(&dir, "filters.json", &built_in_filters());
    let mut vmm = VmmBuilder::new()
        .arg("--seccomp-filter")
        .arg(&path)
        .spawn_in(dir);
    boot_waiting(&vmm);
    assert!(seccomp_modes(vmm.pid()).iter().all(|(_, m)| *m == 2));
    assert_eq!(vmm.action("SendCtrlAltDel").status, 204);
    vmm.wait_success();

    // Without accept4 in the api filter, the first client kills the VMM.
    let mut filters = built_in_filters();
    let api = filters["api"]["filter"].as_array_mut().unwrap();
    api.retain(|r| r["syscall"] != "accept4");
    let dir = TempDir::new("seccomp-file");
    let path = write_json(&dir, "filters.json", &filters);
    let mut vmm = VmmBuilder::new()
        .arg("--seccomp-filter")
        .arg(&path)
        .spawn_in(dir);
    let _ = vmm.try_wait_for_socket(Duration::from_secs(5), Duration::from_millis(5));
    let status = vmm.wait_exit(GUEST_TIMEOUT);
    assert_sigsys(status, "api without accept4", &vmm);
}

#[test]
fn bad_filter_files_are_refused_at_startup() {
    let cases: [(&str, Option<&str>, &str); 3] = [
        (
            "not json",
            Some("{ not json"),
            "Invalid seccomp filter file",
        ),
        (
            "missing vcpu",
            Some(
                r#"{"api": {"mismatch_action": "kill_process", "match_action": "allow", "filter": []},
                    "vmm": {"mismatch_action": "kill_process", "match_action": "allow", "filter": []}}"#,
            ),
            "no filter for the \"vcpu\" thread",
        ),
        ("missing file", None, "Cannot read seccomp filter file"),
    ];
    for (what, text, expected) in cases {
        let dir = TempDir::new("seccomp-bad");
        let path = dir.join("filters.json");
        if let Some(t) = text {
            std::fs::write(&path, t).unwrap();
        }
        let mut vmm = VmmBuilder::new()
            .arg("--seccomp-filter")
            .arg(&path)
            .spawn_in(dir);
        let status = vmm.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(1), "{what}: {status}");
        assert!(vmm.log().contains(expected), "{what}: {}", vmm.log());
        assert!(!vmm.socket_path().exists(), "{what}: the API came up");
    }
}

#[test]
fn a_profile_generated_from_strace_boots_the_vm() {
    if !Path::new("/usr/bin/strace").exists() {
        eprintln!("strace is not installed: skipping");
        return;
    }
    // Record a boot under strace (filters off, as when profiling a new template).
    let dir = TempDir::new("seccomp-gen");
    let trace = dir.join("trace.txt");
    // strace comes first on the command line, so the socket argument is passed by hand.
    let socket = dir.join("api.sock");
    let mut vmm = VmmBuilder::new()
        .api(false)
        .binary("/usr/bin/strace")
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .arg(vmm_binary())
        .arg("--api-sock")
        .arg(&socket)
        .arg("--no-seccomp")
        .spawn_in(dir);
    boot_waiting(&vmm);
    assert_eq!(vmm.action("SendCtrlAltDel").status, 204);
    vmm.wait_success();

    let profile = vmm.dir().join("profile.json");
    let out = Command::new(generator())
        .arg(&trace)
        .arg("-o")
        .arg(&profile)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&profile).unwrap()).unwrap();
    let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["api", "vcpu", "vmm"]);

    // The same workload under the generated filters.
    let mut vmm = VmmBuilder::new()
        .arg("--seccomp-filter")
        .arg(&profile)
        .spawn();
    boot_waiting(&vmm);
    assert!(seccomp_modes(vmm.pid()).iter().all(|(_, m)| *m == 2));
    assert_eq!(vmm.action("SendCtrlAltDel").status, 204);
    vmm.wait_success();
}
