//! Serial output volume and ordering, and several VMMs running side by side.

use std::path::Path;
use std::thread;

use serde_json::json;
use tartarus_tests::{guests, GuestReport, TempDir, Vmm};

const MEM_MIB: u64 = 64;

/// Checks that `count: 1` .. `count: n` appear in order, each exactly once, before `resetting`.
fn check_count_lines(out: &str, n: u64) {
    let counts: Vec<&str> = out
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("count: "))
        .collect();
    let expected: Vec<String> = (1..=n).map(|k| k.to_string()).collect();
    assert_eq!(
        counts.len(),
        expected.len(),
        "expected {n} count lines, got {}",
        counts.len()
    );
    for (i, (got, want)) in counts.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "count line {} is wrong", i + 1);
    }
    let last_count = out.rfind("count: ").unwrap();
    let reset = out.rfind("resetting").expect("resetting line");
    assert!(reset > last_count, "`resetting` before the last count line");
}

fn boot_count(kernel: &Path, n: u64) -> String {
    let mut vmm = Vmm::start_api();
    let args = format!("count={n}");
    vmm.configure(1, MEM_MIB, kernel, &args);
    vmm.start();
    let out = vmm.wait_success();
    GuestReport::parse(&out)
        .check(&args, MEM_MIB, 1)
        .unwrap_or_else(|e| panic!("{e}"));
    check_count_lines(&out, n);
    out
}

#[test]
fn a_thousand_serial_lines_elf() {
    boot_count(&guests().hello_elf, 1000);
}

#[test]
fn a_thousand_serial_lines_bzimage() {
    boot_count(&guests().hello_bzimage, 1000);
}

#[test]
fn serial_lines_to_file_after_ctrl_alt_del() {
    let dir = TempDir::new("countfile");
    let serial = dir.join("serial.txt");
    let mut vmm = Vmm::builder()
        .arg("--serial-out")
        .arg(&serial)
        .spawn_in(dir);
    vmm.wait_for_socket();
    vmm.configure(2, MEM_MIB, &guests().hello_elf, "wait_cad count=500");
    vmm.start();
    // Serial goes to the file, so poll the file rather than stdout.
    let deadline = std::time::Instant::now() + tartarus_tests::GUEST_TIMEOUT;
    while !std::fs::read_to_string(&serial)
        .unwrap_or_default()
        .contains("waiting for ctrl-alt-del")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no `waiting for ctrl-alt-del` in {}",
            serial.display()
        );
        thread::sleep(std::time::Duration::from_millis(10));
    }
    let r = vmm.action("SendCtrlAltDel");
    assert_eq!(r.status, 204, "SendCtrlAltDel -> {r}");
    vmm.wait_success();
    let text = std::fs::read_to_string(&serial).unwrap();
    let report = GuestReport::parse(&text);
    assert!(report.cad_received, "no `ctrl-alt-del received`:\n{text}");
    report
        .check("wait_cad count=500", MEM_MIB, 2)
        .unwrap_or_else(|e| panic!("{e}"));
    check_count_lines(&text, 500);
}

#[test]
fn four_vmms_side_by_side() {
    // Each VMM is its own process with its own socket and guest; they must not interfere.
    let handles: Vec<_> = (0..4u32)
        .map(|i| {
            thread::spawn(move || {
                let mut vmm = Vmm::builder().arg("--id").arg(format!("vm{i}")).spawn();
                vmm.wait_for_socket();
                let info = vmm.get_json("/");
                assert_eq!(info["id"], json!(format!("vm{i}")), "{info}");
                let kernel = if i % 2 == 0 {
                    &guests().hello_elf
                } else {
                    &guests().hello_bzimage
                };
                let vcpus = 1 + i % 2;
                let mem = 32 + 32 * u64::from(i);
                let args = format!("vm={i} count=20");
                vmm.configure(vcpus, mem, kernel, &args);
                vmm.start();
                let out = vmm.wait_success();
                GuestReport::parse(&out)
                    .check(&args, mem, vcpus)
                    .unwrap_or_else(|e| panic!("vm{i}: {e}"));
                check_count_lines(&out, 20);
            })
        })
        .collect();
    let mut failed = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        if h.join().is_err() {
            failed.push(i);
        }
    }
    assert!(
        failed.is_empty(),
        "VMMs {failed:?} failed (see their output above)"
    );
}

#[test]
fn many_vcpus_are_reported() {
    // More vCPUs than host CPUs still boot; the MP table lists them all.
    for vcpus in [4u32, 8, 32] {
        let mut vmm = Vmm::start_api();
        vmm.configure(vcpus, MEM_MIB, &guests().hello_elf, "many");
        vmm.start();
        let out = vmm.wait_success();
        GuestReport::parse(&out)
            .check("many", MEM_MIB, vcpus)
            .unwrap_or_else(|e| panic!("{vcpus} vCPUs: {e}"));
    }
}

#[test]
fn memory_above_the_32_bit_gap() {
    // 4 GiB does not fit below the MMIO gap: RAM continues above 4 GiB in another e820 entry.
    let mem = 4096;
    let mut vmm = Vmm::start_api();
    vmm.configure(2, mem, &guests().hello_elf, "big");
    vmm.start();
    let out = vmm.wait_success();
    let report = GuestReport::parse(&out);
    report
        .check("big", mem, 2)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        report.e820_entries.unwrap_or(0) >= 3,
        "expected RAM split around the gap (>= 3 e820 entries):\n{out}"
    );
}
