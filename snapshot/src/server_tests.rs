use super::*;
use crate::handler::{receive_from_vmm, send_regions};
use crate::memory::{write_full, MemoryLayout};
use crate::test_util::{anon_mem, host_ptr, pattern, tmpdir};
use crate::uffd::{create_uffd_memory, restore_uffd_in_process};
use crate::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

const MIB: usize = 1 << 20;
const HIGH: u64 = 0x1_0000_0000;

/// A snapshot whose pages 0..64 and 128..192 of region 0 and 0..16 of region 1 carry their
/// pattern; everything else is zero (holes).
fn snapshot(dir: &Path) -> (PathBuf, MemoryLayout) {
    let mem = anon_mem(&[(0, 4 * MIB), (HIGH, MIB)]);
    for pg in (0..64).chain(128..192) {
        fill(&mem, pg * 4096);
    }
    for pg in 0..16 {
        fill(&mem, HIGH + pg * 4096);
    }
    let p = dir.join("mem");
    write_full(&mem, &p).unwrap();
    (p, MemoryLayout::of(&mem))
}

fn fill(mem: &GuestMemoryMmap, gpa: u64) {
    mem.write_slice(&[pattern(gpa / 4096); PAGE_SIZE], GuestAddress(gpa))
        .unwrap();
}

fn expected(gpa: u64) -> u8 {
    let pg = gpa / 4096;
    if gpa >= HIGH {
        return if pg - HIGH / 4096 < 16 {
            pattern(pg)
        } else {
            0
        };
    }
    if pg < 64 || (128..192).contains(&pg) {
        pattern(pg)
    } else {
        0
    }
}

/// Reads `pages` pages at `gpa` from another thread and checks them.
fn touch(mem: &GuestMemoryMmap, gpa: u64, pages: usize) {
    let mem = mem.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; pages * PAGE_SIZE];
        mem.read_slice(&mut buf, GuestAddress(gpa)).unwrap();
        for (i, page) in buf.chunks(PAGE_SIZE).enumerate() {
            let g = gpa + (i * PAGE_SIZE) as u64;
            assert!(page.iter().all(|&b| b == expected(g)), "page {g:#x}");
        }
    })
    .join()
    .unwrap();
}

fn cfg(chunk: usize) -> ServerConfig {
    ServerConfig {
        chunk_size: chunk,
        record: None,
    }
}

#[test]
fn serves_file_content_and_zero_pages() {
    let dir = tmpdir("uffd");
    let (p, layout) = snapshot(&dir);
    let r = restore_uffd_in_process(&layout, &p, cfg(64 << 10)).unwrap();
    touch(&r.mem, 0, 16); // one 64 KiB window: data
    touch(&r.mem, 100 * 4096, 1); // a hole window
    touch(&r.mem, HIGH + 8 * 4096, 16); // region 1: data then holes, two windows
    let s = r.server.stats();
    assert_eq!(s.faults, 4, "{s:?}");
    assert_eq!(s.pages_copied, 16 + 16, "{s:?}");
    assert_eq!(s.pages_zeroed, 16 + 16, "{s:?}");
    assert_eq!(s.bytes_copied, 32 * 4096);
    // Writes after a fault stay (UFFDIO_ZEROPAGE'd pages are copied on write).
    r.mem
        .write_slice(&[9u8; 4], GuestAddress(100 * 4096))
        .unwrap();
    let v: u32 = r.mem.read_obj(GuestAddress(100 * 4096)).unwrap();
    assert_eq!(v, 0x0909_0909);
    let s = r.server.stop().unwrap();
    assert_eq!(s.errors, 0);
}

#[test]
fn chunk_size_sets_fault_count() {
    let dir = tmpdir("uffd-chunk");
    let (p, layout) = snapshot(&dir);
    for (chunk, faults) in [(4096, 32), (16 << 10, 8), (128 << 10, 1), (1 << 20, 1)] {
        let r = restore_uffd_in_process(&layout, &p, cfg(chunk)).unwrap();
        touch(&r.mem, 0, 32);
        let s = r.server.stats();
        assert_eq!(s.faults, faults, "chunk {chunk}: {s:?}");
        assert_eq!(
            s.pages_copied + s.pages_zeroed,
            (chunk / PAGE_SIZE).max(32) as u64
        );
    }
    assert!(restore_uffd_in_process(&layout, &p, cfg(3000)).is_err());
}

