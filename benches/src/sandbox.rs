//! The sandbox suite (`--suite sandbox`): the platform layer's costs, measured through a real
//! `tartarusd` (release build next to this binary) with the `base` template (our Linux guest;
//! its ready snapshot comes from the template cache, or one boot builds it).
//!
//! - `sandbox_create_ms`: `POST /sandboxes` sent → 201 received (the restored guest's agent has
//!   answered), `--runs` times, one at a time; each sandbox is deleted before the next.
//! - `bare_restore_ms` (the peer, same run): what the daemon drives, done by hand without it:
//!   `tartarus-jailer` with the daemon's flags → API socket → `PUT /snapshot/load` → agent
//!   hello + ping, on a jail prepared beforehand (files linked, layer copied, network namespace
//!   and tap made: untimed). `daemon_added_ms` = the difference of the medians: everything the
//!   daemon adds (HTTP, SQLite, admission, the jail's files, the namespace, bookkeeping).
//! - `sandbox_create_to_exec_output_ms`: create + `exec echo` → its output received.
//! - `sandbox_creates_per_second_cN`: N clients each creating and deleting in a loop.
//! - memory: `daemon_rss_kib` idle; with `--sandboxes M` (default 20) alive at once (each
//!   paused after its create: idle guests' emulated timer ticks would starve a 2-core PVM host),
//!   `sandbox_vmm_rss_kib` and `sandbox_vmm_pss_kib` per VMM (PSS splits the pages clones share
//!   through the snapshot file), and the daemon's RSS with them.
//! - hibernation, wakes and warm pools: see `sandbox_wake`.
//! - `python_ds_create_to_code_result_ms` (median, p99): python-ds create → a pandas result from
//!   its warm runtime (issue #13), in [`crate::code`].

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tartarus_tests::http::request;
use tartarus_tests::jail::static_bins;
use tartarus_tests::platform::Daemon;

use crate::{ms, summary, Options};

pub fn call(
    d: &Daemon,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let b = body.map(|v| v.to_string());
    let r = request(&d.socket, method, path, b.as_deref().map(str::as_bytes))
        .map_err(|e| format!("{method} {path}: {e}"))?;
    Ok((r.status, r.body.unwrap_or(Value::Null)))
}

