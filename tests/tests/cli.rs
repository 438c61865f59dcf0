//! The command line of `tartarus-vmm`: version, usage errors and configuration-file errors.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::json;
use tartarus_tests::{guests, vmm_binary, TempDir, Vmm};

const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs the VMM to completion with `args` (no API socket added), with a timeout.
fn run(args: &[&str]) -> (Output, String) {
    let mut vmm = Vmm::builder().api(false).args(args).spawn();
    let status = vmm.wait_exit(EXIT_TIMEOUT);
    let stdout = vmm.output();
    let stderr = vmm.log();
    (
        Output {
            status,
            stdout: stdout.into_bytes(),
            stderr: stderr.into_bytes(),
        },
        vmm.diagnostics(),
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn version() {
    let (out, diag) = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0), "{diag}");
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(
        all.contains(env!("CARGO_PKG_VERSION")),
        "--version does not print {}:\n{diag}",
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn help() {
    let (out, diag) = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0), "{diag}");
    let all = text(&out.stdout) + &text(&out.stderr);
    for flag in ["--api-sock", "--config-file", "--no-api", "--serial-out"] {
        assert!(
            all.contains(flag),
            "--help does not mention {flag}:\n{diag}"
        );
    }
}

#[test]
fn no_api_requires_config_file() {
    let (out, diag) = run(&["--no-api"]);
    assert_eq!(out.status.code(), Some(2), "{diag}");
    assert!(
        text(&out.stderr).contains("config-file"),
        "the message should name --config-file:\n{diag}"
    );
}

#[test]
fn unknown_flag_and_bad_values() {
    for args in [
        &["--no-such-flag"][..],
        &["--log-level", "Loud"],
        &["--http-api-max-payload-size", "lots"],
        &["--api-sock"],
    ] {
        let (out, diag) = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}:\n{diag}");
        assert!(
            !text(&out.stderr).trim().is_empty(),
            "{args:?}: no message\n{diag}"
        );
    }
}

#[test]
fn config_file_with_bad_json() {
    let dir = TempDir::new("badcfg");
    let cfg = dir.join("broken-config.json");
    std::fs::write(&cfg, "{\"machine-config\": {\"vcpu_count\": 1,").unwrap();
    let mut vmm = Vmm::builder()
        .api(false)
        .arg("--no-api")
        .arg("--config-file")
        .arg(&cfg)
        .spawn_in(dir);
    let status = vmm.wait_exit(EXIT_TIMEOUT);
    assert!(
        !status.success(),
        "bad config JSON must fail:\n{}",
        vmm.diagnostics()
    );
    assert!(
        vmm.log().contains("broken-config.json"),
        "the message should name the config file:\n{}",
        vmm.diagnostics()
    );
}

#[test]
fn config_file_missing() {
    let dir = TempDir::new("nocfg");
    let cfg = dir.join("absent-config.json");
    let mut vmm = Vmm::builder()
        .api(false)
        .arg("--no-api")
        .arg("--config-file")
        .arg(&cfg)
        .spawn_in(dir);
    let status = vmm.wait_exit(EXIT_TIMEOUT);
    assert!(
        !status.success(),
        "missing config file must fail:\n{}",
        vmm.diagnostics()
    );
    assert!(
        vmm.log().contains("absent-config.json"),
        "the message should name the config file:\n{}",
        vmm.diagnostics()
    );
}

#[test]
fn config_file_with_invalid_values() {
    let dir = TempDir::new("invcfg");
    let cfg = dir.join("vm.json");
    let config = json!({
        "boot-source": {"kernel_image_path": guests().hello_elf},
        "machine-config": {"vcpu_count": 0, "mem_size_mib": 64},
    });
    std::fs::write(&cfg, config.to_string()).unwrap();
    let mut vmm = Vmm::builder()
        .api(false)
        .arg("--no-api")
        .arg("--config-file")
        .arg(&cfg)
        .spawn_in(dir);
    let status = vmm.wait_exit(EXIT_TIMEOUT);
    assert!(
        !status.success(),
        "vcpu_count 0 must fail:\n{}",
        vmm.diagnostics()
    );
    assert!(
        vmm.log().contains("vcpu_count"),
        "the message should name vcpu_count:\n{}",
        vmm.diagnostics()
    );
}

#[test]
fn config_file_with_missing_kernel() {
    let dir = TempDir::new("nokernel");
    let cfg = dir.join("vm.json");
    let kernel = dir.join("missing-vmlinux");
    let config = json!({
        "boot-source": {"kernel_image_path": kernel},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
    });
    std::fs::write(&cfg, config.to_string()).unwrap();
    let mut vmm = Vmm::builder()
        .api(false)
        .arg("--no-api")
        .arg("--config-file")
        .arg(&cfg)
        .spawn_in(dir);
    let status = vmm.wait_exit(EXIT_TIMEOUT);
    assert!(
        !status.success(),
        "a missing kernel must fail:\n{}",
        vmm.diagnostics()
    );
    assert!(
        vmm.log().contains("missing-vmlinux"),
        "the message should name the kernel path:\n{}",
        vmm.diagnostics()
    );
}

#[test]
fn existing_api_socket_is_refused() {
    let dir = TempDir::new("sockexists");
    let sock = dir.join("api.sock");
    std::fs::write(&sock, b"").unwrap();
    let mut vmm = Vmm::builder().spawn_in(dir);
    let status = vmm.wait_exit(EXIT_TIMEOUT);
    assert!(
        !status.success(),
        "an existing socket path must be refused:\n{}",
        vmm.diagnostics()
    );
    assert!(
        !vmm.log().trim().is_empty(),
        "no message:\n{}",
        vmm.diagnostics()
    );
}

#[test]
fn log_path_receives_logs() {
    let dir = TempDir::new("logpath");
    let log = dir.join("vmm.log");
    let mut vmm = Vmm::builder()
        .arg("--log-path")
        .arg(&log)
        .arg("--log-level")
        .arg("Debug")
        .spawn_in(dir);
    vmm.wait_for_socket();
    vmm.configure(1, 64, &guests().hello_elf, "logged");
    vmm.start();
    vmm.wait_success();
    let text = std::fs::read_to_string(&log).unwrap_or_else(|e| {
        panic!(
            "--log-path file {}: {e}\n{}",
            log.display(),
            vmm.diagnostics()
        )
    });
    assert!(
        !text.trim().is_empty(),
        "--log-path file is empty at Debug level:\n{}",
        vmm.diagnostics()
    );
}

#[test]
fn binary_is_found() {
    // The harness's own lookup: a clear message if the binary is missing, a file otherwise.
    let p = vmm_binary();
    let out = Command::new(&p).arg("--version").output().unwrap();
    assert!(out.status.success(), "{} --version failed", p.display());
}
