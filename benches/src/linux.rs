//! The Linux suite (`--suite linux`): our microvm kernel with the base root fs on virtio-blk and a
//! vsock, as in the test suite's Linux lane.
//!
//! - Boot phases, from the guest's own clocks (one boot per `--linux-boots`, default 1: a boot
//!   takes ~20 s on PVM hosts): `kernel_to_init_s` = the printk timestamp of
//!   `Run /sbin/init as init process`; `kernel_to_agent_ready_s` = the uptime tartarus-init prints
//!   in its ready line; and from the host, `instance_start_to_ready_s`.
//! - `agent_exec_true_ms`: one exec of `/bin/true` through the agent on an open connection
//!   (request sent → exit status received), `--runs` times.
//! - `agent_ping_ms`: one ping/pong frame pair, `--runs` times.
//! - `restore_to_agent_reply_ms` per backend (File, Uffd, and Uffd with the working set of one
//!   such restore recorded first and then prefetched): load request sent to a fresh VMM with
//!   `resume_vm` → the agent's hello over a new vsock connection, then one ping; and the phases
//!   of the same restores, each from the load request (`restore_<backend>_load`: the load
//!   answered; `_connected`: the vsock `OK`; `_hello`: the agent's hello; `_warm_ping`: a second
//!   ping alone; `_retries`: failed connection attempts). `TARTARUS_BENCH_LINUX_LOGS=<dir>`
//!   makes the restored VMMs log at debug level into `<dir>/restore-<backend>-<i>.log` (the
//!   vsock device stamps its steps there). `TARTARUS_BENCH_INIT=<path>` builds the root fs
//!   around that tartarus-init binary instead of this tree's (A/B runs of guest changes).
//!
//! On PVM hosts everything that runs guest kernel code is emulated (~1000x slower), so these
//! figures are far from what hardware KVM gives; the harness is the same there.

use std::path::Path;
use std::time::{Duration, Instant};

use std::os::unix::net::UnixStream;

use guest_init::client::{connect_hybrid_vsock, wait_for_agent, Client};
use serde_json::{json, Value};
use tartarus_tests::{script_output, TempDir, Vmm, VmmBuilder};

use crate::{ms, put, spawn, summary, Options};

const AGENT_PORT: u32 = 52;
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
const MEM_MIB: u64 = 256;
const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 8250.nr_uarts=1 clocksource=kvm-clock";

/// The printk timestamp (seconds) of the first console line containing `needle`.
fn printk_time(out: &str, needle: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.contains(needle))?;
    let inner = line.trim_start().strip_prefix('[')?.split(']').next()?;
    inner.trim().parse().ok()
}

