//! The writer: group commit under concurrency, checkpoints, reopen, crash repair, query.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::{event, TempDir};
use tartarus_audit::*;

fn config(dir: &TempDir, every: u64) -> LogConfig {
    let mut c = LogConfig::new(dir.path().join("audit.log"), dir.path().join("audit.key"));
    c.checkpoint_every = every;
    c
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appenders_share_fsyncs_and_every_append_is_on_disk() {
    let dir = TempDir::new("concurrent");
    let (log, report) = AuditLog::open(config(&dir, 100)).unwrap();
    assert!(report.key_created);
    assert_eq!(report.last_seq, 0);
    let log = Arc::new(log);
    let (tasks, per_task) = (64u64, 50u64);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..per_task {
                got.push(log.append(event(t * 1000 + i, "acme")).await.unwrap());
            }
            got
        }));
    }
    let mut appended = Vec::new();
    for h in handles {
        appended.extend(h.await.unwrap());
    }
    let total = tasks * per_task;
    // Every append got its own seq, 1..=total.
    let seqs: HashSet<u64> = appended.iter().map(|a| a.seq).collect();
    assert_eq!(seqs.len() as u64, total);
    assert_eq!(seqs.iter().max(), Some(&total));
    // Every returned record is in the file already (no close, no flush beyond the appends).
    let on_disk: HashSet<(u64, String)> = query(log.path(), Filter::default())
        .unwrap()
        .map(|r| r.map(|r| (r.seq, r.hash)).unwrap())
        .collect();
    for a in &appended {
        assert!(
            on_disk.contains(&(a.seq, a.hash.clone())),
            "seq {} missing",
            a.seq
        );
    }
    let syncs = log.syncs();
    assert!(
        syncs < total,
        "{syncs} fsyncs for {total} appends: no group commit"
    );
    assert_eq!(*log.subscribe().borrow(), total);
    let key = log.public_key();
    Arc::into_inner(log).unwrap().close().unwrap();
    let rep = verify(&dir.path().join("audit.log"), &key).unwrap();
    assert!(rep.is_ok(), "{:?}", rep.problem);
    assert_eq!(
        (rep.records, rep.last_seq, rep.signed_through),
        (total, total, total)
    );
    assert_eq!(rep.checkpoints, total / 100);
}

