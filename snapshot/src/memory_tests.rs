use super::*;
use crate::test_util::{anon_mem, host_ptr, pattern, tmpdir};
use std::os::unix::fs::MetadataExt;
use vm_memory::{Bytes, GuestMemoryBackend};

const MIB: usize = 1 << 20;
const HIGH: u64 = 0x1_0000_0000;

fn two_region_mem() -> GuestMemoryMmap {
    anon_mem(&[(0, 16 * MIB), (HIGH, 8 * MIB)])
}

/// Fills page `gpa` with its pattern through the VMM path (marks the AtomicBitmap).
fn fill(mem: &GuestMemoryMmap, gpa: u64) {
    mem.write_slice(&[pattern(gpa / 4096); PAGE_SIZE], GuestAddress(gpa))
        .unwrap();
}

fn page(mem: &GuestMemoryMmap, gpa: u64) -> Vec<u8> {
    let mut b = vec![0u8; PAGE_SIZE];
    mem.read_slice(&mut b, GuestAddress(gpa)).unwrap();
    b
}

fn bitmap_is_clear(mem: &GuestMemoryMmap) -> bool {
    mem.iter().all(|r| {
        let m: &MmapRegion<AtomicBitmap> = r;
        m.bitmap().get_and_reset().iter().all(|&w| w == 0)
    })
}

#[test]
fn layout_from_ranges() {
    let l =
        MemoryLayout::from_ranges(&[(GuestAddress(0), 4096), (GuestAddress(HIGH), 8192)]).unwrap();
    assert_eq!(l.regions[1].file_offset, 4096);
    assert_eq!(l.file_size(), 12288);
    assert_eq!(l.ranges()[1], (GuestAddress(HIGH), 8192));
    assert!(MemoryLayout::from_ranges(&[]).is_err());
    assert!(MemoryLayout::from_ranges(&[(GuestAddress(0), 100)]).is_err());
    assert!(
        MemoryLayout::from_ranges(&[(GuestAddress(0), 8192), (GuestAddress(4096), 4096)]).is_err()
    );
    assert_eq!(
        MemoryLayout::of(&two_region_mem()).file_size(),
        24 * MIB as u64
    );
}

#[test]
fn full_round_trip_is_sparse() {
    let dir = tmpdir("full");
    let p = dir.join("mem");
    let mem = two_region_mem();
    let written = [0u64, 4096, 8192, 5 * 4096, 0xfff000, HIGH, HIGH + 0x7ff000];
    for &g in &written {
        fill(&mem, g);
    }
    let stats = write_full(&mem, &p).unwrap();
    assert_eq!(stats.total_bytes, 24 * MIB as u64);
    assert_eq!(stats.pages_written, written.len() as u64);
    assert_eq!(stats.bytes_written, (written.len() * PAGE_SIZE) as u64);
    // 0..3 and 5 are separate runs; the last page of region 0 and both of region 1 too.
    assert_eq!(stats.runs, 5);
    assert_eq!(
        stats.zero_pages_skipped,
        (24 * MIB / PAGE_SIZE - written.len()) as u64
    );
    assert!(bitmap_is_clear(&mem), "write_full clears the VMM bitmap");

    let md = fs::metadata(&p).unwrap();
    assert_eq!(md.len(), 24 * MIB as u64);
    assert!(
        md.blocks() * 512 < 1024 * 1024,
        "file should be sparse, {} blocks",
        md.blocks()
    );
    // No temp file left.
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);

    let back = restore_file(&p, &MemoryLayout::of(&mem)).unwrap();
    for &g in &written {
        assert_eq!(page(&back, g), vec![pattern(g / 4096); PAGE_SIZE], "{g:#x}");
    }
    assert_eq!(page(&back, 3 * 4096), vec![0; PAGE_SIZE]);
    assert_eq!(page(&back, HIGH + 4096), vec![0; PAGE_SIZE]);
}

#[test]
fn full_replaces_file_mapped_by_a_running_vm() {
    let dir = tmpdir("full-replace");
    let p = dir.join("mem");
    let mem = anon_mem(&[(0, MIB)]);
    fill(&mem, 0);
    write_full(&mem, &p).unwrap();
    let running = restore_file(&p, &MemoryLayout::of(&mem)).unwrap();
    // Snapshot again to the same path with different content: `running` keeps the old bytes.
    mem.write_slice(&[0xaa; PAGE_SIZE], GuestAddress(0))
        .unwrap();
    write_full(&mem, &p).unwrap();
    assert_eq!(page(&running, 0), vec![pattern(0); PAGE_SIZE]);
    let fresh = restore_file(&p, &MemoryLayout::of(&mem)).unwrap();
    assert_eq!(page(&fresh, 0), vec![0xaa; PAGE_SIZE]);
}

#[test]
fn file_restore_is_private() {
    let dir = tmpdir("private");
    let p = dir.join("mem");
    let mem = anon_mem(&[(0, MIB)]);
    fill(&mem, 4096);
    write_full(&mem, &p).unwrap();
    let a = restore_file(&p, &MemoryLayout::of(&mem)).unwrap();
    let b = restore_file(&p, &MemoryLayout::of(&mem)).unwrap();
    a.write_slice(&[7; PAGE_SIZE], GuestAddress(4096)).unwrap();
    assert_eq!(page(&a, 4096), vec![7; PAGE_SIZE]);
    assert_eq!(page(&b, 4096), vec![pattern(1); PAGE_SIZE]);
    let on_disk = fs::read(&p).unwrap();
    assert_eq!(on_disk[4096], pattern(1));
    // Restored memory has a dirty bitmap of the right size.
    let r = a.iter().next().unwrap();
    let m: &MmapRegion<AtomicBitmap> = r;
    assert!(m.bitmap().is_addr_set(4096));
}

