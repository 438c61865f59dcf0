//! A guest that resets a virtio-blk device right after notifying it (issue 15): the reset
//! used to drain io_uring on the vCPU thread, outside its seccomp filter (SIGSYS). Under the
//! default filters, on every engine and option, the VMM must survive, Status must read 0 once
//! the device is reset, and the device must work again after the driver re-initialises it.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;

use serde_json::{json, Value};
use tartarus_tests::{guests, TempDir, Vmm, GUEST_TIMEOUT};

const HOST_TEXT: &[u8] = b"hello from the host";
const ROUNDS: usize = 4;

/// A 2 MiB image with `HOST_TEXT` at sector 3 (the requests cover sectors 64..704).
fn disk(dir: &TempDir) -> PathBuf {
    let mut d = vec![0u8; 2 << 20];
    d[3 * 512..3 * 512 + HOST_TEXT.len()].copy_from_slice(HOST_TEXT);
    let p = dir.join("disk.img");
    std::fs::write(&p, d).unwrap();
    p
}

fn run(engine: &str, extra: Value, write: bool) {
    let what = format!("{engine} {extra} write={write}");
    let dir = TempDir::new("blk-reset");
    let img = disk(&dir);
    let mut vmm = Vmm::start_api();
    vmm.put_ok(
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    let mut body = json!({"drive_id": "disk0", "path_on_host": img, "is_root_device": false,
                          "io_engine": engine});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    vmm.put_ok("/drives/disk0", &body);
    let mut args = format!("blk_notify_reset={ROUNDS}");
    if write {
        args.push_str(" blk_notify_reset_write");
    }
    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": guests().get("virtio_blk.elf"), "boot_args": args}),
    );
    vmm.start();
    let status = vmm.wait_exit(GUEST_TIMEOUT);
    assert!(
        status.signal() != Some(libc::SIGSYS) && status.code() == Some(0),
        "{what}: expected exit 0 after the guest's reset, got {status}\n{}",
        vmm.diagnostics()
    );
    let out = vmm.output();
    for r in 0..ROUNDS {
        assert!(
            out.contains(&format!("blk notify-reset round {r} busy_reads=")),
            "{what}: round {r} missing:\n{out}"
        );
    }
    let reads = out
        .lines()
        .filter(|l| l.starts_with("blk read sector 3 status=0 data=68656c6c6f"))
        .count();
    assert_eq!(
        reads, ROUNDS,
        "{what}: the device did not work again:\n{out}"
    );
    assert!(out.contains("virtio-blk: done"), "{what}:\n{out}");
}

fn every_option(engine: &str) {
    for write in [false, true] {
        run(engine, json!({}), write);
        run(engine, json!({"cache_type": "Writeback"}), write);
    }
    run(engine, json!({"is_read_only": true}), false);
    // Requests stall behind the bucket: the reset comes while they wait for the timer.
    run(
        engine,
        json!({"rate_limiter": {"bandwidth": {"size": 65536, "refill_time": 100}}}),
        true,
    );
}

#[test]
fn notify_then_reset_on_the_sync_engine() {
    every_option("Sync");
}

#[test]
fn notify_then_reset_on_the_async_engine() {
    every_option("Async");
}
