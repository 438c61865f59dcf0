//! `tartarus-bench`: VMM-side boot-path and memory-overhead benchmarks.
//!
//! ```text
//! tartarus-bench [--suite boot|snapshot|block|vsock|net|linux|sandbox|images|auth|audit|density|code|all] [--runs N] [--restores N] [--vmm PATH] [--guests DIR]
//!                [--outage-s S]
//!                [--out FILE]
//! ```
//! Prints one JSON document to stdout (and to FILE with `--out`): host facts, the configuration
//! and, for each metric, `{"name","unit","runs","median","p10","p90","min","max"}`.
//!
//! Boot suite metrics (each run uses a fresh `tartarus-vmm` process):
//! - `api_ready_ms`: spawn → the first successful `connect()` on the API socket (polled tightly).
//! - `instance_start_to_first_serial_ms`: `InstanceStart` sent → first byte on the VMM's stdout
//!   (hello.elf with `wait_cad`, so it stays alive).
//! - `vmm_private_overhead_kib`: with that guest waiting, the VMM's total Rss from
//!   `/proc/<pid>/smaps` minus the Rss of the guest memory (`[anon:tartarus-guest-mem]`; on
//!   hosts without CONFIG_ANON_VMA_NAME the name is missing and the guest mapping is found by
//!   size instead, see `config.guest_mem_identified_by` in the output).
//! - `vmm_private_dirty_overhead_kib`: Private_Dirty excluding the guest memory.
//! - `guest_mem_rss_kib`: Rss of the guest memory, for context.
//! - `instance_start_to_exit_ms`: `InstanceStart` sent → VMM exit, hello.elf without `wait_cad`.
//!
//! The snapshot suite (snapshot create, load and wake latency, restores per second, private
//! memory of a restored VMM, peer baselines, targets) is described in [`snapshot`].
//!
//! The block suite (virtio-blk IOPS and throughput in a test guest, Sync vs Async engine, next
//! to the same I/O from a host process) is described in [`block`].
//!
//! The linux suite (our kernel + root fs: boot phases from guest clocks, agent exec round trip,
//! restore → first agent reply) is described in [`linux`]; the net suite (virtio-net TX/RX packets
//! per second against a host veth peer) in [`net`]. `all` runs boot, snapshot, block and vsock; the net
//! suite (needs root) and the linux suite run only when asked for. The vsock suite (round-trip
//! latency and echo throughput against a Unix socket pair) is described in [`vsock`].
//!
//! The images suite (OCI image pull + ext4 root fs build, cold and cached, next to a
//! skopeo + umoci + mkfs.ext4 pipeline; needs neither the VMM nor the test guests; 3 runs by
//! default; not part of `all`) is described in [`images`].
//!
//! The auth suite (per-request cost of API keys, JWTs and mTLS identities next to no auth;
//! needs neither the VMM nor the test guests; not part of `all`) is described in [`auth`].
//!
//! The audit suite (audit log append rate with group commit vs fsync per record, forwarder
//! throughput to a real rsyslogd over RELP and TCP, catch-up after an outage of `--outage-s`
//! seconds, default 5; needs neither the VMM nor the guests; 5 runs by default; not part of
//! `all`) is described in [`audit`].

mod audit;
mod auth;
mod block;
mod code;
mod density;
mod images;
mod linux;
mod net;
mod sandbox;
mod sandbox_wake;
mod snapshot;
mod vsock;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tartarus_tests::guest::{build_guests, default_guest_dir, Guests};
use tartarus_tests::{
    repo_root, vmm_binary_near, TempDir, Vmm, VmmBuilder, GUEST_TIMEOUT, VMM_BIN,
};

/// Name under which the VMM's guest-memory mappings appear in smaps.
const GUEST_MEM_NAME: &str = "[anon:tartarus-guest-mem]";
const MEM_MIB: u64 = 128;

