//! Issue #14's audit trail end to end, against a real `tartarusd` (its API only: no sandbox
//! runs) and a real rsyslogd (`tartarus_audit::harness`, imrelp/imtcp → omfile with a direct
//! queue, so rsyslog acknowledges only what is in its file):
//!
//! - forwarding loses nothing over RELP while rsyslog is `kill -9`ed and restarted and the daemon
//!   is SIGKILLed and restarted, with requests being audited all the while; the sink gets every
//!   record, first copies in order, and duplicates only where the protocol resends;
//! - octet-counted TCP, shorter, across a daemon SIGKILL;
//! - RELP over TLS with mutual authentication (`--audit-syslog relp+tls://` and
//!   `--audit-syslog-{ca,cert,key}`), and the daemon's start errors for its TLS flags;
//! - tampering with the log is named by `tartarus audit verify`, and a torn tail is repaired by
//!   the daemon's next start.
//!
//! The audited events are unauthenticated requests to the TCP listener: each is one
//! `auth.failed` record, on disk before its 401 is sent.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use tartarus_audit::harness::{Rsyslog, SinkTls};
use tartarus_audit::{ForwarderConfig, Record, Transport};
use tartarus_tests::platform::{alive, free_port, tail, wait_until, Daemon, TcpClient};
use tartarus_tests::TempDir;

/// Generous: the forwarder's reconnect backoff and a loaded 2-core machine.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// RELP commands the daemon's forwarder keeps outstanding (it uses the library's default):
/// what one broken session may have to send again.
fn window() -> u64 {
    ForwarderConfig::new("-", "-", Transport::Tcp(String::new())).window as u64
}

/// The forwarder's gauges in `/metrics` (`tartarus_audit_forward_*`), from one scrape.
struct Fwd(BTreeMap<String, i64>);

impl Fwd {
    fn of(d: &Daemon) -> Fwd {
        let text = d.metrics_text();
        Fwd(text
            .lines()
            .filter_map(|l| {
                let (name, v) = l.strip_prefix("tartarus_audit_forward_")?.split_once(' ')?;
                Some((name.to_string(), v.trim().parse::<f64>().ok()? as i64))
            })
            .collect())
    }

    /// A gauge; -1 when missing (the daemon did not answer).
    fn get(&self, name: &str) -> i64 {
        self.0.get(name).copied().unwrap_or(-1)
    }
}

impl std::fmt::Display for Fwd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for n in [
            "connected",
            "cursor",
            "log_seq",
            "lag",
            "backlog_bytes",
            "sent",
            "failed",
            "errors",
            "reconnects",
        ] {
            write!(f, "{n}={} ", self.get(n))?;
        }
        Ok(())
    }
}

/// Waits until the forwarder's gauges satisfy `f`; returns them.
fn wait_fwd(d: &Daemon, what: &str, f: impl Fn(&Fwd) -> bool) -> Fwd {
    let mut last = Fwd(BTreeMap::new());
    let ok = wait_until(HANG_GUARD, || {
        last = Fwd::of(d);
        f(&last)
    });
    assert!(
        ok,
        "waited in vain for {what}: {last}\n(daemon pid {} {})\n--- daemon log:\n{}",
        d.pid(),
        if alive(d.pid()) { "alive" } else { "gone" },
        tail(&d.log(), 30)
    );
    last
}

/// Unauthenticated requests to the daemon's TCP listener, one after another on a kept-alive
/// connection, until stopped; while the daemon is down they fail to connect and are retried.
struct Stream {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Answered>,
}

/// What the stream's requests got.
struct Answered {
    /// Request ids answered 401 (each must have its audit record).
    refused: Vec<String>,
    /// Attempts that found no daemon.
    unreachable: u64,
}

