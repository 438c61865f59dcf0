//! The audit suite (`--suite audit`): issue #14's audit benchmarks, on `tartarus-audit` and a
//! real rsyslogd (Debian's rsyslog + rsyslog-relp, started on 127.0.0.1 by the crate's
//! harness). Needs neither the VMM nor the test guests; 5 runs by default; not part of `all`.
//!
//! Per run:
//! - `audit_append_group_commit_rps`: 64 tasks append 20,000 records in all to a fresh log
//!   (group commit: one `fdatasync` per batch); records/s from the first append to the last
//!   return. `audit_records_per_fsync` is how many records each sync carried.
//! - `audit_append_fsync_per_record_rps`: the peer, in the same run: the same 64 tasks and
//!   the same writer with `max_batch = 1` (one `fdatasync` per record), 2,000 records.
//!   `audit.group_commit_speedup` is the ratio of the medians.
//! - `audit_forward_relp_rps` / `audit_forward_tcp_rps`: a log of 20,000 records, a fresh
//!   rsyslogd, a fresh forwarder (RELP window 256): records/s from start to the cursor
//!   reaching the last record (RELP: every record acknowledged; TCP: written to the socket).
//! - `audit_catchup_ms` (at most 3 runs): appends go on at 1,000 records/s; after 1 s rsyslog
//!   is killed (`kill -9`) for `--outage-s` seconds (default 5; the issue names 60), then
//!   started again: the time from the restart until the cursor reaches the last record
//!   appended before the restart. `audit_catchup_backlog_records` is that backlog. The
//!   forwarder's backoff is capped at 1 s here, so up to 1 s of the catch-up is the wait for
//!   its next retry.
//!
//! Logs live under `$TARTARUS_BENCH_TMP` or `/var/tmp` (a real disk: fsync must cost what it
//! costs in production).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tartarus_audit::harness::Rsyslog;
use tartarus_audit::{
    AuditEvent, AuditLog, Forwarder, ForwarderConfig, LogConfig, Outcome, Transport,
};

use crate::{percentile, round3, summary, Options};

const APPENDERS: u64 = 64;
const GROUP_RECORDS: u64 = 20_000;
const PER_RECORD_RECORDS: u64 = 2_000;
const FORWARD_RECORDS: u64 = 20_000;
const LOAD_RPS: u64 = 1_000;
const HANG_GUARD: Duration = Duration::from_secs(600);