/// Which benchmarks to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Suite {
    Boot,
    Snapshot,
    Block,
    /// Our Linux kernel + root fs (slow on PVM hosts; not part of `all`).
    Linux,
    Net,
    Vsock,
    /// tartarusd with the base template (needs root; not part of `all`).
    Sandbox,
    /// OCI image → ext4 root fs (needs the python-ds fixture and a registry; not part of `all`).
    Images,
    /// Authentication cost per request (no VMM; not part of `all`).
    Auth,
    /// Audit log + syslog forwarder (needs rsyslog; not part of `all`).
    Audit,
    /// Hibernated + running sandboxes held at once (needs root; heavy; not part of `all`).
    Density,
    /// The sandbox suite's python-ds create → code result alone (root, the images fixture).
    Code,
    All,
}

impl Suite {
    fn includes(self, s: Suite) -> bool {
        self == s
            || (self == Suite::All
                && s != Suite::Linux
                && s != Suite::Sandbox
                && s != Suite::Images
                && s != Suite::Auth
                && s != Suite::Audit
                && s != Suite::Density
                && s != Suite::Code)
    }
}

struct Options {
    suite: Suite,
    runs: usize,
    /// Restores per concurrency level for `restores_per_second`.
    restores: usize,
    /// Linux boots for the linux suite's boot-phase figures.
    linux_boots: usize,
    /// Sandboxes alive at once for the sandbox suite's density figures.
    sandboxes: usize,
    /// Audit suite: seconds rsyslog stays down for the catch-up figure.
    outage_s: u64,
    /// Density suite: running and hibernated sandboxes held at once.
    running: usize,
    hibernated: usize,
    wake_samples: usize,
    vmm: PathBuf,
    guests: Guests,
    out: Option<PathBuf>,
}

const USAGE: &str =
    "usage: tartarus-bench [--suite boot|snapshot|block|vsock|net|linux|sandbox|images|auth|audit|density|code|all] [--runs N] [--restores N] [--linux-boots N] [--sandboxes N] [--outage-s S] [--running N] [--hibernated N] [--wake-samples N] \
[--vmm PATH] [--guests DIR] [--out FILE]";

fn positive(name: &str, v: &str) -> Result<usize, String> {
    v.parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{name}: not a positive number: {v}"))
}

