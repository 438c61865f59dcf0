//! Protocol version 2 in-process: tty execs and resize, `connect` port forwarding, `shutdown`
//! with an injected stop action, and v1 connections next to it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use guest_init::agent::Agent;
use guest_init::client::{Client, ClientError, ExecEvent, ExecStream};
use guest_init::protocol::{
    read_frame, write_frame, ErrorCode, ExecSpec, Request, Response, StdinMode,
};
use guest_init::reaper::Reaper;

fn agent() -> Agent {
    Agent::new(Reaper::per_child())
}

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

fn agent_error<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Agent { code, message }) => (code, message),
        other => panic!("expected an agent error, got {other:?}"),
    }
}

/// Reads a tty exec's output until it contains `want` (a terminal echoes input and uses CRLF).
fn read_until(s: &mut ExecStream<'_, UnixStream>, out: &mut String, want: &str) {
    let start = Instant::now();
    while !out.contains(want) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no {want:?} in {out:?}"
        );
        match s.next_event().unwrap() {
            Some(ExecEvent::Stdout(d)) => out.push_str(&String::from_utf8_lossy(&d)),
            Some(ExecEvent::Stderr(d)) => panic!("stderr on a tty: {d:?}"),
            Some(ExecEvent::Exit { .. }) | None => panic!("exited before {want:?}: {out:?}"),
        }
    }
}

#[test]
fn tty_exec_runs_on_a_pty_of_the_given_size() {
    let a = agent();
    let mut c = client(&a);
    assert_eq!(c.version(), 2);
    let spec =
        ExecSpec::new(["sh", "-c", "tty; stty size; echo err >&2; exit 4"]).with_tty(33, 101);
    let out = c.start_exec(&spec, &[]).unwrap().collect().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("/dev/pts/"), "{text:?}");
    assert!(text.contains("33 101\r\n"), "{text:?}");
    // stderr is the terminal too.
    assert!(text.contains("err\r\n"), "{text:?}");
    assert!(out.stderr.is_empty());
    assert_eq!(out.code, Some(4));
    // The connection goes on after a tty exec.
    c.ping().unwrap();
}

#[test]
fn tty_exec_is_a_session_leader_with_a_controlling_terminal() {
    let a = agent();
    let mut c = client(&a);
    // `ps`-free check: the shell's session id is its pid, and /dev/tty opens.
    let spec = ExecSpec::new([
        "sh",
        "-c",
        "test \"$(cut -d' ' -f6 /proc/$$/stat)\" = $$ && echo leader; echo x > /dev/tty && echo ctty",
    ])
    .with_tty(0, 0);
    let out = c.start_exec(&spec, &[]).unwrap().collect().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("leader") && text.contains("ctty"), "{text:?}");
    assert_eq!(out.code, Some(0));
}

#[test]
fn resize_reaches_an_interactive_shell() {
    let a = agent();
    let mut c = client(&a);
    let spec = ExecSpec::new(["sh", "-i"]).with_tty(24, 80);
    let mut s = c.start_exec(&spec, &[]).unwrap();
    let mut out = String::new();
    // Markers built by the shell, so the terminal's echo of the command does not match.
    s.send_stdin(b"stty size; echo A$((1+1))B\n", false)
        .unwrap();
    read_until(&mut s, &mut out, "A2B");
    assert!(out.contains("24 80"), "{out:?}");
    s.resize(50, 132).unwrap();
    out.clear();
    s.send_stdin(b"stty size; echo C$((1+2))D\n", false)
        .unwrap();
    read_until(&mut s, &mut out, "C3D");
    assert!(out.contains("50 132"), "{out:?}");
    s.send_stdin(b"exit 7\n", false).unwrap();
    let rest = s.collect().unwrap();
    assert_eq!(rest.code, Some(7));
    c.ping().unwrap();
}

#[test]
fn resize_outside_a_tty_exec_is_ignored() {
    let a = agent();
    let mut s = pair_with(&a);
    hello(&mut s, 2);
    write_frame(&mut s, &Request::Resize { rows: 1, cols: 1 }, &[]).unwrap();
    write_frame(&mut s, &Request::Ping, &[]).unwrap();
    assert_eq!(
        read_frame::<Response, _>(&mut s).unwrap().msg,
        Response::Pong
    );
    // During an exec without a terminal, too.
    let mut c = Client::new(pair_with(&a)).unwrap();
    let mut spec = ExecSpec::new(["sh", "-c", "read x; echo got $x"]);
    spec.stdin = StdinMode::Stream;
    let mut e = c.start_exec(&spec, &[]).unwrap();
    e.resize(5, 5).unwrap();
    e.send_stdin(b"y\n", true).unwrap();
    let out = e.collect().unwrap();
    assert_eq!(out.stdout, b"got y\n");
}

/// A TCP echo server on 127.0.0.1 for one connection: echoes until EOF, then says `bye` and
/// half-closes. Reports what it read in total.
fn echo_server() -> (u16, Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            s.write_all(&buf[..n]).unwrap();
        }
        s.write_all(b"bye").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        tx.send(all).unwrap();
    });
    (port, rx)
}

#[test]
fn connect_forwards_bytes_both_ways_with_half_close() {
    let a = agent();
    let (port, seen) = echo_server();
    let mut raw = client(&a).connect_port(port).unwrap();
    raw.write_all(b"hello ").unwrap();
    let mut buf = [0u8; 6];
    raw.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello ");
    // A big transfer both ways at once must not deadlock.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = raw.try_clone().unwrap();
    let sent = big.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        // Half-close: the server sees EOF, answers and closes its side.
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    raw.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    let mut want = big.clone();
    want.extend_from_slice(b"bye");
    assert_eq!(back.len(), want.len());
    assert!(back == want, "echoed bytes differ");
    let mut all = b"hello ".to_vec();
    all.extend_from_slice(&big);
    assert!(seen.recv_timeout(Duration::from_secs(10)).unwrap() == all);
}

