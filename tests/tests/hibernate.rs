//! Hibernation (issue #13) on a real `tartarusd` with real jailed VMMs of the `base` Linux
//! template: a hibernated sandbox's VMM is gone and its memory given back; any request wakes
//! it with its memory (tmpfs), disk (overlay) and processes as they were; idle timeouts;
//! graceful termination with a checkpoint; and the faults: a hibernate while an exec streams,
//! a wake whose memory file is gone or corrupt, a daemon SIGKILL, a timeout while hibernated.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use tartarus_tests::platform::{alive, wait_until, Daemon};

fn create(d: &Daemon, extra: &[&str]) -> String {
    let mut args = vec!["sandbox", "create", "base"];
    args.extend_from_slice(extra);
    d.cli_ok(&args).trim().to_string()
}

fn exec(d: &Daemon, id: &str, cmd: &str) -> String {
    d.cli_ok(&["exec", id, "--", "sh", "-c", cmd])
}

fn hib_dir(d: &Daemon, id: &str) -> PathBuf {
    d.state.join("sandboxes").join(id).join("hibernated")
}

fn jail_dir(d: &Daemon, id: &str) -> PathBuf {
    d.state.join("jail").join("tartarus-vmm").join(id)
}

/// Opens `POST /sandboxes/{id}/exec` with `stream` on the daemon's socket and reads until
/// the `started` event: the exec is then in progress until the returned stream is read out.
fn streaming_exec(d: &Daemon, id: &str, cmd: &str) -> BufReader<UnixStream> {
    let body = serde_json::json!({"argv": ["sh", "-c", cmd], "stream": true}).to_string();
    let mut s = UnixStream::connect(&d.socket).unwrap();
    write!(
        s,
        "POST /sandboxes/{id}/exec HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended early");
        if line.contains("\"started\"") {
            return r;
        }
    }
}

fn read_to_end(mut r: BufReader<UnixStream>) -> String {
    let mut all = String::new();
    let mut line = String::new();
    while r.read_line(&mut line).unwrap_or(0) > 0 {
        all.push_str(&line);
        if line.contains("\"exit\"") {
            break;
        }
        line.clear();
    }
    all
}