fn parse_args() -> Result<Options, String> {
    let mut runs: Option<usize> = None;
    let mut restores = 40usize;
    let mut linux_boots = 1usize;
    let mut sandboxes = 20usize;
    let mut outage_s = 5u64;
    let mut running = 50usize;
    let mut hibernated = 200usize;
    let mut wake_samples = 3usize;
    let mut suite = Suite::All;
    let mut vmm: Option<PathBuf> = None;
    let mut guests_dir: Option<PathBuf> = None;
    let mut out: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--runs" => runs = Some(positive("--runs", &value("--runs")?)?),
            "--restores" => restores = positive("--restores", &value("--restores")?)?,
            "--linux-boots" => linux_boots = positive("--linux-boots", &value("--linux-boots")?)?,
            "--sandboxes" => sandboxes = positive("--sandboxes", &value("--sandboxes")?)?,
            "--outage-s" => outage_s = positive("--outage-s", &value("--outage-s")?)? as u64,
            "--running" => running = positive("--running", &value("--running")?)?,
            "--hibernated" => hibernated = positive("--hibernated", &value("--hibernated")?)?,
            "--wake-samples" => {
                wake_samples = positive("--wake-samples", &value("--wake-samples")?)?
            }
            "--suite" => {
                suite = match value("--suite")?.as_str() {
                    "boot" => Suite::Boot,
                    "snapshot" => Suite::Snapshot,
                    "block" => Suite::Block,
                    "linux" => Suite::Linux,
                    "net" => Suite::Net,
                    "vsock" => Suite::Vsock,
                    "sandbox" => Suite::Sandbox,
                    "images" => Suite::Images,
                    "auth" => Suite::Auth,
                    "audit" => Suite::Audit,
                    "density" => Suite::Density,
                    "code" => Suite::Code,
                    "all" => Suite::All,
                    other => return Err(format!("--suite: unknown suite {other:?}\n{USAGE}")),
                }
            }
            "--vmm" => vmm = Some(value("--vmm")?.into()),
            "--guests" => guests_dir = Some(value("--guests")?.into()),
            "--out" => out = Some(value("--out")?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    // Each images run moves ~100 MB through a registry and builds a ~400 MB file system.
    let runs = runs.unwrap_or(match suite {
        Suite::Images => 3,
        Suite::Audit => 5,
        _ => 20,
    });
    let vmm = match vmm.or_else(|| std::env::var_os("TARTARUS_VMM").map(PathBuf::from)) {
        Some(p) => p,
        None => default_vmm()?,
    };
    let vmm = std::path::absolute(&vmm).unwrap_or(vmm);
    if !vmm.is_file() && !matches!(suite, Suite::Images | Suite::Auth | Suite::Audit) {
        return Err(format!(
            "{} not found: run `cargo build --release -p vmm` first, or pass --vmm",
            vmm.display()
        ));
    }
    let guests = match guests_dir {
        Some(dir) => {
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            let g = Guests {
                hello_elf: dir.join("hello.elf"),
                hello_bzimage: dir.join("hello.bzImage"),
                dir,
            };
            if !g.hello_elf.is_file() {
                return Err(format!("{} not found", g.hello_elf.display()));
            }
            g
        }
        // The images suite boots nothing: no guests to build.
        None if matches!(suite, Suite::Images | Suite::Auth | Suite::Audit) => {
            let dir = default_guest_dir();
            Guests {
                hello_elf: dir.join("hello.elf"),
                hello_bzimage: dir.join("hello.bzImage"),
                dir,
            }
        }
        None => build_guests(&default_guest_dir())?,
    };
    Ok(Options {
        suite,
        runs,
        restores,
        linux_boots,
        sandboxes,
        outage_s,
        running,
        hibernated,
        wake_samples,
        vmm,
        guests,
        out,
    })
}

/// The release VMM: next to this binary when it is a release build, else `<repo>/target/release`.
fn default_vmm() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    if let Some(dir) = exe.parent() {
        let p = vmm_binary_near(dir);
        if dir.file_name().is_some_and(|n| n == "release") && p.is_file() {
            return Ok(p);
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    Ok(target.join("release").join(VMM_BIN))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Linear-interpolated percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.len() == 1 {
        return sorted[0];
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn summary(name: &str, unit: &str, samples: &[f64]) -> Value {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).expect("no NaN samples"));
    json!({
        "name": name,
        "unit": unit,
        "runs": s.len(),
        "median": round3(percentile(&s, 50.0)),
        "p10": round3(percentile(&s, 10.0)),
        "p90": round3(percentile(&s, 90.0)),
        "min": round3(s[0]),
        "max": round3(s[s.len() - 1]),
    })
}

// The release profile aborts on panic, so nothing here may panic while a VMM runs: every
// step returns an error instead, and the handles are dropped (VMMs killed, directories removed).

pub(crate) fn spawn(opts: &Options) -> Result<Vmm, String> {
    VmmBuilder::new()
        .binary(&opts.vmm)
        .try_spawn_in(TempDir::new("bench"))
}

/// A PUT that must answer 204 (or 200).
fn put(vmm: &Vmm, path: &str, body: Value) -> Result<(), String> {
    let r = vmm
        .try_request("PUT", path, Some(body.to_string().as_bytes()))
        .map_err(|e| format!("{e}\n{}", vmm.diagnostics()))?;
    if r.status == 204 || r.status == 200 {
        Ok(())
    } else {
        Err(format!("PUT {path} {body} -> {r}\n{}", vmm.diagnostics()))
    }
}

fn action(vmm: &Vmm, action_type: &str) -> Result<(), String> {
    put(vmm, "/actions", json!({ "action_type": action_type }))
}

fn configure(vmm: &Vmm, kernel: &Path, boot_args: &str) -> Result<(), String> {
    put(
        vmm,
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": MEM_MIB}),
    )?;
    put(
        vmm,
        "/boot-source",
        json!({"kernel_image_path": kernel, "boot_args": boot_args}),
    )
}

/// spawn → first successful connect().
fn api_ready(opts: &Options) -> Result<f64, String> {
    let mut vmm = spawn(opts)?;
    let d = vmm
        .try_wait_for_socket(Duration::from_secs(15), Duration::ZERO)
        .map_err(|e| format!("API socket: {e}\n{}", vmm.diagnostics()))?;
    vmm.kill();
    Ok(ms(d))
}

/// One mapping of `/proc/<pid>/smaps`.
#[derive(Clone, Debug, Default, PartialEq)]
struct Mapping {
    perms: String,
    name: String,
    size_kib: u64,
    rss_kib: u64,
    private_clean_kib: u64,
    private_dirty_kib: u64,
}

fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if first.ends_with(':') {
            let Some(m) = maps.last_mut() else { continue };
            let value: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match first {
                "Size:" => m.size_kib = value,
                "Rss:" => m.rss_kib = value,
                "Private_Clean:" => m.private_clean_kib = value,
                "Private_Dirty:" => m.private_dirty_kib = value,
                _ => {}
            }
        } else if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping header: address perms offset dev inode [name...]
            let perms = fields.next().unwrap_or_default().to_string();
            let name: Vec<&str> = fields.skip(3).collect();
            maps.push(Mapping {
                perms,
                name: name.join(" "),
                ..Default::default()
            });
        }
    }
    maps
}

