//! `PATCH /vm`: pausing stops every vCPU (the guest's output stops growing), resuming continues
//! exactly where it stopped, and requests that do not fit the state are refused.

use std::time::Duration;

use serde_json::json;
use tartarus_tests::{guests, Vmm, GUEST_TIMEOUT};

fn fault(resp: &tartarus_tests::Response) -> String {
    resp.fault_message().unwrap_or_default().to_string()
}

#[test]
fn pause_stops_the_guest_and_resume_continues() {
    let mut vmm = Vmm::start_api();
    // The guest counts to 400 on the serial port after Ctrl-Alt-Del, then resets.
    vmm.configure(2, 64, &guests().hello_elf, "wait_cad count=400");
    vmm.start();
    vmm.wait_for_output("waiting for ctrl-alt-del", GUEST_TIMEOUT);
    assert_eq!(vmm.action("SendCtrlAltDel").status, 204);
    vmm.wait_for_output("count: 5\n", GUEST_TIMEOUT);

    let r = vmm.patch("/vm", &json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", fault(&r));
    assert_eq!(vmm.state(), "Paused");
    let frozen = vmm.output_when_quiet(Duration::from_millis(100));
    assert!(
        !frozen.contains("count: 400"),
        "the guest finished before the pause took effect"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(vmm.output(), frozen, "the guest ran while paused");

    // Pausing a paused VM is a no-op (as in Firecracker); requests that do not fit a paused VM
    // name the state.
    let r = vmm.patch("/vm", &json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", fault(&r));
    let r = vmm.action("SendCtrlAltDel");
    assert!(fault(&r).contains("Paused"), "{}", fault(&r));
    assert_eq!(r.status, 400);

    let r = vmm.patch("/vm", &json!({"state": "Resumed"}));
    assert_eq!(r.status, 204, "{}", fault(&r));
    assert_eq!(vmm.state(), "Running");
    let out = vmm.wait_success();
    // Every count line appears once, in order: nothing was lost or repeated across the pause.
    let counts: Vec<u32> = out
        .lines()
        .filter_map(|l| l.strip_prefix("count: "))
        .map(|n| n.trim().parse().unwrap())
        .collect();
    assert_eq!(counts, (1..=400).collect::<Vec<_>>());
}

#[test]
fn pause_and_resume_need_the_right_state() {
    let mut vmm = Vmm::start_api();
    let r = vmm.patch("/vm", &json!({"state": "Paused"}));
    assert_eq!(r.status, 400);
    assert!(fault(&r).contains("Not started"), "{}", fault(&r));
    let r = vmm.patch("/vm", &json!({"state": "Frozen"}));
    assert_eq!(r.status, 400);
    assert!(fault(&r).contains("Invalid vm body"), "{}", fault(&r));
    vmm.configure(1, 64, &guests().hello_elf, "wait_cad");
    vmm.start();
    vmm.wait_for_output("waiting for ctrl-alt-del", GUEST_TIMEOUT);
    // Resuming a running VM is a no-op (as in Firecracker).
    let r = vmm.patch("/vm", &json!({"state": "Resumed"}));
    assert_eq!(r.status, 204, "{}", fault(&r));
    // Several pause/resume cycles leave the guest working.
    for _ in 0..5 {
        assert_eq!(vmm.patch("/vm", &json!({"state": "Paused"})).status, 204);
        assert_eq!(vmm.patch("/vm", &json!({"state": "Resumed"})).status, 204);
    }
    assert_eq!(vmm.action("SendCtrlAltDel").status, 204);
    vmm.wait_success();
}
