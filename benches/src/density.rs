//! The density suite (`--suite density`, issue #13): how many sandboxes this host holds at
//! once through a real `tartarusd`: `--hibernated N` (default 200) hibernated plus
//! `--running M` (default 50) running sandboxes of a 256 MiB template of our Linux guest,
//! then every one of them asked to answer.
//!
//! "Answering" is an agent round trip that starts no process (a read of /proc/uptime through
//! `GET /files`): for a running sandbox that is its agent; for a hibernated one it is a
//! transparent wake, after which it is hibernated again (so the count stays as stated). Every
//! hibernated sandbox answers before the running ones are started; with all of them present,
//! every running one answers and `--wake-samples` (default 3) hibernated ones are woken.
//! Requests go through curl (a few ms of process start in each latency). Reported: the host's memory used by all of it (MemTotal − MemAvailable, before and after),
//! the VMMs' RSS and PSS, the hibernations' disk, and per-sandbox latencies of the round trips.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tartarus_tests::platform::{base_images, Daemon};

use crate::sandbox::{call, status_kib};
use crate::{ms, summary};

fn meminfo_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU time of process `pid` so far, in clock ticks (1/100 s here).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // pid (comm) state ppid ... utime is field 14, stime 15: 11 and 12 after the comm.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// Percent of one host core the VMMs `pids` used, together, over `window`.
fn cpu_percent(pids: &[i32], window: Duration) -> f64 {
    // SAFETY: sysconf reads a configuration value and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let total = |p: &[i32]| p.iter().map(|&pid| cpu_ticks(pid)).sum::<u64>();
    let before = total(pids);
    std::thread::sleep(window);
    let used = total(pids).saturating_sub(before) as f64 / hz;
    used / window.as_secs_f64() * 100.0
}

fn used_mib() -> f64 {
    (meminfo_kib("MemTotal:") - meminfo_kib("MemAvailable:")) as f64 / 1024.0
}