#[test]
fn tolerates_pages_installed_behind_its_back() {
    let dir = tmpdir("uffd-eexist");
    let (p, layout) = snapshot(&dir);
    let um = create_uffd_memory(&layout).unwrap();
    let marker = vec![0xeeu8; PAGE_SIZE];
    // SAFETY: copies one page from a live buffer into a registered page of `um.mem`.
    unsafe {
        um.uffd
            .copy(
                marker.as_ptr().cast(),
                host_ptr(&um.mem, 2 * 4096).cast(),
                PAGE_SIZE,
                true,
            )
            .unwrap();
    }
    let server = PageServer::start(Arc::new(um.uffd), um.regions, &p, cfg(64 << 10)).unwrap();
    let mut b = [0u8; 8];
    um.mem.read_slice(&mut b, GuestAddress(0)).unwrap();
    assert_eq!(b, [pattern(0); 8]);
    um.mem.read_slice(&mut b, GuestAddress(2 * 4096)).unwrap();
    assert_eq!(b, [0xee; 8]);
    um.mem.read_slice(&mut b, GuestAddress(3 * 4096)).unwrap();
    assert_eq!(b, [pattern(3); 8]);
    let s = server.stats();
    assert_eq!((s.faults, s.eexist, s.errors), (1, 1, 0), "{s:?}");
    assert_eq!(s.pages_copied, 16);
}

#[test]
fn removed_pages_are_served_again() {
    let dir = tmpdir("uffd-remove");
    let (p, layout) = snapshot(&dir);
    let r = restore_uffd_in_process(&layout, &p, cfg(4096)).unwrap();
    r.mem.write_slice(&[1u8; 16], GuestAddress(4096)).unwrap();
    let host = host_ptr(&r.mem, 4096);
    // SAFETY: discards one page of our own anonymous mapping.
    let rc = unsafe { libc::madvise(host.cast(), PAGE_SIZE, libc::MADV_DONTNEED) };
    assert_eq!(rc, 0);
    touch(&r.mem, 4096, 1);
    let s = r.server.stats();
    assert_eq!(s.remove_events, 1, "{s:?}");
    assert_eq!(s.faults, 2, "{s:?}");
}

#[test]
fn record_then_prefetch_avoids_faults() {
    let dir = tmpdir("uffd-ws");
    let (p, layout) = snapshot(&dir);
    let ws_path = dir.join("ws");
    let rec = ServerConfig {
        chunk_size: 4096,
        record: Some(RecordConfig {
            path: Some(ws_path.clone()),
            timeout: None,
        }),
    };
    let a = restore_uffd_in_process(&layout, &p, rec).unwrap();
    touch(&a.mem, 130 * 4096, 3);
    touch(&a.mem, 5 * 4096, 2);
    touch(&a.mem, 500 * 4096, 1);
    touch(&a.mem, HIGH, 1);
    let ws = a.server.stop_recording().unwrap().unwrap();
    // After stopping, faults are no longer recorded.
    touch(&a.mem, 900 * 4096, 1);
    assert_eq!(
        ws.runs,
        vec![
            (5 * 4096, 2 * 4096),
            (130 * 4096, 3 * 4096),
            (500 * 4096, 4096),
            (4 * MIB as u64, 4096)
        ]
    );
    assert_eq!(WorkingSet::read(&ws_path).unwrap(), ws);
    drop(a);

    let b = restore_uffd_in_process(&layout, &p, cfg(4096)).unwrap();
    let pf = b.server.prefetch_file(&ws_path).unwrap();
    assert_eq!(
        (pf.pages_copied, pf.pages_zeroed, pf.pages_skipped),
        (6, 1, 0)
    );
    assert_eq!(pf.ioctls, 4);
    touch(&b.mem, 130 * 4096, 3);
    touch(&b.mem, 5 * 4096, 2);
    touch(&b.mem, 500 * 4096, 1);
    touch(&b.mem, HIGH, 1);
    let s = b.server.stats();
    assert_eq!(s.faults, 0, "prefetched pages must not fault: {s:?}");
    assert_eq!(s.pages_prefetched, 7);
    assert_eq!(s.bytes_prefetched, 6 * 4096);
    touch(&b.mem, 7 * 4096, 1);
    assert_eq!(b.server.stats().faults, 1);
    // A second prefetch finds everything present.
    let again = b.server.prefetch(&ws, 2 << 20).unwrap();
    assert_eq!((again.pages_copied, again.pages_skipped), (0, 7));
}

