//! `PUT /logger` reconfigures logging at run time (file, level) without disturbing the VMM, and a
//! config file with a "logger" key boots.

use serde_json::json;
use tartarus_tests::{guests, TempDir, Vmm};

#[test]
fn logger_can_be_reconfigured_at_run_time() {
    let vmm = Vmm::start_api();
    let dir = TempDir::new("logger");
    let log = dir.join("vmm.log");
    vmm.put_ok(
        "/logger",
        &json!({"log_path": log, "level": "Info", "show_level": true, "show_log_origin": true}),
    );
    // A failing InstanceStart logs an error.
    assert_eq!(vmm.action("InstanceStart").status, 400);
    let first = std::fs::read_to_string(&log).unwrap();
    assert!(first.contains("InstanceStart failed"), "{first}");
    assert!(first.contains("ERROR"), "{first}");

    vmm.put_ok("/logger", &json!({"level": "Off"}));
    assert_eq!(vmm.action("InstanceStart").status, 400);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        first,
        "logged while Off"
    );

    vmm.put_ok("/logger", &json!({"level": "Error"}));
    assert_eq!(vmm.action("InstanceStart").status, 400);
    let third = std::fs::read_to_string(&log).unwrap();
    assert!(
        third.len() > first.len(),
        "nothing logged after Error was set"
    );
    assert_eq!(vmm.get("/").status, 200);
    let r = vmm.put("/logger", &json!({"level": "Loud"}));
    assert_eq!(r.status, 400);
}

#[test]
fn config_file_with_logger_boots() {
    let dir = TempDir::new("logcfg");
    let log = dir.join("vmm.log");
    let cfg = dir.join("vm.json");
    std::fs::write(
        &cfg,
        json!({
            "boot-source": {"kernel_image_path": guests().hello_elf, "boot_args": "x=1"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
            "logger": {"log_path": log, "level": "Info"},
        })
        .to_string(),
    )
    .unwrap();
    let mut vmm = Vmm::builder()
        .api(false)
        .arg("--config-file")
        .arg(&cfg)
        .spawn();
    vmm.wait_success();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("microVM started"), "{text}");
}
