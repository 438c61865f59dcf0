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
    // Every counter the device keeps is reported (issue 16: seven of them were counted and
    // never shown).
    let d = m["block"]["d"].as_object().unwrap();
    for key in [
        "queue_events",
        "read_count",
        "write_count",
        "flush_count",
        "get_id_count",
        "read_bytes",
        "write_bytes",
        "io_errors",
        "invalid_requests",
        "skipped_requests",
        "unsupported_requests",
        "rate_limited_events",
        "activate_count",
        "update_count",
    ] {
        assert!(
            d.get(key).is_some_and(Value::is_u64),
            "{key} missing from {m}"
        );
    }
    // Counted too: the PATCH above swapped the backing file.
    assert!(d["update_count"].as_u64() >= Some(1), "{m}");
    assert_eq!(vmm.action("SendCtrlAltDel").status, 204);
    vmm.wait_success();
}

// ---- benchmark mode (blk_bench=..., tests/guests/virtio_blk/bench.c) ----

/// The guest's per-request checksum: FNV-1a over the buffer's 64-bit little-endian words.
fn bench_hash(buf: &[u8]) -> u64 {
    buf.chunks_exact(8).fold(0xcbf2_9ce4_8422_2325, |h, w| {
        (h ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(0x100_0000_01b3)
    })
}

/// The fields of the guest's `blk bench op=...` line.
fn bench_line(out: &str) -> std::collections::HashMap<String, String> {
    let line = out
        .lines()
        .find(|l| l.starts_with("blk bench op="))
        .unwrap_or_else(|| panic!("no blk bench line: {out}"));
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn bench_mode_reads_the_right_data() {
    let dir = TempDir::new("blkbench");
    // 1 MiB in which every sector differs, so a request at the wrong offset changes the sum.
    let img: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i / SECTOR as u32 * 7 + i % 251) as u8)
        .collect();
    let path = dir.join("bench.img");
    std::fs::write(&path, &img).unwrap();
    let out = run_guest(
        &drive("b", &path, json!({"io_engine": "Async"})),
        "blk_bench=read blk_bench_count=8 blk_bench_sum",
    );
    let f = bench_line(&out);
    assert_eq!(f["op"], "read", "{out}");
    assert_eq!(f["count"], "8", "{out}");
    assert_eq!(f["sectors"], "8", "{out}");
    assert_eq!(f["bytes"], "32768", "{out}");
    assert_eq!(f["errors"], "0", "{out}");
    assert!(f["cycles"].parse::<u64>().unwrap() > 0, "{out}");
    assert!(f["tsc_khz"].parse::<u64>().unwrap() > 0, "{out}");
    // Requests 0..8 read the 4 KiB units 0..8 in order.
    let expected = (0..8)
        .map(|i| bench_hash(&img[i * 4096..(i + 1) * 4096]))
        .fold(0u64, u64::wrapping_add);
    assert_eq!(f["sum"], format!("0x{expected:016x}"), "{out}");
}

#[test]
fn bench_mode_writes_the_pattern_with_requests_in_flight() {
    let dir = TempDir::new("blkbenchw");
    let path = disk(&dir, "w.img");
    let before = std::fs::read(&path).unwrap();
    // 12 requests of 2 sectors over a 1 MiB disk, 5 in flight, random units.
    let out = run_guest(
        &drive("w", &path, json!({})),
        "blk_bench=write blk_bench_count=12 blk_bench_sectors=2 blk_bench_depth=5 \
         blk_bench_pattern=rand blk_bench_seed=7",
    );
    let f = bench_line(&out);
    assert_eq!(f["pattern"], "rand", "{out}");
    assert_eq!(f["depth"], "5", "{out}");
    assert_eq!(f["errors"], "0", "{out}");
    assert!(!f.contains_key("sum"), "{out}");
    let pattern: Vec<u8> = (0..128u64)
        .flat_map(|j| (0x7461_7274_6172_7573u64 ^ j).to_le_bytes())
        .collect();
    let (units, mut x) = ((1u64 << 20) / 1024, 7u64);
    let mut expected = before.clone();
    for _ in 0..12 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = ((x % units) * 1024) as usize;
        expected[off..off + 1024].copy_from_slice(&pattern);
    }
    assert_ne!(expected, before);
    assert!(
        std::fs::read(&path).unwrap() == expected,
        "written units differ"
    );
}

#[test]
fn bench_mode_refuses_bad_parameters() {
    let dir = TempDir::new("blkbenchbad");
    let path = disk(&dir, "b.img");
    for (args, msg) in [
        (
            "blk_bench=erase",
            "blk bench: blk_bench= must be read or write",
        ),
        (
            "blk_bench=read blk_bench_depth=6",
            "blk_bench_depth= must be 1..5",
        ),
        (
            "blk_bench=read blk_bench_sectors=4096",
            "blk_bench_sectors= must be 1..2048",
        ),
        (
            "blk_bench=read blk_bench_pattern=zigzag",
            "must be seq or rand",
        ),
    ] {
        let mut vmm = Vmm::start_api();
        vmm.put_ok(
            "/machine-config",
            &json!({"vcpu_count": 1, "mem_size_mib": 64}),
        );
        vmm.put_ok("/drives/b", &drive("b", &path, json!({})));
        vmm.put_ok(
            "/boot-source",
            &json!({"kernel_image_path": guests().get("virtio_blk.elf"), "boot_args": args}),
        );
        vmm.start();
        let out = vmm.wait_success();
        assert!(out.contains(msg), "{args}: {out}");
        assert!(out.contains("virtio-blk: failed"), "{args}: {out}");
        assert!(!out.contains("blk bench op="), "{args}: {out}");
    }
}