#[test]
#[cfg_attr(
    tartarus_skip_linux_tests,
    ignore = "Linux lane turned off with TARTARUS_LINUX_TESTS=0; pass --ignored to run it"
)]
fn hibernate_wake_idle_and_checkpoint() {
    let d = Daemon::start("hibernate", &[]);
    d.build_base("base");
    let id = create(&d, &[]);
    // State in the guest's memory (tmpfs), on its writable layer, and a process.
    exec(
        &d,
        &id,
        "echo in-memory > /tmp/m; echo on-disk > /root/note; sync",
    );
    d.cli_ok(&["exec", "-d", &id, "--", "sleep", "100000"]);
    // A background process counts as activity: it must end (or be killed) to hibernate.
    let (code, text) = d.curl("POST", &format!("/sandboxes/{id}/hibernate"), None);
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("in progress"), "{text}");
    // SIGTERM (tartarus-init's children start with no signal blocked).
    exec(
        &d,
        &id,
        "for p in /proc/[0-9]*; do grep -q '^sleep' $p/cmdline && kill ${p#/proc/}; done; true",
    );
    let mut last = (0, String::new());
    let done = wait_until(Duration::from_secs(20), || {
        last = d.curl("POST", &format!("/sandboxes/{id}/hibernate"), None);
        last.0 == 200
    });
    assert!(done, "{last:?}\n{}", exec(&d, &id, "ps"));
    let before = d.sandbox(&id);
    assert_eq!(before["state"], "hibernated", "{before}");
    assert!(before["pid"].is_null(), "{before}");
    assert!(
        before["memory_freed_kib"].as_u64().unwrap() > 10_000,
        "{before}"
    );
    assert!(before["hibernated_bytes"].as_u64().unwrap() > 0, "{before}");
    assert!(before["hibernated_at"].is_string(), "{before}");
    assert!(
        !jail_dir(&d, &id).exists(),
        "the jail stays after hibernation"
    );
    assert!(hib_dir(&d, &id).join("ready.mem").exists());
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
    let ls = d.cli_ok(&["sandbox", "ls", "--state", "hibernated"]);
    assert!(ls.contains(&id), "{ls}");

    // Any request wakes it, transparently: memory, disk and hostname are as they were.
    let out = exec(&d, &id, "cat /tmp/m /root/note");
    assert_eq!(out, "in-memory\non-disk\n");
    let after = d.sandbox(&id);
    assert_eq!(after["state"], "running", "{after}");
    assert_eq!(after["wakes"], 1, "{after}");
    assert!(after["wake_ms"].as_f64().unwrap() > 0.0, "{after}");
    let pid = after["pid"].as_i64().unwrap() as i32;
    assert!(alive(pid));
    assert!(
        !hib_dir(&d, &id).exists(),
        "the hibernation's files stay after the wake"
    );

    // The CLI verbs; a second hibernate and wake; files and logs work across them.
    let o = d.cli_ok(&["sandbox", "hibernate", &id]);
    assert_eq!(o.trim(), format!("{id} hibernated"));
    assert!(wait_until(Duration::from_secs(10), || !alive(pid)));
    let o = d.cli_ok(&["sandbox", "wake", &id]);
    assert_eq!(o.trim(), format!("{id} running"));
    assert_eq!(exec(&d, &id, "cat /tmp/m"), "in-memory\n");
    d.cli_ok(&["sandbox", "hibernate", &id]);
    let got = d.dir.path().join("note");
    d.cli_ok(&["cp", &format!("{id}:/root/note"), got.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "on-disk\n");
    assert_eq!(d.sandbox(&id)["wakes"], 3);
    // A paused sandbox hibernates too; `resume` of a hibernated one wakes it.
    d.cli_ok(&["sandbox", "pause", &id]);
    d.cli_ok(&["sandbox", "hibernate", &id]);
    let o = d.cli_ok(&["sandbox", "resume", &id]);
    assert_eq!(o.trim(), format!("{id} running"));
    // Hibernating a stopped sandbox, waking a running one.
    let (code, _) = d.curl("POST", "/sandboxes/sb-000000000000/hibernate", None);
    assert_eq!(code, 404);
    assert_eq!(
        d.cli_ok(&["sandbox", "wake", &id]).trim(),
        format!("{id} running")
    );

    // An exec that streams: a hibernate is refused while it runs, never a lost stream.
    let stream = streaming_exec(&d, &id, "sleep 2; echo streamed");
    let (code, text) = d.curl("POST", &format!("/sandboxes/{id}/hibernate"), None);
    assert_eq!(code, 409, "{text}");
    let rest = read_to_end(stream);
    assert!(rest.contains("streamed"), "{rest}");
    assert!(rest.contains("\"exit_code\":0"), "{rest}");

    // Idle timeout: no request for 2 s → hibernated by the daemon; the next request wakes.
    let idle = create(&d, &["--idle-timeout", "2"]);
    assert_eq!(d.sandbox(&idle)["idle_timeout_s"], 2);
    exec(&d, &idle, "echo kept > /tmp/k");
    assert!(wait_until(Duration::from_secs(30), || d.sandbox(&idle)
        ["state"]
        == "hibernated"));
    assert_eq!(exec(&d, &idle, "cat /tmp/k"), "kept\n");
    assert!(
        d.metric("tartarus_sandbox_hibernations_total{reason=\"idle\"}")
            .unwrap()
            >= 1.0
    );
    assert!(d.metric("tartarus_sandbox_wake_seconds_count").unwrap() >= 4.0);
    let events = d.cli_ok(&["events"]);
    assert!(events.contains("hibernated"), "{events}");

    // Graceful termination with a checkpoint: the snapshot starts a new sandbox later.
    let o = d.cli_ok(&["sandbox", "rm", "--grace", "2", "--checkpoint", &id]);
    let parts: Vec<&str> = o.split_whitespace().collect();
    assert_eq!(parts.len(), 2, "{o}");
    assert_eq!(parts[0], id);
    let snap = parts[1].to_string();
    assert!(snap.starts_with("snap-"), "{o}");
    let (code, _) = d.curl("GET", &format!("/sandboxes/{id}"), None);
    assert_eq!(code, 404);
    let again = d
        .cli_ok(&["sandbox", "create", "--snapshot", &snap])
        .trim()
        .to_string();
    assert_eq!(
        exec(&d, &again, "cat /tmp/m /root/note"),
        "in-memory\non-disk\n"
    );
    // ... and of a hibernated sandbox: its files become the snapshot.
    d.cli_ok(&["sandbox", "hibernate", &idle]);
    let o = d.cli_ok(&["sandbox", "rm", "--checkpoint", &idle]);
    let snap2 = o.split_whitespace().nth(1).unwrap().to_string();
    let again2 = d
        .cli_ok(&["sandbox", "create", "--snapshot", &snap2])
        .trim()
        .to_string();
    assert_eq!(exec(&d, &again2, "cat /tmp/k"), "kept\n");
    // A checkpoint of a stopped sandbox is refused and the sandbox stays.
    let gone = create(&d, &["--timeout", "1"]);
    assert!(wait_until(Duration::from_secs(15), || d.sandbox(&gone)
        ["state"]
        == "stopped"));
    let (code, text) = d.curl(
        "DELETE",
        &format!("/sandboxes/{gone}?checkpoint=true"),
        None,
    );
    assert_eq!(code, 409, "{text}");
    assert_eq!(d.sandbox(&gone)["state"], "stopped");
    for s in [&again, &again2, &gone] {
        d.cli_ok(&["sandbox", "rm", s]);
    }
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
}

