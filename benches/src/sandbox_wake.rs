//! The sandbox suite's wake-fast part (issue #13), on the same daemon and template as the rest
//! of the suite (`bare_restore_ms` there is the peer):
//!
//! - `hibernate_ms`: `POST /sandboxes/{id}/hibernate` → 200 (paused, Full snapshot written,
//!   VMM gone); `hibernated_freed_kib`: the VMM's RSS it gave back; `hibernated_disk_bytes`.
//! - `wake_ms`: `POST /sandboxes/{id}/wake` → 200 (restored in a fresh jail, agent answering);
//!   `hibernated_to_exec_output_ms`: a hibernated sandbox's `exec echo` → output (the wake is
//!   transparent).
//! - `pool_claim_ms`: `POST /sandboxes` → 201 with a ready sandbox in the template's warm pool
//!   (a resume); `pool_claim_to_exec_output_ms`: the same plus `exec echo` → output;
//!   `pool_creates_per_second_burst`: one client creating as fast as it can from a pool of 8.
//! - memory per sandbox: `sandbox_rss_kib_running` / `_paused` (the VMM's RSS), and the
//!   hibernated one's: no process, `hibernated_disk_bytes` on disk.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tartarus_tests::platform::Daemon;

use crate::sandbox::{call, create, delete, status_kib};
use crate::{ms, summary, Options};

fn post(d: &Daemon, path: &str, body: Option<&Value>, want: u16) -> Result<Value, String> {
    let (st, v) = call(d, "POST", path, body)?;
    if st != want {
        return Err(format!("POST {path}: {st} {v}"));
    }
    Ok(v)
}

fn exec_echo(d: &Daemon, id: &str) -> Result<(), String> {
    let v = post(
        d,
        &format!("/sandboxes/{id}/exec"),
        Some(&json!({"argv": ["echo", "ready"]})),
        200,
    )?;
    if v["stdout"] != "ready\n" {
        return Err(format!("exec: {v}"));
    }
    Ok(())
}

fn pool_ready(d: &Daemon) -> Result<u64, String> {
    let (_, v) = call(d, "GET", "/templates/base/pool", None)?;
    Ok(v["ready"].as_u64().unwrap_or(0))
}

fn wait_pool(d: &Daemon, n: u64) -> Result<(), String> {
    let t = Instant::now();
    while pool_ready(d)? < n {
        if t.elapsed() > Duration::from_secs(300) {
            return Err(format!("the pool did not reach {n} ready sandboxes"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn run(d: &Daemon, opts: &Options) -> Result<(Value, Vec<Value>), String> {
    let (mut hib, mut wake, mut to_exec) = (Vec::new(), Vec::new(), Vec::new());
    let (mut freed, mut disk) = (Vec::new(), Vec::new());
    let (mut rss_running, mut rss_paused) = (Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        let id = create(d)?;
        let (_, v) = call(d, "GET", &format!("/sandboxes/{id}"), None)?;
        let pid = v["pid"].as_i64().unwrap_or(0) as i32;
        rss_running.push(status_kib(pid, "VmRSS:").unwrap_or(0) as f64);
        post(d, &format!("/sandboxes/{id}/pause"), None, 200)?;
        rss_paused.push(status_kib(pid, "VmRSS:").unwrap_or(0) as f64);
        let t = Instant::now();
        let v = post(d, &format!("/sandboxes/{id}/hibernate"), None, 200)?;
        hib.push(ms(t.elapsed()));
        freed.push(v["memory_freed_kib"].as_f64().unwrap_or(0.0));
        disk.push(v["hibernated_bytes"].as_f64().unwrap_or(0.0));
        let t = Instant::now();
        post(d, &format!("/sandboxes/{id}/wake"), None, 200)?;
        wake.push(ms(t.elapsed()));
        post(d, &format!("/sandboxes/{id}/hibernate"), None, 200)?;
        let t = Instant::now();
        exec_echo(d, &id)?;
        to_exec.push(ms(t.elapsed()));
        delete(d, &id)?;
    }

    // Warm pool: fixed at 2 (min = max) while claims are timed, one claim per refill.
    let (st, v) = call(
        d,
        "PUT",
        "/templates/base/pool",
        Some(&json!({"min": 2, "max": 2})),
    )?;
    if st != 200 {
        return Err(format!("pool: {st} {v}"));
    }
    let (mut claim, mut claim_exec) = (Vec::new(), Vec::new());
    for i in 0..opts.runs {
        wait_pool(d, 2)?;
        let t = Instant::now();
        let v = post(d, "/sandboxes", Some(&json!({"template": "base"})), 201)?;
        let took = ms(t.elapsed());
        if v["from_pool"] != true {
            return Err(format!("not from the pool: {v}"));
        }
        let id = v["id"].as_str().unwrap_or_default().to_string();
        if i % 2 == 0 {
            claim.push(took);
        } else {
            exec_echo(d, &id)?;
            claim_exec.push(ms(t.elapsed()));
        }
        delete(d, &id)?;
    }
    // A burst from a full pool of 8.
    call(
        d,
        "PUT",
        "/templates/base/pool",
        Some(&json!({"min": 8, "max": 8})),
    )?;
    wait_pool(d, 8)?;
    let t = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..8 {
        let v = post(d, "/sandboxes", Some(&json!({"template": "base"})), 201)?;
        ids.push(v["id"].as_str().unwrap_or_default().to_string());
    }
    let burst = 8.0 / t.elapsed().as_secs_f64();
    for id in &ids {
        delete(d, id)?;
    }
    call(d, "DELETE", "/templates/base/pool", None)?;

    let metrics = vec![
        summary("hibernate_ms", "ms", &hib),
        summary("wake_ms", "ms", &wake),
        summary("hibernated_to_exec_output_ms", "ms", &to_exec),
        summary("hibernated_freed_kib", "KiB", &freed),
        summary("hibernated_disk_bytes", "B", &disk),
        summary("sandbox_rss_kib_running", "KiB", &rss_running),
        summary("sandbox_rss_kib_paused", "KiB", &rss_paused),
        summary("pool_claim_ms", "ms", &claim),
        summary("pool_claim_to_exec_output_ms", "ms", &claim_exec),
        summary("pool_creates_per_second_burst", "1/s", &[burst]),
    ];
    let report = json!({"pool_burst_creates_per_second": (burst * 100.0).round() / 100.0});
    Ok((report, metrics))
}
