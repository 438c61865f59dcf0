//! The block suite: virtio-blk throughput and IOPS measured inside a test guest, next to the
//! same I/O done by this host process on the same file in the same run.
//!
//! Each case boots the `virtio_blk` test guest (1 vCPU, 64 MiB) with one drive on a 64 MiB
//! file in a temporary directory (written in full first, so no block is a hole, then read once
//! so the page cache is warm) and the guest's benchmark mode on its command line
//! (`blk_bench=read|write blk_bench_count=N blk_bench_sectors=S blk_bench_depth=D
//! blk_bench_pattern=seq|rand`; see tests/guests/README.md). The guest times the whole batch
//! with the TSC and prints `blk bench ... cycles=C ...`. Right after each guest run, the peer:
//! this process does the same requests (same size, same offsets in the same order, same
//! count, the guest's write pattern) with `pread`/`pwrite` on the same file, one at a time.
//!
//! Cases: engine (Sync, Async) × op (read, write) × size (4 KiB, 128 KiB), sequential, one
//! request in flight; plus 4 KiB random reads with 4 in flight for each engine (the host peer
//! still does them one at a time).
//!
//! Metrics per case (labels `engine`, `op`, `size_kib`, `pattern`, `depth`), median, p10,
//! p90, min, max over `--runs` runs:
//! - `blk_guest_iops`, `blk_guest_mib_per_s`: from the guest's cycle count, converted with
//!   the TSC rate this process measures (the guest's CPUID does not report one on every host,
//!   and it then assumes 3 GHz; KVM without TSC scaling gives the guest the host's TSC rate).
//! - `blk_host_iops`, `blk_host_mib_per_s`: the peer.
//! - `blk_instance_start_to_exit_ms`: host wall time from `InstanceStart` sent to VMM exit,
//!   for context (boot, the batch, the guest's serial output, reset).
//! - `blk_vmm_exits_per_request`: MMIO exits that reached the VMM (from its metrics flushed at
//!   exit) beyond those of a run of the same guest without the benchmark, per request. The
//!   QueueNotify write of each request is handled by KVM's ioeventfd and is not counted.
//!
//! The report holds guest/host ratios of the medians per case, Async/Sync ratios, the probe
//! (guest cycles per MMIO read exit and per iteration of an empty loop) and the TSC rates.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tartarus_tests::TempDir;

use super::{ms, put, spawn, summary, Options};

const DISK_MIB: u64 = 64;
const GUEST_MEM_MIB: u64 = 64;
const SECTOR: u64 = 512;
/// What the guest writes: 64-bit words `WRITE_PATTERN ^ <word index in the buffer>`.
const WRITE_PATTERN: u64 = 0x7461_7274_6172_7573;
const XORSHIFT_SEED: u64 = 1;
/// Any single wait for a guest.
const WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Op {
    Read,
    Write,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    engine: &'static str,
    op: Op,
    sectors: u64,
    count: u64,
    depth: u64,
    random: bool,
}

impl Case {
    fn bytes_per_request(&self) -> u64 {
        self.sectors * SECTOR
    }

    fn pattern(&self) -> &'static str {
        if self.random {
            "rand"
        } else {
            "seq"
        }
    }

    fn label(&self) -> String {
        format!(
            "{} {} {} KiB {} depth {}",
            self.engine,
            self.op.as_str(),
            self.bytes_per_request() / 1024,
            self.pattern(),
            self.depth
        )
    }

    fn boot_args(&self) -> String {
        format!(
            "blk_bench={} blk_bench_count={} blk_bench_sectors={} blk_bench_depth={} \
             blk_bench_pattern={} blk_bench_seed={XORSHIFT_SEED}",
            self.op.as_str(),
            self.count,
            self.sectors,
            self.depth,
            self.pattern()
        )
    }

    fn labels(&self) -> Value {
        json!({"engine": self.engine, "op": self.op.as_str(),
            "size_kib": self.bytes_per_request() / 1024, "pattern": self.pattern(),
            "depth": self.depth, "count": self.count})
    }
}