#[test]
#[cfg_attr(
    tartarus_skip_linux_tests,
    ignore = "Linux lane turned off with TARTARUS_LINUX_TESTS=0; pass --ignored to run it"
)]
fn wake_faults_and_daemon_restarts() {
    let mut d = Daemon::start("hibernate-faults", &[]);
    d.build_base("base");
    let a = create(&d, &[]);
    let b = create(&d, &[]);
    let c = create(&d, &["--timeout", "8"]);
    for s in [&a, &b, &c] {
        exec(&d, s, &format!("echo {s} > /tmp/who"));
        d.cli_ok(&["sandbox", "hibernate", s]);
    }

    // The daemon SIGKILLed while sandboxes hibernate: they stay hibernated and wake.
    d.kill9();
    d.spawn();
    assert_eq!(d.sandbox(&a)["state"], "hibernated");
    assert_eq!(exec(&d, &a, "cat /tmp/who"), format!("{a}\n"));

    // A memory file that is gone: the wake fails, the sandbox is failed with the reason,
    // and nothing else is affected.
    std::fs::remove_file(hib_dir(&d, &b).join("ready.mem")).unwrap();
    let (code, text) = d.curl(
        "POST",
        &format!("/sandboxes/{b}/exec"),
        Some(r#"{"argv": ["true"]}"#),
    );
    assert!(code >= 500, "{code} {text}");
    let s = d.sandbox(&b);
    assert_eq!(s["state"], "failed", "{s}");
    assert!(s["reason"].as_str().unwrap().contains("Wake failed"), "{s}");
    assert_eq!(exec(&d, &a, "cat /tmp/who"), format!("{a}\n"));

    // A corrupt memory file (truncated): the snapshot load refuses it.
    let e = create(&d, &[]);
    d.cli_ok(&["sandbox", "hibernate", &e]);
    let mem = hib_dir(&d, &e).join("ready.mem");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&mem)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let o = d.cli(&["sandbox", "wake", &e]);
    assert!(!o.status.success());
    let s = d.sandbox(&e);
    assert_eq!(s["state"], "failed", "{s}");
    assert!(s["reason"].as_str().unwrap().contains("Wake failed"), "{s}");
    assert!(!hib_dir(&d, &e).exists());

    // timeout_s runs on while hibernated: the sandbox is stopped, its files gone.
    assert!(wait_until(Duration::from_secs(30), || d.sandbox(&c)
        ["state"]
        == "stopped"));
    assert!(d.sandbox(&c)["reason"]
        .as_str()
        .unwrap()
        .contains("Timeout"));
    assert!(!hib_dir(&d, &c).exists());

    // The console log keeps every life of the sandbox.
    exec(&d, &a, "echo life-1 > /dev/console");
    d.cli_ok(&["sandbox", "hibernate", &a]);
    exec(&d, &a, "echo life-2 > /dev/console");
    let logs = d.cli_ok(&["logs", &a]);
    assert!(logs.contains("life-1") && logs.contains("life-2"), "{logs}");
    for s in [&a, &b, &c, &e] {
        d.cli_ok(&["sandbox", "rm", s]);
    }
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
}
