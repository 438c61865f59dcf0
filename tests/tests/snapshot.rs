//! Snapshots on /dev/kvm: a guest counting on its serial port is paused mid-count and
//! snapshotted; restored VMMs (File, Uffd served by the VMM, Uffd served by an external handler,
//! Uffd with working-set prefetch) continue the count exactly where it stopped. Bad snapshot
//! files are refused with a clear message and the VMM keeps serving.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tartarus_tests::{guests, TempDir, Vmm, GUEST_TIMEOUT};

const COUNT: u32 = 300;
const MEM_MIB: u64 = 64;

/// The `count: N` values in serial output, in order.
fn counts(out: &str) -> Vec<u32> {
    out.lines()
        .filter_map(|l| l.strip_prefix("count: "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// A snapshot of the counting guest, taken after it printed at least `count: 20`.
struct Snapshot {
    dir: TempDir,
    state: PathBuf,
    mem: PathBuf,
    /// Serial output up to the snapshot.
    before: String,
}

fn fault(r: &tartarus_tests::Response) -> String {
    r.fault_message().unwrap_or_default().to_string()
}

fn take_snapshot(vcpus: u32, track_dirty: bool) -> (Vmm, Snapshot) {
    let vmm = Vmm::start_api();
    vmm.put_ok(
        "/machine-config",
        &json!({"vcpu_count": vcpus, "mem_size_mib": MEM_MIB, "track_dirty_pages": track_dirty}),
    );
    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": guests().hello_elf, "boot_args": format!("wait_cad count={COUNT}")}),
    );
    vmm.start();
    vmm.wait_for_output("waiting for ctrl-alt-del", GUEST_TIMEOUT);
    assert_eq!(vmm.action("SendCtrlAltDel").status, 204);
    vmm.wait_for_output("count: 20\n", GUEST_TIMEOUT);
    let r = vmm.patch("/vm", &json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", fault(&r));
    let dir = TempDir::new("snap");
    let state = dir.join("vm.state");
    let mem = dir.join("vm.mem");
    let r = vmm.put(
        "/snapshot/create",
        &json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}", fault(&r));
    let before = vmm.output_when_quiet(Duration::from_millis(100));
    let n = counts(&before);
    assert!(
        n.len() >= 20 && (n.len() as u32) < COUNT,
        "paused too late: {n:?}"
    );
    (
        vmm,
        Snapshot {
            dir,
            state,
            mem,
            before,
        },
    )
}

/// Loads `snap` into a fresh VMM with `backend`, resumes, and checks the count continues.
fn restore_and_check(snap: &Snapshot, backend: Value, extra: Value) -> Vmm {
    let mut vmm = Vmm::start_api();
    let mut body = json!({"snapshot_path": snap.state, "mem_backend": backend});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    let r = vmm.put("/snapshot/load", &body);
    assert_eq!(r.status, 204, "{}\n{}", fault(&r), vmm.diagnostics());
    assert_eq!(vmm.state(), "Paused");
    let r = vmm.patch("/vm", &json!({"state": "Resumed"}));
    assert_eq!(r.status, 204, "{}", fault(&r));
    let after = vmm.wait_success();
    let all = format!("{}{}", snap.before, after);
    assert_eq!(
        counts(&all),
        (1..=COUNT).collect::<Vec<_>>(),
        "the restored guest did not continue where it stopped:\nbefore: {}\nafter: {after}",
        snap.before
    );
    assert!(counts(&after)[0] > 1, "restarted from the beginning");
    vmm
}

fn file_backend(p: &Path) -> Value {
    json!({"backend_type": "File", "backend_path": p})
}

fn uffd_backend(p: &Path) -> Value {
    json!({"backend_type": "Uffd", "backend_path": p})
}

#[test]
fn full_snapshot_restores_with_file_backend() {
    let (_vmm, snap) = take_snapshot(1, false);
    restore_and_check(&snap, file_backend(&snap.mem), json!({}));
}

#[test]
fn full_snapshot_restores_with_uffd_served_by_the_vmm() {
    let (_vmm, snap) = take_snapshot(2, false);
    restore_and_check(&snap, uffd_backend(&snap.mem), json!({}));
}

#[test]
fn full_snapshot_restores_with_an_external_uffd_handler() {
    let (_vmm, snap) = take_snapshot(1, false);
    let sock = snap.dir.join("uffd.sock");
    let handler_bin = tartarus_tests::bin_path("tartarus-uffd-handler");
    let mut handler = std::process::Command::new(&handler_bin)
        .arg("--socket")
        .arg(&sock)
        .arg("--mem-file")
        .arg(&snap.mem)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", handler_bin.display()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    restore_and_check(&snap, uffd_backend(&sock), json!({}));
    let _ = handler.kill();
    let _ = handler.wait();
}

#[test]
fn working_set_is_recorded_then_prefetched() {
    let (_vmm, snap) = take_snapshot(1, false);
    let ws = snap.dir.join("vm.ws");
    restore_and_check(
        &snap,
        uffd_backend(&snap.mem),
        json!({"prefetch": {"working_set_path": ws, "record": true, "record_ms": 200}}),
    );
    assert!(ws.exists(), "no working set was recorded");
    restore_and_check(
        &snap,
        uffd_backend(&snap.mem),
        json!({"prefetch": {"working_set_path": ws, "record": false}}),
    );
}

#[test]
fn two_vmms_restore_one_snapshot_independently() {
    let (_vmm, snap) = take_snapshot(1, false);
    let a = std::thread::scope(|s| {
        let a = s.spawn(|| {
            restore_and_check(&snap, file_backend(&snap.mem), json!({}));
        });
        let b = s.spawn(|| {
            restore_and_check(&snap, uffd_backend(&snap.mem), json!({}));
        });
        (a.join(), b.join())
    });
    assert!(a.0.is_ok() && a.1.is_ok());
}

#[test]
fn diff_snapshot_on_top_of_full() {
    let (vmm, snap) = take_snapshot(1, true);
    // Let the guest count further, then write only what changed onto the same memory file.
    assert_eq!(vmm.patch("/vm", &json!({"state": "Resumed"})).status, 204);
    let seen = counts(&snap.before).len() as u32;
    vmm.wait_for_output(&format!("count: {}\n", seen + 30), GUEST_TIMEOUT);
    assert_eq!(vmm.patch("/vm", &json!({"state": "Paused"})).status, 204);
    let state2 = snap.dir.join("vm2.state");
    let r = vmm.put(
        "/snapshot/create",
        &json!({"snapshot_type": "Diff", "snapshot_path": state2, "mem_file_path": snap.mem}),
    );
    assert_eq!(r.status, 204, "{}", fault(&r));
    let diff_snap = Snapshot {
        dir: TempDir::new("unused"),
        state: state2,
        mem: snap.mem.clone(),
        before: vmm.output_when_quiet(Duration::from_millis(100)),
    };
    restore_and_check(&diff_snap, file_backend(&diff_snap.mem), json!({}));
    // The restored VM can itself be paused and snapshotted again.
    let (_v, _s) = (vmm, snap);
}

#[test]
fn diff_needs_dirty_tracking() {
    let (vmm, snap) = take_snapshot(1, false);
    let r = vmm.put(
        "/snapshot/create",
        &json!({"snapshot_type": "Diff", "snapshot_path": snap.dir.join("d.state"), "mem_file_path": snap.mem}),
    );
    assert_eq!(r.status, 400);
    assert!(fault(&r).contains("track_dirty_pages"), "{}", fault(&r));
    assert_eq!(vmm.get("/").status, 200);
}

#[test]
fn restored_vm_can_be_snapshotted_again() {
    let (_vmm, snap) = take_snapshot(1, false);
    let vmm = Vmm::start_api();
    let r = vmm.put(
        "/snapshot/load",
        &json!({"snapshot_path": snap.state, "mem_backend": file_backend(&snap.mem)}),
    );
    assert_eq!(r.status, 204, "{}", fault(&r));
    let state2 = snap.dir.join("again.state");
    let mem2 = snap.dir.join("again.mem");
    let r = vmm.put(
        "/snapshot/create",
        &json!({"snapshot_path": state2, "mem_file_path": mem2}),
    );
    assert_eq!(r.status, 204, "{}", fault(&r));
    let again = Snapshot {
        dir: TempDir::new("unused"),
        state: state2,
        mem: mem2,
        before: snap.before.clone(),
    };
    restore_and_check(&again, uffd_backend(&again.mem), json!({}));
}

/// Loading `state` must fail with a message containing `needle`, and the VMM keeps serving.
fn load_fails(state: &Path, backend: Value, needle: &str) {
    let vmm = Vmm::start_api();
    let r = vmm.put(
        "/snapshot/load",
        &json!({"snapshot_path": state, "mem_backend": backend}),
    );
    assert_eq!(r.status, 400, "{r}");
    assert!(
        fault(&r).to_lowercase().contains(&needle.to_lowercase()),
        "expected '{needle}' in: {}",
        fault(&r)
    );
    assert_eq!(vmm.get("/").status, 200);
    assert_eq!(vmm.state(), "Not started");
}

#[test]
fn bad_snapshot_files_are_refused() {
    let (_vmm, snap) = take_snapshot(1, false);
    let good = std::fs::read(&snap.state).unwrap();
    let dir = &snap.dir;

    let corrupt = dir.join("corrupt.state");
    let mut bytes = good.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&corrupt, &bytes).unwrap();
    load_fails(&corrupt, file_backend(&snap.mem), "crc");

    let truncated = dir.join("truncated.state");
    std::fs::write(&truncated, &good[..good.len() / 3]).unwrap();
    load_fails(&truncated, file_backend(&snap.mem), "truncated");

    let magic = dir.join("magic.state");
    let mut bytes = good.clone();
    bytes[0] ^= 0xff;
    std::fs::write(&magic, &bytes).unwrap();
    load_fails(&magic, file_backend(&snap.mem), "not a tartarus snapshot");

    load_fails(
        &dir.join("missing.state"),
        file_backend(&snap.mem),
        "missing.state",
    );
    load_fails(
        &snap.state,
        file_backend(&dir.join("missing.mem")),
        "missing.mem",
    );

    let short = dir.join("short.mem");
    std::fs::write(&short, vec![0u8; 4096]).unwrap();
    load_fails(&snap.state, file_backend(&short), "4096 bytes");
    load_fails(&snap.state, uffd_backend(&short), "4096 bytes");
}

#[test]
fn wrong_version_is_refused() {
    let (_vmm, snap) = take_snapshot(1, false);
    let mut bytes = std::fs::read(&snap.state).unwrap();
    // The major version follows the 8-byte magic; the CRC-64 of everything before it ends the
    // file, so recompute it to get past the integrity check to the version check.
    bytes[8] = bytes[8].wrapping_add(1);
    let body_end = bytes.len() - 8;
    let crc = snapshot::crc64::crc64(&bytes[..body_end]);
    bytes[body_end..].copy_from_slice(&crc.to_le_bytes());
    let path = snap.dir.join("version.state");
    std::fs::write(&path, &bytes).unwrap();
    load_fails(&path, file_backend(&snap.mem), "version");
}

#[test]
fn load_is_refused_after_boot_or_configuration() {
    let (vmm, snap) = take_snapshot(1, false);
    // The snapshotted VMM itself has booted.
    let r = vmm.put(
        "/snapshot/load",
        &json!({"snapshot_path": snap.state, "mem_backend": file_backend(&snap.mem)}),
    );
    assert_eq!(r.status, 400);
    assert!(fault(&r).contains("Paused"), "{}", fault(&r));
    // A VMM with a boot source configured.
    let fresh = Vmm::start_api();
    fresh.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": guests().hello_elf}),
    );
    let r = fresh.put(
        "/snapshot/load",
        &json!({"snapshot_path": snap.state, "mem_backend": file_backend(&snap.mem)}),
    );
    assert_eq!(r.status, 400);
    assert!(fault(&r).contains("boot source"), "{}", fault(&r));
}

#[test]
fn describe_snapshot_prints_a_summary() {
    let (_vmm, snap) = take_snapshot(2, false);
    let out = std::process::Command::new(tartarus_tests::vmm_binary())
        .arg("--describe-snapshot")
        .arg(&snap.state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("version"), "{text}");
    assert!(text.contains("vcpus: 2"), "{text}");
    let bad = std::process::Command::new(tartarus_tests::vmm_binary())
        .arg("--describe-snapshot")
        .arg(snap.dir.join("nope"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