#[test]
fn file_too_short_or_missing() {
    let dir = tmpdir("short");
    let p = dir.join("mem");
    fs::write(&p, vec![0u8; 8192]).unwrap();
    let layout = MemoryLayout::from_ranges(&[(GuestAddress(0), 16384)]).unwrap();
    let err = restore_file(&p, &layout).unwrap_err();
    assert!(matches!(
        err,
        MemError::FileTooShort {
            expected: 16384,
            actual: 8192,
            ..
        }
    ));
    assert!(matches!(
        restore_file(&dir.join("nope"), &layout).unwrap_err(),
        MemError::Io { op: "open", .. }
    ));
}

#[test]
fn diff_writes_only_dirty_pages() {
    let dir = tmpdir("diff");
    let p = dir.join("mem");
    let mem = two_region_mem();
    fill(&mem, 0);
    fill(&mem, HIGH);
    write_full(&mem, &p).unwrap();

    let layout = MemoryLayout::of(&mem);
    let mut kvm: Vec<Vec<u64>> = layout
        .regions
        .iter()
        .map(|r| vec![0u64; (r.size as usize / PAGE_SIZE).div_ceil(64)])
        .collect();
    // Guest writes (host pointer, no VMM bitmap) reported by KVM: pages 10, 11 and 63, 64.
    for pg in [10u64, 11, 63, 64] {
        // SAFETY: the page is inside region 0 of `mem`.
        unsafe { std::ptr::write_bytes(host_ptr(&mem, pg * 4096), 0x5a, PAGE_SIZE) };
        kvm[0][(pg / 64) as usize] |= 1 << (pg % 64);
    }
    // VMM write (marks the AtomicBitmap) in region 1, adjacent to a KVM-dirty page.
    mem.write_slice(&[0x33; PAGE_SIZE], GuestAddress(HIGH + 4096))
        .unwrap();
    // SAFETY: inside region 1.
    unsafe { std::ptr::write_bytes(host_ptr(&mem, HIGH), 0x44, PAGE_SIZE) };
    kvm[1][0] |= 1;
    // A change nobody reported must not reach the file.
    // SAFETY: inside region 0.
    unsafe { std::ptr::write_bytes(host_ptr(&mem, 100 * 4096), 0x99, PAGE_SIZE) };

    let s = write_diff(&mem, &kvm, &p).unwrap();
    assert_eq!(s.pages_written, 6);
    assert_eq!(s.runs, 3, "10-11, 63-64 and region 1's 0-1");
    assert!(bitmap_is_clear(&mem));

    let back = restore_file(&p, &layout).unwrap();
    assert_eq!(page(&back, 0), vec![pattern(0); PAGE_SIZE]);
    for pg in [10u64, 11, 63, 64] {
        assert_eq!(page(&back, pg * 4096), vec![0x5a; PAGE_SIZE]);
    }
    assert_eq!(page(&back, HIGH), vec![0x44; PAGE_SIZE]);
    assert_eq!(page(&back, HIGH + 4096), vec![0x33; PAGE_SIZE]);
    assert_eq!(page(&back, 100 * 4096), vec![0; PAGE_SIZE]);

    // Without KVM bitmaps only the VMM's own writes count.
    mem.write_slice(&[0x11; PAGE_SIZE], GuestAddress(200 * 4096))
        .unwrap();
    let s = write_diff(&mem, &[], &p).unwrap();
    assert_eq!((s.pages_written, s.runs), (1, 1));
}

#[test]
fn diff_refuses_bad_base_and_bitmaps() {
    let dir = tmpdir("diff-bad");
    let p = dir.join("mem");
    let mem = anon_mem(&[(0, MIB)]);
    fs::write(&p, vec![0u8; 4096]).unwrap();
    mem.write_slice(&[1; 16], GuestAddress(0)).unwrap();
    let err = write_diff(&mem, &[], &p).unwrap_err();
    assert!(matches!(
        err,
        MemError::BaseSizeMismatch {
            actual: 4096,
            expected: 1048576,
            ..
        }
    ));
    // The VMM's dirty bits survive the failed attempt.
    let r = mem.iter().next().unwrap();
    let m: &MmapRegion<AtomicBitmap> = r;
    assert!(m.bitmap().is_addr_set(0));

    assert!(matches!(
        write_diff(&mem, &[vec![], vec![]], &p).unwrap_err(),
        MemError::DirtyBitmap { .. }
    ));
    assert!(matches!(
        write_diff(&mem, &[vec![0; 3]], &p).unwrap_err(),
        MemError::DirtyBitmap { region: 0, .. }
    ));
    assert!(matches!(
        write_diff(&mem, &[], &dir.join("missing")).unwrap_err(),
        MemError::Io { .. }
    ));
}

#[test]
fn run_helpers() {
    let mut runs = Vec::new();
    for_each_run(0b1110_0110, |a, b| runs.push((a, b)));
    assert_eq!(runs, vec![(1, 3), (5, 8)]);
    runs.clear();
    for_each_run(!0, |a, b| runs.push((a, b)));
    assert_eq!(runs, vec![(0, 64)]);
    runs.clear();
    for_each_run(1 << 63, |a, b| runs.push((a, b)));
    assert_eq!(runs, vec![(63, 64)]);

    // Runs merge across words; bits past `npages` are ignored.
    let kvm = [1u64 << 63, 0b1, !0];
    assert_eq!(dirty_runs(130, Some(&kvm), &[]), vec![(63, 65), (128, 130)]);
    assert_eq!(dirty_runs(64, None, &[0b1010]), vec![(1, 2), (3, 4)]);
}
