//! The `tartarus` binary against the stand-in daemon: outputs, exit codes, and the requests it
//! sends. The interactive exec runs against the real guest-init agent behind the upgrade.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn tartarus(s: &common::StandIn, args: &[&str]) -> Output {
    tartarus_with(s, args, None)
}

fn tartarus_with(s: &common::StandIn, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let home = s.dir.join("home");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tartarus"))
        .args(["--host", &s.unix_host()])
        .args(args)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("TARTARUS_HOST")
        .env_remove("TARTARUS_PROFILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(data) = stdin {
        input.write_all(data).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn health_and_json_output() {
    let s = common::start();
    let o = tartarus(&s, &["health"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(
        out(&o).starts_with("Status:      ok\nVersion:     0.1.0\n"),
        "{}",
        out(&o)
    );
    let o = tartarus(&s, &["-o", "json", "health"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["templates"], 2);
}

#[test]
fn sandbox_ls_table() {
    let s = common::start();
    let o = tartarus(&s, &["ps"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let text = out(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "ID                TEMPLATE   STATE     PID    AGE   MEMORY"
    );
    assert_eq!(
        lines[1],
        "sb-000000000001   base       running   4242   2m    40 MiB"
    );
    tartarus(&s, &["sandbox", "ls", "--state", "paused"]);
    assert!(s.last("GET", "/sandboxes?state=paused").is_some());
}

#[test]
fn api_error_exits_1_with_the_message() {
    let s = common::start();
    let o = tartarus(&s, &["sandbox", "inspect", "sb-missing"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err(&o), "tartarus: No sandbox sb-missing\n");
    let o = tartarus(&s, &["rm", "sb-000000000001", "sb-missing"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(out(&o), "sb-000000000001\n");
    assert!(err(&o).contains("sb-missing: No sandbox sb-missing"));
}

#[test]
fn usage_errors_exit_2() {
    let s = common::start();
    assert_eq!(tartarus(&s, &["bogus"]).status.code(), Some(2));
    let o = tartarus(&s, &["cp", "a", "b"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("one side of cp must be a sandbox path"));
    let o = Command::new(env!("CARGO_BIN_EXE_tartarus"))
        .args(["--host", "ftp://x", "health"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn unreachable_daemon_exits_1() {
    let s = common::start();
    let _ = s;
    let o = Command::new(env!("CARGO_BIN_EXE_tartarus"))
        .args(["--host", "unix:///nonexistent/t.sock", "health"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).starts_with("tartarus: cannot connect to tartarusd at unix:///nonexistent/t.sock")
    );
}

#[test]
fn profile_from_the_config_file() {
    let s = common::start();
    let cfg = s.dir.join("home/.config/tartarus");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("config.toml"),
        format!(
            "default_profile = \"lab\"\n[profiles.lab]\nhost = \"{}\"\napi_key = \"abc\"\noutput = \"json\"\n",
            s.tcp_host()
        ),
    )
    .unwrap();
    // No --host: the profile's TCP address, key and output apply.
    let o = Command::new(env!("CARGO_BIN_EXE_tartarus"))
        .arg("health")
        .env("XDG_CONFIG_HOME", s.dir.join("home/.config"))
        .env_remove("TARTARUS_HOST")
        .env_remove("TARTARUS_PROFILE")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(serde_json::from_slice::<serde_json::Value>(&o.stdout).is_ok());
    assert_eq!(
        s.last("GET", "/health").unwrap().authorization.as_deref(),
        Some("Bearer abc")
    );
}

#[test]
fn run_streams_and_deletes() {
    let s = common::start();
    let o = tartarus(
        &s,
        &[
            "run",
            "base",
            "--network",
            "nat",
            "-e",
            "A=1",
            "-w",
            "/tmp",
            "--",
            "exit",
            "3",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    assert_eq!(out(&o), "argv=exit 3 env=A=1 cwd=/tmp\n");
    assert_eq!(err(&o), "err\n");
    let create: serde_json::Value =
        serde_json::from_slice(&s.exact("POST", "/sandboxes").unwrap().body).unwrap();
    assert_eq!(create["template"], "base");
    assert_eq!(create["network"], "nat");
    let exec: serde_json::Value = serde_json::from_slice(
        &s.last("POST", "/sandboxes/sb-000000000001/exec")
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(exec["stream"], true);
    assert!(s.last("DELETE", "/sandboxes/sb-000000000001").is_some());
}

#[test]
fn run_exit_codes() {
    let s = common::start();
    assert_eq!(
        tartarus(&s, &["run", "base", "--", "kill"]).status.code(),
        Some(137)
    );
    let o = tartarus(&s, &["run", "base", "--", "nosuch"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(err(&o).contains("cannot execute 'nosuch'"));
    assert!(s.last("DELETE", "/sandboxes/sb-000000000001").is_some());
    let o = tartarus(&s, &["run", "base", "--", "fail"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("tartarus: The sandbox's agent is not answering"));
}

#[test]
fn run_keep() {
    let s = common::start();
    let o = tartarus(&s, &["run", "--keep", "base", "--", "true"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(err(&o).ends_with("sb-000000000001\n"), "{}", err(&o));
    assert!(s.last("DELETE", "/sandboxes").is_none());
}

#[test]
fn exec_stream_and_detach() {
    let s = common::start();
    let o = tartarus(&s, &["exec", "sb-1", "--", "exit", "42"]);
    assert_eq!(o.status.code(), Some(42));
    let o = tartarus(&s, &["exec", "-d", "sb-1", "--", "sleep", "100"]);
    assert_eq!((o.status.code(), out(&o).as_str()), (Some(0), "42\n"));
    let body: serde_json::Value =
        serde_json::from_slice(&s.last("POST", "/sandboxes/sb-1/exec").unwrap().body).unwrap();
    assert_eq!(body["background"], true);
}

#[test]
fn exec_interactive_through_the_agent() {
    let s = common::start();
    let o = tartarus_with(
        &s,
        &[
            "exec",
            "-i",
            "-e",
            "X=y",
            "sb-1",
            "--",
            "sh",
            "-c",
            "cat; echo $X >&2; exit 5",
        ],
        Some(b"hello\nworld\n"),
    );
    assert_eq!(o.status.code(), Some(5), "{}", err(&o));
    assert_eq!(out(&o), "hello\nworld\n");
    assert_eq!(err(&o), "y\n");
    let o = tartarus_with(&s, &["exec", "-i", "sb-1", "--", "no-such-program-x"], None);
    assert_eq!(o.status.code(), Some(127), "{}", err(&o));
    let o = tartarus_with(
        &s,
        &["exec", "-i", "sb-1", "--", "sh", "-c", "kill -TERM $$"],
        None,
    );
    assert_eq!(o.status.code(), Some(143), "{}", err(&o));
    // --timeout kills it.
    let o = tartarus_with(
        &s,
        &["exec", "-i", "--timeout", "1", "sb-1", "--", "sleep", "30"],
        None,
    );
    assert_eq!(o.status.code(), Some(137), "{}", err(&o));
}

#[test]
fn exec_tty_needs_a_terminal() {
    let s = common::start();
    let o = tartarus(&s, &["exec", "-it", "sb-1", "--", "sh"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("-t needs a terminal"));
}

#[test]
fn cp_both_ways() {
    let s = common::start();
    let dir = common::temp_dir("cp");
    let f = dir.join("data.bin");
    std::fs::write(&f, b"\x00\x01binary").unwrap();
    let o = tartarus(&s, &["cp", f.to_str().unwrap(), "sb-1:/tmp/"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(s.file("/tmp/data.bin").unwrap(), b"\x00\x01binary");
    assert!(s
        .last("PUT", "/sandboxes/sb-1/files?path=/tmp/data.bin&mode=")
        .is_some());
    let o = tartarus_with(
        &s,
        &["cp", "--mode", "600", "-", "sb-1:/in.txt"],
        Some(b"stdin!"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(s.file("/in.txt").unwrap(), b"stdin!");
    assert!(s
        .last("PUT", "/sandboxes/sb-1/files?path=/in.txt&mode=0600")
        .is_some());

    s.put_file("/etc/hostname", b"guest\n");
    let o = tartarus(&s, &["cp", "sb-1:/etc/hostname", "-"]);
    assert_eq!(out(&o), "guest\n");
    let o = tartarus(&s, &["cp", "sb-1:/etc/hostname", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(std::fs::read(dir.join("hostname")).unwrap(), b"guest\n");
    let o = tartarus(&s, &["cp", "sb-1:/missing", "-"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err(&o), "tartarus: No file /missing\n");
}

#[test]
fn logs_and_events() {
    let s = common::start();
    let o = tartarus(&s, &["logs", "--tail", "5", "sb-1"]);
    assert_eq!(out(&o), "boot line 1\nboot line 2\n");
    assert!(s
        .last("GET", "/sandboxes/sb-1/logs?follow=false&tail=5")
        .is_some());
    let o = tartarus(&s, &["events", "--since", "0"]);
    let text = out(&o);
    assert!(text
        .lines()
        .next()
        .unwrap()
        .starts_with("1 2026-01-01T00:00:00Z sandbox.created sb-000000000001 base"));
    assert!(s.last("GET", "/events?follow=false&since=0").is_some());
    let o = tartarus(&s, &["-o", "json", "events"]);
    assert_eq!(out(&o).lines().count(), 2);
}

#[test]
fn snapshots() {
    let s = common::start();
    let o = tartarus(&s, &["snapshot", "create", "--leave-paused", "sb-1"]);
    assert_eq!(out(&o), "snap-000000000001\n");
    let body: serde_json::Value =
        serde_json::from_slice(&s.last("POST", "/sandboxes/sb-1/snapshots").unwrap().body).unwrap();
    assert_eq!(body["leave_paused"], true);
    let o = tartarus(&s, &["snapshot", "ls", "--sandbox", "sb-1"]);
    assert!(out(&o).contains("snap-000000000001   sb-000000000001   base       3.0 MiB"));
    let o = tartarus(&s, &["snapshot", "rm", "snap-000000000001"]);
    assert_eq!(o.status.code(), Some(0));
    let o = tartarus(
        &s,
        &["sandbox", "create", "--snapshot", "snap-000000000001"],
    );
    assert_eq!(out(&o), "sb-000000000001\n");
}

#[test]
fn templates() {
    let s = common::start();
    let o = tartarus(&s, &["template", "ls"]);
    assert!(out(&o).starts_with("NAME     STATE   VCPUS"), "{}", out(&o));
    let dir = common::temp_dir("tpl");
    let o = tartarus(&s, &["template", "init", dir.join("py").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let spec = dir.join("py/template.toml");
    let o = tartarus(
        &s,
        &[
            "template",
            "build",
            "-f",
            spec.to_str().unwrap(),
            "--replace",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(out(&o).contains("Name:"), "{}", out(&o));
    let sent: serde_json::Value =
        serde_json::from_slice(&s.last("POST", "/templates").unwrap().body).unwrap();
    assert_eq!(sent["name"], "py");
    assert_eq!(sent["replace"], true);
    assert_eq!(sent["kernel"], dir.join("py/vmlinux").to_str().unwrap());
    let o = tartarus(
        &s,
        &[
            "template", "build", "--name", "bad", "--kernel", "/k", "--rootfs", "/r", "-v",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("tartarus: building bad failed: warm-up command exited with 1"));
    let o = tartarus(&s, &["template", "build", "--name", "x"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn port_forward_pipes_connections() {
    let s = common::start();
    // Find a free port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tartarus"))
        .args(["--host", &s.unix_host(), "port-forward", "sb-1"])
        .arg(format!("{port}:80"))
        .env("XDG_CONFIG_HOME", s.dir.join("none"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut conn = None;
    for _ in 0..100 {
        if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            conn = Some(c);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut conn = conn.expect("port-forward did not listen");
    conn.write_all(b"echo me").unwrap();
    let mut buf = [0u8; 7];
    use std::io::Read;
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"echo me");
    assert!(s.last("GET", "/sandboxes/sb-1/ports/80").is_some());
    // SAFETY: SIGINT to the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}