impl Stream {
    fn start(addr: &str, tag: &'static str) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let addr = addr.to_string();
        let thread = std::thread::spawn(move || {
            let mut c = TcpClient::new(&addr);
            let mut a = Answered {
                refused: Vec::new(),
                unreachable: 0,
            };
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                n += 1;
                let rid = format!("{tag}-{n}");
                match c.request("GET", "/sandboxes", &[("X-Request-Id", &rid)], None) {
                    Ok(r) => {
                        assert_eq!(r.status, 401, "{rid}: {r}");
                        a.refused.push(rid);
                    }
                    Err(_) => {
                        a.unreachable += 1;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            a
        });
        Stream { stop, thread }
    }

    fn finish(self) -> Answered {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the request stream failed")
    }
}

/// The log's records: seq → (MSGID, line). Checks they count from 1 without gaps.
fn log_records(log: &Path) -> BTreeMap<u64, (String, String)> {
    let text = std::fs::read_to_string(log).expect("read the audit log");
    let mut m = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with("{\"checkpoint\"")) {
        let r = Record::parse(line).unwrap_or_else(|e| panic!("log line {line:?}: {e}"));
        m.insert(
            r.seq,
            (format!("{}-{}", r.seq, &r.hash[..10]), line.to_string()),
        );
    }
    let n = m.len() as u64;
    assert_eq!(
        m.keys().next_back().copied().unwrap_or(0),
        n,
        "gaps in the log"
    );
    m
}

/// What the sink received, checked against the log.
#[derive(Debug)]
struct SinkReport {
    records: u64,
    copies: u64,
    /// Copies beyond the first of a record.
    duplicates: u64,
    /// Times the stream went back to an earlier record (a resend after a broken session).
    resends: u64,
    /// Most records one resend delivered again.
    largest_resend: u64,
}

/// Every record of the log arrived at the sink; each copy carries the record's own MSGID and
/// its exact log line; first copies arrive in seq order; and the received stream is runs of
/// consecutive records, each new run starting again at or before where the previous one ended
/// (a resend from the cursor) and going back at most the forwarder's window.
fn check_sink(rs: &Rsyslog, log: &Path) -> SinkReport {
    let records = log_records(log);
    let window = window();
    let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut prev, mut last_first) = (0u64, 0u64);
    let mut rep = SinkReport {
        records: records.len() as u64,
        copies: 0,
        duplicates: 0,
        resends: 0,
        largest_resend: 0,
    };
    for (i, got) in rs.lines().iter().enumerate() {
        let mut parts = got.splitn(3, '|');
        let (msgid, _sd, msg) = (parts.next(), parts.next(), parts.next());
        let seq: u64 = msgid
            .and_then(|m| m.split('-').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("sink line {}: {got:?}", i + 1));
        let (want_id, want_line) = records
            .get(&seq)
            .unwrap_or_else(|| panic!("sink line {}: record {seq} is not in the log", i + 1));
        assert_eq!(msgid, Some(want_id.as_str()), "sink line {}", i + 1);
        assert_eq!(msg, Some(want_line.as_str()), "sink line {}", i + 1);
        if seq != prev + 1 {
            assert!(
                seq <= prev,
                "sink line {}: record {seq} right after {prev}: records skipped",
                i + 1
            );
            let again = prev - seq + 1;
            assert!(
                again <= window,
                "sink line {}: a resend of {again} records (from {seq} after {prev}), more than the window of {window}",
                i + 1
            );
            rep.resends += 1;
            rep.largest_resend = rep.largest_resend.max(again);
        }
        let count = seen.entry(seq).or_insert(0);
        if *count == 0 {
            assert_eq!(seq, last_first + 1, "sink line {}: out of order", i + 1);
            last_first = seq;
        } else {
            rep.duplicates += 1;
        }
        *count += 1;
        rep.copies += 1;
        prev = seq;
    }
    let missing: Vec<u64> = records
        .keys()
        .filter(|s| !seen.contains_key(s))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "{} records never arrived, the first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    rep
}

