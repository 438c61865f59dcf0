//! Hostile snapshot state files (issue 15): mutated bodies with the CRC recomputed must be
//! refused with a 400 before anything is built, leaving the VMM `Not started` and able to load
//! a good snapshot afterwards; special files as backing files must not hang the VMM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tartarus_tests::{guests, TempDir, Vmm, GUEST_TIMEOUT};

/// magic (8) + major (2) + minor (2) + body length (8).
const HEADER: usize = 20;

struct Snap {
    dir: TempDir,
    state: PathBuf,
    mem: PathBuf,
    body: Value,
    header: Vec<u8>,
}

/// A Full snapshot of the counting guest (1 vCPU, 64 MiB), paused mid-count.
fn snapshot(with_drive: bool) -> (Vmm, Snap) {
    let dir = TempDir::new("snap-hostile");
    let vmm = Vmm::start_api();
    vmm.put_ok(
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    let (kernel, args) = if with_drive {
        let img = dir.join("disk.img");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        vmm.put_ok(
            "/drives/disk0",
            &json!({"drive_id": "disk0", "path_on_host": img, "is_root_device": false}),
        );
        (guests().get("virtio_blk.elf"), "blk_read=3 blk_wait_cad")
    } else {
        (guests().hello_elf.clone(), "wait_cad count=300")
    };
    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": kernel, "boot_args": args}),
    );
    vmm.start();
    vmm.wait_for_output("waiting for ctrl-alt-del", GUEST_TIMEOUT);
    assert_eq!(vmm.patch("/vm", &json!({"state": "Paused"})).status, 204);
    let state = dir.join("vm.state");
    let mem = dir.join("vm.mem");
    let r = vmm.put(
        "/snapshot/create",
        &json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{r}");
    let bytes = std::fs::read(&state).unwrap();
    let body = serde_json::from_slice(&bytes[HEADER..bytes.len() - 8]).unwrap();
    let header = bytes[..HEADER - 8].to_vec();
    (
        vmm,
        Snap {
            dir,
            state,
            mem,
            body,
            header,
        },
    )
}

impl Snap {
    /// Writes `body` as a state file with a correct length and CRC.
    fn write(&self, name: &str, body: &Value) -> PathBuf {
        let text = serde_json::to_vec(body).unwrap();
        let mut out = self.header.clone();
        out.extend_from_slice(&(text.len() as u64).to_le_bytes());
        out.extend_from_slice(&text);
        let crc = snapshot::crc64::crc64(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        let p = self.dir.join(name);
        std::fs::write(&p, out).unwrap();
        p
    }
}

fn file_backend(p: &Path) -> Value {
    json!({"backend_type": "File", "backend_path": p})
}

/// `state` is refused with a 400 naming `needle`; the VMM stays `Not started`, alive, and then
/// loads `good` successfully.
fn refused_then_good_loads(state: &Path, mem: &Path, needle: &str, good: &Path) {
    let mut vmm = Vmm::start_api();
    for backend in ["File", "Uffd"] {
        let r = vmm.put(
            "/snapshot/load",
            &json!({"snapshot_path": state,
                    "mem_backend": {"backend_type": backend, "backend_path": mem}}),
        );
        assert_eq!(
            r.status,
            400,
            "{needle} ({backend}): {r}\n{}",
            vmm.diagnostics()
        );
        let msg = r.fault_message().unwrap_or_default().to_lowercase();
        assert!(
            msg.contains(&needle.to_lowercase()),
            "expected '{needle}' in: {msg}"
        );
        assert!(
            vmm.try_wait_exit(Duration::from_millis(50), Duration::from_millis(10))
                .is_none(),
            "VMM died: {}",
            vmm.diagnostics()
        );
        assert_eq!(vmm.state(), "Not started");
    }
    // The good state file's memory file sits next to it.
    let good_mem = good.with_file_name("vm.mem");
    let r = vmm.put(
        "/snapshot/load",
        &json!({"snapshot_path": good, "mem_backend": file_backend(&good_mem)}),
    );
    assert_eq!(r.status, 204, "the good snapshot after '{needle}': {r}");
    assert_eq!(vmm.state(), "Paused");
}

#[test]
fn mutated_state_files_are_refused_before_anything_is_built() {
    let (_vmm, snap) = snapshot(false);
    let good = &snap.state;
    let mem = &snap.mem;
    let size = snap.body["memory"]["regions"][0]["size"].as_u64().unwrap();

    // The unmodified body, rewritten, loads (the rewriting itself is sound).
    let same = snap.write("same.state", &snap.body);
    refused_then_good_loads_ok(&same, mem);

    // Two regions whose sizes add up past 2^64.
    let mut b = snap.body.clone();
    b["memory"]["regions"] = json!([
        {"guest_base": 0, "size": 1u64 << 63, "file_offset": 0},
        {"guest_base": 1u64 << 63, "size": 1u64 << 63, "file_offset": 0},
    ]);
    let p = snap.write("overflow.state", &b);
    refused_then_good_loads(&p, mem, "overflows", good);

    // A region whose file offset + size runs past the memory file.
    let mut b = snap.body.clone();
    b["memory"]["regions"][0]["file_offset"] = json!(size);
    let p = snap.write("offset.state", &b);
    refused_then_good_loads(&p, mem, "memory", good);

    // A layout that disagrees with the machine configuration.
    let mut b = snap.body.clone();
    b["machine"]["mem_size_mib"] = json!(128);
    let p = snap.write("layout.state", &b);
    refused_then_good_loads(&p, mem, "does not match mem_size_mib", good);

    // Register blobs of the wrong length (short ones used to be zero-padded).
    for (field, cut) in [("regs", 8), ("sregs", 1), ("lapic", 100), ("xsave", 4)] {
        let mut b = snap.body.clone();
        let arr = b["vcpus"][0][field].as_array_mut().unwrap();
        let keep = arr.len() - cut;
        arr.truncate(keep);
        let p = snap.write(&format!("short-{field}.state"), &b);
        refused_then_good_loads(&p, mem, &format!("vcpus[0].{field}"), good);
    }
    let mut b = snap.body.clone();
    b["vm"]["pit"].as_array_mut().unwrap().pop();
    let p = snap.write("short-pit.state", &b);
    refused_then_good_loads(&p, mem, "vm.pit", good);
    let mut b = snap.body.clone();
    b["vcpus"][0]["msrs"][0].as_array_mut().unwrap().pop();
    let p = snap.write("short-msr.state", &b);
    refused_then_good_loads(&p, mem, "vcpus[0].msrs[0]", good);

    // vCPU states that do not match the vCPU count.
    let mut b = snap.body.clone();
    b["machine"]["vcpu_count"] = json!(2);
    let p = snap.write("vcpus.state", &b);
    refused_then_good_loads(&p, mem, "vCPU states for 2 vCPUs", good);
}

fn refused_then_good_loads_ok(state: &Path, mem: &Path) {
    let vmm = Vmm::start_api();
    let r = vmm.put(
        "/snapshot/load",
        &json!({"snapshot_path": state, "mem_backend": file_backend(mem)}),
    );
    assert_eq!(r.status, 204, "{r}");
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn special_files_are_refused_without_hanging() {
    let (_vmm, snap) = snapshot(true);
    let fifo = snap.dir.join("fifo");
    mkfifo(&fifo);

    // A drive whose backing file is a FIFO, in a state file...
    let mut b = snap.body.clone();
    assert_eq!(b["devices"][0]["kind"]["type"], "block", "{}", b["devices"]);
    b["devices"][0]["kind"]["path_on_host"] = json!(fifo);
    let p = snap.write("fifo-drive.state", &b);
    refused_then_good_loads(&p, &snap.mem, "FIFO", &snap.state);

    // ... a FIFO as the state file or the memory file...
    refused_then_good_loads(&fifo, &snap.mem, "regular file", &snap.state);
    refused_then_good_loads(&snap.state, &fifo, "regular file", &snap.state);

    // ... and through PUT /drives, for a FIFO, a socket directory entry and a char device.
    let vmm = Vmm::start_api();
    // (A read-only open of a FIFO is the one that blocks until a writer comes.)
    for (path, needle, ro) in [
        (fifo.clone(), "FIFO", false),
        (fifo.clone(), "FIFO", true),
        (PathBuf::from("/dev/null"), "character device", true),
    ] {
        let r = vmm.put(
            "/drives/d",
            &json!({"drive_id": "d", "path_on_host": path, "is_root_device": false,
                    "is_read_only": ro}),
        );
        assert_eq!(r.status, 400, "{r}");
        assert!(r.text.contains(needle), "{r}");
    }
    assert_eq!(vmm.state(), "Not started");
}

#[test]
fn drive_configs_in_state_files_pass_the_api_checks() {
    let (_vmm, snap) = snapshot(true);
    let mut b = snap.body.clone();
    assert_eq!(b["devices"][0]["kind"]["type"], "block", "{}", b["devices"]);
    b["devices"][0]["kind"]["drive_id"] = json!("bad/id with spaces");
    let p = snap.write("bad-drive-id.state", &b);
    refused_then_good_loads(&p, &snap.mem, "Invalid snapshot device", &snap.state);
}
