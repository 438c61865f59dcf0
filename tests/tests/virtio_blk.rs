//! virtio-blk end to end: the virtio_blk test guest reads a sector the host wrote, writes and
//! flushes a sector the host then reads back, asks the drive id; read-only drives refuse writes;
//! both I/O engines; drive API errors and run-time PATCH.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tartarus_tests::{guests, TempDir, Vmm, GUEST_TIMEOUT};

const SECTOR: usize = 512;
const HOST_TEXT: &[u8] = b"hello from the host";

/// A 1 MiB disk image with `HOST_TEXT` at sector 3.
fn disk(dir: &TempDir, name: &str) -> PathBuf {
    let mut d = vec![0u8; 1 << 20];
    d[3 * SECTOR..3 * SECTOR + HOST_TEXT.len()].copy_from_slice(HOST_TEXT);
    let p = dir.join(name);
    std::fs::write(&p, d).unwrap();
    p
}

fn sector(path: &Path, n: usize) -> Vec<u8> {
    std::fs::read(path).unwrap()[n * SECTOR..(n + 1) * SECTOR].to_vec()
}

fn drive(id: &str, path: &Path, extra: Value) -> Value {
    let mut d = json!({"drive_id": id, "path_on_host": path, "is_root_device": false});
    for (k, v) in extra.as_object().unwrap() {
        d[k] = v.clone();
    }
    d
}

/// Boots the virtio_blk guest with one drive and returns its serial output.
fn run_guest(drive_body: &Value, boot_args: &str) -> String {
    let mut vmm = Vmm::start_api();
    vmm.put_ok(
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    let id = drive_body["drive_id"].as_str().unwrap().to_string();
    vmm.put_ok(&format!("/drives/{id}"), drive_body);
    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": guests().get("virtio_blk.elf"), "boot_args": boot_args}),
    );
    vmm.start();
    let out = vmm.wait_success();
    assert!(out.contains("virtio-blk: done"), "{out}");
    out
}

fn read_write_flush(engine: &str) {
    let dir = TempDir::new("blk");
    let img = disk(&dir, "disk.img");
    let out = run_guest(
        &drive(
            "disk0",
            &img,
            json!({"cache_type": "Writeback", "io_engine": engine}),
        ),
        "blk_read=3 blk_print_text blk_write=5 blk_flush blk_id",
    );
    assert!(out.contains("blk read sector 3 status=0"), "{out}");
    assert!(out.contains("blk text: hello from the host"), "{out}");
    assert!(out.contains("blk write sector 5 status=0"), "{out}");
    assert!(out.contains("blk flush status=0"), "{out}");
    assert!(out.contains("blk id=disk0"), "{out}");
    let written = sector(&img, 5);
    let text = b"tartarus-blk-write sector 5";
    assert_eq!(&written[..text.len()], text);
    assert!(written[text.len()..].iter().all(|b| *b == 0));
    // Nothing else changed.
    assert_eq!(&sector(&img, 3)[..HOST_TEXT.len()], HOST_TEXT);
}

#[test]
fn sync_engine_reads_writes_and_flushes() {
    read_write_flush("Sync");
}

#[test]
fn async_engine_reads_writes_and_flushes() {
    read_write_flush("Async");
}

#[test]
fn read_only_drive_refuses_writes() {
    let dir = TempDir::new("blkro");
    let img = disk(&dir, "ro.img");
    let before = std::fs::read(&img).unwrap();
    let out = run_guest(
        &drive("ro", &img, json!({"is_read_only": true})),
        "blk_read=3 blk_write=5",
    );
    assert!(out.contains("blk read sector 3 status=0"), "{out}");
    assert!(out.contains("blk write sector 5 status=1"), "{out}");
    assert_eq!(std::fs::read(&img).unwrap(), before);
}

#[test]
fn out_of_range_sector_is_an_error() {
    let dir = TempDir::new("blkoor");
    let img = disk(&dir, "d.img");
    let out = run_guest(&drive("d", &img, json!({})), "blk_read=4096 blk_flush");
    assert!(out.contains("blk read sector 4096 status=1"), "{out}");
    // Unsafe caching does not offer FLUSH.
    assert!(out.contains("blk flush unsupported"), "{out}");
}