/// The cases, with counts that keep a run to a fraction of a second here.
fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for engine in ["Sync", "Async"] {
        for op in [Op::Read, Op::Write] {
            for (sectors, count) in [(8, 1024), (256, 256)] {
                v.push(Case {
                    engine,
                    op,
                    sectors,
                    count,
                    depth: 1,
                    random: false,
                });
            }
        }
        v.push(Case {
            engine,
            op: Op::Read,
            sectors: 8,
            count: 1024,
            depth: 4,
            random: true,
        });
    }
    v
}

/// The disk offsets of a batch, in submission order (the guest's formula).
fn offsets(case: &Case, disk_bytes: u64) -> Vec<u64> {
    let units = disk_bytes / case.bytes_per_request();
    let mut x = XORSHIFT_SEED;
    (0..case.count)
        .map(|i| {
            let unit = if case.random {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % units
            } else {
                i % units
            };
            unit * case.bytes_per_request()
        })
        .collect()
}

/// The guest's OUT buffer contents.
fn write_buffer(len: usize) -> Vec<u8> {
    (0..len / 8)
        .flat_map(|j| (WRITE_PATTERN ^ j as u64).to_le_bytes())
        .collect()
}

/// The peer: the batch done by this process with pread/pwrite. Returns seconds.
fn host_batch(case: &Case, file: &File, offsets: &[u64]) -> Result<f64, String> {
    let len = case.bytes_per_request() as usize;
    let mut buf = match case.op {
        Op::Read => vec![0u8; len],
        Op::Write => write_buffer(len),
    };
    let t = Instant::now();
    for &off in offsets {
        match case.op {
            Op::Read => file.read_exact_at(&mut buf, off),
            Op::Write => file.write_all_at(&buf, off),
        }
        .map_err(|e| format!("host {} at {off}: {e}", case.op.as_str()))?;
    }
    let secs = t.elapsed().as_secs_f64();
    std::hint::black_box(&buf);
    Ok(secs)
}