/// Through curl (up to 120 s a request: with dozens of idle guests' emulated timer ticks on a
/// 2-core PVM host, a create can take longer than the in-process client's 30 s).
fn post(d: &Daemon, path: &str, body: Option<&Value>, want: u16) -> Result<Value, String> {
    let b = body.map(|v| v.to_string());
    let (st, text) = d.curl("POST", path, b.as_deref());
    if st != want {
        return Err(format!("POST {path}: {st} {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("POST {path}: {e}: {text}"))
}

/// One agent round trip without a new process.
fn answer(d: &Daemon, id: &str) -> Result<f64, String> {
    let t = Instant::now();
    let (st, text) = d.curl(
        "GET",
        &format!("/sandboxes/{id}/files?path=/proc/uptime"),
        None,
    );
    if st != 200 {
        return Err(format!("files {id}: {st} {text}"));
    }
    Ok(ms(t.elapsed()))
}

pub fn run(
    running: usize,
    hibernated: usize,
    wake_samples: usize,
) -> Result<(Value, Vec<Value>), String> {
    tartarus_tests::jail::become_subreaper();
    let total = running + hibernated;
    let d = Daemon::start(
        "bench-density",
        &[
            "--max-sandboxes",
            &(total + 8).to_string(),
            "--max-memory-mib",
            "1048576",
        ],
    );
    let (k, r) = base_images();
    let t = Instant::now();
    d.cli_ok(&[
        "template",
        "build",
        "--name",
        "d256",
        "--kernel",
        k.to_str().unwrap(),
        "--rootfs",
        r.to_str().unwrap(),
        "--memory",
        "256",
        "--disk",
        "256",
    ]);
    let build_s = t.elapsed().as_secs_f64();
    let used_before = used_mib();
    let body = json!({"template": "d256"});
    let (mut create, mut hib) = (Vec::new(), Vec::new());
    let mut hib_ids = Vec::new();
    let started = Instant::now();
    for _ in 0..hibernated {
        let t = Instant::now();
        let v = post(&d, "/sandboxes", Some(&body), 201)?;
        create.push(ms(t.elapsed()));
        let id = v["id"].as_str().unwrap_or_default().to_string();
        let t = Instant::now();
        post(&d, &format!("/sandboxes/{id}/hibernate"), None, 200)?;
        hib.push(ms(t.elapsed()));
        hib_ids.push(id);
        if hib_ids.len() % 25 == 0 {
            eprintln!("density: {} hibernated", hib_ids.len());
        }
    }
    // Every hibernated sandbox answers (a wake, then it hibernates again), before any runs:
    // with dozens of idle guests' emulated timer ticks on a 2-core PVM host one wake takes
    // tens of seconds, so under the full load only a sample is woken (below).
    let mut wake_answer = Vec::new();
    for id in &hib_ids {
        wake_answer.push(answer(&d, id)?);
        post(&d, &format!("/sandboxes/{id}/hibernate"), None, 200)?;
    }
    let mut run_ids = Vec::new();
    for _ in 0..running {
        let t = Instant::now();
        let v = post(&d, "/sandboxes", Some(&body), 201)?;
        create.push(ms(t.elapsed()));
        run_ids.push(v["id"].as_str().unwrap_or_default().to_string());
        if run_ids.len() % 10 == 0 {
            eprintln!("density: {} running", run_ids.len());
        }
    }
    let fill_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(5));
    let used_all = used_mib();
    let (mut rss, mut pss) = (0u64, 0u64);
    let mut pids = Vec::new();
    for id in &run_ids {
        let (_, v) = call(&d, "GET", &format!("/sandboxes/{id}"), None)?;
        if let Some(pid) = v["pid"].as_i64() {
            rss += status_kib(pid as i32, "VmRSS:").unwrap_or(0);
            pss += crate::sandbox::pss_kib(pid as i32).unwrap_or(0);
            pids.push(pid as i32);
        }
    }
    // What idle running guests cost the host: their VMMs' CPU with nobody asking anything
    // (an emulated guest kernel's timer and housekeeping wake-ups).
    let idle_cpu = cpu_percent(&pids, Duration::from_secs(20));
    let idle_each = idle_cpu / pids.len().max(1) as f64;
    let mut disk = 0u64;
    for id in &hib_ids {
        let (_, v) = call(&d, "GET", &format!("/sandboxes/{id}"), None)?;
        disk += v["hibernated_bytes"].as_u64().unwrap_or(0);
    }
    // Everyone running answers; a sample of the hibernated ones wakes under the full load.
    let mut running_answer = Vec::new();
    for id in &run_ids {
        running_answer.push(answer(&d, id)?);
    }
    let mut loaded_wake = Vec::new();
    for id in hib_ids.iter().take(wake_samples) {
        loaded_wake.push(answer(&d, id)?);
        post(&d, &format!("/sandboxes/{id}/hibernate"), None, 200)?;
    }
    let (_, list) = call(&d, "GET", "/sandboxes", None)?;
    let count = |s: &str| {
        list["items"]
            .as_array()
            .map(|a| a.iter().filter(|x| x["state"] == s).count())
            .unwrap_or(0)
    };
    let (n_running, n_hib) = (count("running"), count("hibernated"));
    if n_running != running || n_hib != hibernated {
        return Err(format!(
            "expected {running} running + {hibernated} hibernated, found {n_running} + {n_hib}"
        ));
    }
    let report = json!({
        "running": running,
        "hibernated": hibernated,
        "memory_mib": 256,
        "template_build_s": (build_s * 10.0).round() / 10.0,
        "fill_s": (fill_s * 10.0).round() / 10.0,
        "host_used_mib_before": used_before.round(),
        "host_used_mib_with_all": used_all.round(),
        "running_vmm_rss_mib_total": (rss as f64 / 1024.0).round(),
        "running_vmm_pss_mib_total": (pss as f64 / 1024.0).round(),
        "hibernated_disk_mib_total": (disk as f64 / 1048576.0).round(),
        "running_idle_cpu_percent_total": (idle_cpu * 10.0).round() / 10.0,
        "running_idle_cpu_percent_each": (idle_each * 100.0).round() / 100.0,
        "all_answered": true,
    });
    let metrics = vec![
        summary("density_create_ms", "ms", &create),
        summary("density_hibernate_ms", "ms", &hib),
        summary("density_running_answer_ms", "ms", &running_answer),
        summary("density_hibernated_wake_answer_ms", "ms", &wake_answer),
        summary("density_loaded_wake_answer_ms", "ms", &loaded_wake),
        summary("density_host_used_mib", "MiB", &[used_all - used_before]),
        summary("density_idle_cpu_percent_per_running", "%", &[idle_each]),
    ];
    // The daemon's Drop removes every sandbox.
    Ok((report, metrics))
}
