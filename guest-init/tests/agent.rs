//! The agent served in-process over Unix sockets, driven by the client and by raw frames.

use std::io::{BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use guest_init::agent::Agent;
use guest_init::client::{connect_hybrid_vsock, read_connect_line, Client, ClientError, ExecEvent};
use guest_init::protocol::{
    read_frame, write_frame, ErrorCode, ExecSpec, ProtocolError, Request, Response, StdinMode,
    MAX_FRAME, PROTOCOL_VERSION,
};
use guest_init::reaper::Reaper;

fn agent() -> Agent {
    Agent::new(Reaper::per_child())
}

/// A client connected to a fresh agent connection over a socketpair.
fn pair_with(agent: &Agent) -> UnixStream {
    let (a, b) = UnixStream::pair().unwrap();
    let agent = agent.clone();
    std::thread::spawn(move || agent.handle_connection(b));
    a.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    a
}

fn client(agent: &Agent) -> Client<UnixStream> {
    Client::new(pair_with(agent)).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("guest-init-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn agent_error(r: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Agent { code, .. }) => code,
        other => panic!("expected an agent error, got {other:?}"),
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn hello_ping_info() {
    let a = agent();
    let mut c = client(&a);
    assert_eq!(c.version(), PROTOCOL_VERSION);
    assert!(c.agent().starts_with("tartarus-init "));
    c.ping().unwrap();
    let info = c.info().unwrap();
    assert_eq!(info.protocol_version, PROTOCOL_VERSION);
    assert_eq!(info.pid, std::process::id());
    assert!(!info.kernel.is_empty());
}

#[test]
fn exec_streams_stdout_stderr_and_exit_code() {
    let a = agent();
    let mut c = client(&a);
    let spec = ExecSpec::new(["sh", "-c", "echo a; echo b >&2; exit 3"]);
    let mut s = c.start_exec(&spec, &[]).unwrap();
    assert!(s.pid() > 0);
    let mut events = Vec::new();
    while let Some(ev) = s.next_event().unwrap() {
        events.push(ev);
    }
    assert!(
        events.contains(&ExecEvent::Stdout(b"a\n".to_vec())),
        "{events:?}"
    );
    assert!(
        events.contains(&ExecEvent::Stderr(b"b\n".to_vec())),
        "{events:?}"
    );
    assert_eq!(
        events.last(),
        Some(&ExecEvent::Exit {
            code: Some(3),
            signal: None
        })
    );
    // The connection is still good after an exec.
    c.ping().unwrap();
    let out = c.exec(["sh", "-c", "echo a; echo b >&2; exit 3"]).unwrap();
    assert_eq!(
        (&out.stdout[..], &out.stderr[..], out.code),
        (&b"a\n"[..], &b"b\n"[..], Some(3))
    );
}

#[test]
fn exec_env_cwd_and_stdin() {
    let a = agent();
    let mut c = client(&a);
    let dir = temp_dir("cwd");
    let mut spec = ExecSpec::new(["sh", "-c", "echo \"$GREETING\"; pwd; cat"]);
    spec.env.insert("GREETING".into(), "hi".into());
    spec.cwd = Some(dir.to_str().unwrap().into());
    let out = c.exec_with_input(&spec, b"from stdin").unwrap();
    let want = format!("hi\n{}\nfrom stdin", dir.display());
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    assert_eq!(out.code, Some(0));

    let mut spec = ExecSpec::new(["sh", "-c", "env"]);
    spec.clear_env = true;
    spec.env.insert("ONLY".into(), "1".into());
    let out = c.start_exec(&spec, &[]).unwrap().collect().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("ONLY=1"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("HOME="));

    let mut spec = ExecSpec::new(["wc", "-c"]);
    spec.stdin = StdinMode::Stream;
    let mut s = c.start_exec(&spec, b"12345").unwrap();
    s.send_stdin(b"678", false).unwrap();
    s.send_stdin(b"90", true).unwrap();
    let out = s.collect().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10");

    let mut spec = ExecSpec::new(["true"]);
    spec.cwd = Some("/nonexistent-dir".into());
    assert_eq!(
        agent_error(c.start_exec(&spec, &[]).map(|s| s.pid())),
        ErrorCode::NotFound
    );
}

#[test]
fn exec_of_a_missing_binary_is_a_clear_error() {
    let a = agent();
    let mut c = client(&a);
    let r = c.exec(["/no/such/binary", "x"]);
    match r {
        Err(ClientError::Agent { code, message }) => {
            assert_eq!(code, ErrorCode::NotFound);
            assert!(message.contains("/no/such/binary"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        agent_error(c.exec(["no-such-program-in-path"])),
        ErrorCode::NotFound
    );
    assert_eq!(
        agent_error(c.exec(Vec::<String>::new())),
        ErrorCode::BadRequest
    );
    c.ping().unwrap();
}

#[test]
fn signals_in_stream_and_by_pid() {
    let a = agent();
    let mut c = client(&a);
    let mut s = c.start_exec(&ExecSpec::new(["sleep", "30"]), &[]).unwrap();
    s.send_signal(libc::SIGTERM).unwrap();
    let out = s.collect().unwrap();
    assert_eq!((out.code, out.signal), (None, Some(libc::SIGTERM)));

    // From a second connection, by pid.
    let mut c2 = client(&a);
    let s = c.start_exec(&ExecSpec::new(["sleep", "30"]), &[]).unwrap();
    let pid = s.pid();
    c2.signal(pid, libc::SIGKILL).unwrap();
    let out = s.collect().unwrap();
    assert_eq!(out.signal, Some(libc::SIGKILL));
    // Only processes the agent started, and only while they run.
    assert_eq!(
        agent_error(c2.signal(pid, libc::SIGKILL)),
        ErrorCode::NoSuchProcess
    );
    assert_eq!(
        agent_error(c2.signal(1, libc::SIGKILL)),
        ErrorCode::NoSuchProcess
    );
    let mut raw = pair_with(&a);
    hello(&mut raw);
    write_frame(
        &mut raw,
        &Request::Signal {
            pid: None,
            signal: 15,
        },
        &[],
    )
    .unwrap();
    let f = read_frame::<Response, _>(&mut raw).unwrap();
    assert!(matches!(
        f.msg,
        Response::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
}

#[test]
fn write_and_read_files() {
    let a = agent();
    let mut c = client(&a);
    let dir = temp_dir("files");
    let path = dir.join("sub/dir/f.txt");
    let p = path.to_str().unwrap();
    c.write_file(p, b"hello", Some(0o600)).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"hello");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(c.read_file(p).unwrap(), b"hello");
    // Bigger than one frame's chunk both ways.
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|i| (i % 251) as u8).collect();
    c.write_file(p, &big, None).unwrap();
    assert_eq!(c.read_file(p).unwrap(), big);
    c.write_file(p, b"", None).unwrap();
    assert_eq!(c.read_file(p).unwrap(), b"");
    let missing = dir.join("missing");
    assert_eq!(
        agent_error(c.read_file(missing.to_str().unwrap())),
        ErrorCode::NotFound
    );
    assert_eq!(
        agent_error(c.write_file("/proc/no/such/file", b"x", None)),
        ErrorCode::NotFound
    );
    // A range read.
    c.write_file(p, b"0123456789", None).unwrap();
    let mut raw = pair_with(&a);
    hello(&mut raw);
    let req = Request::ReadFile {
        path: p.into(),
        offset: 3,
        max_len: Some(4),
    };
    write_frame(&mut raw, &req, &[]).unwrap();
    let f = read_frame::<Response, _>(&mut raw).unwrap();
    assert_eq!(
        f.msg,
        Response::FileData {
            offset: 3,
            size: 10
        }
    );
    assert_eq!(f.payload, b"3456");
}

fn hello(s: &mut UnixStream) {
    let req = Request::Hello {
        min_version: 1,
        max_version: 1,
        client: "raw".into(),
    };
    write_frame(s, &req, &[]).unwrap();
    let f = read_frame::<Response, _>(s).unwrap();
    assert!(matches!(f.msg, Response::Hello { version: 1, .. }));
}

/// After a bad frame: one error frame with `code`, then the agent closes.
fn expect_error_then_close(s: &mut UnixStream, code: ErrorCode) {
    let f = read_frame::<Response, _>(s).unwrap();
    assert!(
        matches!(f.msg, Response::Error { code: c, .. } if c == code),
        "{:?}",
        f.msg
    );
    assert!(matches!(
        read_frame::<Response, _>(s),
        Err(ProtocolError::Closed)
    ));
}

#[test]
fn bad_frames_close_only_that_connection() {
    let a = agent();
    let mut good = client(&a);

    // Unknown message type.
    let mut s = pair_with(&a);
    hello(&mut s);
    write_frame(&mut s, &serde_json::json!({"type": "format_disk"}), &[]).unwrap();
    expect_error_then_close(&mut s, ErrorCode::Protocol);

    // Bad JSON.
    let mut s = pair_with(&a);
    hello(&mut s);
    let body = b"{not json";
    let mut raw = ((4 + body.len()) as u32).to_be_bytes().to_vec();
    raw.extend_from_slice(&(body.len() as u32).to_be_bytes());
    raw.extend_from_slice(body);
    s.write_all(&raw).unwrap();
    expect_error_then_close(&mut s, ErrorCode::Protocol);

    // Oversized frame: refused from its length alone.
    let mut s = pair_with(&a);
    hello(&mut s);
    s.write_all(&((MAX_FRAME + 1) as u32).to_be_bytes())
        .unwrap();
    expect_error_then_close(&mut s, ErrorCode::Protocol);

    // A header length beyond the frame.
    let mut s = pair_with(&a);
    let mut raw = 8u32.to_be_bytes().to_vec();
    raw.extend_from_slice(&1000u32.to_be_bytes());
    raw.extend_from_slice(b"abcd");
    s.write_all(&raw).unwrap();
    expect_error_then_close(&mut s, ErrorCode::Protocol);

    // Anything before hello; hello twice; stdin without an exec.
    let mut s = pair_with(&a);
    write_frame(&mut s, &Request::Ping, &[]).unwrap();
    expect_error_then_close(&mut s, ErrorCode::Protocol);
    let mut s = pair_with(&a);
    hello(&mut s);
    write_frame(
        &mut s,
        &Request::Hello {
            min_version: 1,
            max_version: 1,
            client: String::new(),
        },
        &[],
    )
    .unwrap();
    expect_error_then_close(&mut s, ErrorCode::Protocol);
    let mut s = pair_with(&a);
    hello(&mut s);
    write_frame(&mut s, &Request::Stdin { eof: true }, &[]).unwrap();
    expect_error_then_close(&mut s, ErrorCode::Protocol);

    // No common version.
    let mut s = pair_with(&a);
    write_frame(
        &mut s,
        &Request::Hello {
            min_version: 7,
            max_version: 9,
            client: String::new(),
        },
        &[],
    )
    .unwrap();
    expect_error_then_close(&mut s, ErrorCode::UnsupportedVersion);

    // A request other than stdin/signal in the middle of an exec stream.
    let mut s = pair_with(&a);
    hello(&mut s);
    write_frame(&mut s, &Request::Exec(ExecSpec::new(["sleep", "30"])), &[]).unwrap();
    let pid = match read_frame::<Response, _>(&mut s).unwrap().msg {
        Response::Started { pid } => pid,
        other => panic!("{other:?}"),
    };
    write_frame(&mut s, &Request::Ping, &[]).unwrap();
    expect_error_then_close(&mut s, ErrorCode::Protocol);
    wait_gone(pid);

    // A peer that sends half a frame and hangs up.
    let mut s = pair_with(&a);
    hello(&mut s);
    s.write_all(&[0, 0, 0, 50, 0, 0]).unwrap();
    drop(s);

    // The other connection never noticed.
    good.ping().unwrap();
    assert_eq!(
        good.exec(["echo", "still here"]).unwrap().stdout,
        b"still here\n"
    );
}

fn wait_gone(pid: i32) {
    let start = Instant::now();
    while alive(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "process {pid} still alive"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn client_disconnecting_mid_stream_kills_its_process() {
    let a = agent();
    let mut c = client(&a);
    let spec = ExecSpec::new(["sh", "-c", "while true; do echo tick; sleep 0.01; done"]);
    let mut s = c.start_exec(&spec, &[]).unwrap();
    let pid = s.pid();
    assert!(matches!(
        s.next_event().unwrap(),
        Some(ExecEvent::Stdout(_))
    ));
    drop(c);
    wait_gone(pid);
    // The agent still serves others.
    client(&a).ping().unwrap();
}

#[test]
fn serve_on_a_unix_listener_and_hybrid_vsock_handshake() {
    let dir = temp_dir("uds");
    // The agent on a plain listener, as it would be on vsock in the guest.
    let agent_sock = dir.join("agent.sock");
    let listener = UnixListener::bind(&agent_sock).unwrap();
    let a = agent();
    std::thread::spawn(move || a.serve(listener));
    let mut c = Client::new(UnixStream::connect(&agent_sock).unwrap()).unwrap();
    c.ping().unwrap();

    // A stand-in for the VMM's hybrid vsock socket: CONNECT <port> / OK <port>, then splice.
    let vmm_sock = dir.join("vsock.sock");
    let vmm = UnixListener::bind(&vmm_sock).unwrap();
    let agent_sock2 = agent_sock.clone();
    std::thread::spawn(move || {
        for conn in vmm.incoming() {
            let conn = conn.unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut w = conn;
            match read_connect_line(&mut reader).unwrap() {
                Some(52) => {
                    w.write_all(b"OK 1073741824\n").unwrap();
                    let up = UnixStream::connect(&agent_sock2).unwrap();
                    splice(reader.into_inner(), up.try_clone().unwrap());
                    splice(up, w);
                }
                _ => w.write_all(b"NOPE\n").unwrap(),
            }
        }
    });
    let mut c = Client::new(connect_hybrid_vsock(&vmm_sock, 52).unwrap()).unwrap();
    c.ping().unwrap();
    assert_eq!(
        c.exec(["echo", "via vsock"]).unwrap().stdout,
        b"via vsock\n"
    );
    assert!(matches!(
        connect_hybrid_vsock(&vmm_sock, 53),
        Err(ClientError::Handshake(_))
    ));
    assert!(matches!(
        connect_hybrid_vsock(&dir.join("nothing.sock"), 52),
        Err(ClientError::Connect { .. })
    ));
}

fn splice(mut from: UnixStream, mut to: UnixStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}