#[test]
fn connect_to_a_closed_port_is_a_clear_error() {
    let a = agent();
    // A port that was just free: bind, note, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = client(&a);
    let (mut c, e) = c.try_connect_port(port).expect_err("refused");
    let (code, message) = agent_error::<()>(Err(e));
    assert_eq!(code, ErrorCode::NotFound);
    assert_eq!(message, format!("connection refused to 127.0.0.1:{port}"));
    // The connection is still usable.
    c.ping().unwrap();
    let out = c.exec(["echo", "still here"]).unwrap();
    assert_eq!(out.stdout, b"still here\n");
}

#[test]
fn shutdown_is_answered_then_runs_the_stop_action() {
    let (tx, rx) = channel();
    let tx = std::sync::Mutex::new(tx);
    let a = Agent::with_shutdown(
        Reaper::per_child(),
        Arc::new(move |grace| {
            let _ = tx.lock().unwrap().send(grace);
        }),
    );
    let mut c = client(&a);
    c.shutdown(1500).unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        Duration::from_millis(1500)
    );
    // Without grace_ms: the default 3 s.
    let mut s = pair_with(&a);
    hello(&mut s, 2);
    s.write_all(&raw_frame(br#"{"type":"shutdown"}"#)).unwrap();
    assert_eq!(
        read_frame::<Response, _>(&mut s).unwrap().msg,
        Response::Ok { bytes: 0 }
    );
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        Duration::from_secs(3)
    );
    // An agent without a stop action refuses.
    let mut c = client(&agent());
    let (code, _) = agent_error(c.shutdown(1));
    assert_eq!(code, ErrorCode::Failed);
}

fn raw_frame(json: &[u8]) -> Vec<u8> {
    let mut f = ((4 + json.len()) as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&(json.len() as u32).to_be_bytes());
    f.extend_from_slice(json);
    f
}

fn hello(s: &mut UnixStream, max_version: u32) {
    let hello = Request::Hello {
        min_version: 1,
        max_version,
        client: "raw".into(),
    };
    write_frame(s, &hello, &[]).unwrap();
    match read_frame::<Response, _>(s).unwrap().msg {
        Response::Hello { version, .. } => assert_eq!(version, max_version),
        other => panic!("{other:?}"),
    }
}

#[test]
fn v2_requests_on_a_v1_connection_are_bad_requests() {
    let a = agent();
    let mut s = pair_with(&a);
    hello(&mut s, 1);
    let v2 = [
        Request::Exec(ExecSpec::new(["true"]).with_tty(1, 1)),
        Request::Resize { rows: 1, cols: 1 },
        Request::Connect { port: 1 },
        Request::Shutdown { grace_ms: None },
    ];
    for req in v2 {
        write_frame(&mut s, &req, &[]).unwrap();
        match read_frame::<Response, _>(&mut s).unwrap().msg {
            Response::Error { code, message } => {
                assert_eq!(code, ErrorCode::BadRequest, "{req:?}");
                assert!(message.contains("needs protocol version 2"), "{message}");
            }
            other => panic!("{req:?}: {other:?}"),
        }
    }
    // The connection stays usable.
    write_frame(&mut s, &Request::Ping, &[]).unwrap();
    assert_eq!(
        read_frame::<Response, _>(&mut s).unwrap().msg,
        Response::Pong
    );
}

#[test]
fn a_v1_client_works_and_its_v2_calls_fail_on_the_client_side() {
    let a = agent();
    let mut c = Client::with_max_version(pair_with(&a), 1).unwrap();
    assert_eq!(c.version(), 1);
    let out = c.exec(["sh", "-c", "echo v1; exit 2"]).unwrap();
    assert_eq!((&out.stdout[..], out.code), (&b"v1\n"[..], Some(2)));
    let spec = ExecSpec::new(["true"]).with_tty(1, 1);
    let e = c.start_exec(&spec, &[]).err().expect("tty on v1");
    assert!(
        matches!(
            e,
            ClientError::Unsupported {
                need: 2,
                agreed: 1,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("version 2"), "{e}");
    assert!(matches!(
        c.shutdown(1),
        Err(ClientError::Unsupported { .. })
    ));
    c.ping().unwrap();
    let Err((mut c, e)) = c.try_connect_port(1) else {
        panic!("connect on v1")
    };
    assert!(matches!(e, ClientError::Unsupported { .. }), "{e:?}");
    c.ping().unwrap();
    // The v1 exec frame on the wire has no v2 fields.
    let json = serde_json::to_string(&Request::Exec(ExecSpec::new(["true"]))).unwrap();
    assert_eq!(
        json,
        r#"{"type":"exec","argv":["true"],"env":{},"clear_env":false,"cwd":null,"stdin":"null"}"#
    );
}

#[test]
fn tty_exit_comes_despite_a_leftover_process_holding_the_terminal() {
    let a = agent();
    let mut c = client(&a);
    let t = Instant::now();
    // The background sleep keeps the slave open: the drain stops once the master is quiet.
    let spec = ExecSpec::new(["sh", "-c", "sleep 30 & echo started; exit 0"]).with_tty(0, 0);
    let out = c.start_exec(&spec, &[]).unwrap().collect().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("started"));
    assert_eq!(out.code, Some(0));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    c.ping().unwrap();
}
