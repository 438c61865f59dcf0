//! Snapshots of microVMs with virtio-blk drives, on /dev/kvm: the virtio_blk guest does a first
//! batch of requests, waits for Ctrl-Alt-Del while the host pauses and snapshots it, and after a
//! restore does a second batch on the same queue; the data lands on the host file, ring
//! positions continue (the guest checks every used id), PATCH and metrics work on the restored
//! VM, it can be snapshotted again, and a snapshot whose backing file is gone is refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tartarus_tests::{guests, TempDir, Vmm, GUEST_TIMEOUT};

const SECTOR: usize = 512;
const FIRST_TEXT: &[u8] = b"hello from the host";
const SECOND_TEXT: &[u8] = b"read after the restore";
const BOOT_ARGS: &str =
    "blk_read=3 blk_print_text blk_write=5 blk_wait_cad blk_read2=7 blk_write2=9";

fn fault(r: &tartarus_tests::Response) -> String {
    r.fault_message().unwrap_or_default().to_string()
}

/// A 1 MiB disk image with `FIRST_TEXT` at sector 3 and `SECOND_TEXT` at sector 7.
fn disk(dir: &TempDir) -> PathBuf {
    let mut d = vec![0u8; 1 << 20];
    d[3 * SECTOR..3 * SECTOR + FIRST_TEXT.len()].copy_from_slice(FIRST_TEXT);
    d[7 * SECTOR..7 * SECTOR + SECOND_TEXT.len()].copy_from_slice(SECOND_TEXT);
    let p = dir.join("disk.img");
    std::fs::write(&p, d).unwrap();
    p
}

/// Whether sector `n` of `img` holds what the guest writes there.
fn guest_wrote(img: &Path, n: usize) -> bool {
    let data = std::fs::read(img).unwrap();
    let sector = &data[n * SECTOR..(n + 1) * SECTOR];
    let text = format!("tartarus-blk-write sector {n}");
    sector.starts_with(text.as_bytes()) && sector[text.len()..].iter().all(|b| *b == 0)
}

struct Snap {
    dir: TempDir,
    img: PathBuf,
    state: PathBuf,
    mem: PathBuf,
}

/// Boots the guest with one drive, lets it do its first batch, pauses it while it waits for
/// Ctrl-Alt-Del and takes a Full snapshot. Returns the (paused) VMM and the snapshot.
fn boot_and_snapshot(engine: &str, track_dirty: bool) -> (Vmm, Snap) {
    let dir = TempDir::new("vsnap");
    let img = disk(&dir);
    let vmm = Vmm::start_api();
    vmm.put_ok(
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": 64, "track_dirty_pages": track_dirty}),
    );
    vmm.put_ok(
        "/drives/disk0",
        &json!({"drive_id": "disk0", "path_on_host": img, "is_root_device": false,
                "cache_type": "Writeback", "io_engine": engine}),
    );
    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": guests().get("virtio_blk.elf"), "boot_args": BOOT_ARGS}),
    );
    vmm.start();
    let out = vmm.wait_for_output("blk waiting for ctrl-alt-del", GUEST_TIMEOUT);
    assert!(out.contains("blk text: hello from the host"), "{out}");
    assert!(out.contains("blk write sector 5 status=0"), "{out}");
    assert!(guest_wrote(&img, 5));
    let r = vmm.patch("/vm", &json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", fault(&r));
    let state = dir.join("vm.state");
    let mem = dir.join("vm.mem");
    let r = vmm.put(
        "/snapshot/create",
        &json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}\n{}", fault(&r), vmm.diagnostics());
    (
        vmm,
        Snap {
            dir,
            img,
            state,
            mem,
        },
    )
}

fn backend(kind: &str, mem: &Path) -> Value {
    json!({"backend_type": kind, "backend_path": mem})
}

/// A fresh VMM with `state` loaded (paused).
fn load(state: &Path, mem_backend: Value) -> Vmm {
    let vmm = Vmm::start_api();
    let r = vmm.put(
        "/snapshot/load",
        &json!({"snapshot_path": state, "mem_backend": mem_backend}),
    );
    assert_eq!(r.status, 204, "{}\n{}", fault(&r), vmm.diagnostics());
    assert_eq!(vmm.state(), "Paused");
    vmm
}