/// A directory removed (recursively) on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new(tag: &str) -> Result<WorkDir, String> {
        let base = std::env::var_os("TARTARUS_BENCH_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"));
        let p = base.join(format!("tartarus-bench-audit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
        Ok(WorkDir(p))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn event(i: u64) -> AuditEvent {
    AuditEvent::now(
        format!("req-{i}"),
        format!("tenant-{}", i % 10),
        format!("user-{}", i % 100),
        "sandbox.exec",
        format!("sandbox/sb-{i}"),
        if i.is_multiple_of(50) {
            Outcome::Denied
        } else {
            Outcome::Ok
        },
        "10.0.0.1:50000",
    )
}

fn open(dir: &Path, max_batch: usize) -> Result<AuditLog, String> {
    let mut c = LogConfig::new(dir.join("audit.log"), dir.join("audit.key"));
    c.max_batch = max_batch;
    AuditLog::open(c)
        .map(|(log, _)| log)
        .map_err(|e| format!("open audit log: {e}"))
}

/// Appends `total` records from `APPENDERS` tasks; returns (records/s, records per fsync).
async fn append_rate(max_batch: usize, total: u64) -> Result<(f64, f64), String> {
    let dir = WorkDir::new("append")?;
    let log = Arc::new(open(dir.path(), max_batch)?);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..APPENDERS {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..total / APPENDERS {
                log.append(event(a * 1_000_000 + i))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    let secs = t.elapsed().as_secs_f64();
    let n = (total / APPENDERS) * APPENDERS;
    let per_sync = n as f64 / log.syncs().max(1) as f64;
    Ok((n as f64 / secs, per_sync))
}

fn forwarder_config(dir: &Path, transport: Transport) -> ForwarderConfig {
    let mut c = ForwarderConfig::new(dir.join("audit.log"), dir.join("audit.cursor"), transport);
    c.backoff_min = Duration::from_millis(50);
    c.backoff_max = Duration::from_secs(1);
    c
}

/// Waits (polling every 5 ms) until the forwarder's cursor reaches `seq`.
async fn until_cursor(fwd: &Forwarder, seq: u64) -> Result<(), String> {
    let end = Instant::now() + HANG_GUARD;
    while fwd.health().cursor < seq {
        if Instant::now() > end {
            return Err(format!("forwarder stuck: {:?}", fwd.health()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Forwards a prefilled log of `FORWARD_RECORDS`; returns records/s.
async fn forward_rate(relp: bool) -> Result<f64, String> {
    let dir = WorkDir::new("forward")?;
    let log = Arc::new(open(dir.path(), 4096)?);
    let mut tasks = Vec::new();
    for a in 0..APPENDERS {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..FORWARD_RECORDS / APPENDERS {
                log.append(event(a * 1_000_000 + i))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    let total = (FORWARD_RECORDS / APPENDERS) * APPENDERS;
    let rs = Rsyslog::try_configure(dir.path()).and_then(|mut r| r.try_spawn().map(|_| r))?;
    let transport = if relp {
        Transport::Relp(rs.relp_addr())
    } else {
        Transport::Tcp(rs.tcp_addr())
    };
    let t = Instant::now();
    let fwd = Forwarder::start(
        forwarder_config(dir.path(), transport),
        Some(log.subscribe()),
    )
    .map_err(|e| e.to_string())?;
    until_cursor(&fwd, total).await?;
    let secs = t.elapsed().as_secs_f64();
    fwd.stop().await.map_err(|e| e.to_string())?;
    drop(rs);
    Ok(total as f64 / secs)
}

/// One outage; returns (catch-up ms, backlog records at the restart).
async fn catch_up(outage: Duration) -> Result<(f64, u64), String> {
    let dir = WorkDir::new("catchup")?;
    let log = Arc::new(open(dir.path(), 4096)?);
    let mut rs = Rsyslog::try_configure(dir.path()).and_then(|mut r| r.try_spawn().map(|_| r))?;
    let fwd = Forwarder::start(
        forwarder_config(dir.path(), Transport::Relp(rs.relp_addr())),
        Some(log.subscribe()),
    )
    .map_err(|e| e.to_string())?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let load_log = log.clone();
    let load = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut i = 0u64;
        while !*stop_rx.borrow_and_update() {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop_rx.changed() => break,
            }
            for _ in 0..LOAD_RPS / 100 {
                load_log.append(event(i)).await.map_err(|e| e.to_string())?;
                i += 1;
            }
        }
        Ok::<(), String>(())
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    rs.kill9();
    tokio::time::sleep(outage).await;
    rs.try_restart()?;
    let t = Instant::now();
    let target = *log.subscribe().borrow();
    let backlog = target.saturating_sub(fwd.health().cursor);
    until_cursor(&fwd, target).await?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let _ = stop_tx.send(true);
    load.await.map_err(|e| e.to_string())??;
    fwd.stop().await.map_err(|e| e.to_string())?;
    Ok((ms, backlog))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    percentile(&s, 50.0)
}

pub(crate) fn run(opts: &Options) -> Result<(Value, Vec<Value>), String> {
    Rsyslog::available()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let outage = Duration::from_secs(opts.outage_s);
    rt.block_on(async {
        let (mut group, mut per_sync, mut single) = (Vec::new(), Vec::new(), Vec::new());
        let (mut relp, mut tcp, mut catchup, mut backlog) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 0..opts.runs {
            eprintln!("audit: run {}/{}", run + 1, opts.runs);
            let (rps, ps) = append_rate(4096, GROUP_RECORDS).await?;
            group.push(rps);
            per_sync.push(ps);
            single.push(append_rate(1, PER_RECORD_RECORDS).await?.0);
            relp.push(forward_rate(true).await?);
            tcp.push(forward_rate(false).await?);
            if run < 3 {
                let (ms, b) = catch_up(outage).await?;
                catchup.push(ms);
                backlog.push(b as f64);
            }
        }
        let speedup = median(&group) / median(&single);
        let metrics = vec![
            summary("audit_append_group_commit_rps", "records/s", &group),
            summary("audit_records_per_fsync", "records", &per_sync),
            summary("audit_append_fsync_per_record_rps", "records/s", &single),
            summary("audit_forward_relp_rps", "records/s", &relp),
            summary("audit_forward_tcp_rps", "records/s", &tcp),
            summary("audit_catchup_ms", "ms", &catchup),
            summary("audit_catchup_backlog_records", "records", &backlog),
        ];
        let report = json!({
            "appenders": APPENDERS,
            "group_commit_records": GROUP_RECORDS,
            "fsync_per_record_records": PER_RECORD_RECORDS,
            "forward_records": FORWARD_RECORDS,
            "relp_window": 256,
            "outage_s": opts.outage_s,
            "load_records_per_s": LOAD_RPS,
            "group_commit_speedup": round3(speedup),
            "runs": {
                "append_group_commit_rps": group,
                "append_fsync_per_record_rps": single,
                "forward_relp_rps": relp,
                "forward_tcp_rps": tcp,
                "catchup_ms": catchup,
            },
        });
        Ok((report, metrics))
    })
}
