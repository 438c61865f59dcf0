//! The snapshot suite: snapshot create, `/snapshot/load` and wake latency, restores per second,
//! private memory of a restored VMM, and peer baselines measured in the same run.
//!
//! For 128 MiB and 1 GiB guests (1 vCPU), each in two variants:
//! - `pretouched`: before the snapshot the bench writes a distinct non-zero pattern into every
//!   guest page from 16 MiB up (`process_vm_writev` into the VMM's guest mapping), so the memory
//!   file is dense. The test guest itself touches only a few pages, so this stands in for a
//!   guest with a big memory footprint; its working set after a restore stays small.
//! - `untouched`: nothing but the guest's own few pages; the memory file is almost all holes.
//!
//! Metrics (each with `mem_mib`, `variant` and, where it applies, `backend` labels; median,
//! p10, p90, min, max over `--runs` runs):
//! - `snapshot_create_full_ms`: `PUT /snapshot/create` Full request sent → 204, on a paused
//!   hello guest idling in `wait_cad` (machine-config `track_dirty_pages: true`).
//! - `snapshot_create_diff_ms`: after that Full, resume for 20 ms, pause, Diff onto the same file.
//! - `mem_file_size_bytes`, `mem_file_allocated_bytes` (st_blocks * 512) after the Full.
//! - `snapshot_load_ms` (request sent → 204) and `wake_ms` (request sent → first serial byte of
//!   the restored guest) with `resume_vm: true`, for File, Uffd (the VMM's page server) and
//!   Uffd+prefetch (working set recorded once, then prefetched). The snapshot is of the hello
//!   guest counting (`wait_cad count=100000`, which the guest caps at 1000) paused a few lines
//!   in, so the restored guest prints its next line at once.
//! - `restores_per_second` with 1, 2, 4, 8 threads (each loop: spawn a VMM, File load with
//!   `resume_vm: true`, first serial byte, kill), over `--restores` restores per level.
//! - `restored_vmm_private_kib`: Private_Clean + Private_Dirty of a File-restored VMM 100 ms after
//!   resume, without its guest mapping (the memory file's path).
//! - Baselines: `baseline_mmap_file_us` (mmap MAP_PRIVATE of the memory file from the bench),
//!   `baseline_file_copy_{128m,1g}_ms` (read the memory file into a buffer),
//!   `baseline_spawn_exit_ms` (`tartarus-vmm --version`: exec + exit).
//!
//! The report also holds ratios to the baselines and to Firecracker's figures measured on this
//! host, and the targets with a pass/miss flag each.

mod host;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tartarus_tests::{TempDir, Vmm, SOCKET_TIMEOUT};

use super::{classify, ms, parse_smaps, spawn, summary, GuestMemBy, Options};
use host::{baseline_copy_ms, baseline_mmap_us, baseline_spawn_ms, file_sizes, pretouch};

const SIZES_MIB: [u64; 2] = [128, 1024];
const CONCURRENCY: [usize; 4] = [1, 2, 4, 8];
/// The hello guest caps `count=` at 1000.
const WAKE_ARGS: &str = "wait_cad count=100000";
const IDLE_ARGS: &str = "wait_cad";
/// Pause the counting guest once it printed this line.
const PAUSE_AFTER: &str = "count: 3\n";
/// The pre-touch pattern starts here, well above anything the hello guest uses.
const PRETOUCH_FROM: u64 = 16 << 20;
/// Any single wait (guest output, file to appear).
const WAIT: Duration = Duration::from_secs(20);

const FC_LOAD_FILE_MS: f64 = 7.9;
const FC_LOAD_UFFD_MS: f64 = 13.1;
const FC_CREATE_FULL_128_MS: f64 = 230.0;
const TARGET_LOAD_MS: f64 = 2.0;
const TARGET_WAKE_MS: f64 = 5.0;
const TARGET_CREATE_FULL_128_MS: f64 = 100.0;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Pretouched,
    Untouched,
}