/// How the guest-memory mappings were told apart from the VMM's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GuestMemBy {
    /// `[anon:tartarus-guest-mem]` (needs CONFIG_ANON_VMA_NAME in the host kernel), or the
    /// memory file's path for a File-backed restore.
    Name,
    /// Unnamed writable anonymous mappings of about the guest size. The kernel may merge the
    /// guest mapping with an adjacent anonymous one (e.g. a malloc arena), so this
    /// over-counts guest memory by at most that neighbour.
    Size,
    NotFound,
}

impl GuestMemBy {
    fn as_str(self) -> &'static str {
        match self {
            GuestMemBy::Name => "name",
            GuestMemBy::Size => "size",
            GuestMemBy::NotFound => "not found",
        }
    }
}

#[derive(Debug)]
struct Smaps {
    total_rss_kib: u64,
    guest_rss_kib: u64,
    private_dirty_kib: u64,
    guest_private_dirty_kib: u64,
    /// Private_Clean + Private_Dirty of every mapping.
    private_kib: u64,
    guest_private_kib: u64,
    guest_by: GuestMemBy,
}

/// Slack allowed above the guest size when guest memory is found by size.
const MERGE_SLACK_KIB: u64 = 8 * 1024;

/// Splits `maps` into guest memory and the rest. `mem_file` is the memory file of a File-backed
/// restore, whose guest mapping carries the file's path (` (deleted)` once it is unlinked).
fn classify(maps: &[Mapping], guest_mem_kib: u64, mem_file: Option<&Path>) -> Smaps {
    let file = mem_file.map(|p| p.display().to_string());
    let is_guest_file = |name: &str| {
        file.as_deref()
            .is_some_and(|f| name == f || name.strip_suffix(" (deleted)") == Some(f))
    };
    let named: Vec<&Mapping> = maps
        .iter()
        .filter(|m| m.name == GUEST_MEM_NAME || is_guest_file(&m.name))
        .collect();
    let (guest, guest_by) = if !named.is_empty() {
        (named, GuestMemBy::Name)
    } else {
        let sized: Vec<&Mapping> = maps
            .iter()
            .filter(|m| {
                m.name.is_empty()
                    && m.perms.starts_with("rw")
                    && m.size_kib >= guest_mem_kib
                    && m.size_kib <= guest_mem_kib + MERGE_SLACK_KIB
            })
            .collect();
        if sized.is_empty() {
            (sized, GuestMemBy::NotFound)
        } else {
            (sized, GuestMemBy::Size)
        }
    };
    Smaps {
        total_rss_kib: maps.iter().map(|m| m.rss_kib).sum(),
        guest_rss_kib: guest.iter().map(|m| m.rss_kib).sum(),
        private_dirty_kib: maps.iter().map(|m| m.private_dirty_kib).sum(),
        guest_private_dirty_kib: guest.iter().map(|m| m.private_dirty_kib).sum(),
        private_kib: maps
            .iter()
            .map(|m| m.private_clean_kib + m.private_dirty_kib)
            .sum(),
        guest_private_kib: guest
            .iter()
            .map(|m| m.private_clean_kib + m.private_dirty_kib)
            .sum(),
        guest_by,
    }
}

