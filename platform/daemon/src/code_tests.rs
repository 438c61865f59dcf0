//! The Python runtime (runtime/python_runtime.py) on the host, over its Unix socket
//! (`--unix PATH`), through the same [`connect`] and framing the daemon uses on vsock.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

struct Runtime {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn have_python() -> bool {
    Command::new("python3")
        .arg("-c")
        .arg("import socket")
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
        || {
            eprintln!("skipped: no python3 on this host");
            false
        }
}

/// The embedded script started with `--unix`; waits until it answers.
fn runtime(extra: &[&str]) -> Runtime {
    let dir =
        std::env::temp_dir().join(format!("tartarus-runtime-{}", crate::fsutil::random_hex(6)));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("python_runtime.py");
    std::fs::write(&script, PYTHON_RUNTIME).unwrap();
    let sock = dir.join("rt.sock");
    let child = Command::new("python3")
        .arg(&script)
        .arg("--unix")
        .arg(&sock)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let rt = Runtime { child, dir, sock };
    let t0 = Instant::now();
    while connect(&rt.sock, false).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the runtime never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    rt
}

/// One request; every frame up to and including `done`.
fn call(c: &mut Conn, code: &str) -> Vec<Value> {
    call_frame(c, &serde_json::json!({ "code": code }))
}

fn call_frame(c: &mut Conn, frame: &Value) -> Vec<Value> {
    c.set_timeout(Duration::from_secs(30));
    c.send(frame).unwrap();
    let mut out = Vec::new();
    loop {
        let v = c
            .next()
            .unwrap()
            .expect("the runtime closed the connection");
        let last = v["type"] == "done";
        out.push(v);
        if last {
            return out;
        }
    }
}

fn of_type<'a>(evs: &'a [Value], ty: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["type"] == ty).collect()
}

fn text(evs: &[Value], ty: &str) -> String {
    of_type(evs, ty)
        .iter()
        .map(|e| e["data"].as_str().unwrap())
        .collect()
}

#[test]
fn state_is_kept_and_the_last_expression_is_the_result() {
    if !have_python() {
        return;
    }
    let rt = runtime(&["--preload", "json"]);
    let mut c = connect(&rt.sock, false).unwrap();
    assert!(c.hello.pid > 0);
    let ev = call(&mut c, "x = 20\ny = x * 2\ny + 2");
    assert_eq!(of_type(&ev, "result")[0]["text"], "42", "{ev:?}");
    assert_eq!(ev.last().unwrap()["ok"], true);
    // Another connection sees the same globals; `_` is the last value; a preload is bound.
    drop(c);
    let mut c = connect(&rt.sock, false).unwrap();
    let ev = call(&mut c, "(x, _, json.dumps([1]))");
    assert_eq!(
        of_type(&ev, "result")[0]["text"],
        "(20, 42, '[1]')",
        "{ev:?}"
    );
    // No result for a statement or a None value.
    for code in ["z = 1", "None", "print('p')"] {
        let ev = call(&mut c, code);
        assert!(of_type(&ev, "result").is_empty(), "{code}: {ev:?}");
    }
    // A repr that is not ASCII, and a string result is its repr.
    let ev = call(&mut c, "'héllo ✓'");
    assert_eq!(of_type(&ev, "result")[0]["text"], "'héllo ✓'", "{ev:?}");
}