/// The `key=value` words of the guest's first line starting with `prefix`.
fn guest_line(out: &str, prefix: &str) -> Option<HashMap<String, String>> {
    let line = out.lines().find(|l| l.starts_with(prefix))?;
    Some(
        line.split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn field(map: &HashMap<String, String>, key: &str) -> Result<u64, String> {
    map.get(key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("guest line has no number {key}=: {map:?}"))
}

/// What one guest run gave.
struct GuestRun {
    output: String,
    /// InstanceStart sent → VMM exit.
    wall_ms: f64,
    /// exits_mmio_read + exits_mmio_write from the metrics flushed at exit.
    mmio_exits: u64,
}

/// Boots the virtio_blk guest on `disk` with `engine` and `boot_args`, waits for its exit.
fn run_guest(
    opts: &Options,
    disk: &Path,
    engine: &str,
    boot_args: &str,
) -> Result<GuestRun, String> {
    let mut vmm = spawn(opts)?;
    vmm.try_wait_for_socket(Duration::from_secs(15), Duration::from_micros(500))
        .map_err(|e| format!("API socket: {e}\n{}", vmm.diagnostics()))?;
    let metrics = vmm.dir().join("metrics.json");
    put(&vmm, "/metrics", json!({ "metrics_path": metrics }))?;
    put(
        &vmm,
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": GUEST_MEM_MIB}),
    )?;
    put(
        &vmm,
        "/drives/bench",
        json!({"drive_id": "bench", "path_on_host": disk, "is_root_device": false,
            "io_engine": engine}),
    )?;
    put(
        &vmm,
        "/boot-source",
        json!({"kernel_image_path": opts.guests.get("virtio_blk.elf"), "boot_args": boot_args}),
    )?;
    let sent = Instant::now();
    put(&vmm, "/actions", json!({"action_type": "InstanceStart"}))?;
    let status = vmm
        .try_wait_exit(WAIT, Duration::from_micros(200))
        .ok_or_else(|| format!("no exit within {WAIT:?}\n{}", vmm.diagnostics()))?;
    let wall_ms = ms(sent.elapsed());
    let output = vmm.output();
    if status.code() != Some(0) || !output.contains("virtio-blk: done") {
        return Err(format!(
            "guest run failed ({status})\n{}",
            vmm.diagnostics()
        ));
    }
    let text = std::fs::read_to_string(&metrics)
        .map_err(|e| format!("{}: {e}\n{}", metrics.display(), vmm.diagnostics()))?;
    let last: Value = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| format!("no metrics record in {}", metrics.display()))?;
    let exits = |k: &str| last["vcpu"][k].as_u64().unwrap_or(0);
    Ok(GuestRun {
        output,
        wall_ms,
        mmio_exits: exits("exits_mmio_read") + exits("exits_mmio_write"),
    })
}

/// TSC ticks per millisecond of this host, against the monotonic clock over ~200 ms.
fn host_tsc_khz() -> f64 {
    let rdtsc = || {
        // SAFETY: RDTSC reads a counter; it has no memory effects and exists on every x86_64 CPU.
        unsafe { std::arch::x86_64::_rdtsc() }
    };
    let (t0, c0) = (Instant::now(), rdtsc());
    std::thread::sleep(Duration::from_millis(200));
    let (c1, el) = (rdtsc(), t0.elapsed());
    (c1 - c0) as f64 / ms(el)
}

/// A file of `DISK_MIB` MiB with non-zero contents, then read once (page cache warm).
fn make_disk(path: &Path) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = File::create(path).map_err(err)?;
    let chunk: Vec<u8> = (0..1u64 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    for _ in 0..DISK_MIB {
        f.write_all(&chunk).map_err(err)?;
    }
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::read(path).map_err(err)?;
    Ok(())
}

#[derive(Default)]
struct Samples {
    guest_iops: Vec<f64>,
    guest_mib_s: Vec<f64>,
    host_iops: Vec<f64>,
    host_mib_s: Vec<f64>,
    wall_ms: Vec<f64>,
    exits_per_request: Vec<f64>,
    guest_reported_tsc_khz: Option<u64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    super::percentile(&s, 50.0)
}

fn round3(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// `x` to 4 significant digits (ratios far below 1 keep their digits).
fn sig4(x: f64) -> Value {
    if !x.is_finite() || x == 0.0 {
        return round3(x);
    }
    let scale = 10f64.powi(3 - x.abs().log10().floor() as i32);
    json!((x * scale).round() / scale)
}

fn bench_case(
    opts: &Options,
    case: &Case,
    disk: &Path,
    tsc_khz: f64,
    reference_exits: u64,
) -> Result<Samples, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(|e| format!("{}: {e}", disk.display()))?;
    let offs = offsets(case, DISK_MIB << 20);
    let bytes = (case.count * case.bytes_per_request()) as f64;
    let mib = bytes / (1u64 << 20) as f64;
    let args = case.boot_args();
    let mut s = Samples::default();
    for i in 0..opts.runs {
        eprint!("\rblock {}: {}/{}   ", case.label(), i + 1, opts.runs);
        let g = run_guest(opts, disk, case.engine, &args)?;
        let line = guest_line(&g.output, "blk bench op=")
            .ok_or_else(|| format!("no `blk bench` line in:\n{}", g.output))?;
        if field(&line, "errors")? != 0 || field(&line, "count")? != case.count {
            return Err(format!("guest batch failed: {line:?}"));
        }
        let secs = field(&line, "cycles")? as f64 / tsc_khz / 1000.0;
        s.guest_reported_tsc_khz = Some(field(&line, "tsc_khz")?);
        s.guest_iops.push(case.count as f64 / secs);
        s.guest_mib_s.push(mib / secs);
        s.wall_ms.push(g.wall_ms);
        s.exits_per_request
            .push(g.mmio_exits.saturating_sub(reference_exits) as f64 / case.count as f64);
        let h = host_batch(case, &file, &offs)?;
        s.host_iops.push(case.count as f64 / h);
        s.host_mib_s.push(mib / h);
    }
    eprintln!();
    Ok(s)
}

/// Runs the block suite: (report, metrics).
pub(crate) fn run(opts: &Options) -> Result<(Value, Vec<Value>), String> {
    let guest = opts.guests.get("virtio_blk.elf");
    if !guest.is_file() {
        return Err(format!("{} not found", guest.display()));
    }
    let dir = TempDir::new("blkbench");
    let disk = dir.join("disk.img");
    make_disk(&disk)?;
    let tsc_khz = host_tsc_khz();

    // Exits of the same guest without the benchmark, per engine; and the probe.
    let mut reference = HashMap::new();
    for engine in ["Sync", "Async"] {
        let g = run_guest(opts, &disk, engine, "bench_reference")?;
        reference.insert(engine, g.mmio_exits);
    }
    let probe_run = run_guest(opts, &disk, "Sync", "blk_bench_probe")?;
    let probe = guest_line(&probe_run.output, "blk probe ")
        .ok_or_else(|| format!("no `blk probe` line in:\n{}", probe_run.output))?;
    let cycles_us = |k: &str| field(&probe, k).map(|c| c as f64 / tsc_khz * 1000.0);
    let probe = json!({
        "mmio_read_exit_us": round3(cycles_us("mmio_read_cycles")?),
        "empty_loop_iteration_us": round3(cycles_us("loop_cycles")?),
        "what": "guest-timed: one read of InterruptStatus (a VM exit handled by the VMM), one iteration of a volatile counting loop (ring-0 instructions are emulated here)",
    });

    let mut metrics = Vec::new();
    let mut rows = Vec::new();
    let mut guest_tsc = None;
    let mut guest_iops_by = HashMap::new();
    for case in cases() {
        let s = bench_case(opts, &case, &disk, tsc_khz, reference[case.engine])?;
        guest_tsc = guest_tsc.or(s.guest_reported_tsc_khz);
        let labels = case.labels();
        for (name, unit, samples) in [
            ("blk_guest_iops", "1/s", &s.guest_iops),
            ("blk_guest_mib_per_s", "MiB/s", &s.guest_mib_s),
            ("blk_host_iops", "1/s", &s.host_iops),
            ("blk_host_mib_per_s", "MiB/s", &s.host_mib_s),
            ("blk_instance_start_to_exit_ms", "ms", &s.wall_ms),
            ("blk_vmm_exits_per_request", "exits", &s.exits_per_request),
        ] {
            let mut v = summary(name, unit, samples);
            if let (Some(o), Some(l)) = (v.as_object_mut(), labels.as_object()) {
                o.extend(l.clone());
            }
            metrics.push(v);
        }
        let (gi, hi) = (median(&s.guest_iops), median(&s.host_iops));
        guest_iops_by.insert((case.op, case.sectors, case.depth, case.engine), gi);
        let mut row = labels.clone();
        row["guest_iops"] = round3(gi);
        row["guest_mib_per_s"] = round3(median(&s.guest_mib_s));
        row["host_iops"] = round3(hi);
        row["host_mib_per_s"] = round3(median(&s.host_mib_s));
        row["ratio_guest_to_host"] = sig4(gi / hi);
        row["host_times_faster"] = sig4(hi / gi);
        row["instance_start_to_exit_ms"] = round3(median(&s.wall_ms));
        row["vmm_exits_per_request"] = round3(median(&s.exits_per_request));
        rows.push(row);
    }
    let mut async_vs_sync = Vec::new();
    for case in cases().iter().filter(|c| c.engine == "Async") {
        let iops = |engine| {
            guest_iops_by
                .get(&(case.op, case.sectors, case.depth, engine))
                .copied()
                .unwrap_or(f64::NAN)
        };
        let (a, s) = (iops("Async"), iops("Sync"));
        let mut v = case.labels();
        if let Some(o) = v.as_object_mut() {
            o.remove("engine");
        }
        v["ratio_async_to_sync_guest_iops"] = sig4(a / s);
        async_vs_sync.push(v);
    }
    let report = json!({
        "config": {
            "guest": guest,
            "guest_mem_mib": GUEST_MEM_MIB,
            "vcpu_count": 1,
            "disk_mib": DISK_MIB,
            "cache_type": "Unsafe",
            "host_tsc_khz_measured": round3(tsc_khz),
            "guest_reported_tsc_khz": guest_tsc,
            "reference_vmm_mmio_exits": reference,
            "notes": [
                "Guest figures: the virtio_blk test guest's benchmark mode, one batch per run timed with the TSC (first request queued -> last completion), converted with host_tsc_khz_measured.",
                "Host figures: this process does the same requests (size, offsets, order, count, write data) with pread/pwrite on the same file right after each guest run, one at a time; the file is in the page cache for both (no O_DIRECT anywhere).",
                "The guest driver runs in ring 0, which this nested PVM host emulates (see probe): its own instructions per request, not the device, set the guest figures here.",
                "vmm_exits_per_request counts MMIO exits that reached the VMM (InterruptStatus read + InterruptACK write per completion round); each request's QueueNotify is one more exit, handled in KVM through the ioeventfd.",
            ],
        },
        "probe": probe,
        "cases": rows,
        "async_vs_sync": async_vs_sync,
    });
    Ok((report, metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_the_guest_formula() {
        let mut c = cases()[0];
        c.count = 5;
        c.sectors = 8;
        assert_eq!(offsets(&c, 16 * 4096), vec![0, 4096, 8192, 12288, 16384]);
        c.count = 20;
        let o = offsets(&c, 4 * 4096);
        assert_eq!(o[4], 0, "sequential offsets wrap at the end of the disk");
        c.random = true;
        c.count = 3;
        // xorshift64 (13, 7, 17) from 1: 1082269761, 1152992998833853505, ...
        let units = (1u64 << 26) / 4096;
        let o = offsets(&c, 1 << 26);
        assert_eq!(o[0], (1082269761 % units) * 4096);
        assert_eq!(o[1], (1152992998833853505 % units) * 4096);
        assert!(o.iter().all(|x| x % 4096 == 0 && *x < 1 << 26));
    }

    #[test]
    fn guest_line_fields() {
        let out = "virtio-blk: capacity=8\nblk bench op=read count=8 cycles=123 tsc_khz=3000000 errors=0 sum=0x1f\nvirtio-blk: done\n";
        let m = guest_line(out, "blk bench op=").unwrap();
        assert_eq!(field(&m, "cycles").unwrap(), 123);
        assert_eq!(m["sum"], "0x1f");
        assert!(field(&m, "bytes").is_err());
        assert!(guest_line(out, "blk probe").is_none());
    }

    #[test]
    fn significant_digits() {
        assert_eq!(sig4(0.0023456), json!(0.002346));
        assert_eq!(sig4(433.26), json!(433.3));
        assert_eq!(sig4(1.0), json!(1.0));
        assert_eq!(sig4(f64::NAN), Value::Null);
    }

    #[test]
    fn write_buffer_matches_the_guest_pattern() {
        let b = write_buffer(16);
        assert_eq!(&b[0..8], &WRITE_PATTERN.to_le_bytes());
        assert_eq!(&b[8..16], &(WRITE_PATTERN ^ 1).to_le_bytes());
    }
}