#[test]
fn checkpoints_every_n_and_on_close_and_reopen_continues_the_chain() {
    let dir = TempDir::new("checkpoints");
    let (log, _) = AuditLog::open(config(&dir, 10)).unwrap();
    for i in 0..25 {
        assert_eq!(log.append_blocking(event(i, "acme")).unwrap().seq, i + 1);
    }
    let key = log.public_key();
    log.close().unwrap();
    let path = dir.path().join("audit.log");
    let l = lines(&path);
    assert_eq!(l.len(), 28);
    for (line, seq) in [(11, 10), (22, 20), (28, 25)] {
        let c = Checkpoint::parse(&l[line - 1]).unwrap();
        assert_eq!(c.seq, seq);
        assert!(c.signature_valid(&key));
    }
    let mode = std::fs::metadata(dir.path().join("audit.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        load_public_key(&public_key_path(&dir.path().join("audit.key"))).unwrap(),
        key
    );

    let (log, report) = AuditLog::open(config(&dir, 10)).unwrap();
    assert_eq!((report.records, report.last_seq), (25, 25));
    assert!(report.repairs.is_empty() && !report.key_created);
    assert_eq!(log.append_blocking(event(99, "acme")).unwrap().seq, 26);
    drop(log); // drop closes too: a checkpoint for 26
    let rep = verify(&path, &key).unwrap();
    assert!(rep.is_ok(), "{:?}", rep.problem);
    assert_eq!(
        (rep.last_seq, rep.signed_through, rep.unsigned_tail),
        (26, 26, 0)
    );
}

#[test]
fn fsync_per_record_mode_works() {
    let dir = TempDir::new("per-record");
    let mut c = config(&dir, 1000);
    c.max_batch = 1;
    let (log, _) = AuditLog::open(c).unwrap();
    for i in 0..20 {
        log.append_blocking(event(i, "acme")).unwrap();
    }
    assert_eq!(log.syncs(), 20);
    log.close().unwrap();
}

#[test]
fn a_partial_last_line_is_cut_and_reported_never_a_whole_record() {
    let dir = TempDir::new("repair");
    let path = dir.path().join("audit.log");
    let (log, _) = AuditLog::open(config(&dir, 1000)).unwrap();
    for i in 0..5 {
        log.append_blocking(event(i, "acme")).unwrap();
    }
    let key = log.public_key();
    // A crash: the writer never closes (no closing checkpoint), and half a record is on disk.
    std::mem::forget(log);
    let whole = std::fs::read(&path).unwrap();
    let next = Record::new(
        6,
        &Record::parse(lines(&path).last().unwrap()).unwrap().hash,
        event(6, "acme"),
    );
    let next_line = next.to_line();
    let half = &next_line.as_bytes()[..40];
    let mut damaged = whole.clone();
    damaged.extend_from_slice(half);
    std::fs::write(&path, &damaged).unwrap();

    let rep = verify(&path, &key).unwrap();
    assert_eq!(
        rep.problem,
        Some(Problem::TruncatedTail { line: 6, bytes: 40 })
    );

    let (log, report) = AuditLog::open(config(&dir, 1000)).unwrap();
    assert_eq!(
        report.repairs,
        vec![Repair::TruncatedPartialTail {
            line: 6,
            offset: whole.len() as u64,
            bytes: 40
        }]
    );
    assert_eq!(report.last_seq, 5);
    assert!(report.repairs[0]
        .to_string()
        .contains("unfinished record at line 6"));
    assert_eq!(std::fs::read(&path).unwrap(), whole);
    assert_eq!(log.append_blocking(event(7, "acme")).unwrap().seq, 6);
    log.close().unwrap();
    assert!(verify(&path, &key).unwrap().is_ok());

    // NUL bytes after a crash (a file system that extended the file but not its data).
    let before = std::fs::read(&path).unwrap();
    let mut zeros = before.clone();
    zeros.extend_from_slice(&[0u8; 100]);
    std::fs::write(&path, &zeros).unwrap();
    let (log, report) = AuditLog::open(config(&dir, 1000)).unwrap();
    assert_eq!(report.repairs.len(), 1, "{:?}", report.repairs);
    assert_eq!(report.last_seq, 6);
    drop(log);
    assert!(std::fs::read(&path).unwrap().starts_with(&before));

    // A damaged whole line is not a crash artefact: open refuses instead of cutting records.
    let mut l = lines(&path);
    l[2] = l[2].replace("acme", "acmf");
    std::fs::write(&path, l.join("\n") + "\n").unwrap();
    match AuditLog::open(config(&dir, 1000)) {
        Err(LogError::Corrupt { line: 3, .. }) => {}
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened a damaged log"),
    }
    assert_eq!(lines(&path).len(), l.len());
}

#[test]
fn a_crash_between_record_and_checkpoint_gets_the_checkpoint_on_open() {
    let dir = TempDir::new("ckpt-repair");
    let path = dir.path().join("audit.log");
    let (log, _) = AuditLog::open(config(&dir, 5)).unwrap();
    for i in 0..5 {
        log.append_blocking(event(i, "acme")).unwrap();
    }
    let key = log.public_key();
    std::mem::forget(log);
    // Cut the checkpoint line written with record 5 in half.
    let text = std::fs::read_to_string(&path).unwrap();
    let cut = text.trim_end().rfind('\n').unwrap() + 1 + 30;
    std::fs::write(&path, &text[..cut]).unwrap();
    assert!(matches!(
        verify(&path, &key).unwrap().problem,
        Some(Problem::TruncatedTail { .. })
    ));
    let (log, report) = AuditLog::open(config(&dir, 5)).unwrap();
    assert_eq!(report.repairs.len(), 2);
    assert_eq!(report.repairs[1], Repair::CheckpointAdded { seq: 5 });
    drop(log);
    let rep = verify(&path, &key).unwrap();
    assert!(rep.is_ok(), "{:?}", rep.problem);
    assert_eq!(rep.signed_through, 5);
}

#[test]
fn query_by_time_and_tenant() {
    let dir = TempDir::new("query");
    let (log, _) = AuditLog::open(config(&dir, 1000)).unwrap();
    let base: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
    for i in 0..30u64 {
        let mut e = event(i, if i % 2 == 0 { "acme" } else { "globex" });
        e.time = Timestamp(base.0 + i as i64 * 60_000);
        log.append_blocking(e).unwrap();
    }
    let path = log.path().to_path_buf();
    log.close().unwrap();
    let since: Timestamp = "2026-12-01T00:20:00Z".parse().unwrap();
    let got: Vec<Record> = query(
        &path,
        Filter {
            since: Some(since),
            tenant: Some("acme".into()),
        },
    )
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap();
    let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![21, 23, 25, 27, 29]);
    assert!(got.iter().all(|r| r.tenant == "acme" && r.time >= since));
    assert_eq!(query(&path, Filter::default()).unwrap().count(), 30);
}
