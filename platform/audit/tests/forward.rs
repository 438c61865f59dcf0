//! The forwarder against a real rsyslogd (imrelp, imtcp → omfile) on 127.0.0.1.

mod common;

use std::sync::Arc;

use common::{
    check_received, event, fwd_config, msgids, open_log, wait, Rsyslog, TempDir, HANG_GUARD,
};
use tartarus_audit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relp_10000_events_survive_kill_9_of_rsyslog_and_a_forwarder_crash() {
    let dir = TempDir::new("relp-kill");
    let mut rs = Rsyslog::start(dir.path());
    let log = Arc::new(open_log(&dir));
    let mut config = fwd_config(&dir, Transport::Relp(rs.relp_addr()));
    // Slow enough that the kills land mid-stream (5 s for everything).
    config.rate_limit = Some((2000.0, 100));
    let fwd = Forwarder::start(config.clone(), Some(log.subscribe())).unwrap();

    let n = 10_000u64;
    let mut tasks = Vec::new();
    for t in 0..10 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..n / 10 {
                log.append(event(t * 100_000 + i, "acme")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // kill -9 rsyslog once 2000 records were accepted.
    let h = Arc::new(std::sync::Mutex::new(fwd));
    let hh = h.clone();
    assert!(wait(move || hh.lock().unwrap().health().cursor >= 2000).await);
    let at_kill = h.lock().unwrap().health();
    assert!(
        at_kill.cursor < n,
        "everything was sent before the kill: {at_kill:?}"
    );
    rs.kill9();
    let hh = h.clone();
    assert!(
        wait(move || hh.lock().unwrap().health().errors >= 1).await,
        "the outage went unnoticed"
    );
    let during = h.lock().unwrap().health();
    assert!(!during.connected);
    assert!(during.last_error.is_some() && during.last_error_at.is_some());
    assert!(during.lag > 0 && during.backlog_bytes > 0, "{during:?}");
    rs.restart();

    // Then the forwarder itself crashes at 6000 and a new one starts from the cursor file.
    let hh = h.clone();
    assert!(wait(move || hh.lock().unwrap().health().cursor >= 6000).await);
    let fwd = Arc::into_inner(h).unwrap().into_inner().unwrap();
    let before_crash = fwd.health();
    assert!(before_crash.reconnects >= 1, "{before_crash:?}");
    fwd.abort();
    let fwd = Forwarder::start(config, Some(log.subscribe())).unwrap();
    let fwd = Arc::new(fwd);
    let f2 = fwd.clone();
    assert!(
        wait(move || f2.health().cursor == n).await,
        "stuck at {:?}",
        fwd.health()
    );
    let health = Arc::into_inner(fwd).unwrap().stop().await.unwrap();
    assert_eq!((health.cursor, health.lag), (n, 0));

    let cursor = Cursor::load(&dir.path().join("audit.cursor")).unwrap();
    assert_eq!(cursor.seq, n);
    assert_eq!(
        &cursor.hash[..10],
        &msgids(&dir)[&n][n.to_string().len() + 1..]
    );
    // rsyslog wrote each message before acknowledging it (direct queue): all are there.
    let dups = check_received(&rs, &dir, n);
    println!(
        "relp: {n} records, {} lines received, {dups} duplicates (re-sent after the kill and the crash, same MSGID)",
        rs.lines().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_down_at_start_builds_a_backlog_then_drains_it() {
    let dir = TempDir::new("relp-down");
    let mut rs = Rsyslog::configure(dir.path());
    let log = open_log(&dir);
    let fwd = Arc::new(
        Forwarder::start(
            fwd_config(&dir, Transport::Relp(rs.relp_addr())),
            Some(log.subscribe()),
        )
        .unwrap(),
    );
    for i in 0..500 {
        log.append(event(i, "acme")).await.unwrap();
    }
    let f = fwd.clone();
    assert!(
        wait(move || {
            let h = f.health();
            h.errors >= 2 && h.lag == 500
        })
        .await
    );
    let h = fwd.health();
    assert_eq!(
        (h.connected, h.cursor, h.log_seq, h.sent),
        (false, 0, 500, 0)
    );
    assert!(
        h.backlog_bytes >= std::fs::metadata(log.path()).unwrap().len() - 200,
        "{h:?}"
    );
    let err = h.last_error.unwrap();
    assert!(err.contains("RELP connection to 127.0.0.1"), "{err}");
    assert!(
        !dir.path().join("audit.cursor").exists(),
        "the cursor moved with no sink"
    );

    rs.spawn();
    let f = fwd.clone();
    assert!(
        wait(move || f.health().cursor == 500).await,
        "{:?}",
        fwd.health()
    );
    let h = fwd.health();
    assert_eq!((h.lag, h.sent, h.backlog_bytes), (0, 500, 0));
    assert!(h.connected);
    // Live records after the drain go out too, woken by the append notification.
    log.append(event(500, "acme")).await.unwrap();
    let f = fwd.clone();
    assert!(wait(move || f.health().cursor == 501).await);
    Arc::into_inner(fwd).unwrap().stop().await.unwrap();
    assert_eq!(check_received(&rs, &dir, 501), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_octet_counting_keeps_multi_line_messages_whole() {
    let dir = TempDir::new("tcp");
    let rs = Rsyslog::start(dir.path());
    let log = open_log(&dir);
    let mut config = fwd_config(&dir, Transport::Tcp(rs.tcp_addr()));
    config.syslog.msg_format = MsgFormat::Text;
    let n = 1000u64;
    for i in 0..n {
        log.append(event(i, "globex")).await.unwrap();
    }
    // Without a notification channel, and a poll longer than the hang guard: the backlog
    // (four windows of 256) must go out without waiting for a poll.
    config.poll = HANG_GUARD * 2;
    let fwd = Arc::new(Forwarder::start(config, None).unwrap());
    let f = fwd.clone();
    assert!(
        wait(move || f.health().cursor == n).await,
        "{:?}",
        fwd.health()
    );
    let out = dir.path().join("received.log");
    assert!(
        wait(move || std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .count() as u64
            >= n)
        .await
    );
    Arc::into_inner(fwd).unwrap().stop().await.unwrap();

    let lines = rs.lines();
    assert_eq!(lines.len() as u64, n, "one line per message");
    assert_eq!(check_received(&rs, &dir, n), 0);
    let records: Vec<Record> = query(log.path(), Filter::default())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (line, r) in lines.iter().zip(&records) {
        let (msgid, rest) = line.split_once('|').unwrap();
        let (sd, msg) = rest.split_once('|').unwrap();
        assert!(msgid.starts_with(&format!("{}-", r.seq)));
        assert!(
            sd.starts_with(&format!(
                "[audit@32473 seq=\"{}\" hash=\"{}\"",
                r.seq, r.hash
            )),
            "{sd}"
        );
        assert!(sd.contains("tenant=\"globex\""), "{sd}");
        assert!(
            msg.contains(&format!("sandbox.create sandbox/sb-{}", r.seq - 1)),
            "{msg}"
        );
        if let Outcome::Error(_) = r.result {
            // The raw newline travelled inside one frame; rsyslog escapes it as #012.
            assert!(
                msg.contains(&format!("exec failed#012line two of {}", r.seq - 1)),
                "{msg}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_messages_carry_the_exact_log_line() {
    let dir = TempDir::new("json");
    let rs = Rsyslog::start(dir.path());
    let log = open_log(&dir);
    let fwd = Forwarder::start(
        fwd_config(&dir, Transport::Relp(rs.relp_addr())),
        Some(log.subscribe()),
    )
    .unwrap();
    for i in 0..20 {
        log.append(event(i, "acme")).await.unwrap();
    }
    let fwd = Arc::new(fwd);
    let f = fwd.clone();
    assert!(wait(move || f.health().cursor == 20).await);
    Arc::into_inner(fwd).unwrap().stop().await.unwrap();
    let log_lines: Vec<String> = std::fs::read_to_string(log.path())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    for (got, want) in rs.lines().iter().zip(&log_lines) {
        let msg = got.splitn(3, '|').nth(2).unwrap();
        assert_eq!(msg, want);
    }
    // A cursor from another log is refused at start.
    std::fs::write(
        dir.path().join("audit.cursor"),
        format!("5 {}\n", "00".repeat(32)),
    )
    .unwrap();
    let err = Forwarder::start(fwd_config(&dir, Transport::Relp(rs.relp_addr())), None)
        .err()
        .unwrap();
    assert!(
        matches!(err, ForwardError::CursorMismatch { seq: 5, .. }),
        "{err}"
    );
}
