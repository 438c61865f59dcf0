//! The platform lane: a real `tartarusd` starting real jailed VMMs that restore the `base`
//! template's ready snapshot of our Linux guest, driven through the `tartarus` CLI (and curl
//! for the raw API). The template's one Linux boot is cached by content key (see
//! `tartarus_tests::platform`), so a run with a warm cache boots no kernel at all.

use std::time::{Duration, Instant};

use serde_json::Value;
use tartarus_tests::platform::{alive, tail, wait_until, Daemon};

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn create(d: &Daemon, extra: &[&str]) -> String {
    let mut args = vec!["sandbox", "create", "base"];
    args.extend_from_slice(extra);
    d.cli_ok(&args).trim().to_string()
}

#[test]
#[cfg_attr(
    tartarus_skip_linux_tests,
    ignore = "Linux lane turned off with TARTARUS_LINUX_TESTS=0; pass --ignored to run it"
)]
fn sandbox_lifecycle_through_the_cli() {
    let d = Daemon::start("sandboxes", &[]);
    let t = Instant::now();
    let built = d.build_base("base");
    eprintln!("template base built in {:?}", t.elapsed());
    assert!(built.contains("base"), "{built}");
    let tpl = d.json("GET", "/templates/base", None, 200);
    assert_eq!(tpl["state"], "ready", "{tpl}");

    // The one-shot: create, exec, remove; the command's exit code is the CLI's.
    let o = d.cli(&["run", "base", "--", "uname", "-a"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).starts_with("Linux "), "{}", out(&o));
    let o = d.cli(&["run", "base", "--", "sh", "-c", "echo to-err >&2; exit 3"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(err(&o).trim(), "to-err");
    let o = d.cli(&["run", "base", "--", "/no/such/program"]);
    assert_eq!(o.status.code(), Some(127), "{}", err(&o));
    assert!(err(&o).contains("/no/such/program"), "{}", err(&o));
    // run removed its sandboxes.
    let list = d.json("GET", "/sandboxes", None, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");

    // A sandbox to work with.
    let id = create(&d, &["--label", "team=qa"]);
    let s = d.sandbox(&id);
    assert_eq!(s["state"], "running");
    assert_eq!(s["template"], "base");
    assert_eq!(s["labels"]["team"], "qa");
    let pid = s["pid"].as_i64().unwrap() as i32;
    assert!(alive(pid));
    // The VMM is jailed: not root, its own PID namespace, seccomp on.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(!uid_line.contains("\t0\t"), "{uid_line}");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
    let ls = d.cli_ok(&["sandbox", "ls"]);
    assert!(ls.contains(&id) && ls.contains("running"), "{ls}");
    let inspect: Value =
        serde_json::from_str(&d.cli_ok(&["-o", "json", "sandbox", "inspect", &id])).unwrap();
    assert_eq!(inspect["id"], id.as_str());
    assert!(inspect["rss_kib"].as_u64().unwrap() > 0);

    // exec: env, cwd, stdin, exit codes.
    let o = d.cli(&[
        "exec",
        "-e",
        "GREETING=hi",
        "-w",
        "/proc",
        &id,
        "--",
        "sh",
        "-c",
        "echo $GREETING $(pwd)",
    ]);
    assert_eq!(out(&o), "hi /proc\n", "{}", err(&o));
    let o = d.cli_stdin(
        &["exec", "-i", &id, "--", "sh", "-c", "tr a-z A-Z; exit 4"],
        Some(b"shout\n"),
    );
    assert_eq!(
        (out(&o).as_str(), o.status.code()),
        ("SHOUT\n", Some(4)),
        "{}",
        err(&o)
    );

    // Files both ways.
    let dir = tartarus_tests::TempDir::new("cp");
    let src = dir.join("up.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    d.cli_ok(&["cp", src.to_str().unwrap(), &format!("{id}:/tmp/up.bin")]);
    let back = dir.join("down.bin");
    d.cli_ok(&["cp", &format!("{id}:/tmp/up.bin"), back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == data);
    let o = d.cli(&["cp", &format!("{id}:/tmp/missing"), back.to_str().unwrap()]);
    assert!(!o.status.success());

    // A background process keeps running after its client left; its output is in the logs.
    d.cli_ok(&[
        "exec",
        "-d",
        &id,
        "--",
        "sh",
        "-c",
        "for i in 1 2 3; do echo tick-$i; sleep 0.2; done",
    ]);
    assert!(wait_until(Duration::from_secs(20), || {
        d.cli_ok(&["logs", &id]).contains("tick-3")
    }));

    // Pause: exec is refused; resume: it works again.
    d.cli_ok(&["sandbox", "pause", &id]);
    assert_eq!(d.sandbox(&id)["state"], "paused");
    let (code, body) = d.curl(
        "POST",
        &format!("/sandboxes/{id}/exec"),
        Some(r#"{"argv":["true"]}"#),
    );
    assert_eq!(code, 409, "{body}");
    d.cli_ok(&["sandbox", "resume", &id]);
    assert_eq!(d.cli_ok(&["exec", &id, "--", "echo", "back"]), "back\n");
    // Code (issue #13): the base guest has no python3, so no runtime can start there.
    let (code, body) = d.curl(
        "POST",
        &format!("/sandboxes/{id}/code"),
        Some(r#"{"code": "1"}"#),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("python3"), "{body}");

    // Snapshot, and a fork from it that sees what the source had written.
    d.cli_ok(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo before-snapshot > /tmp/mark",
    ]);
    let snap = d.json(
        "POST",
        &format!("/sandboxes/{id}/snapshots"),
        Some("{}"),
        201,
    );
    let snap_id = snap["id"].as_str().unwrap().to_string();
    assert_eq!(d.sandbox(&id)["state"], "running");
    let snaps = d.cli_ok(&["snapshot", "ls"]);
    assert!(snaps.contains(&snap_id), "{snaps}");
    let fork = d
        .cli_ok(&["sandbox", "create", "--snapshot", &snap_id])
        .trim()
        .to_string();
    assert_eq!(
        d.cli_ok(&["exec", &fork, "--", "cat", "/tmp/mark"]),
        "before-snapshot\n"
    );
    // Writes stay in their sandbox.
    d.cli_ok(&[
        "exec",
        &fork,
        "--",
        "sh",
        "-c",
        "echo fork-only > /tmp/mark",
    ]);
    assert_eq!(
        d.cli_ok(&["exec", &id, "--", "cat", "/tmp/mark"]),
        "before-snapshot\n"
    );
    let other = create(&d, &[]);
    let o = d.cli(&["exec", &other, "--", "cat", "/tmp/mark"]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    // The root file system is writable (the sandbox's own layer over the shared read-only
    // image) and what one sandbox writes there no other sandbox, nor the template, sees.
    d.cli_ok(&[
        "exec",
        &other,
        "--",
        "sh",
        "-c",
        "echo mine > /root/owned; rm /bin/ls",
    ]);
    assert_eq!(
        d.cli_ok(&["exec", &other, "--", "cat", "/root/owned"]),
        "mine\n"
    );
    let o = d.cli(&["exec", &fork, "--", "cat", "/root/owned"]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(d.cli(&["exec", &fork, "--", "ls", "/"]).status.success());
    let mounts = d.cli_ok(&["exec", &other, "--", "cat", "/proc/mounts"]);
    assert!(mounts.contains("overlay / overlay"), "{mounts}");
    let o = d.cli(&["run", "base", "--", "cat", "/root/owned"]);
    assert_eq!(o.status.code(), Some(1));

    // An interactive tty exec, the CLI itself on a terminal (util-linux `script` gives it one):
    // the program runs on a pseudo-terminal in the guest.
    let cmd = format!(
        "{} exec -it {other} -- sh -c 'tty; stty size; exit 5'",
        tartarus_tests::bin_path("tartarus").display()
    );
    let o = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("TARTARUS_HOST", format!("unix://{}", d.socket.display()))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out(&o).contains("/dev/pts/"), "{} {}", out(&o), err(&o));
    assert_eq!(o.status.code(), Some(5), "{} {}", out(&o), err(&o));

    // Port forwarding: a TCP server in the guest, reached from the host through the daemon.
    d.cli_ok(&[
        "exec", "-d", &other, "--", "nc", "-l", "-p", "7070", "-e", "cat",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    let host_port = 20_000 + (std::process::id() % 20_000) as u16;
    let mut pf = d.cli_spawn(&["port-forward", &other, &format!("{host_port}:7070")]);
    let echoed = wait_until(Duration::from_secs(20), || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", host_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        if s.write_all(b"ping-through\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 13];
        s.read_exact(&mut buf).is_ok() && &buf == b"ping-through\n"
    });
    let _ = pf.kill();
    let _ = pf.wait();
    assert!(echoed, "no echo through the port forward");

    // Errors: each a clear JSON error with the right status, the daemon keeps serving.
    for (method, path, body, status) in [
        ("GET", "/sandboxes/sb-000000000000", None, 404),
        ("POST", "/sandboxes", Some(r#"{"template":"nope"}"#), 404),
        (
            "POST",
            "/sandboxes",
            Some(r#"{"template":"base","tmeout_s":1}"#),
            400,
        ),
        ("POST", "/sandboxes", Some("{not json"), 400),
        (
            "POST",
            "/sandboxes",
            Some(r#"{"template":"base","snapshot":"x"}"#),
            400,
        ),
        (
            "POST",
            &format!("/sandboxes/{id}/exec"),
            Some(r#"{"argv":[]}"#),
            400,
        ),
        (
            "GET",
            &format!("/sandboxes/{id}/files?path=relative"),
            None,
            400,
        ),
        ("GET", "/nowhere", None, 404),
        ("PUT", "/sandboxes", Some("{}"), 405),
        (
            "POST",
            "/templates",
            Some(r#"{"name":"Bad Name","kernel":"/k","rootfs":"/r"}"#),
            400,
        ),
        (
            "POST",
            "/templates",
            Some(r#"{"name":"base","kernel":"/k","rootfs":"/r"}"#),
            400,
        ),
        ("DELETE", "/snapshots/snap-000000000000", None, 404),
    ] {
        let (code, text) = d.curl(method, path, body);
        assert_eq!(code, status, "{method} {path}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}"));
        assert!(
            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
            "{text}"
        );
    }
    let (_, text) = d.curl(
        "POST",
        "/sandboxes",
        Some(r#"{"template":"base","tmeout_s":1}"#),
    );
    assert!(text.contains("tmeout_s"), "{text}");

    // Concurrent exec and delete on one sandbox: every request gets an answer, nothing leaks.
    let victim = create(&d, &[]);
    std::thread::scope(|s| {
        let mut hs = Vec::new();
        for _ in 0..4 {
            hs.push(s.spawn(|| {
                d.curl(
                    "POST",
                    &format!("/sandboxes/{victim}/exec"),
                    Some(r#"{"argv":["sleep","0.3"]}"#),
                )
                .0
            }));
        }
        hs.push(s.spawn(|| d.curl("DELETE", &format!("/sandboxes/{victim}"), None).0));
        for h in hs {
            let code = h.join().unwrap();
            assert!([200, 204, 404, 409, 503].contains(&code), "status {code}");
        }
    });
    assert_eq!(d.curl("GET", &format!("/sandboxes/{victim}"), None).0, 404);

    // Events and metrics saw all of it.
    let ev = d.cli_ok(&["events"]);
    for kind in [
        "template.ready",
        "sandbox.created",
        "snapshot.created",
        "sandbox.deleted",
    ] {
        assert!(
            ev.contains(kind),
            "{kind} missing from events:\n{}",
            tail(&ev, 20)
        );
    }
    let (code, metrics) = d.curl("GET", "/metrics", None);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("tartarus_sandboxes{state=\"running\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tartarus_sandbox_create_seconds_count"),
        "{metrics}"
    );

    // rm with a grace period stops the guest cleanly; snapshots outlive their sandbox.
    d.cli_ok(&["sandbox", "rm", "--grace", "5", &id]);
    assert_eq!(d.curl("GET", &format!("/sandboxes/{id}"), None).0, 404);
    assert!(!alive(pid));
    let again = d
        .cli_ok(&["sandbox", "create", "--snapshot", &snap_id])
        .trim()
        .to_string();
    assert_eq!(
        d.cli_ok(&["exec", &again, "--", "cat", "/tmp/mark"]),
        "before-snapshot\n"
    );
    for s in [&fork, &other, &again] {
        d.cli_ok(&["sandbox", "rm", s]);
    }
    d.cli_ok(&["snapshot", "rm", &snap_id]);
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
    assert_eq!(
        std::fs::read_dir(d.state.join("snapshots"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
#[cfg_attr(
    tartarus_skip_linux_tests,
    ignore = "Linux lane turned off with TARTARUS_LINUX_TESTS=0; pass --ignored to run it"
)]
fn sandbox_faults_and_daemon_restarts() {
    let tcp_port = (30_000 + std::process::id() % 20_000).to_string();
    let listen = format!("127.0.0.1:{tcp_port}");
    let mut d = Daemon::start(
        "sandbox-faults",
        &[
            "--max-sandboxes",
            "3",
            "--max-memory-mib",
            "1024",
            "--listen",
            &listen,
        ],
    );
    // The API over TCP too (loopback only unless --listen-any), with an API key made on the
    // Unix socket; without one it is a 401.
    let key = d.cli_ok(&["key", "create", "--name", "faults", "--role", "viewer"]);
    let tcp_health = |key: Option<&str>| {
        let mut c = std::process::Command::new(tartarus_tests::bin_path("tartarus"));
        c.args(["--host", &format!("http://{listen}"), "health"])
            .env_remove("TARTARUS_API_KEY")
            .env("HOME", d.dir.path());
        if let Some(k) = key {
            c.args(["--api-key", k]);
        }
        c.output().unwrap()
    };
    let o = tcp_health(Some(key.trim()));
    assert!(o.status.success(), "{}", err(&o));
    let o = tcp_health(None);
    assert!(!o.status.success());
    assert!(err(&o).contains("unauthorized"), "{}", err(&o));
    let o = std::process::Command::new(tartarus_tests::bin_path("tartarusd"))
        .args(["--listen", "0.0.0.0:1", "--socket", "/nonexistent/x.sock"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("not a loopback address"), "{}", err(&o));
    d.build_base("base");

    // A VMM killed with SIGKILL: the sandbox is failed with the reason, its jail and cgroups
    // are gone, an event says so, and the daemon keeps serving.
    let a = create(&d, &[]);
    let pid = d.sandbox(&a)["pid"].as_i64().unwrap() as i32;
    // SAFETY: signalling a process we created.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(10), || d.sandbox(&a)
        ["state"]
        == "failed"));
    let s = d.sandbox(&a);
    assert!(s["reason"].as_str().unwrap().contains("signal 9"), "{s}");
    assert!(s["pid"].is_null());
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
    assert!(d.cli_ok(&["events"]).contains("failed"));

    // Limits: the fourth live sandbox is a 429 naming the limit.
    let b = create(&d, &[]);
    let c = create(&d, &[]);
    let e = create(&d, &["--timeout", "2"]);
    let (code, text) = d.curl("POST", "/sandboxes", Some(r#"{"template":"base"}"#));
    assert_eq!(code, 429, "{text}");
    assert!(text.contains("--max-sandboxes"), "{text}");
    // timeout_s: the sandbox is stopped when it outlives it.
    assert!(wait_until(Duration::from_secs(15), || d.sandbox(&e)
        ["state"]
        == "stopped"));
    assert!(d.sandbox(&e)["reason"]
        .as_str()
        .unwrap()
        .contains("Timeout"));

    // The daemon SIGKILLed while sandboxes run: after a restart they are adopted again.
    d.cli_ok(&["sandbox", "pause", &c]);
    let b_pid = d.sandbox(&b)["pid"].as_i64().unwrap() as i32;
    d.kill9();
    assert!(alive(b_pid));
    d.spawn();
    assert_eq!(d.sandbox(&b)["state"], "running");
    assert_eq!(d.sandbox(&b)["pid"].as_i64().unwrap() as i32, b_pid);
    assert_eq!(d.sandbox(&c)["state"], "paused");
    assert_eq!(
        d.cli_ok(&["exec", &b, "--", "echo", "adopted"]),
        "adopted\n"
    );
    d.cli_ok(&["sandbox", "resume", &c]);
    // ... and one whose VMM died while the daemon was down is failed with the reason.
    let c_pid = d.sandbox(&c)["pid"].as_i64().unwrap() as i32;
    d.kill9();
    // SAFETY: as above.
    unsafe { libc::kill(c_pid, libc::SIGKILL) };
    d.spawn();
    let s = d.sandbox(&c);
    assert_eq!(s["state"], "failed", "{s}");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("while the daemon was down"),
        "{s}"
    );
    d.cli_ok(&["sandbox", "rm", &b, &c, &a, &e]);

    // The daemon SIGKILLed during a create: after the restart no process, jail or cgroup is
    // left, and the half-made sandbox is failed.
    let sock = d.socket.clone();
    let creator = std::thread::spawn(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "30", "--unix-socket"])
            .arg(&sock)
            .args([
                "-X",
                "POST",
                "-d",
                r#"{"template":"base"}"#,
                "http://localhost/sandboxes",
            ])
            .output()
    });
    // Kill it once the jail exists (the VMM is starting or restoring).
    let jails = d.state.join("jail").join("tartarus-vmm");
    assert!(wait_until(Duration::from_secs(10), || std::fs::read_dir(
        &jails
    )
    .map(|mut r| r.next().is_some())
    .unwrap_or(false)));
    d.kill9();
    let _ = creator.join();
    d.spawn();
    let list = d.json("GET", "/sandboxes", None, 200);
    for s in list["items"].as_array().unwrap() {
        assert_ne!(s["state"], "creating", "{s}");
        if s["state"] == "failed" {
            assert!(
                s["reason"].as_str().unwrap().contains("being created"),
                "{s}"
            );
        }
    }
    for s in list["items"].as_array().unwrap() {
        if s["state"] != "running" {
            d.cli_ok(&["sandbox", "rm", s["id"].as_str().unwrap()]);
        }
    }
    let running: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "running")
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    for id in &running {
        d.cli_ok(&["sandbox", "rm", id]);
    }
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
    // No VMM of any sandbox this daemon ever had is left.
    let (_, events) = d.curl("GET", "/events", None);
    let ids: std::collections::BTreeSet<String> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["sandbox"].as_str().map(str::to_string))
        .collect();
    assert!(ids.len() >= 5, "{ids:?}");
    for id in ids {
        let p = std::process::Command::new("pgrep")
            .args(["-f", &format!("tartarus-vmm --id {id} ")])
            .output()
            .unwrap();
        assert!(out(&p).trim().is_empty(), "VMM of {id} left: {}", out(&p));
    }
}

#[test]
#[cfg_attr(
    tartarus_skip_linux_tests,
    ignore = "Linux lane turned off with TARTARUS_LINUX_TESTS=0; pass --ignored to run it"
)]
fn snapshot_on_a_full_disk_fails_cleanly() {
    let mut d = Daemon::start("sandbox-full", &[]);
    d.build_base("base");
    let id = create(&d, &[]);
    // The snapshots directory on a 1 MiB tmpfs: the copy out of the jail runs out of space.
    let snaps = d.state.join("snapshots");
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tartarus-test-full"])
        .arg(&snaps)
        .status()
        .unwrap();
    assert!(st.success());
    let (code, text) = d.curl("POST", &format!("/sandboxes/{id}/snapshots"), Some("{}"));
    let _ = std::process::Command::new("umount").arg(&snaps).status();
    assert_eq!(code, 500, "{text}");
    assert!(text.contains("No space left"), "{text}");
    assert_eq!(d.sandbox(&id)["state"], "running");
    assert_eq!(
        d.cli_ok(&["exec", &id, "--", "echo", "still-here"]),
        "still-here\n"
    );
    assert_eq!(
        d.json("GET", "/snapshots", None, 200)["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    d.kill9();
    d.spawn();
}

/// A network namespace standing for "the internet": a veth to the host and an HTTP server.
struct Upstream {
    ns: String,
    host_if: String,
    server: std::process::Child,
    _www: tartarus_tests::TempDir,
}

impl Upstream {
    fn start() -> Upstream {
        let n = std::process::id() % 200 + 20;
        let ns = format!("tt-up-{n}");
        let host_if = format!("ttup{n}h");
        let sh = |cmd: &str| {
            let st = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .status()
                .unwrap();
            assert!(st.success(), "{cmd}");
        };
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .status();
        sh(&format!(
            "ip netns add {ns} && ip link add {host_if} type veth peer name ttupn{n} && \
             ip link set ttupn{n} netns {ns} && ip addr add 10.201.{n}.1/30 dev {host_if} && \
             ip link set {host_if} up && ip -n {ns} addr add 10.201.{n}.2/30 dev ttupn{n} && \
             ip -n {ns} link set ttupn{n} up && ip -n {ns} link set lo up && \
             ip -n {ns} route add default via 10.201.{n}.1"
        ));
        let www = tartarus_tests::TempDir::new("www");
        std::fs::write(www.join("index.html"), "from-upstream\n").unwrap();
        let server = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "python3",
                "-m",
                "http.server",
                "8080",
                "--bind",
            ])
            .arg(format!("10.201.{n}.2"))
            .current_dir(www.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let probe = format!("import socket; socket.create_connection(('10.201.{n}.2', 8080), 1)");
        let up = wait_until(Duration::from_secs(20), || {
            std::process::Command::new("ip")
                .args(["netns", "exec", &ns, "python3", "-c", &probe])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(up, "the upstream HTTP server did not start");
        Upstream {
            ns,
            host_if,
            server,
            _www: www,
        }
    }

    fn url(&self) -> String {
        let n = std::process::id() % 200 + 20;
        format!("http://10.201.{n}.2:8080/")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
    }
}

#[test]
#[cfg_attr(
    tartarus_skip_linux_tests,
    ignore = "Linux lane turned off with TARTARUS_LINUX_TESTS=0; pass --ignored to run it"
)]
fn nat_networking_reaches_out_and_keeps_sandboxes_apart() {
    let d = Daemon::start("sandbox-nat", &[]);
    d.build_base("base");
    let up = Upstream::start();
    let a = create(&d, &["--network", "nat"]);
    let b = create(&d, &["--network", "nat"]);
    let none = create(&d, &[]);
    assert_eq!(d.sandbox(&a)["guest_ip"], "172.16.0.2");
    assert_eq!(d.sandbox(&b)["guest_ip"], "172.16.0.2");
    // Egress through the namespace's and the host's NAT.
    let fetch = format!("wget -q -O - {}", up.url());
    assert_eq!(
        d.cli_ok(&["exec", &a, "--", "sh", "-c", &fetch]),
        "from-upstream\n"
    );
    assert_eq!(
        d.cli_ok(&["exec", &b, "--", "sh", "-c", &fetch]),
        "from-upstream\n"
    );
    // network none: nothing leaves.
    let o = d.cli(&["exec", &none, "--", "sh", "-c", "ping -c 1 -W 2 10.201.0.1"]);
    assert!(!o.status.success(), "{}", out(&o));
    // From a sandbox, neither the host's own services nor another sandbox are reachable.
    let ip_of = |id: &str| -> (String, String) {
        let ns = format!("tartarus-{id}");
        let o = std::process::Command::new("ip")
            .args(["-n", &ns, "-4", "-o", "addr", "show", "uplink0"])
            .output()
            .unwrap();
        let text = out(&o);
        let addr = text
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .unwrap()
            .to_string();
        let ns_ip = addr.split('/').next().unwrap().to_string();
        let mut host_ip: Vec<u8> = ns_ip.split('.').map(|p| p.parse().unwrap()).collect();
        host_ip[3] -= 1;
        let host = host_ip
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(".");
        (host, ns_ip)
    };
    let (a_host, _) = ip_of(&a);
    let (b_host, b_ns) = ip_of(&b);
    let mut host_server = std::process::Command::new("python3")
        .args(["-m", "http.server", "18089", "--bind", "0.0.0.0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    for target in [&a_host, &b_host, &b_ns] {
        let o = d.cli(&[
            "exec",
            &a,
            "--",
            "sh",
            "-c",
            &format!("nc -w 2 {target} 18089 </dev/null && echo reached"),
        ]);
        assert!(
            !out(&o).contains("reached"),
            "{target} reachable from a sandbox"
        );
    }
    let _ = host_server.kill();
    let _ = host_server.wait();
    for id in [&a, &b, &none] {
        d.cli_ok(&["sandbox", "rm", id]);
        assert!(!std::path::Path::new(&format!("/run/netns/tartarus-{id}")).exists());
    }
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
}

#[test]
#[cfg_attr(
    tartarus_skip_linux_tests,
    ignore = "Linux lane turned off with TARTARUS_LINUX_TESTS=0; pass --ignored to run it"
)]
fn templates_warm_up_and_go_when_unused() {
    let d = Daemon::start("sandbox-templates", &[]);
    let (k, r) = tartarus_tests::platform::base_images();
    // A template whose ready snapshot holds the result of a warm-up command and a process
    // left running, with an environment every exec gets.
    d.cli_ok(&warm_args(&k, &r, false));
    let t = d.json("GET", "/templates/warm", None, 200);
    assert_eq!(t["state"], "ready", "{t}");
    assert_eq!(t["warmup"].as_array().unwrap().len(), 2, "{t}");
    let id = create_from(&d, "warm");
    assert_eq!(
        d.cli_ok(&["exec", &id, "--", "cat", "/root/prepared"]),
        "prepared\n"
    );
    assert_eq!(
        d.cli_ok(&["exec", &id, "--", "sh", "-c", "echo $STAGE"]),
        "warm\n"
    );
    let ps = d.cli_ok(&["exec", &id, "--", "ps"]);
    assert!(ps.contains("sleep 100000"), "{ps}");
    // A second build of the same template is served from the cache: no boot.
    let t0 = Instant::now();
    let o = d.cli(&warm_args(&k, &r, false));
    assert!(!o.status.success(), "an existing name needs --replace");
    assert!(err(&o).contains("exists"), "{}", err(&o));
    d.cli_ok(&warm_args(&k, &r, true));
    eprintln!("cached rebuild took {:?}", t0.elapsed());
    let events = d.cli_ok(&["events"]);
    assert!(events.matches("template.ready").count() >= 2, "{events}");
    // A replaced or deleted template's files stay while a sandbox uses them, and go after.
    let dirs = || {
        std::fs::read_dir(d.state.join("templates"))
            .unwrap()
            .count()
    };
    assert_eq!(
        dirs(),
        2,
        "the replaced build stays while a sandbox uses it"
    );
    d.cli_ok(&["template", "rm", "warm"]);
    assert_eq!(d.curl("GET", "/templates/warm", None).0, 404);
    assert_eq!(dirs(), 1, "the unused build went with its template");
    assert_eq!(
        d.cli_ok(&["exec", &id, "--", "cat", "/root/prepared"]),
        "prepared\n"
    );
    d.cli_ok(&["sandbox", "rm", &id]);
    assert_eq!(dirs(), 0);
    // A warm-up that fails fails the build with its output.
    let o = d.cli(&[
        "template",
        "build",
        "--name",
        "broken",
        "--kernel",
        k.to_str().unwrap(),
        "--rootfs",
        r.to_str().unwrap(),
        "--memory",
        "128",
        "--disk",
        "64",
        "--warmup",
        "echo no-such-thing >&2; exit 7",
    ]);
    assert!(!o.status.success());
    assert!(err(&o).contains("no-such-thing"), "{}", err(&o));
    assert_eq!(
        d.json("GET", "/templates/broken", None, 200)["state"],
        "failed"
    );
}

fn create_from(d: &Daemon, template: &str) -> String {
    d.cli_ok(&["sandbox", "create", template])
        .trim()
        .to_string()
}

/// `template build` of the "warm" template (a warm-up file, a background process, an env).
fn warm_args<'a>(k: &'a std::path::Path, r: &'a std::path::Path, replace: bool) -> Vec<&'a str> {
    let mut a = vec!["template", "build"];
    if replace {
        a.push("--replace");
    }
    a.extend([
        "--name",
        "warm",
        "--kernel",
        k.to_str().unwrap(),
        "--rootfs",
        r.to_str().unwrap(),
        "--memory",
        "128",
        "--disk",
        "64",
        "--env",
        "STAGE=warm",
        "--warmup",
        "echo prepared > /root/prepared",
        "--warmup-bg",
        "sleep 100000",
    ]);
    a
}