impl Variant {
    fn as_str(self) -> &'static str {
        match self {
            Variant::Pretouched => "pretouched",
            Variant::Untouched => "untouched",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    File,
    Uffd,
    UffdPrefetch,
}

const BACKENDS: [Backend; 3] = [Backend::File, Backend::Uffd, Backend::UffdPrefetch];

impl Backend {
    fn as_str(self) -> &'static str {
        match self {
            Backend::File => "File",
            Backend::Uffd => "Uffd",
            Backend::UffdPrefetch => "Uffd+prefetch",
        }
    }
}

/// Labelled summaries, and their medians for ratios and targets.
#[derive(Default)]
struct Collector {
    metrics: Vec<Value>,
    medians: HashMap<String, f64>,
}

fn key(name: &str, mib: u64, variant: Variant, backend: Option<Backend>) -> String {
    format!(
        "{name}|{mib}|{}|{}",
        variant.as_str(),
        backend.map_or("", |b| b.as_str())
    )
}

impl Collector {
    fn add(
        &mut self,
        name: &str,
        unit: &str,
        (mib, variant, backend): (u64, Variant, Option<Backend>),
        samples: &[f64],
    ) {
        let mut v = summary(name, unit, samples);
        v["mem_mib"] = json!(mib);
        v["variant"] = json!(variant.as_str());
        if let Some(b) = backend {
            v["backend"] = json!(b.as_str());
        }
        if let Some(m) = v["median"].as_f64() {
            self.medians.insert(key(name, mib, variant, backend), m);
        }
        self.metrics.push(v);
    }

    fn median(&self, name: &str, mib: u64, variant: Variant, backend: Option<Backend>) -> f64 {
        self.medians
            .get(&key(name, mib, variant, backend))
            .copied()
            .unwrap_or(f64::NAN)
    }
}

// ---- VMM helpers (errors, never panics: the release profile aborts on panic) ----

fn request(vmm: &Vmm, method: &str, path: &str, body: &Value) -> Result<(), String> {
    let r = vmm
        .try_request(method, path, Some(body.to_string().as_bytes()))
        .map_err(|e| format!("{e}\n{}", vmm.diagnostics()))?;
    if r.status == 204 || r.status == 200 {
        Ok(())
    } else {
        Err(format!(
            "{method} {path} {body} -> {r}\n{}",
            vmm.diagnostics()
        ))
    }
}

fn set_state(vmm: &Vmm, state: &str) -> Result<(), String> {
    request(vmm, "PATCH", "/vm", &json!({ "state": state }))
}

fn spawn_ready(opts: &Options) -> Result<Vmm, String> {
    let vmm = spawn(opts)?;
    vmm.try_wait_for_socket(SOCKET_TIMEOUT, Duration::from_micros(500))
        .map_err(|e| format!("API socket: {e}\n{}", vmm.diagnostics()))?;
    Ok(vmm)
}

fn wait_output(vmm: &Vmm, needle: &str) -> Result<String, String> {
    vmm.try_wait_for_output(needle, WAIT)
        .map_err(|e| format!("serial output {needle:?}: {e}\n{}", vmm.diagnostics()))
}

/// When the first serial byte arrived (timestamped by the harness's reader thread).
fn wait_first_byte(vmm: &Vmm) -> Result<Instant, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(t) = vmm.first_output_at() {
            return Ok(t);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no serial output within {WAIT:?} of the restore\n{}",
                vmm.diagnostics()
            ));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Boots the hello guest until it waits for Ctrl-Alt-Del.
fn boot_guest(opts: &Options, mib: u64, args: &str, track_dirty: bool) -> Result<Vmm, String> {
    let vmm = spawn_ready(opts)?;
    let mc = json!({"vcpu_count": 1, "mem_size_mib": mib, "track_dirty_pages": track_dirty});
    request(&vmm, "PUT", "/machine-config", &mc)?;
    let boot = json!({"kernel_image_path": opts.guests.hello_elf, "boot_args": args});
    request(&vmm, "PUT", "/boot-source", &boot)?;
    request(
        &vmm,
        "PUT",
        "/actions",
        &json!({"action_type": "InstanceStart"}),
    )?;
    wait_output(&vmm, "waiting for ctrl-alt-del")?;
    Ok(vmm)
}

