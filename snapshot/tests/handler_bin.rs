//! End to end: the `tartarus-uffd-handler` binary serves a Uffd restore over its socket.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use snapshot::{restore_uffd_external, write_full, GuestMemoryMmap, MemoryLayout, WorkingSet};
use vm_memory::{Bytes, GuestAddress};

const HIGH: u64 = 0x1_0000_0000;

fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("tartarus-handler-bin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{path:?} never appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn handler_binary_serves_a_restore() {
    let dir = tmpdir();
    let mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20), (GuestAddress(HIGH), 1 << 20)])
            .unwrap();
    mem.write_obj(0x1234_5678_u32, GuestAddress(0x3000))
        .unwrap();
    mem.write_obj(0xdead_beef_u32, GuestAddress(HIGH + 0x8000))
        .unwrap();
    let mem_file = dir.join("mem");
    write_full(&mem, &mem_file).unwrap();
    let layout = MemoryLayout::of(&mem);

    let sock = dir.join("uffd.sock");
    let ws = dir.join("ws");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tartarus-uffd-handler"))
        .arg("--socket")
        .arg(&sock)
        .arg("--mem-file")
        .arg(&mem_file)
        .args(["--chunk-size", "16384", "--once", "--record"])
        .arg(&ws)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&sock);

    let r = restore_uffd_external(&layout, &sock).unwrap();
    let a: u32 = r.mem.read_obj(GuestAddress(0x3000)).unwrap();
    let b: u32 = r.mem.read_obj(GuestAddress(HIGH + 0x8000)).unwrap();
    let z: u32 = r.mem.read_obj(GuestAddress(0x10_0000)).unwrap();
    assert_eq!((a, b, z), (0x1234_5678, 0xdead_beef, 0));
    assert_eq!(r.regions.len(), 2);
    assert_eq!(r.regions[1].offset, 2 << 20);

    // The VMM going away ends the handler, which then writes the working set.
    drop(r);
    let status = child.wait().unwrap();
    assert!(status.success());
    let set = WorkingSet::read(&ws).unwrap();
    assert_eq!(
        set.runs,
        vec![(0, 16384), (0x10_0000, 16384), ((2 << 20) + 0x8000, 16384)]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_handler_is_a_clear_error() {
    let layout = MemoryLayout::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let err = restore_uffd_external(&layout, Path::new("/nonexistent/uffd.sock")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot connect to uffd handler"),
        "{err}"
    );
}