struct StartRun {
    first_serial_ms: f64,
    smaps: Smaps,
}

/// InstanceStart → first serial byte, then the memory overhead while the guest waits.
fn start_to_first_serial(opts: &Options) -> Result<StartRun, String> {
    let mut vmm = spawn(opts)?;
    vmm.try_wait_for_socket(Duration::from_secs(15), Duration::from_millis(1))
        .map_err(|e| format!("API socket: {e}\n{}", vmm.diagnostics()))?;
    configure(&vmm, &opts.guests.hello_elf, "wait_cad")?;
    let sent = Instant::now();
    action(&vmm, "InstanceStart")?;
    vmm.try_wait_for_output("waiting for ctrl-alt-del", GUEST_TIMEOUT)
        .map_err(|e| format!("guest: {e}\n{}", vmm.diagnostics()))?;
    let first = vmm
        .first_output_at()
        .ok_or("serial output seen but no first-byte time")?;
    let smaps_path = format!("/proc/{}/smaps", vmm.pid());
    let text = std::fs::read_to_string(&smaps_path).map_err(|e| format!("{smaps_path}: {e}"))?;
    let smaps = classify(&parse_smaps(&text), MEM_MIB * 1024, None);
    action(&vmm, "SendCtrlAltDel")?;
    if vmm
        .try_wait_exit(GUEST_TIMEOUT, Duration::from_millis(2))
        .is_none()
    {
        return Err(format!(
            "no exit after SendCtrlAltDel\n{}",
            vmm.diagnostics()
        ));
    }
    Ok(StartRun {
        first_serial_ms: ms(first.saturating_duration_since(sent)),
        smaps,
    })
}

/// InstanceStart → process exit (the guest resets right after printing).
fn start_to_exit(opts: &Options, kernel: &Path) -> Result<f64, String> {
    let mut vmm = spawn(opts)?;
    vmm.try_wait_for_socket(Duration::from_secs(15), Duration::from_millis(1))
        .map_err(|e| format!("API socket: {e}\n{}", vmm.diagnostics()))?;
    configure(&vmm, kernel, "bench")?;
    let sent = Instant::now();
    action(&vmm, "InstanceStart")?;
    let status = vmm
        .try_wait_exit(GUEST_TIMEOUT, Duration::from_micros(200))
        .ok_or_else(|| format!("no exit within {GUEST_TIMEOUT:?}\n{}", vmm.diagnostics()))?;
    let elapsed = sent.elapsed();
    if status.code() != Some(0) {
        return Err(format!("exit status {status}\n{}", vmm.diagnostics()));
    }
    Ok(ms(elapsed))
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn host_facts(opts: &Options) -> Value {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    let kvm = if Path::new("/sys/module/kvm_pvm").exists() {
        "kvm_pvm"
    } else if Path::new("/sys/module/kvm_intel").exists() {
        "kvm_intel"
    } else if Path::new("/sys/module/kvm_amd").exists() {
        "kvm_amd"
    } else {
        "unknown"
    };
    let vmm_version = Command::new(&opts.vmm)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let mem_total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    });
    json!({
        "kernel": read_trim("/proc/sys/kernel/osrelease"),
        "nproc": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "cpu_model": cpu_model,
        "mem_total_kib": mem_total_kib,
        "kvm": kvm,
        "vmm": opts.vmm,
        "vmm_version": vmm_version,
        "timestamp_unix": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).ok(),
    })
}