#[test]
fn root_device_and_patch_before_boot() {
    let dir = TempDir::new("blkroot");
    let a = disk(&dir, "a.img");
    let b = dir.join("b.img");
    let mut d = vec![0u8; 1 << 20];
    d[3 * SECTOR..3 * SECTOR + 9].copy_from_slice(b"second fs");
    std::fs::write(&b, d).unwrap();
    let mut vmm = Vmm::builder().args(["--log-level", "Info"]).spawn();
    vmm.wait_for_socket();
    vmm.put_ok(
        "/drives/root",
        &json!({"drive_id": "root", "path_on_host": a, "is_root_device": true}),
    );
    // A second root device is refused.
    let other = disk(&dir, "c.img");
    let r = vmm.put(
        "/drives/other",
        &json!({"drive_id": "other", "path_on_host": other, "is_root_device": true}),
    );
    assert_eq!(r.status, 400);
    assert!(r.fault_message().unwrap().contains("root"), "{r}");
    // PATCH before boot swaps the file the guest will see.
    vmm.patch_ok(
        "/drives/root",
        &json!({"drive_id": "root", "path_on_host": b}),
    );
    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": guests().get("virtio_blk.elf"), "boot_args": "blk_read=3 blk_print_text"}),
    );
    let cfg = vmm.get_json("/vm/config");
    assert_eq!(cfg["drives"][0]["path_on_host"], json!(b));
    vmm.start();
    let out = vmm.wait_success();
    assert!(out.contains("blk text: second fs"), "{out}");
    let log = vmm.log();
    assert!(
        log.contains("root=/dev/vda rw"),
        "the root device is announced: {log}"
    );
    assert!(log.contains("virtio_mmio.device=4K@0xd0000000:5"), "{log}");
}

#[test]
fn drive_api_errors() {
    let dir = TempDir::new("blkerr");
    let img = disk(&dir, "d.img");
    let vmm = Vmm::start_api();
    let bad = |path: &str, body: Value, needle: &str| {
        let r = match path.strip_prefix("PATCH ") {
            Some(p) => vmm.patch(p, &body),
            None => vmm.put(path, &body),
        };
        assert_eq!(r.status, 400, "{path}: {r}");
        let m = r.fault_message().unwrap_or_default().to_string();
        assert!(m.contains(needle), "{path}: expected '{needle}' in '{m}'");
        assert_eq!(vmm.get("/").status, 200);
    };
    bad(
        "/drives/d",
        json!({"drive_id": "d", "path_on_host": dir.join("missing.img"), "is_root_device": false}),
        "missing.img",
    );
    bad(
        "/drives/d",
        json!({"drive_id": "d", "path_on_host": dir.path(), "is_root_device": false}),
        "directory",
    );
    bad(
        "/drives/d",
        json!({"drive_id": "e", "path_on_host": img, "is_root_device": false}),
        "'e'",
    );
    bad(
        "/drives/d",
        json!({"drive_id": "d", "path_on_host": img, "is_root_device": false, "cache": 1}),
        "cache",
    );
    bad(
        "PATCH /drives/nope",
        json!({"drive_id": "nope", "path_on_host": img}),
        "nope",
    );
    // Drives after start are refused (no hot-plug).
    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": guests().hello_elf, "boot_args": "wait_cad"}),
    );
    vmm.start();
    vmm.wait_for_output("waiting for ctrl-alt-del", GUEST_TIMEOUT);
    bad(
        "/drives/late",
        json!({"drive_id": "late", "path_on_host": img, "is_root_device": false}),
        "Running",
    );
}

#[test]
fn patch_while_running() {
    let dir = TempDir::new("blkpatch");
    let a = disk(&dir, "a.img");
    let b = disk(&dir, "b.img");
    let mut vmm = Vmm::start_api();
    vmm.put_ok("/drives/d", &drive("d", &a, json!({})));
    // The hello guest ignores the drive and waits, so the VM stays up while we PATCH.
    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": guests().hello_elf, "boot_args": "wait_cad"}),
    );
    vmm.start();
    vmm.wait_for_output("waiting for ctrl-alt-del", GUEST_TIMEOUT);
    vmm.patch_ok("/drives/d", &json!({"drive_id": "d", "path_on_host": b}));
    vmm.patch_ok(
        "/drives/d",
        &json!({"drive_id": "d", "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 100}, "ops": {"size": 100, "refill_time": 1000}}}),
    );
    let r = vmm.patch(
        "/drives/d",
        &json!({"drive_id": "d", "path_on_host": dir.join("gone.img")}),
    );
    assert_eq!(r.status, 400, "{r}");
    assert_eq!(
        vmm.get_json("/vm/config")["drives"][0]["path_on_host"],
        json!(b)
    );
    let metrics = dir.join("metrics");
    vmm.put_ok("/metrics", &json!({"metrics_path": metrics}));
    assert_eq!(vmm.action("FlushMetrics").status, 204);
    let m: Value = serde_json::from_str(
        std::fs::read_to_string(&metrics)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(m["block"]["d"].is_object(), "{m}");
    assert_eq!(vmm.action("SendCtrlAltDel").status, 204);
    vmm.wait_success();
}