/// `PUT /snapshot/create`; returns request sent → 204 in ms.
fn create(vmm: &Vmm, kind: &str, state: &Path, mem: &Path) -> Result<f64, String> {
    let body = json!({"snapshot_type": kind, "snapshot_path": state, "mem_file_path": mem});
    let t = Instant::now();
    request(vmm, "PUT", "/snapshot/create", &body)?;
    Ok(ms(t.elapsed()))
}

/// Full and Diff create times on an idle guest; keeps one Full as `idle.{state,mem}`.
fn bench_create(
    opts: &Options,
    mib: u64,
    variant: Variant,
    dir: &Path,
    c: &mut Collector,
) -> Result<Snap, String> {
    let vmm = boot_guest(opts, mib, IDLE_ARGS, true)?;
    if variant == Variant::Pretouched {
        pretouch(&vmm, mib, &opts.guests.hello_elf)?;
    }
    set_state(&vmm, "Paused")?;
    let (state, mem) = (dir.join("c.state"), dir.join("c.mem"));
    create(&vmm, "Full", &state, &mem)?; // warm-up
    let n = opts.runs;
    let (mut full, mut diff, mut size, mut alloc, mut alloc_diff) =
        (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..n {
        eprint!(
            "\rsnapshot create {mib} MiB {}: {}/{n}   ",
            variant.as_str(),
            i + 1
        );
        let _ = std::fs::remove_file(&mem);
        full.push(create(&vmm, "Full", &state, &mem)?);
        let (s, a) = file_sizes(&mem)?;
        size.push(s);
        alloc.push(a);
        set_state(&vmm, "Resumed")?;
        std::thread::sleep(Duration::from_millis(20));
        set_state(&vmm, "Paused")?;
        diff.push(create(&vmm, "Diff", &dir.join("d.state"), &mem)?);
        alloc_diff.push(file_sizes(&mem)?.1);
    }
    eprintln!();
    let l = (mib, variant, None);
    c.add("snapshot_create_full_ms", "ms", l, &full);
    c.add("snapshot_create_diff_ms", "ms", l, &diff);
    c.add("mem_file_size_bytes", "bytes", l, &size);
    c.add("mem_file_allocated_bytes", "bytes", l, &alloc);
    c.add(
        "mem_file_allocated_after_diff_bytes",
        "bytes",
        l,
        &alloc_diff,
    );
    let snap = Snap {
        state: dir.join("idle.state"),
        mem: dir.join("idle.mem"),
        ws: dir.join("idle.ws"),
        paused_at: 0,
    };
    create(&vmm, "Full", &snap.state, &snap.mem)?;
    for p in [&state, &mem, &dir.join("d.state")] {
        let _ = std::fs::remove_file(p);
    }
    Ok(snap)
}

/// Files of one snapshot.
struct Snap {
    state: PathBuf,
    mem: PathBuf,
    /// Working-set file for Uffd+prefetch.
    ws: PathBuf,
    /// The last complete `count:` line before the pause (0 for the idle snapshot).
    paused_at: u32,
}

/// The `count: N` values of complete lines.
fn counts(out: &str) -> Vec<u32> {
    out.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.strip_prefix("count: "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// Snapshots the hello guest a few lines into its count.
fn wake_snapshot(opts: &Options, mib: u64, variant: Variant, dir: &Path) -> Result<Snap, String> {
    let vmm = boot_guest(opts, mib, WAKE_ARGS, false)?;
    if variant == Variant::Pretouched {
        pretouch(&vmm, mib, &opts.guests.hello_elf)?;
    }
    request(
        &vmm,
        "PUT",
        "/actions",
        &json!({"action_type": "SendCtrlAltDel"}),
    )?;
    wait_output(&vmm, PAUSE_AFTER)?;
    set_state(&vmm, "Paused")?;
    let snap = Snap {
        state: dir.join("wake.state"),
        mem: dir.join("wake.mem"),
        ws: dir.join("wake.ws"),
        paused_at: counts(&vmm.output()).last().copied().unwrap_or(0),
    };
    create(&vmm, "Full", &snap.state, &snap.mem)?;
    let out = vmm.output();
    if out.contains("resetting") {
        return Err(format!(
            "the guest finished counting before the pause:\n{out}"
        ));
    }
    Ok(snap)
}

fn load_body(snap: &Snap, backend: Backend, record: bool) -> Value {
    let kind = if backend == Backend::File {
        "File"
    } else {
        "Uffd"
    };
    let mut body = json!({
        "snapshot_path": snap.state,
        "mem_backend": {"backend_type": kind, "backend_path": snap.mem},
        "resume_vm": true,
        "track_dirty_pages": false,
    });
    if backend == Backend::UffdPrefetch {
        body["prefetch"] =
            json!({"working_set_path": snap.ws, "record": record, "record_ms": 10_000});
    }
    body
}

/// Records the working set once: restore, let the guest run 20 ms, pause (ends recording).
fn record_working_set(opts: &Options, snap: &Snap) -> Result<(), String> {
    let vmm = spawn_ready(opts)?;
    request(
        &vmm,
        "PUT",
        "/snapshot/load",
        &load_body(snap, Backend::UffdPrefetch, true),
    )?;
    wait_first_byte(&vmm)?;
    std::thread::sleep(Duration::from_millis(20));
    set_state(&vmm, "Paused")?;
    let deadline = Instant::now() + WAIT;
    while !snap.ws.exists() {
        if Instant::now() > deadline {
            return Err(format!(
                "no working set at {}\n{}",
                snap.ws.display(),
                vmm.diagnostics()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// One restore: (load ms, wake ms). With `check`, also that the guest continued its count.
fn load_once(
    opts: &Options,
    snap: &Snap,
    backend: Backend,
    check: bool,
) -> Result<(f64, f64), String> {
    let mut vmm = spawn_ready(opts)?;
    let body = load_body(snap, backend, false);
    let t0 = Instant::now();
    request(&vmm, "PUT", "/snapshot/load", &body)?;
    let loaded = t0.elapsed();
    let first = wait_first_byte(&vmm)?;
    if check {
        let deadline = Instant::now() + WAIT;
        let out = loop {
            let out = vmm.output();
            if !counts(&out).is_empty() || Instant::now() > deadline {
                break out;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        match counts(&out).first() {
            Some(&k) if k >= snap.paused_at.max(2) && !out.contains("tartarus-guest: hello") => {}
            _ => {
                return Err(format!(
                    "{}: the restored guest did not continue from count {}:\n{}",
                    backend.as_str(),
                    snap.paused_at,
                    vmm.diagnostics()
                ))
            }
        }
    }
    vmm.kill();
    Ok((ms(loaded), ms(first.saturating_duration_since(t0))))
}

fn bench_loads(
    opts: &Options,
    snap: &Snap,
    (mib, variant): (u64, Variant),
    c: &mut Collector,
) -> Result<(), String> {
    record_working_set(opts, snap)?;
    let n = opts.runs;
    for backend in BACKENDS {
        load_once(opts, snap, backend, true)?; // warm-up and correctness check
        let (mut load, mut wake) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            eprint!(
                "\rsnapshot load {mib} MiB {} {}: {}/{n}   ",
                variant.as_str(),
                backend.as_str(),
                i + 1
            );
            let (l, w) = load_once(opts, snap, backend, false)?;
            load.push(l);
            wake.push(w);
        }
        eprintln!();
        c.add(
            "snapshot_load_ms",
            "ms",
            (mib, variant, Some(backend)),
            &load,
        );
        c.add("wake_ms", "ms", (mib, variant, Some(backend)), &wake);
    }
    Ok(())
}

/// Restores per second with `threads` concurrent loops over `total` restores, and the
/// per-restore times (spawn → first serial byte).
fn restores_per_second(
    opts: &Options,
    snap: &Snap,
    threads: usize,
    total: usize,
) -> Result<(f64, Duration, Vec<f64>), String> {
    let remaining = AtomicUsize::new(total);
    let failed: Mutex<Option<String>> = Mutex::new(None);
    let times: Mutex<Vec<f64>> = Mutex::new(Vec::with_capacity(total));
    let one = || -> Result<f64, String> {
        let t = Instant::now();
        let mut vmm = spawn_ready(opts)?;
        request(
            &vmm,
            "PUT",
            "/snapshot/load",
            &load_body(snap, Backend::File, false),
        )?;
        wait_first_byte(&vmm)?;
        vmm.kill();
        Ok(ms(t.elapsed()))
    };
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while remaining
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1))
                    .is_ok()
                {
                    match one() {
                        Ok(t) => times.lock().unwrap_or_else(|e| e.into_inner()).push(t),
                        Err(e) => {
                            remaining.store(0, Ordering::Release);
                            *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                        }
                    }
                }
            });
        }
    });
    let wall = start.elapsed();
    if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let times = times.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok((times.len() as f64 / wall.as_secs_f64(), wall, times))
}

/// Private memory of a File-restored VMM (KiB): all, and its guest mapping's.
fn restored_private(
    opts: &Options,
    snap: &Snap,
    mib: u64,
) -> Result<(f64, f64, GuestMemBy), String> {
    let mut vmm = spawn_ready(opts)?;
    request(
        &vmm,
        "PUT",
        "/snapshot/load",
        &load_body(snap, Backend::File, false),
    )?;
    std::thread::sleep(Duration::from_millis(100));
    let path = format!("/proc/{}/smaps", vmm.pid());
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let s = classify(&parse_smaps(&text), mib * 1024, Some(&snap.mem));
    vmm.kill();
    let own = s.private_kib.saturating_sub(s.guest_private_kib);
    Ok((own as f64, s.guest_private_kib as f64, s.guest_by))
}

fn bench_baselines(
    opts: &Options,
    snap: &Snap,
    (mib, variant): (u64, Variant),
    c: &mut Collector,
) -> Result<(), String> {
    let n = opts.runs;
    let mut buf = Vec::new();
    baseline_copy_ms(&snap.mem, &mut buf)?; // warm-up: page cache, buffer
    let (mut mmap, mut copy) = (vec![], vec![]);
    for _ in 0..n {
        mmap.push(baseline_mmap_us(&snap.mem)?);
        copy.push(baseline_copy_ms(&snap.mem, &mut buf)?);
    }
    let l = (mib, variant, None);
    c.add("baseline_mmap_file_us", "us", l, &mmap);
    let copy_name = if mib == 128 {
        "baseline_file_copy_128m_ms".to_string()
    } else if mib == 1024 {
        "baseline_file_copy_1g_ms".to_string()
    } else {
        format!("baseline_file_copy_{mib}m_ms")
    };
    c.add(&copy_name, "ms", l, &copy);
    c.add("baseline_file_copy_ms", "ms", l, &copy);
    Ok(())
}

fn round3(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// Ratios and targets from the medians.
fn derive(c: &Collector) -> (Vec<Value>, Vec<Value>) {
    let (mut ratios, mut targets) = (vec![], vec![]);
    let target = |name: &str, limit: f64, got: f64, labels: Value| {
        let mut v = json!({"target": name, "limit_ms": limit, "median_ms": round3(got),
            "pass": got <= limit, "result": if got <= limit { "pass" } else { "miss" }});
        if let (Some(o), Some(l)) = (v.as_object_mut(), labels.as_object()) {
            o.extend(l.clone());
        }
        v
    };
    for variant in [Variant::Pretouched, Variant::Untouched] {
        for mib in SIZES_MIB {
            let full = c.median("snapshot_create_full_ms", mib, variant, None);
            let labels = json!({"mem_mib": mib, "variant": variant.as_str()});
            if mib == 128 {
                targets.push(target(
                    "snapshot_create_full_ms <= 100 (128 MiB)",
                    TARGET_CREATE_FULL_128_MS,
                    full,
                    labels.clone(),
                ));
                ratios.push(json!({"ratio": "snapshot_create_full_ms / firecracker_create_full_128_ms",
                    "mem_mib": mib, "variant": variant.as_str(), "value": round3(full / FC_CREATE_FULL_128_MS)}));
            }
            let mmap_ms = c.median("baseline_mmap_file_us", mib, variant, None) / 1000.0;
            let copy_ms = c.median("baseline_file_copy_ms", mib, variant, None);
            for b in BACKENDS {
                let load = c.median("snapshot_load_ms", mib, variant, Some(b));
                let wake = c.median("wake_ms", mib, variant, Some(b));
                let mut l = labels.clone();
                l["backend"] = json!(b.as_str());
                targets.push(target(
                    "snapshot_load_ms <= 2",
                    TARGET_LOAD_MS,
                    load,
                    l.clone(),
                ));
                targets.push(target("wake_ms <= 5", TARGET_WAKE_MS, wake, l.clone()));
                let fc = if b == Backend::File {
                    ("firecracker_load_file_ms", FC_LOAD_FILE_MS)
                } else {
                    ("firecracker_load_uffd_ms", FC_LOAD_UFFD_MS)
                };
                for (name, v) in [
                    ("snapshot_load_ms / baseline_mmap_file_ms", load / mmap_ms),
                    ("snapshot_load_ms / baseline_file_copy_ms", load / copy_ms),
                    ("wake_ms / baseline_file_copy_ms", wake / copy_ms),
                    (&format!("snapshot_load_ms / {}", fc.0), load / fc.1),
                ] {
                    let mut r = l.clone();
                    r["ratio"] = json!(name);
                    r["value"] = round3(v);
                    ratios.push(r);
                }
            }
        }
    }
    (ratios, targets)
}

/// Runs the snapshot suite: (report, metrics).
pub(crate) fn run(opts: &Options) -> Result<(Value, Vec<Value>), String> {
    let mut c = Collector::default();
    let mut rps = Vec::new();
    let mut context = Vec::new();
    let spawn_samples: Vec<f64> = (0..opts.runs)
        .map(|_| baseline_spawn_ms(opts))
        .collect::<Result<_, _>>()?;
    let spawn_median = {
        let mut s = spawn_samples.clone();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let mut spawn_metric = summary("baseline_spawn_exit_ms", "ms", &spawn_samples);
    spawn_metric["what"] = json!("tartarus-vmm --version: fork, exec, exit");
    c.metrics.push(spawn_metric);
    for mib in SIZES_MIB {
        for variant in [Variant::Pretouched, Variant::Untouched] {
            let dir = TempDir::new("snapbench");
            let idle = bench_create(opts, mib, variant, dir.path(), &mut c)?;
            let wake = wake_snapshot(opts, mib, variant, dir.path())?;
            context.push(json!({"mem_mib": mib, "variant": variant.as_str(),
                "paused_at_count": wake.paused_at,
                "wake_mem_file": file_sizes(&wake.mem).ok().map(|(s, a)| json!({"size_bytes": s, "allocated_bytes": a})),
                "working_set_file_bytes": std::fs::metadata(&wake.ws).ok().map(|m| m.len())}));
            bench_loads(opts, &wake, (mib, variant), &mut c)?;
            if let Some(ctx) = context.last_mut() {
                ctx["working_set_file_bytes"] =
                    json!(std::fs::metadata(&wake.ws).ok().map(|m| m.len()));
            }
            bench_baselines(opts, &wake, (mib, variant), &mut c)?;
            if variant != Variant::Pretouched {
                continue;
            }
            // Restores per second and private memory: File backend, pre-touched snapshot.
            for threads in CONCURRENCY {
                eprint!("\rrestores_per_second {mib} MiB, {threads} threads   ");
                let (r, wall, times) = restores_per_second(opts, &wake, threads, opts.restores)?;
                let mut v = summary("restore_spawn_to_first_serial_ms", "ms", &times);
                v["mem_mib"] = json!(mib);
                v["concurrency"] = json!(threads);
                c.metrics.push(v);
                rps.push(
                    json!({"name": "restores_per_second", "unit": "1/s", "mem_mib": mib,
                    "variant": variant.as_str(), "backend": "File", "concurrency": threads,
                    "restores": times.len(), "wall_s": round3(wall.as_secs_f64()),
                    "value": round3(r),
                    "spawn_limited_rate_per_thread": round3(1000.0 / spawn_median)}),
                );
            }
            eprintln!();
            let mut own = vec![];
            let mut guest = vec![];
            let mut by = GuestMemBy::Name;
            for i in 0..opts.runs {
                eprint!(
                    "\rrestored_vmm_private_kib {mib} MiB: {}/{}   ",
                    i + 1,
                    opts.runs
                );
                let (o, g, b) = restored_private(opts, &idle, mib)?;
                own.push(o);
                guest.push(g);
                if b != GuestMemBy::Name {
                    by = b;
                }
            }
            eprintln!();
            if by != GuestMemBy::Name {
                return Err(format!(
                    "the restored guest mapping ({}) was not found by name in smaps ({})",
                    idle.mem.display(),
                    by.as_str()
                ));
            }
            c.add(
                "restored_vmm_private_kib",
                "KiB",
                (mib, variant, Some(Backend::File)),
                &own,
            );
            c.add(
                "restored_guest_private_kib",
                "KiB",
                (mib, variant, Some(Backend::File)),
                &guest,
            );
        }
    }
    let (ratios, targets) = derive(&c);
    let mut metrics = c.metrics;
    metrics.extend(rps);
    let report = json!({
        "config": {
            "sizes_mib": SIZES_MIB,
            "vcpu_count": 1,
            "guest": opts.guests.hello_elf,
            "wake_guest_args": WAKE_ARGS,
            "create_guest_args": IDLE_ARGS,
            "restores_per_level": opts.restores,
            "concurrency": CONCURRENCY,
            "notes": [
                "The test guest (hello.elf) has a tiny working set: a few pages of code, data and stack; it never touches the rest of its memory. Its count= is capped at 1000 by the guest.",
                "variant pretouched: before the snapshot the bench wrote a distinct non-zero pattern into every guest page from 16 MiB up (process_vm_writev into the VMM's guest mapping), so the memory file is dense; the guest still touches only a few pages after a restore.",
                "variant untouched: the host wrote nothing into the guest; the memory file is almost all holes (see mem_file_allocated_bytes).",
                "Full and Diff creates run on a hello guest idling in wait_cad with track_dirty_pages on; Diff follows a Full after 20 ms of running.",
                "load and wake: resume_vm true; wake = load request sent -> first serial byte of the restored guest; every run is a fresh VMM; the memory file is in the page cache (it was just written).",
                "restores_per_second and restored_vmm_private_kib use the pretouched snapshot with the File backend.",
                "Absolute numbers on this nested PVM host are noisy: compare the ratios to the baselines measured in the same run."
            ],
        },
        "context": context,
        "reference_firecracker_on_this_host": {
            "load_file_ms": FC_LOAD_FILE_MS,
            "load_uffd_ms": FC_LOAD_UFFD_MS,
            "create_full_128mib_ms": FC_CREATE_FULL_128_MS,
            "source": "PVM.md / issue 4 (Firecracker 1.17, tiny ELF guest)",
        },
        "targets": targets,
        "ratios": ratios,
    });
    Ok((report, metrics))
}