/// The boot suite: its configuration and metrics.
fn run_boot(opts: &Options) -> Result<(Value, Vec<Value>), String> {
    let n = opts.runs;
    let progress = |name: &str, i: usize| eprint!("\r{name}: {}/{n}   ", i + 1);

    // Warm-up (page cache, guest build): one untimed run of each kind.
    api_ready(opts)?;
    start_to_exit(opts, &opts.guests.hello_elf)?;

    let mut api = Vec::with_capacity(n);
    for i in 0..n {
        progress("api_ready_ms", i);
        api.push(api_ready(opts)?);
    }
    eprintln!();

    let mut first_serial = Vec::with_capacity(n);
    let mut overhead = Vec::with_capacity(n);
    let mut dirty = Vec::with_capacity(n);
    let mut guest_rss = Vec::with_capacity(n);
    let mut guest_by = GuestMemBy::Name;
    for i in 0..n {
        progress("instance_start_to_first_serial_ms", i);
        let r = start_to_first_serial(opts)?;
        if r.smaps.guest_by != GuestMemBy::Name && guest_by != GuestMemBy::NotFound {
            guest_by = r.smaps.guest_by;
        }
        first_serial.push(r.first_serial_ms);
        overhead.push(r.smaps.total_rss_kib.saturating_sub(r.smaps.guest_rss_kib) as f64);
        dirty.push(
            r.smaps
                .private_dirty_kib
                .saturating_sub(r.smaps.guest_private_dirty_kib) as f64,
        );
        guest_rss.push(r.smaps.guest_rss_kib as f64);
    }
    eprintln!();
    match guest_by {
        GuestMemBy::Name => {}
        GuestMemBy::Size => eprintln!(
            "note: no {GUEST_MEM_NAME} mapping in smaps (host kernel without \
             CONFIG_ANON_VMA_NAME?); guest memory found by size instead"
        ),
        GuestMemBy::NotFound => eprintln!(
            "warning: guest memory not found in smaps: the overhead includes guest memory"
        ),
    }

    let mut exit = Vec::with_capacity(n);
    for i in 0..n {
        progress("instance_start_to_exit_ms", i);
        exit.push(start_to_exit(opts, &opts.guests.hello_elf)?);
    }
    eprintln!();

    let config = json!({
        "guest": opts.guests.hello_elf,
        "vcpu_count": 1,
        "mem_size_mib": MEM_MIB,
        "guest_mem_identified_by": guest_by.as_str(),
    });
    let metrics = vec![
        summary("api_ready_ms", "ms", &api),
        summary("instance_start_to_first_serial_ms", "ms", &first_serial),
        summary("vmm_private_overhead_kib", "KiB", &overhead),
        summary("vmm_private_dirty_overhead_kib", "KiB", &dirty),
        summary("guest_mem_rss_kib", "KiB", &guest_rss),
        summary("instance_start_to_exit_ms", "ms", &exit),
    ];
    Ok((config, metrics))
}