/// The uptime in tartarus-init's `ready (uptime X s)` line.
fn ready_uptime(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.contains("tartarus-init: ready"))?;
    let rest = line.split("uptime ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

struct Booted {
    vmm: Vmm,
    uds: std::path::PathBuf,
    kernel_to_init_s: f64,
    kernel_to_ready_s: f64,
    start_to_ready_s: f64,
}

fn boot(opts: &Options, vmlinux: &Path, image: &Path, dir: &Path) -> Result<Booted, String> {
    let disk = dir.join("rootfs.ext4");
    std::fs::copy(image, &disk).map_err(|e| format!("copy root fs: {e}"))?;
    let uds = dir.join("v.sock");
    let vmm = spawn(opts)?;
    vmm.try_wait_for_socket(Duration::from_secs(15), Duration::from_millis(1))
        .map_err(|e| format!("API socket: {e}"))?;
    put(
        &vmm,
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": MEM_MIB}),
    )?;
    put(
        &vmm,
        "/boot-source",
        json!({"kernel_image_path": vmlinux, "boot_args": BOOT_ARGS}),
    )?;
    put(
        &vmm,
        "/drives/rootfs",
        json!({"drive_id": "rootfs", "path_on_host": disk, "is_root_device": true, "is_read_only": false}),
    )?;
    put(&vmm, "/vsock", json!({"guest_cid": 3, "uds_path": uds}))?;
    let t = Instant::now();
    crate::action(&vmm, "InstanceStart")?;
    let out = vmm
        .try_wait_for_output("tartarus-init: ready", BOOT_TIMEOUT)
        .map_err(|e| format!("Linux boot: {e}\n{}", vmm.diagnostics()))?;
    let start_to_ready_s = t.elapsed().as_secs_f64();
    // The ready line may still be arriving: wait until its uptime is complete.
    let out = if ready_uptime(&out).is_some() {
        out
    } else {
        vmm.output_when_quiet(Duration::from_millis(200))
    };
    Ok(Booted {
        kernel_to_init_s: printk_time(&out, "Run /sbin/init as init process")
            .ok_or("no 'Run /sbin/init' line on the console")?,
        kernel_to_ready_s: ready_uptime(&out).ok_or("no uptime in the ready line")?,
        start_to_ready_s,
        vmm,
        uds,
    })
}

fn agent(uds: &Path) -> Result<Client<std::os::unix::net::UnixStream>, String> {
    wait_for_agent(uds, AGENT_PORT, AGENT_TIMEOUT).map_err(|e| format!("agent: {e}"))
}

/// One restore's phases (ms from the load request being sent).
struct RestorePhases {
    /// `/snapshot/load` answered (the VMM restored and resumed the guest).
    load: f64,
    /// The vsock handshake's `OK` (the guest accepted the connection in its kernel).
    connected: f64,
    /// The agent's hello (the agent accepted the connection and answered).
    hello: f64,
    /// The first ping's pong: the figure the suite has always reported.
    reply: f64,
    /// A second ping on the same connection, for comparison (ms for that ping alone).
    warm_ping: f64,
    /// Connection attempts that failed before one got its reply.
    retries: f64,
}

/// A phase of [`RestorePhases`] in the JSON: (name, its value, unit).
type Phase = (&'static str, fn(&RestorePhases) -> f64, &'static str);

/// How long one connection attempt may wait for each answer before it is retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// CONNECT, hello and ping with every phase timed from `t`, retrying a failed attempt at once.
fn first_reply(uds: &Path, t: Instant) -> Result<(RestorePhases, Client<UnixStream>), String> {
    let mut retries = 0.0;
    loop {
        let attempt = || -> Result<_, String> {
            let s = connect_hybrid_vsock(uds, AGENT_PORT).map_err(|e| e.to_string())?;
            let connected = ms(t.elapsed());
            s.set_read_timeout(Some(ATTEMPT_TIMEOUT))
                .map_err(|e| e.to_string())?;
            let mut c = Client::new(s).map_err(|e| e.to_string())?;
            let hello = ms(t.elapsed());
            c.ping().map_err(|e| e.to_string())?;
            Ok((connected, hello, ms(t.elapsed()), c))
        };
        match attempt() {
            Ok((connected, hello, reply, c)) => {
                let phases = RestorePhases {
                    load: 0.0,
                    connected,
                    hello,
                    reply,
                    warm_ping: 0.0,
                    retries,
                };
                return Ok((phases, c));
            }
            Err(e) if t.elapsed() > AGENT_TIMEOUT => return Err(format!("agent: {e}")),
            Err(_) => {
                retries += 1.0;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Where `TARTARUS_BENCH_LINUX_LOGS` (a directory) asks the restored VMMs to write debug logs.
fn debug_log_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("TARTARUS_BENCH_LINUX_LOGS").map(Into::into)
}

/// How a restore gets its memory: `File`, `Uffd`, or `Uffd` with the working set prefetched
/// (recorded by one restore first).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    File,
    Uffd,
    UffdPrefetch,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::File => "file",
            Backend::Uffd => "uffd",
            Backend::UffdPrefetch => "uffd_prefetch",
        }
    }

    /// The `/snapshot/load` body; `record`: record the working set into `ws` instead.
    fn load_body(self, state: &Path, mem: &Path, ws: &Path, record: bool) -> Value {
        let kind = if self == Backend::File {
            "File"
        } else {
            "Uffd"
        };
        let mut body = json!({"snapshot_path": state,
                              "mem_backend": {"backend_type": kind, "backend_path": mem},
                              "resume_vm": true});
        if self == Backend::UffdPrefetch {
            body["prefetch"] =
                json!({"working_set_path": ws, "record": record, "record_ms": 10_000});
        }
        body
    }
}

/// Removes the socket file a killed VMM left behind: the restored device needs uds_path free.
fn free_uds(uds: &Path) -> Result<(), String> {
    match std::fs::remove_file(uds) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("remove {}: {e}", uds.display()))
        }
        _ => Ok(()),
    }
}