/// Resumes a restored VM, releases the guest's wait and checks the second batch.
fn finish_second_batch(vmm: &mut Vmm, img: &Path) -> String {
    assert!(
        !guest_wrote(img, 9),
        "sector 9 was written before the restore"
    );
    let r = vmm.patch("/vm", &json!({"state": "Resumed"}));
    assert_eq!(r.status, 204, "{}", fault(&r));
    assert_eq!(vmm.action("SendCtrlAltDel").status, 204);
    let out = vmm.wait_success();
    assert!(out.contains("blk ctrl-alt-del received"), "{out}");
    assert!(out.contains("blk read sector 7 status=0"), "{out}");
    assert!(out.contains("blk text: read after the restore"), "{out}");
    assert!(out.contains("blk write sector 9 status=0"), "{out}");
    assert!(out.contains("virtio-blk: done"), "{out}");
    // A device that restarted its rings would return old or unexpected descriptor ids.
    assert!(!out.contains("used id"), "{out}");
    assert!(guest_wrote(img, 9));
    out
}

fn describe(state: &Path) -> String {
    let out = std::process::Command::new(tartarus_tests::vmm_binary())
        .arg("--describe-snapshot")
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn last_metrics(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

#[test]
fn drive_io_continues_after_a_file_restore() {
    let (mut first, snap) = boot_and_snapshot("Sync", false);
    first.kill();
    let text = describe(&snap.state);
    assert!(text.contains("virtio devices: 1"), "{text}");
    assert!(text.contains("block disk0 at 0xd0000000 irq 5"), "{text}");
    assert!(text.contains("disk.img rw"), "{text}");
    // Two requests (read, write) were used: the ring positions are saved.
    assert!(
        text.contains("queue 0: size 16 ready true next_avail 2 next_used 2"),
        "{text}"
    );
    assert!(text.contains("active"), "{text}");

    let mut vmm = load(&snap.state, backend("File", &snap.mem));
    // The restored VMM knows its drive: configuration, PATCH and metrics.
    let cfg = vmm.get_json("/vm/config");
    assert_eq!(cfg["drives"][0]["drive_id"], "disk0", "{cfg}");
    assert_eq!(cfg["drives"][0]["path_on_host"], json!(snap.img), "{cfg}");
    vmm.patch_ok(
        "/drives/disk0",
        &json!({"drive_id": "disk0", "rate_limiter": {"ops": {"size": 1000, "refill_time": 100}}}),
    );
    let metrics = snap.dir.join("metrics");
    vmm.put_ok("/metrics", &json!({"metrics_path": metrics}));
    finish_second_batch(&mut vmm, &snap.img);
    // Flushed at exit: only the second batch ran on the restored device.
    let m = last_metrics(&metrics);
    assert_eq!(m["block"]["disk0"]["read_count"], 1, "{m}");
    assert_eq!(m["block"]["disk0"]["write_count"], 1, "{m}");
    // The first batch's data is untouched.
    assert!(guest_wrote(&snap.img, 5));
}

#[test]
fn drive_io_continues_after_uffd_restores_and_a_second_snapshot() {
    let (mut first, snap) = boot_and_snapshot("Async", false);
    first.kill();
    // Restore through the VMM's page server, run a moment, pause and snapshot the restored VM.
    let second = load(&snap.state, backend("Uffd", &snap.mem));
    assert_eq!(
        second.patch("/vm", &json!({"state": "Resumed"})).status,
        204
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(second.patch("/vm", &json!({"state": "Paused"})).status, 204);
    let state2 = snap.dir.join("again.state");
    let mem2 = snap.dir.join("again.mem");
    let r = second.put(
        "/snapshot/create",
        &json!({"snapshot_type": "Full", "snapshot_path": state2, "mem_file_path": mem2}),
    );
    assert_eq!(r.status, 204, "{}\n{}", fault(&r), second.diagnostics());
    drop(second);
    let text = describe(&state2);
    assert!(text.contains("Async"), "{text}");
    assert!(text.contains("next_avail 2 next_used 2"), "{text}");
    let mut third = load(&state2, backend("Uffd", &mem2));
    finish_second_batch(&mut third, &snap.img);
}

#[test]
fn diff_snapshot_of_a_vm_with_a_drive() {
    let (vmm, snap) = boot_and_snapshot("Sync", true);
    assert_eq!(vmm.patch("/vm", &json!({"state": "Resumed"})).status, 204);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(vmm.patch("/vm", &json!({"state": "Paused"})).status, 204);
    let diff_state = snap.dir.join("diff.state");
    let r = vmm.put(
        "/snapshot/create",
        &json!({"snapshot_type": "Diff", "snapshot_path": diff_state, "mem_file_path": snap.mem}),
    );
    assert_eq!(r.status, 204, "{}", fault(&r));
    drop(vmm);
    let mut restored = load(&diff_state, backend("File", &snap.mem));
    finish_second_batch(&mut restored, &snap.img);
}

#[test]
fn a_missing_backing_file_is_refused_and_the_vmm_keeps_serving() {
    let (mut first, snap) = boot_and_snapshot("Sync", false);
    first.kill();
    let moved = snap.dir.join("moved.img");
    std::fs::rename(&snap.img, &moved).unwrap();
    let mut vmm = Vmm::start_api();
    let body = json!({"snapshot_path": snap.state, "mem_backend": backend("Uffd", &snap.mem)});
    let r = vmm.put("/snapshot/load", &body);
    assert_eq!(r.status, 400, "{r}");
    let msg = fault(&r);
    assert!(msg.contains(&snap.img.display().to_string()), "{msg}");
    assert!(msg.contains("disk0"), "{msg}");
    assert_eq!(vmm.get("/").status, 200);
    assert_eq!(vmm.state(), "Not started");
    // With the file back, the same VMM loads the snapshot.
    std::fs::rename(&moved, &snap.img).unwrap();
    let r = vmm.put("/snapshot/load", &body);
    assert_eq!(r.status, 204, "{}\n{}", fault(&r), vmm.diagnostics());
    finish_second_batch(&mut vmm, &snap.img);
}

#[test]
fn a_state_file_without_devices_still_loads() {
    // A snapshot of a VM without virtio devices, rewritten without the "devices" field, as
    // VMMs wrote them before device state was saved.
    let dir = TempDir::new("vsnap-old");
    let mut vmm = Vmm::start_api();
    vmm.put_ok(
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": guests().hello_elf, "boot_args": "wait_cad count=3"}),
    );
    vmm.start();
    vmm.wait_for_output("waiting for ctrl-alt-del", GUEST_TIMEOUT);
    assert_eq!(vmm.patch("/vm", &json!({"state": "Paused"})).status, 204);
    let state = dir.join("vm.state");
    let mem = dir.join("vm.mem");
    vmm.put_ok(
        "/snapshot/create",
        &json!({"snapshot_path": state, "mem_file_path": mem}),
    );
    vmm.kill();
    let mut body: Value = snapshot::read_state_file(&state).unwrap();
    assert_eq!(body["devices"], json!([]));
    body.as_object_mut().unwrap().remove("devices");
    snapshot::write_state_file(&state, &body).unwrap();
    let mut restored = load(&state, backend("File", &mem));
    assert_eq!(
        restored.patch("/vm", &json!({"state": "Resumed"})).status,
        204
    );
    assert_eq!(restored.action("SendCtrlAltDel").status, 204);
    let out = restored.wait_success();
    assert!(out.contains("count: 3"), "{out}");
}

#[test]
fn tampered_device_state_is_refused_and_the_vmm_keeps_serving() {
    let (mut first, snap) = boot_and_snapshot("Sync", false);
    first.kill();
    let good: Value = snapshot::read_state_file(&snap.state).unwrap();
    let cases = [
        (
            "/transport/queues/0/used_ring",
            json!(1u64 << 40),
            "outside guest memory",
        ),
        ("/transport/device_type", json!(1), "type 1"),
        ("/transport/queues/0/size", json!(3), "queue 0"),
        ("/mmio_base", json!(0xd000_1000u64), "slot"),
    ];
    for (field, value, needle) in cases {
        let mut body = good.clone();
        *body["devices"][0].pointer_mut(field).unwrap() = value;
        let path = snap.dir.join("tampered.state");
        snapshot::write_state_file(&path, &body).unwrap();
        let vmm = Vmm::start_api();
        let r = vmm.put(
            "/snapshot/load",
            &json!({"snapshot_path": path, "mem_backend": backend("File", &snap.mem)}),
        );
        assert_eq!(r.status, 400, "{field}: {r}");
        assert!(
            fault(&r).contains(needle),
            "{field}: expected '{needle}' in {}",
            fault(&r)
        );
        assert!(fault(&r).contains("disk0"), "{}", fault(&r));
        assert_eq!(vmm.get("/").status, 200);
        assert_eq!(vmm.state(), "Not started");
    }
}