fn run(opts: &Options) -> Result<Value, String> {
    let mut doc = json!({
        "benchmark": "tartarus-bench",
        "host": host_facts(opts),
        "config": { "runs": opts.runs, "suite": format!("{:?}", opts.suite).to_lowercase() },
        "metrics": [],
    });
    let mut metrics = Vec::new();
    if opts.suite == Suite::Net {
        let (report, m) = net::run(opts)?;
        doc["net"] = report;
        doc["metrics"] = Value::Array(m);
        return Ok(doc);
    }
    if opts.suite.includes(Suite::Boot) {
        let (config, m) = run_boot(opts)?;
        if let (Some(doc_config), Some(boot)) = (doc["config"].as_object_mut(), config.as_object())
        {
            doc_config.extend(boot.clone());
        }
        metrics.extend(m);
    }
    if opts.suite.includes(Suite::Snapshot) {
        let (report, m) = snapshot::run(opts)?;
        doc["snapshot"] = report;
        metrics.extend(m);
    }
    if opts.suite.includes(Suite::Block) {
        let (report, m) = block::run(opts)?;
        doc["block"] = report;
        metrics.extend(m);
    }
    if opts.suite.includes(Suite::Vsock) {
        let (report, m) = vsock::run(opts)?;
        doc["vsock"] = report;
        metrics.extend(m);
    }
    if opts.suite.includes(Suite::Sandbox) {
        let (report, m) = sandbox::run(opts)?;
        doc["sandbox"] = report;
        metrics.extend(m);
    }
    if opts.suite.includes(Suite::Density) {
        let (report, m) = density::run(opts.running, opts.hibernated, opts.wake_samples)?;
        doc["density"] = report;
        metrics.extend(m);
    }
    if opts.suite.includes(Suite::Code) {
        let (report, m) = code::run(opts)?;
        doc["python_ds_code"] = report;
        metrics.extend(m);
    }
    if opts.suite.includes(Suite::Images) {
        let (report, m) = images::run(opts)?;
        doc["images"] = report;
        metrics.extend(m);
    }
    if opts.suite.includes(Suite::Auth) {
        let (report, m) = auth::run(opts)?;
        doc["auth"] = report;
        metrics.extend(m);
    }
    if opts.suite.includes(Suite::Audit) {
        let (report, m) = audit::run(opts)?;
        doc["audit"] = report;
        metrics.extend(m);
    }
    if opts.suite.includes(Suite::Linux) {
        let (report, m) = linux::run(opts, opts.linux_boots)?;
        doc["linux"] = report;
        metrics.extend(m);
    }
    doc["metrics"] = Value::Array(metrics);
    Ok(doc)
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("tartarus-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let doc = match run(&opts) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("\ntartarus-bench: run failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let text = serde_json::to_string_pretty(&doc).expect("serialisable") + "\n";
    print!("{text}");
    if let Some(out) = &opts.out {
        if let Err(e) = std::fs::write(out, &text) {
            eprintln!("tartarus-bench: writing {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&s, 50.0), 3.0);
        assert_eq!(percentile(&s, 0.0), 1.0);
        assert_eq!(percentile(&s, 100.0), 5.0);
        assert!((percentile(&s, 10.0) - 1.4).abs() < 1e-9);
        assert_eq!(percentile(&[7.0], 90.0), 7.0);
        let v = summary("x", "ms", &[3.0, 1.0, 2.0]);
        assert_eq!(v["median"], json!(2.0));
        assert_eq!(v["min"], json!(1.0));
        assert_eq!(v["max"], json!(3.0));
        assert_eq!(v["runs"], json!(3));
    }

    const SMAPS: &str = "\
00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/tartarus-vmm
Size:                328 kB
Rss:                 300 kB
Private_Dirty:         0 kB
7f0000000000-7f0008000000 rw-p 00000000 00:00 0      [anon:tartarus-guest-mem]
Size:             131072 kB
Rss:                2048 kB
Private_Dirty:      2048 kB
7f0010000000-7f0010021000 rw-p 00000000 00:00 0 
Size:                132 kB
Rss:                  40 kB
Private_Dirty:        40 kB
VmFlags: rd wr mr mw me ac
";

    #[test]
    fn smaps_excludes_named_guest_memory() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[1].name, GUEST_MEM_NAME);
        assert_eq!(maps[2].name, "");
        assert_eq!(maps[2].perms, "rw-p");
        let s = classify(&maps, 131072, None);
        assert_eq!(s.guest_by, GuestMemBy::Name);
        assert_eq!(s.total_rss_kib, 2388);
        assert_eq!(s.guest_rss_kib, 2048);
        assert_eq!(s.private_dirty_kib, 2088);
        assert_eq!(s.guest_private_dirty_kib, 2048);
    }

    #[test]
    fn smaps_finds_unnamed_guest_memory_by_size() {
        // Without CONFIG_ANON_VMA_NAME the guest mapping is unnamed and may be merged with an
        // adjacent malloc arena.
        let text = SMAPS
            .replace("131072 kB", "131204 kB")
            .replace("      [anon:tartarus-guest-mem]", "");
        let s = classify(&parse_smaps(&text), 131072, None);
        assert_eq!(s.guest_by, GuestMemBy::Size);
        assert_eq!(s.guest_rss_kib, 2048);
        let s = classify(&parse_smaps(&text), 262144, None);
        assert_eq!(s.guest_by, GuestMemBy::NotFound);
        assert_eq!(s.guest_rss_kib, 0);
    }
}