/// Records the working set of a restore's first agent request (restore, hello + ping, pause)
/// into `ws`, for [`Backend::UffdPrefetch`].
fn record_working_set(
    opts: &Options,
    state: &Path,
    mem: &Path,
    uds: &Path,
    ws: &Path,
) -> Result<(), String> {
    free_uds(uds)?;
    let mut vmm = spawn(opts)?;
    vmm.try_wait_for_socket(Duration::from_secs(15), Duration::from_millis(1))
        .map_err(|e| format!("API socket: {e}"))?;
    let body = Backend::UffdPrefetch.load_body(state, mem, ws, true);
    put(&vmm, "/snapshot/load", body)?;
    first_reply(uds, Instant::now())?;
    let r = vmm
        .try_request("PATCH", "/vm", Some(br#"{"state": "Paused"}"#))
        .map_err(|e| format!("pause: {e}"))?;
    if r.status != 204 {
        return Err(format!("pause after recording: {r}"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ws.exists() {
        if Instant::now() > deadline {
            return Err(format!("no working set at {}", ws.display()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    vmm.kill();
    Ok(())
}

fn restore_once(
    opts: &Options,
    (state, mem, ws): (&Path, &Path, &Path),
    uds: &Path,
    backend: Backend,
    run: usize,
) -> Result<RestorePhases, String> {
    // The previous VMM was killed (SIGKILL), which leaves its vsock socket file behind.
    free_uds(uds)?;
    let mut vmm = match debug_log_dir() {
        Some(dir) => {
            let log = dir.join(format!("restore-{}-{run}.log", backend.name()));
            VmmBuilder::new()
                .binary(&opts.vmm)
                .args(["--log-level", "Debug", "--log-path"])
                .arg(&log)
                .try_spawn_in(TempDir::new("bench"))?
        }
        None => spawn(opts)?,
    };
    vmm.try_wait_for_socket(Duration::from_secs(15), Duration::from_millis(1))
        .map_err(|e| format!("API socket: {e}"))?;
    let t = Instant::now();
    put(
        &vmm,
        "/snapshot/load",
        backend.load_body(state, mem, ws, false),
    )?;
    let load = ms(t.elapsed());
    let (mut phases, mut c) = first_reply(uds, t)?;
    phases.load = load;
    let w = Instant::now();
    c.ping()
        .map_err(|e| format!("second ping after restore: {e}"))?;
    phases.warm_ping = ms(w.elapsed());
    vmm.kill();
    Ok(phases)
}

pub(crate) fn run(opts: &Options, boots: usize) -> Result<(Value, Vec<Value>), String> {
    let vmlinux = script_output("kernels/build-kernel.sh", &[], "vmlinux");
    // TARTARUS_BENCH_INIT=<tartarus-init binary> puts another build's init in the root fs
    // (to compare guest-side changes with one bench binary).
    let init = std::env::var("TARTARUS_BENCH_INIT").ok();
    let mut args = vec!["--variant", "base"];
    if let Some(i) = &init {
        args.extend(["--init", i.as_str()]);
    }
    let image = script_output("kernels/build-rootfs.sh", &args, "rootfs");
    let mut metrics = Vec::new();
    let (mut to_init, mut to_ready, mut start_ready) = (Vec::new(), Vec::new(), Vec::new());
    let dir = TempDir::new("linuxbench");
    let mut last = None;
    for i in 0..boots {
        let sub = dir.path().join(format!("boot{i}"));
        std::fs::create_dir_all(&sub).map_err(|e| e.to_string())?;
        let b = boot(opts, &vmlinux, &image, &sub)?;
        to_init.push(b.kernel_to_init_s);
        to_ready.push(b.kernel_to_ready_s);
        start_ready.push(b.start_to_ready_s);
        last = Some(b);
    }
    let mut b = last.ok_or("--linux-boots must be at least 1")?;
    metrics.push(summary("kernel_to_init_s", "s", &to_init));
    metrics.push(summary("kernel_to_agent_ready_s", "s", &to_ready));
    metrics.push(summary("instance_start_to_ready_s", "s", &start_ready));

    let mut c = agent(&b.uds)?;
    let mut exec = Vec::new();
    let mut ping = Vec::new();
    for _ in 0..opts.runs {
        let t = Instant::now();
        c.ping().map_err(|e| format!("ping: {e}"))?;
        ping.push(ms(t.elapsed()));
        let t = Instant::now();
        let out = c.exec(["/bin/true"]).map_err(|e| format!("exec: {e}"))?;
        exec.push(ms(t.elapsed()));
        if out.code != Some(0) {
            return Err(format!("/bin/true exited with {:?}", out.code));
        }
    }
    drop(c);
    metrics.push(summary("agent_ping_ms", "ms", &ping));
    metrics.push(summary("agent_exec_true_ms", "ms", &exec));

    let state = dir.path().join("linux.state");
    let mem = dir.path().join("linux.mem");
    let r = b
        .vmm
        .try_request("PATCH", "/vm", Some(br#"{"state": "Paused"}"#))
        .map_err(|e| format!("pause: {e}"))?;
    if r.status != 204 {
        return Err(format!("pause: {r}"));
    }
    put(
        &b.vmm,
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    )?;
    b.vmm.kill();
    let restores = opts.runs.min(10);
    let ws = dir.path().join("linux.ws");
    record_working_set(opts, &state, &mem, &b.uds, &ws)?;
    let files = (state.as_path(), mem.as_path(), ws.as_path());
    for backend in [Backend::File, Backend::Uffd, Backend::UffdPrefetch] {
        let runs = (0..restores)
            .map(|i| restore_once(opts, files, &b.uds, backend, i))
            .collect::<Result<Vec<_>, _>>()?;
        let b = backend.name();
        let col = |f: fn(&RestorePhases) -> f64| runs.iter().map(f).collect::<Vec<_>>();
        let mut m = summary(
            &format!("restore_to_agent_reply_ms_{b}"),
            "ms",
            &col(|p| p.reply),
        );
        m["what"] = json!(
            "load request sent (resume_vm) -> agent hello on a new vsock connection + one ping"
        );
        metrics.push(m);
        // The phases of the same restores, each from the load request.
        let phases: [Phase; 5] = [
            ("load", |p| p.load, "ms"),
            ("connected", |p| p.connected, "ms"),
            ("hello", |p| p.hello, "ms"),
            ("warm_ping", |p| p.warm_ping, "ms"),
            ("retries", |p| p.retries, "count"),
        ];
        for (name, f, unit) in phases {
            metrics.push(summary(&format!("restore_{b}_{name}"), unit, &col(f)));
        }
    }
    let config = json!({"mem_mib": MEM_MIB, "vcpus": 1, "boots": boots, "kernel": vmlinux,
                        "rootfs": image, "boot_args": BOOT_ARGS});
    Ok((config, metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_guest_clocks() {
        let out =
            "[    0.000000] Linux version 6.1\n[   17.637847] Run /sbin/init as init process\n\
                   tartarus-init: ready (uptime 19.53 s)\n";
        assert_eq!(printk_time(out, "Run /sbin/init"), Some(17.637847));
        assert_eq!(ready_uptime(out), Some(19.53));
        assert_eq!(ready_uptime("tartarus-init: ready\n"), None);
    }
}