pub fn create(d: &Daemon) -> Result<String, String> {
    let (st, v) = call(d, "POST", "/sandboxes", Some(&json!({"template": "base"})))?;
    if st != 201 {
        return Err(format!("create: {st} {v}"));
    }
    v["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("create: {v}"))
}

pub fn delete(d: &Daemon, id: &str) -> Result<(), String> {
    let (st, v) = call(d, "DELETE", &format!("/sandboxes/{id}"), None)?;
    if st != 204 {
        return Err(format!("delete {id}: {st} {v}"));
    }
    Ok(())
}

pub fn status_kib(pid: i32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

pub fn pss_kib(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn sh(cmd: &str) -> Result<(), String> {
    let st = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .map_err(|e| e.to_string())?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{cmd}: {st}"))
    }
}

/// The peer: one jailed restore driven by hand, on a jail prepared beforehand.
fn bare_restore(d: &Daemon, tpl: &Path, n: usize) -> Result<f64, String> {
    let bins = static_bins();
    let id = format!("bench-{}-{n}", std::process::id());
    let base = d.dir.join("bare");
    let root = base.join("tartarus-vmm").join(&id).join("root");
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    for f in ["ready.state", "ready.mem", "rootfs.ext4"] {
        std::fs::hard_link(tpl.join(f), root.join(f)).map_err(|e| format!("link {f}: {e}"))?;
    }
    let uid = 650_000 + n as u32;
    sh(&format!(
        "cp --sparse=always {}/disk.ext4 {r}/disk.ext4 && chown {uid}:{uid} {r}/disk.ext4 && \
         ip netns add tartarus-{id} && ip -n tartarus-{id} tuntap add dev tap0 mode tap user {uid} && \
         ip -n tartarus-{id} link set tap0 up",
        tpl.display(),
        r = root.display()
    ))?;
    let t = Instant::now();
    let st = Command::new(&bins.jailer)
        .args(["--id", &id, "--exec-file"])
        .arg(&bins.vmm)
        .args([
            "--uid",
            &uid.to_string(),
            "--gid",
            &uid.to_string(),
            "--chroot-base-dir",
        ])
        .arg(&base)
        .args(["--netns", &format!("/run/netns/tartarus-{id}")])
        .args([
            "--resource-limit",
            "no-file=4096",
            "--new-pid-ns",
            "--daemonize",
        ])
        .args([
            "--cgroup",
            "memory.limit_in_bytes=234881024",
            "--cgroup",
            "pids.max=64",
        ])
        .args([
            "--cgroup",
            "cpu.cfs_period_us=100000",
            "--cgroup",
            "cpu.cfs_quota_us=100000",
        ])
        .args([
            "--",
            "--api-sock",
            "/api.sock",
            "--serial-out",
            "/serial.log",
            "--pvm-workarounds",
        ])
        .arg(if Path::new("/sys/module/kvm_pvm").exists() {
            "on"
        } else {
            "off"
        })
        .status()
        .map_err(|e| format!("jailer: {e}"))?;
    let result = (|| -> Result<f64, String> {
        if !st.success() {
            return Err(format!("jailer: {st}"));
        }
        let sock = root.join("api.sock");
        while !sock.exists() {
            if t.elapsed() > Duration::from_secs(10) {
                return Err("no API socket".into());
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let body = json!({"snapshot_path": "/ready.state",
            "mem_backend": {"backend_type": "File", "backend_path": "/ready.mem"}, "resume_vm": true});
        // The VMM binds its socket a moment before it listens: retry a refused connect.
        let r = loop {
            match request(
                &sock,
                "PUT",
                "/snapshot/load",
                Some(body.to_string().as_bytes()),
            ) {
                Ok(r) => break r,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && t.elapsed() < Duration::from_secs(10) =>
                {
                    std::thread::sleep(Duration::from_micros(200))
                }
                Err(e) => return Err(format!("load: {e}")),
            }
        };
        if r.status != 204 {
            return Err(format!("load: {r}"));
        }
        let uds = root.join("v.sock");
        let start = Instant::now();
        loop {
            let attempt = guest_init::client::connect_hybrid_vsock(&uds, 52).and_then(|s| {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut c = guest_init::client::Client::new(s)?;
                c.ping()
            });
            match attempt {
                Ok(()) => return Ok(ms(t.elapsed())),
                Err(e) if start.elapsed() > Duration::from_secs(60) => {
                    return Err(format!("agent: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })();
    let pid_file = root.join("tartarus-vmm.pid");
    if let Ok(p) = std::fs::read_to_string(&pid_file) {
        if let Ok(pid) = p.trim().parse::<i32>() {
            // SAFETY: signalling the VMM this function started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let mut status = 0;
            // SAFETY: reaps it if we are its (sub)reaper; harmless otherwise.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        }
    }
    let _ = sh(&format!("ip netns del tartarus-{id}"));
    for c in ["memory", "pids", "cpu"] {
        let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{c}/tartarus/{id}"));
    }
    let _ = std::fs::remove_dir_all(base.join("tartarus-vmm").join(&id));
    result
}

pub fn run(opts: &Options) -> Result<(Value, Vec<Value>), String> {
    tartarus_tests::jail::become_subreaper();
    let d = Daemon::start(
        "bench-sandbox",
        &["--max-sandboxes", "512", "--max-memory-mib", "262144"],
    );
    let t = Instant::now();
    d.build_base("base");
    let build_s = t.elapsed().as_secs_f64();
    let (_, tpl) = call(&d, "GET", "/templates/base", None)?;
    let tpl_dir = std::fs::read_dir(d.state.join("templates"))
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("ready.state").exists())
        .ok_or("no template directory")?;
    let daemon_idle = status_kib(d.pid(), "VmRSS:").unwrap_or(0);

    // Warm the page cache and the code paths once.
    let id = create(&d)?;
    delete(&d, &id)?;
    let _ = bare_restore(&d, &tpl_dir, 0)?;

    let mut created = Vec::new();
    let mut bare = Vec::new();
    let mut to_exec = Vec::new();
    for i in 0..opts.runs {
        // Alternate the daemon and the peer so drift on this noisy host hits both alike.
        let t = Instant::now();
        let id = create(&d)?;
        created.push(ms(t.elapsed()));
        delete(&d, &id)?;
        bare.push(bare_restore(&d, &tpl_dir, i + 1)?);
        let t = Instant::now();
        let id = create(&d)?;
        let (st, v) = call(
            &d,
            "POST",
            &format!("/sandboxes/{id}/exec"),
            Some(&json!({"argv": ["echo", "ready"]})),
        )?;
        if st != 200 || v["stdout"] != "ready\n" {
            return Err(format!("exec: {st} {v}"));
        }
        to_exec.push(ms(t.elapsed()));
        delete(&d, &id)?;
    }
    let med = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        s[s.len() / 2]
    };
    let mut metrics = vec![
        summary("sandbox_create_ms", "ms", &created),
        summary("bare_restore_ms", "ms", &bare),
        summary("sandbox_create_to_exec_output_ms", "ms", &to_exec),
    ];
    let added = med(&created) - med(&bare);

    // Throughput with concurrent clients.
    let per_client = (opts.runs / 2).max(3);
    let mut throughput = serde_json::Map::new();
    for clients in [1usize, 2, 4, 8] {
        let t = Instant::now();
        let errors: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..clients)
                .map(|_| {
                    s.spawn(|| -> Result<(), String> {
                        for _ in 0..per_client {
                            let id = create(&d)?;
                            delete(&d, &id)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            hs.into_iter()
                .filter_map(|h| h.join().ok()?.err())
                .collect()
        });
        if let Some(e) = errors.first() {
            return Err(e.clone());
        }
        let rate = (clients * per_client) as f64 / t.elapsed().as_secs_f64();
        throughput.insert(format!("c{clients}"), json!((rate * 100.0).round() / 100.0));
        metrics.push(summary(
            &format!("sandbox_creates_per_second_c{clients}"),
            "1/s",
            &[rate],
        ));
    }

    // Density: M sandboxes alive at once.
    let m = opts.sandboxes;
    let mut ids = Vec::new();
    for _ in 0..m {
        // Each is paused once created: an idle guest kernel's timer ticks are emulated on PVM
        // hosts (~10% of a core each), which would starve the next creates on 2 cores.
        let id = create(&d)?;
        let (st, v) = call(&d, "POST", &format!("/sandboxes/{id}/pause"), None)?;
        if st != 200 {
            return Err(format!("pause: {st} {v}"));
        }
        ids.push(id);
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut rss = Vec::new();
    let mut pss = Vec::new();
    for id in &ids {
        let (_, v) = call(&d, "GET", &format!("/sandboxes/{id}"), None)?;
        if let Some(pid) = v["pid"].as_i64() {
            rss.push(status_kib(pid as i32, "VmRSS:").unwrap_or(0) as f64);
            pss.push(pss_kib(pid as i32).unwrap_or(0) as f64);
        }
    }
    let daemon_busy = status_kib(d.pid(), "VmRSS:").unwrap_or(0);
    for id in &ids {
        delete(&d, id)?;
    }
    // Hibernation and warm pools (issue #13).
    let (wake_report, wake_metrics) = crate::sandbox_wake::run(&d, opts)?;
    metrics.extend(wake_metrics);
    metrics.push(summary("sandbox_vmm_rss_kib", "KiB", &rss));
    metrics.push(summary("sandbox_vmm_pss_kib", "KiB", &pss));
    metrics.push(summary("daemon_rss_kib_idle", "KiB", &[daemon_idle as f64]));
    metrics.push(summary(
        "daemon_rss_kib_with_sandboxes",
        "KiB",
        &[daemon_busy as f64],
    ));
    // Issue #13: the python-ds template's warm runtime (needs the images fixture's tools).
    let code = match crate::code::run(opts) {
        Ok((r, m)) => {
            metrics.extend(m);
            r
        }
        Err(e) => {
            eprintln!("sandbox: python-ds create -> code result not measured: {e}");
            json!({"error": e})
        }
    };
    let report = json!({
        "python_ds_code": code,
        "template": {"memory_mib": tpl["memory_mib"], "build_s": (build_s * 1000.0).round() / 1000.0,
                     "snapshot_bytes": tpl["snapshot_bytes"]},
        "daemon_added_ms_median": (added * 1000.0).round() / 1000.0,
        "creates_per_second": throughput,
        "wake": wake_report,
        "density": {
            "sandboxes": m,
            "total_rss_mib": (rss.iter().sum::<f64>() / 1024.0).round(),
            "total_pss_mib": (pss.iter().sum::<f64>() / 1024.0).round(),
        },
    });
    Ok((report, metrics))
}
