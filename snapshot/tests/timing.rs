//! Rough timings of the memory paths (`cargo test -p snapshot --release --test timing -- --ignored --nocapture`).
//! Not a benchmark: the project's benches/ measure end to end.

use std::time::Instant;

use snapshot::{
    restore_file, restore_uffd_in_process, write_diff, write_full, GuestMemoryMmap, MemoryLayout,
    ServerConfig, WorkingSet,
};
use vm_memory::{Bytes, GuestAddress};

#[test]
#[ignore]
fn timings_128mib() {
    let size = 128usize << 20;
    let dir = std::env::temp_dir().join(format!("tartarus-timing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap();
    // A booted small guest: about a quarter of pages touched.
    for pg in (0..size / 4096).step_by(4) {
        mem.write_obj(pg as u64 | 1, GuestAddress((pg * 4096) as u64))
            .unwrap();
    }
    let p = dir.join("mem");
    let t = Instant::now();
    let s = write_full(&mem, &p).unwrap();
    println!(
        "write_full 128 MiB ({} pages): {:?}",
        s.pages_written,
        t.elapsed()
    );
    let t = Instant::now();
    let s = write_full(&mem, &p).unwrap();
    println!(
        "write_full again (file replaced): {:?} {} runs",
        t.elapsed(),
        s.runs
    );
    for pg in (0..size / 4096).step_by(64) {
        mem.write_obj(7u64, GuestAddress((pg * 4096) as u64))
            .unwrap();
    }
    let t = Instant::now();
    let s = write_diff(&mem, &[], &p).unwrap();
    println!("write_diff {} pages: {:?}", s.pages_written, t.elapsed());
    let layout = MemoryLayout::of(&mem);
    let t = Instant::now();
    let m = restore_file(&p, &layout).unwrap();
    println!("restore_file: {:?}", t.elapsed());
    drop(m);
    let t = Instant::now();
    let r = restore_uffd_in_process(&layout, &p, ServerConfig::default()).unwrap();
    println!("restore_uffd_in_process: {:?}", t.elapsed());
    let ws = WorkingSet::from_ranges(size as u64, [(0, 16 << 20)]);
    let t = Instant::now();
    let pf = r.server.prefetch(&ws, 2 << 20).unwrap();
    println!("prefetch 16 MiB: {:?} {pf:?}", t.elapsed());
    let t = Instant::now();
    let n = r.server.hydrate().unwrap();
    println!("hydrate {n} pages: {:?}", t.elapsed());
    let r2 = restore_uffd_in_process(&layout, &p, ServerConfig::default()).unwrap();
    let t = Instant::now();
    let mut buf = vec![0u8; size];
    r2.mem.read_slice(&mut buf, GuestAddress(0)).unwrap();
    println!(
        "fault in 128 MiB in 64 KiB chunks: {:?} {:?}",
        t.elapsed(),
        r2.server.stats()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