/// `tartarus audit verify --log --public-key -o json`: (exit code, report, stderr).
fn verify(d: &Daemon) -> (i32, Value, String) {
    let (log, public) = d.audit_files();
    let o = d.cli(&[
        "-o",
        "json",
        "audit",
        "verify",
        "--log",
        log.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ]);
    let report = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (
        o.status.code().unwrap_or(-1),
        report,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn assert_intact(d: &Daemon) -> Value {
    let (code, report, stderr) = verify(d);
    assert_eq!(code, 0, "audit verify: {report} {stderr}");
    assert_eq!(report["ok"], true, "{report}");
    report
}

/// Every request the stream had refused left its `auth.failed` record in the log.
fn assert_all_audited(log: &Path, answered: &[Answered]) {
    let text = std::fs::read_to_string(log).unwrap();
    let mut ids = HashSet::new();
    for line in text.lines().filter(|l| l.starts_with("{\"seq\"")) {
        let r = Record::parse(line).unwrap();
        if r.action == "auth.failed" {
            ids.insert(r.request_id);
        }
    }
    for a in answered {
        for rid in &a.refused {
            assert!(ids.contains(rid), "request {rid} got its 401 unaudited");
        }
    }
}

#[test]
fn relp_forwarding_loses_nothing_across_kill_9_of_rsyslog_and_of_the_daemon() {
    Rsyslog::require();
    let sink_dir = TempDir::new("audit-relp-sink");
    let mut rs = Rsyslog::start(sink_dir.path());
    let addr = format!("127.0.0.1:{}", free_port());
    let relp = format!("relp://{}", rs.relp_addr());
    let mut d =
        Daemon::start_without_vms("audit-relp", &["--listen", &addr, "--audit-syslog", &relp]);
    let (log, _) = d.audit_files();
    let mut answered = Vec::new();

    // Phase 1: a stream of audited requests; SIGKILL the daemon mid-stream and start it again
    // on the same state while the requests keep coming.
    let s = Stream::start(&addr, "a");
    let at_kill = wait_fwd(&d, "1000 records forwarded", |g| g.get("cursor") >= 1000);
    d.kill9();
    std::thread::sleep(Duration::from_millis(200));
    d.spawn();
    eprintln!("daemon SIGKILLed at {at_kill}; restarted: {}", Fwd::of(&d));

    // Phase 2: kill -9 rsyslog; the outage shows in /metrics while records pile up on disk.
    wait_fwd(&d, "2000 records forwarded", |g| g.get("cursor") >= 2000);
    rs.kill9();
    let down = wait_fwd(&d, "the outage in /metrics", |g| {
        g.get("errors") >= 1 && g.get("connected") == 0
    });
    let outage = wait_fwd(&d, "a backlog", |g| {
        g.get("log_seq") >= down.get("log_seq") + 300 && g.get("lag") >= 300
    });
    assert!(
        d.metrics_text()
            .contains("tartarus_audit_forward_last_error{"),
        "no last_error in /metrics during the outage"
    );
    eprintln!("rsyslog down: {outage}");
    // The daemon crashes again in the outage: the next one starts with the backlog on disk
    // (its cursor file says where) and no sink, and says so.
    let at_kill2 = Fwd::of(&d);
    d.kill9();
    d.spawn();
    let restarted = wait_fwd(&d, "the restarted daemon to see the outage", |g| {
        g.get("errors") >= 1
            && g.get("connected") == 0
            && g.get("lag") >= outage.get("lag")
            && g.get("backlog_bytes") > 0
    });
    eprintln!("daemon SIGKILLed in the outage at {at_kill2}; restarted: {restarted}");
    let backlog = wait_fwd(&d, "more backlog", |g| {
        g.get("log_seq") >= restarted.get("log_seq") + 300
    });
    // rsyslog comes back on the same ports; the new daemon's forwarder connects (its first
    // session, not a reconnect) and works off the backlog.
    rs.restart();
    let back = wait_fwd(&d, "the forwarder to connect", |g| g.get("connected") == 1);

    // Another kill -9 of rsyslog while the stream goes on: this forwarder loses a session it
    // had and reconnects.
    wait_fwd(&d, "records forwarded", |g| {
        g.get("cursor") >= back.get("cursor") + 300
    });
    rs.kill9();
    wait_fwd(&d, "the second outage", |g| {
        g.get("connected") == 0 && g.get("errors") > back.get("errors")
    });
    rs.restart();

    // Phase 3: more requests, then stop and let the forwarder catch up.
    let target = backlog.get("log_seq") + 1500;
    wait_fwd(&d, "1500 more records", |g| g.get("log_seq") >= target);
    answered.push(s.finish());
    let after = wait_fwd(&d, "the forwarder to catch up", |g| {
        g.get("lag") == 0 && g.get("connected") == 1
    });
    eprintln!("caught up: {after}");
    let n = log_records(&log).len() as i64;
    assert_eq!(after.get("log_seq"), n, "{after}");
    assert_eq!(after.get("cursor"), n, "{after}");
    assert_eq!(after.get("backlog_bytes"), 0, "{after}");
    assert!(after.get("errors") >= 1, "{after}");
    assert!(after.get("reconnects") >= 1, "{after}");
    assert!(after.get("sent") > 0, "{after}");

    // At the sink: everything, in order, duplicates only from resends.
    let rep = check_sink(&rs, &log);
    eprintln!(
        "RELP: {} records, {} copies at the sink, {} duplicates in {} resends (largest {}), {} requests found no daemon",
        rep.records,
        rep.copies,
        rep.duplicates,
        rep.resends,
        rep.largest_resend,
        answered[0].unreachable
    );
    assert!(rep.records >= 3500, "{rep:?}");
    // One resend per broken session at most: the daemon's two crashes, and every session a
    // forwarder lost (the errors of each daemon until its crash, of the last one since).
    let breaks =
        (at_kill.get("errors") + 1 + at_kill2.get("errors") + 1 + after.get("errors")) as u64;
    assert!(
        rep.resends <= breaks,
        "{rep:?} with {breaks} broken sessions"
    );
    assert!(
        answered[0].unreachable > 0,
        "the daemon's restart went unnoticed"
    );
    assert_all_audited(&log, &answered);
    let report = assert_intact(&d);
    assert_eq!(report["last_seq"], n, "{report}");
    d.kill9();
}

#[test]
fn tcp_forwarding_survives_a_daemon_kill_9() {
    Rsyslog::require();
    let sink_dir = TempDir::new("audit-tcp-sink");
    let rs = Rsyslog::start(sink_dir.path());
    let addr = format!("127.0.0.1:{}", free_port());
    let tcp = format!("tcp://{}", rs.tcp_addr());
    let mut d =
        Daemon::start_without_vms("audit-tcp", &["--listen", &addr, "--audit-syslog", &tcp]);
    let (log, _) = d.audit_files();
    let s = Stream::start(&addr, "t");
    wait_fwd(&d, "500 records forwarded", |g| g.get("cursor") >= 500);
    d.kill9();
    d.spawn();
    let target = Fwd::of(&d).get("log_seq") + 500;
    wait_fwd(&d, "500 more records", |g| g.get("log_seq") >= target);
    let answered = vec![s.finish()];
    let after = wait_fwd(&d, "the forwarder to catch up", |g| {
        g.get("lag") == 0 && g.get("connected") == 1
    });
    // TCP has no acknowledgement: "accepted" is "handed to the kernel", so wait for rsyslog to
    // have written what the daemon sent.
    let n = log_records(&log).len();
    assert!(
        wait_until(HANG_GUARD, || rs.seq_counts().len() >= n),
        "the sink has {} of {n} records",
        rs.seq_counts().len()
    );
    let rep = check_sink(&rs, &log);
    eprintln!(
        "TCP: {} records, {} copies at the sink, {} duplicates in {} resends (largest {})",
        rep.records, rep.copies, rep.duplicates, rep.resends, rep.largest_resend
    );
    assert!(rep.records >= 1000, "{rep:?}");
    assert!(rep.resends <= 1 + after.get("errors") as u64, "{rep:?}");
    assert_all_audited(&log, &answered);
    assert_intact(&d);
    d.kill9();
}

#[test]
fn relp_tls_forwarding_with_mutual_tls() {
    if let Err(e) = Rsyslog::tls_available() {
        panic!("{e}");
    }
    use tartarus_auth::ca::{self, CertKind};
    let sink_dir = TempDir::new("audit-relp-tls-sink");
    let pki = sink_dir.path().join("pki");
    ca::init_ca(&pki, "syslog CA").unwrap();
    ca::issue(&pki, &CertKind::Server, "sink", &["localhost".into()], 2)
        .unwrap()
        .write(&pki, "server")
        .unwrap();
    let client = CertKind::Client {
        tenant: tartarus_auth::TenantScope::All,
        role: tartarus_auth::Role::Admin,
    };
    ca::issue(&pki, &client, "tartarusd", &[], 2)
        .unwrap()
        .write(&pki, "client")
        .unwrap();
    let path = |f: &str| pki.join(f).to_str().unwrap().to_string();
    let rs = Rsyslog::start_tls(
        sink_dir.path(),
        &SinkTls {
            ca: pki.join(ca::CA_CERT),
            cert: pki.join("server.crt"),
            key: pki.join("server.key"),
            require_client_cert: true,
        },
    );
    let url = format!("relp+tls://{}", rs.relp_tls_addr());

    // Start errors name what is wrong.
    let ca_file = path(ca::CA_CERT);
    for (extra, want) in [
        (vec![], "--audit-syslog-ca"),
        (
            vec!["--audit-syslog-ca", "/nonexistent/ca.pem"],
            "CA file /nonexistent/ca.pem",
        ),
        (
            vec![
                "--audit-syslog-ca",
                &ca_file,
                "--audit-syslog-cert",
                &ca_file,
            ],
            "--audit-syslog-cert and --audit-syslog-key go together",
        ),
    ] {
        let mut args = vec!["--audit-syslog", url.as_str()];
        args.extend(extra);
        let (status, log) = Daemon::start_fails("audit-tls-bad", &args);
        assert!(!status.success(), "{args:?}");
        assert!(
            log.contains(want),
            "{args:?}: wanted {want:?} in\n{}",
            tail(&log, 10)
        );
    }

    // Connected by IP to a certificate for `localhost`: the name comes from the flag.
    let addr = format!("127.0.0.1:{}", free_port());
    let (cert, key) = (path("client.crt"), path("client.key"));
    let d = Daemon::start_without_vms(
        "audit-relp-tls",
        &[
            "--listen",
            &addr,
            "--audit-syslog",
            &url,
            "--audit-syslog-ca",
            &ca_file,
            "--audit-syslog-cert",
            &cert,
            "--audit-syslog-key",
            &key,
            "--audit-syslog-server-name",
            "localhost",
        ],
    );
    let (log, _) = d.audit_files();
    let s = Stream::start(&addr, "s");
    wait_fwd(&d, "300 records forwarded", |g| g.get("cursor") >= 300);
    let answered = vec![s.finish()];
    let after = wait_fwd(&d, "the forwarder to catch up", |g| {
        g.get("lag") == 0 && g.get("connected") == 1
    });
    assert_eq!(after.get("configured"), 1, "{after}");
    // RELP: the cursor moved on rsyslog's `rsp 200`, given only once the line was written.
    let rep = check_sink(&rs, &log);
    assert_eq!((rep.duplicates, rep.resends), (0, 0), "{rep:?}");
    assert_eq!(rep.records as i64, after.get("cursor"), "{rep:?}");
    assert_all_audited(&log, &answered);
    assert!(
        d.log()
            .contains(&format!("forwarding the audit log to {url}")),
        "{}",
        tail(&d.log(), 10)
    );
}

#[test]
fn tampering_is_named_and_a_torn_tail_is_repaired_at_start() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut d = Daemon::start_without_vms("audit-tamper", &["--listen", &addr]);
    let (log, _) = d.audit_files();
    // 1150 records: one signed checkpoint (every 1000) and an unsigned tail after it.
    let mut c = TcpClient::new(&addr);
    for i in 1..=1150 {
        let r = c
            .request(
                "GET",
                "/sandboxes",
                &[("X-Request-Id", &format!("r-{i}"))],
                None,
            )
            .expect("request");
        assert_eq!(r.status, 401, "{r}");
    }
    d.kill9();
    let report = assert_intact(&d);
    assert_eq!(
        (
            &report["records"],
            &report["checkpoints"],
            &report["signed_through"]
        ),
        (&Value::from(1150), &Value::from(1), &Value::from(1000)),
        "{report}"
    );
    let pristine = std::fs::read(&log).unwrap();
    let text = String::from_utf8(pristine.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Record 575 is line 575 (the checkpoint comes after record 1000).
    let (seq, line_no) = (575u64, 575usize);
    assert!(lines[line_no - 1].starts_with(&format!("{{\"seq\":{seq},")));

    // A flipped byte in the middle: that record, that line.
    let mut bytes = pristine.clone();
    let start: usize = lines[..line_no - 1].iter().map(|l| l.len() + 1).sum();
    let rid = lines[line_no - 1].find("\"request_id\":\"r-").unwrap() + "\"request_id\":\"".len();
    bytes[start + rid] ^= 0x01; // 'r' -> 's': still JSON, no longer the hashed content
    std::fs::write(&log, &bytes).unwrap();
    let (code, report, stderr) = verify(&d);
    assert_eq!(code, 1, "{report} {stderr}");
    assert_eq!(report["problem"]["kind"], "edited", "{report}");
    assert!(
        stderr.contains(&format!("record {seq} at line {line_no} was edited")),
        "{stderr}"
    );
    // The daemon will not append to a log damaged mid-file: it refuses to start, naming where.
    let status = d
        .try_spawn()
        .expect_err("tartarusd started on an edited audit log");
    assert_eq!(status.code(), Some(1), "{status}");
    assert!(
        d.log().contains(&format!(
            "is damaged at line {line_no}: record {seq} was edited"
        )),
        "{}",
        tail(&d.log(), 5)
    );

    // A deleted line: the record that is gone, and where.
    let mut cut = lines.clone();
    cut.remove(line_no - 1);
    std::fs::write(&log, cut.join("\n") + "\n").unwrap();
    let (code, report, stderr) = verify(&d);
    assert_eq!(code, 1, "{report} {stderr}");
    assert_eq!(report["problem"]["kind"], "deleted", "{report}");
    assert!(
        stderr.contains(&format!("record {seq} was deleted (before line {line_no})")),
        "{stderr}"
    );

    // A crash mid-write: the last record cut in half. verify calls it a torn tail; the
    // daemon's next start cuts it off, says so, and the log verifies again.
    let last = lines.last().unwrap();
    assert!(last.starts_with("{\"seq\":1150,"), "{last}");
    let torn = pristine.len() - 1 - last.len() / 2;
    std::fs::write(&log, &pristine[..torn]).unwrap();
    let (code, report, stderr) = verify(&d);
    assert_eq!(code, 1, "{report} {stderr}");
    assert_eq!(report["problem"]["kind"], "truncated_tail", "{report}");
    d.spawn();
    let repaired = format!(
        "removed an unfinished record at line {} ({} bytes at offset {})",
        lines.len(),
        torn - (pristine.len() - 1 - last.len()),
        pristine.len() - 1 - last.len()
    );
    assert!(
        d.log().contains(&repaired),
        "no {repaired:?} in the daemon's log:\n{}",
        tail(&d.log(), 20)
    );
    let report = assert_intact(&d);
    assert_eq!(report["last_seq"], 1149, "{report}");
    // The chain goes on from the last whole record.
    let r = TcpClient::once(
        &addr,
        "GET",
        "/sandboxes",
        &[("X-Request-Id", "after")],
        None,
    );
    assert_eq!(r.status, 401, "{r}");
    let report = assert_intact(&d);
    assert_eq!(report["last_seq"], 1150, "{report}");
    let records = log_records(&log);
    assert_eq!(
        Record::parse(&records[&1150].1).unwrap().request_id,
        "after"
    );
    d.kill9();
}