#[test]
fn recording_stops_on_timeout_and_prefetch_checks_size() {
    let dir = tmpdir("uffd-ws-timeout");
    let (p, layout) = snapshot(&dir);
    let ws_path = dir.join("ws");
    let rec = ServerConfig {
        chunk_size: 4096,
        record: Some(RecordConfig {
            path: Some(ws_path.clone()),
            timeout: Some(Duration::from_millis(50)),
        }),
    };
    let a = restore_uffd_in_process(&layout, &p, rec).unwrap();
    touch(&a.mem, 0, 1);
    for _ in 0..100 {
        if ws_path.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let ws = WorkingSet::read(&ws_path).unwrap();
    assert_eq!(ws.runs, vec![(0, 4096)]);
    assert_eq!(a.server.stop_recording().unwrap().unwrap(), ws);

    let other = WorkingSet::from_ranges(12345 * 4096, [(0, 4096)]);
    assert!(matches!(
        a.server.prefetch(&other, 1 << 20),
        Err(ServerError::WorkingSet(
            WorkingSetError::SizeMismatch { .. }
        ))
    ));
}

#[test]
fn hydrate_installs_everything() {
    let dir = tmpdir("uffd-hydrate");
    let (p, layout) = snapshot(&dir);
    let r = restore_uffd_in_process(&layout, &p, cfg(64 << 10)).unwrap();
    touch(&r.mem, 0, 1);
    let installed = r.server.hydrate().unwrap();
    assert_eq!(installed, (5 * MIB / PAGE_SIZE - 16) as u64);
    touch(&r.mem, 0, 4 * MIB / PAGE_SIZE);
    touch(&r.mem, HIGH, MIB / PAGE_SIZE);
    assert_eq!(r.server.stats().faults, 1);
}

#[test]
fn refuses_short_file() {
    let dir = tmpdir("uffd-short");
    let (p, layout) = snapshot(&dir);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(MIB as u64)
        .unwrap();
    let err = restore_uffd_in_process(&layout, &p, cfg(4096)).unwrap_err();
    assert!(err.to_string().contains("regions need"), "{err}");
}

#[test]
fn external_handler_over_socketpair() {
    let dir = tmpdir("uffd-ext");
    let (p, layout) = snapshot(&dir);
    let um = create_uffd_memory(&layout).unwrap();
    let (vmm_end, handler_end) = UnixStream::pair().unwrap();
    let mem_file = p.clone();
    let handler = std::thread::spawn(move || {
        let (uffd, regions) = receive_from_vmm(&handler_end).unwrap();
        let server =
            PageServer::start_for_peer(Arc::new(uffd), regions, &mem_file, cfg(8192), handler_end)
                .unwrap();
        server.join().unwrap()
    });
    send_regions(&vmm_end, &um.uffd, &um.regions).unwrap();
    touch(&um.mem, 0, 4);
    touch(&um.mem, HIGH, 2);
    touch(&um.mem, 3000 * 4096 / 4, 2);
    // The VMM going away (closing its end) stops the handler.
    drop(vmm_end);
    let stats = handler.join().unwrap();
    assert_eq!(stats.faults, 4, "{stats:?}");
    assert_eq!((stats.pages_copied, stats.pages_zeroed), (6, 2));
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<PageServer>();
    check::<crate::InProcessUffd>();
    check::<crate::ExternalUffd>();
    check::<crate::UffdMemory>();
}