#[test]
fn stdout_and_stderr_keep_their_order() {
    if !have_python() {
        return;
    }
    let rt = runtime(&[]);
    let mut c = connect(&rt.sock, false).unwrap();
    let ev = call(
        &mut c,
        "import sys\nprint('a')\nprint('b', file=sys.stderr)\nsys.stdout.write('c')\n\
         print('d', file=sys.stderr)\n'end'",
    );
    let seq: Vec<(String, String)> = ev
        .iter()
        .filter(|e| e["type"] == "stdout" || e["type"] == "stderr")
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["data"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("stdout", "a\n"),
        ("stderr", "b\n"),
        ("stdout", "c"),
        ("stderr", "d\n"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(seq, want, "{ev:?}");
    // The result comes after the output, `done` last.
    let types: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(&types[types.len() - 2..], ["result", "done"], "{types:?}");
}

#[test]
fn an_exception_comes_back_with_its_traceback_and_the_runtime_goes_on() {
    if !have_python() {
        return;
    }
    let rt = runtime(&[]);
    let mut c = connect(&rt.sock, false).unwrap();
    let ev = call(
        &mut c,
        "def inner():\n    return 1 / 0\nprint('before')\ninner()",
    );
    assert_eq!(text(&ev, "stdout"), "before\n");
    let e = of_type(&ev, "error")[0];
    assert_eq!(e["name"], "ZeroDivisionError", "{e}");
    assert_eq!(e["value"], "division by zero");
    let tb = e["traceback"].as_str().unwrap();
    assert!(tb.starts_with("Traceback (most recent call last):"), "{tb}");
    assert!(
        tb.contains("in inner") && tb.contains("return 1 / 0"),
        "{tb}"
    );
    // None of the runtime's own frames.
    assert!(!tb.contains("python_runtime.py"), "{tb}");
    assert_eq!(ev.last().unwrap()["ok"], false);
    // A syntax error, SystemExit and a custom exception; then the state is still there.
    call(&mut c, "kept = 'yes'");
    let ev = call(&mut c, "def f(:");
    assert_eq!(of_type(&ev, "error")[0]["name"], "SyntaxError", "{ev:?}");
    let ev = call(&mut c, "import sys\nsys.exit(3)");
    assert_eq!(of_type(&ev, "error")[0]["name"], "SystemExit", "{ev:?}");
    let ev = call(&mut c, "class Oops(Exception): pass\nraise Oops('x')");
    assert_eq!(of_type(&ev, "error")[0]["name"], "Oops", "{ev:?}");
    let ev = call(&mut c, "kept");
    assert_eq!(of_type(&ev, "result")[0]["text"], "'yes'", "{ev:?}");
}

#[test]
fn a_huge_output_arrives_whole_in_bounded_frames() {
    if !have_python() {
        return;
    }
    let rt = runtime(&[]);
    let mut c = connect(&rt.sock, false).unwrap();
    // 8 MiB in one write, then 100 000 small lines.
    let ev = call(
        &mut c,
        "import sys\nsys.stdout.write('x' * (8 << 20))\nfor i in range(100000): print(i)",
    );
    let out = text(&ev, "stdout");
    let lines: String = (0..100000).map(|i| format!("{i}\n")).collect();
    assert_eq!(out.len(), (8 << 20) + lines.len());
    assert!(out[..8 << 20].bytes().all(|b| b == b'x'));
    assert_eq!(&out[8 << 20..], lines);
    let frames = of_type(&ev, "stdout");
    assert!(
        frames
            .iter()
            .all(|f| f["data"].as_str().unwrap().len() <= 64 << 10),
        "a frame is larger than 64 KiB"
    );
    // Buffered: far fewer frames than writes.
    assert!(frames.len() < 1000, "{} frames", frames.len());
    // A huge result is cut.
    let ev = call(&mut c, "'y' * (3 << 20)");
    let r = of_type(&ev, "result")[0]["text"].as_str().unwrap();
    assert!(r.len() < (1 << 20) + 100 && r.ends_with("more characters)"));
}

#[test]
fn bad_frames_are_refused_and_the_connection_goes_on() {
    if !have_python() {
        return;
    }
    let rt = runtime(&[]);
    let mut c = connect(&rt.sock, false).unwrap();
    for (raw, want) in [
        ("this is not json\n", "not JSON"),
        ("[1, 2]\n", "not a JSON object"),
        ("{\"cod\": \"1\"}\n", "code: missing"),
        ("{\"code\": \"1\", \"timeout_s\": -1}\n", "timeout_s"),
    ] {
        c.writer.write_all(raw.as_bytes()).unwrap();
        let e = c.next().unwrap().unwrap();
        assert_eq!(e["type"], "error", "{raw}: {e}");
        assert_eq!(e["name"], "ProtocolError");
        assert!(e["value"].as_str().unwrap().contains(want), "{raw}: {e}");
        assert_eq!(c.next().unwrap().unwrap()["type"], "done");
    }
    let ev = call(&mut c, "1 + 1");
    assert_eq!(of_type(&ev, "result")[0]["text"], "2");
    // A frame longer than the limit: refused, then the connection is closed.
    c.set_timeout(Duration::from_secs(30));
    let big = vec![b'a'; (16 << 20) + 10];
    let _ = c.writer.write_all(&big);
    let e = c.next().unwrap().unwrap();
    assert!(e["value"].as_str().unwrap().contains("longer"), "{e}");
    assert_eq!(c.next().unwrap().unwrap()["type"], "done");
    assert!(c.next().unwrap_or(None).is_none());
    // The runtime itself is fine.
    let mut c = connect(&rt.sock, false).unwrap();
    let ev = call(&mut c, "'alive'");
    assert_eq!(of_type(&ev, "result")[0]["text"], "'alive'");
}

#[test]
fn a_timeout_interrupts_the_code_and_a_crash_ends_the_connection() {
    if !have_python() {
        return;
    }
    let rt = runtime(&[]);
    let mut c = connect(&rt.sock, false).unwrap();
    let t0 = Instant::now();
    let ev = call_frame(
        &mut c,
        &serde_json::json!({"code": "n = 0\nwhile True: n += 1", "timeout_s": 1}),
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    let e = of_type(&ev, "error")[0];
    assert_eq!(e["name"], "TimeoutError", "{e}");
    assert!(e["value"].as_str().unwrap().contains("timeout_s"), "{e}");
    let ev = call(&mut c, "n > 0");
    assert_eq!(of_type(&ev, "result")[0]["text"], "True", "{ev:?}");
    // os._exit: the connection ends without `done` (what the daemon reports as RuntimeDied).
    c.send(&serde_json::json!({"code": "import os\nprint('bye')\nos._exit(1)"}))
        .unwrap();
    let mut seen = Vec::new();
    while let Ok(Some(v)) = c.next() {
        seen.push(v);
    }
    assert!(seen.iter().all(|v| v["type"] != "done"), "{seen:?}");
    assert!(matches!(
        connect(&rt.sock, false),
        Err(RuntimeError::Absent) | Err(RuntimeError::Io(_))
    ));
}

#[test]
fn a_preload_that_fails_writes_down_why() {
    if !have_python() {
        return;
    }
    let dir =
        std::env::temp_dir().join(format!("tartarus-runtime-{}", crate::fsutil::random_hex(6)));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("python_runtime.py");
    std::fs::write(&script, PYTHON_RUNTIME).unwrap();
    let failed = dir.join("failed");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--unix")
        .arg(dir.join("s"))
        .args(["--preload", "no_such_module_here", "--failed-file"])
        .arg(&failed)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let why = std::fs::read_to_string(&failed).unwrap();
    assert!(why.contains("no_such_module_here"), "{why}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn runtime_options_are_checked() {
    let rt = |lang: &str, pre: &[&str]| RuntimeSpec {
        language: lang.into(),
        preload: pre.iter().map(|s| s.to_string()).collect(),
        warmup: vec![],
    };
    assert!(validate_runtime(&rt("python", &["numpy", "os.path", "_x1"])).is_ok());
    let e = validate_runtime(&rt("ruby", &[])).unwrap_err().to_string();
    assert!(e.starts_with("runtime.language"), "{e}");
    for bad in ["", "a b", "1x", "a..b", "os;rm"] {
        let e = validate_runtime(&rt("python", &[bad]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("runtime.preload[0]"), "{bad}: {e}");
    }
}

#[test]
fn warm_up_pieces_are_checked() {
    let rt = |code: &str| RuntimeSpec {
        language: "python".into(),
        preload: vec![],
        warmup: vec!["import json".into(), code.into()],
    };
    assert!(validate_runtime(&rt("x = 1")).is_ok());
    for bad in [" \n ".to_string(), "#".repeat(WARMUP_MAX + 1)] {
        let e = validate_runtime(&rt(&bad)).unwrap_err().to_string();
        assert!(e.starts_with("runtime.warmup[1]"), "{e}");
    }
}

#[test]
fn a_warm_up_leaves_its_imports_but_not_its_names() {
    if !have_python() {
        return;
    }
    let rt = runtime(&[]);
    let mut c = connect(&rt.sock, false).unwrap();
    warm_up(
        &mut c,
        0,
        "import colorsys\nwarm = colorsys.rgb_to_hsv(1, 0, 0)\nprint('w')",
    )
    .unwrap();
    let e = warm_up(&mut c, 1, "def f():\n    return 1 / 0\nf()").unwrap_err();
    assert!(
        e.contains("ZeroDivisionError") && e.contains("<warmup-2>"),
        "{e}"
    );
    // The user's first request is <code-1>, in a namespace without the warm-up's names,
    // and the module it imported is loaded.
    let ev = call(
        &mut c,
        "import sys\n('colorsys' in sys.modules, 'warm' in globals(), 'f' in globals())",
    );
    assert_eq!(
        of_type(&ev, "result")[0]["text"],
        "(True, False, False)",
        "{ev:?}"
    );
    assert_eq!(ev.last().unwrap()["count"], 1, "{ev:?}");
    let ev = call_frame(&mut c, &serde_json::json!({"code": "1", "warmup": "yes"}));
    assert_eq!(of_type(&ev, "error")[0]["name"], "ProtocolError", "{ev:?}");
}

#[test]
fn a_request_sent_before_the_ready_line_is_served() {
    if !have_python() {
        return;
    }
    let rt = runtime(&[]);
    let frame = serde_json::json!({"code": "6 * 7"});
    let mut c = connect_with(&rt.sock, false, Some(&frame)).unwrap();
    c.set_timeout(Duration::from_secs(30));
    let mut ev = Vec::new();
    while let Some(v) = c.next().unwrap() {
        let last = v["type"] == "done";
        ev.push(v);
        if last {
            break;
        }
    }
    assert_eq!(of_type(&ev, "result")[0]["text"], "42", "{ev:?}");
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

#[test]
fn connections_are_served_by_waiting_threads() {
    // A thread started per connection costs an emulated guest kernel a clone and its
    // page faults on every request after a restore: connections reuse waiting threads.
    if !have_python() {
        return;
    }
    let rt = runtime(&[]);
    let pid = rt.child.id();
    std::thread::sleep(Duration::from_millis(200));
    let before = threads(pid);
    // A connection after a quiet spell (what a restored sandbox's first call is) finds a
    // thread waiting and starts none.
    for i in 0..3 {
        let mut c = connect(&rt.sock, false).unwrap();
        let ev = call(&mut c, &format!("{i} + 1"));
        assert_eq!(of_type(&ev, "result")[0]["text"], (i + 1).to_string());
        drop(c);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(threads(pid), before, "connection {i} started a thread");
    }
    // Back-to-back connections (one ending while the next arrives) keep a bounded set.
    for i in 0..40 {
        let mut c = connect(&rt.sock, false).unwrap();
        let ev = call(&mut c, &format!("{i} + 1"));
        assert_eq!(of_type(&ev, "result")[0]["text"], (i + 1).to_string());
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(threads(pid) <= before + 4, "{} threads", threads(pid));
    // More connections at once than waiting threads: each is served.
    let mut held: Vec<Conn> = (0..6).map(|_| connect(&rt.sock, false).unwrap()).collect();
    for (i, c) in held.iter_mut().enumerate() {
        let ev = call(c, &format!("{i} * 2"));
        assert_eq!(of_type(&ev, "result")[0]["text"], (i * 2).to_string());
    }
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let after = threads(pid);
    assert!(
        after <= before + 4,
        "{after} threads after, {before} before"
    );
}

/// Context switches of every thread of `pid`.
fn switches(pid: u32) -> u64 {
    let mut n = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        for l in s.lines() {
            if l.starts_with("voluntary_ctxt_switches:")
                || l.starts_with("nonvoluntary_ctxt_switches:")
            {
                n += l
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    n
}

#[test]
fn an_idle_runtime_does_not_wake_up() {
    // An idle guest's wake-ups cost emulated kernel time on nested PVM hosts: no timers.
    if !have_python() {
        return;
    }
    let rt = runtime(&[]);
    let mut c = connect(&rt.sock, false).unwrap();
    let ev = call(&mut c, "print('x'); 1");
    assert_eq!(of_type(&ev, "result")[0]["text"], "1");
    std::thread::sleep(Duration::from_millis(300));
    let before = switches(rt.child.id());
    std::thread::sleep(Duration::from_millis(1500));
    let woke = switches(rt.child.id()) - before;
    assert!(woke < 5, "the idle runtime woke up {woke} times in 1.5 s");
}
