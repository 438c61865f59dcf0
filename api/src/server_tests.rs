//! Tests of the API server over real Unix sockets, with a fake VMM thread answering the channel.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::mpsc::{channel, TryRecvError};
use std::thread::{self, JoinHandle};

use serde_json::{json, Value};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::models::{ActionType, MachineConfig};

/// A server on a temporary socket, with its fake VMM.
struct TestServer {
    path: PathBuf,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn sock_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "tartarus-api-test-{}-{name}.sock",
        std::process::id()
    ))
}

fn start(name: &str, max_payload: usize) -> TestServer {
    let path = sock_path(name);
    let _ = std::fs::remove_file(&path);
    let server = ApiServer::bind(&path, max_payload).expect("bind");
    let (to_vmm, requests) = channel();
    let (replies, from_vmm) = channel();
    // Blocking, like the VMM's event loop waiting on it: a missing wake-up hangs the fake VMM
    // and the client's read times out.
    let wake = EventFd::new(0).unwrap();
    let vmm_wake = wake.try_clone().unwrap();
    let handle = thread::spawn(move || server.run(to_vmm, from_vmm, wake));
    thread::spawn(move || fake_vmm(requests, replies, vmm_wake));
    TestServer {
        path,
        handle: Some(handle),
    }
}

const START_ERROR: &str = "Cannot start: \"boot-source\" is not set\n\tsee README";

/// Answers like a VMM would; `SendCtrlAltDel` makes it exit, closing the channels.
fn fake_vmm(requests: Receiver<VmmAction>, replies: Sender<VmmResponse>, wake: EventFd) {
    loop {
        if wake.read().is_err() {
            return;
        }
        loop {
            let action = match requests.try_recv() {
                Ok(action) => action,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            };
            let reply = match action {
                VmmAction::GetVersion => VmmResponse::Json(json!({
                    "firecracker_version": "1.7.0",
                    "tartarus_version": "0.1.0",
                })),
                VmmAction::GetMachineConfig => {
                    VmmResponse::Json(serde_json::to_value(MachineConfig::default()).unwrap())
                }
                VmmAction::Action(ActionType::InstanceStart) => {
                    VmmResponse::bad_request(START_ERROR)
                }
                VmmAction::Action(ActionType::SendCtrlAltDel) => return,
                _ => VmmResponse::Empty,
            };
            if replies.send(reply).is_err() {
                return;
            }
        }
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    fn fault(&self) -> String {
        assert_eq!(self.header("Content-Type"), Some("application/json"));
        self.json()["fault_message"]
            .as_str()
            .expect("fault_message")
            .to_string()
    }
}

struct Client {
    s: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(srv: &TestServer) -> Client {
        let s = UnixStream::connect(&srv.path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client { s, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    fn fill(&mut self) {
        let mut tmp = [0u8; 4096];
        let n = self.s.read(&mut tmp).expect("read");
        assert!(n > 0, "unexpected EOF; buffered: {:?}", self.buf);
        self.buf.extend_from_slice(&tmp[..n]);
    }

    fn response(&mut self) -> Resp {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut r = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).expect("valid response") {
                let status = r.code.unwrap();
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8(h.value.to_vec()).unwrap();
                        (h.name.to_string(), value)
                    })
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                while self.buf.len() < n + len {
                    self.fill();
                }
                let body = self.buf[n..n + len].to_vec();
                self.buf.drain(..n + len);
                let resp = Resp {
                    status,
                    headers,
                    body,
                };
                if status != 100 {
                    assert_eq!(resp.header("Server"), Some("Tartarus API"));
                }
                return resp;
            }
            self.fill();
        }
    }

    fn request(&mut self, method: &str, path: &str, body: &str) -> Resp {
        self.send(raw(method, path, body).as_bytes());
        self.response()
    }

    /// Asserts the server closed the connection after what was read.
    fn expect_closed(&mut self) {
        assert!(self.buf.is_empty(), "unread bytes: {:?}", self.buf);
        let mut tmp = [0u8; 64];
        match self.s.read(&mut tmp) {
            Ok(0) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the connection to close, got {other:?}"),
        }
    }
}

fn raw(method: &str, path: &str, body: &str) -> String {
    if body.is_empty() && method == "GET" {
        format!("{method} {path} HTTP/1.1\r\n\r\n")
    } else {
        format!(
            "{method} {path} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }
}

const MACHINE: &str = r#"{"vcpu_count": 2, "mem_size_mib": 256}"#;

#[test]
fn keep_alive_serves_several_requests() {
    let srv = start("keepalive", DEFAULT_MAX_PAYLOAD);
    let mut c = Client::connect(&srv);
    let r = c.request("GET", "/version", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.json()["firecracker_version"], "1.7.0");
    assert_eq!(r.header("Connection"), None);

    let r = c.request("PUT", "/machine-config", MACHINE);
    assert_eq!(r.status, 204);
    assert_eq!(r.header("Content-Length"), None);
    assert!(r.body.is_empty());

    let r = c.request("GET", "/machine-config/?x=1", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["vcpu_count"], 1);
}

#[test]
fn vmm_errors_are_escaped_faults() {
    let srv = start("vmmerror", DEFAULT_MAX_PAYLOAD);
    let mut c = Client::connect(&srv);
    let r = c.request("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(r.status, 400);
    assert_eq!(r.fault(), START_ERROR);
    // The connection stays usable.
    assert_eq!(c.request("GET", "/version", "").status, 200);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let srv = start("pipeline", DEFAULT_MAX_PAYLOAD);
    let mut c = Client::connect(&srv);
    let mut all = raw("GET", "/version", "");
    all += &raw("PUT", "/machine-config", "{bad json");
    all += &raw("PUT", "/machine-config", MACHINE);
    all += "GET /machine-config HTTP/1.1\r\nConnection: close\r\n\r\n";
    c.send(all.as_bytes());
    assert_eq!(c.response().status, 200);
    let r = c.response();
    assert_eq!(r.status, 400);
    assert!(r.fault().starts_with("Invalid machine-config body:"));
    assert_eq!(c.response().status, 204);
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Connection"), Some("close"));
    c.expect_closed();
}

#[test]
fn partial_writes_are_reassembled() {
    let srv = start("partial", DEFAULT_MAX_PAYLOAD);
    let mut c = Client::connect(&srv);
    let req = raw("PUT", "/machine-config", MACHINE);
    let bytes = req.as_bytes();
    for cut in [
        bytes[..2].as_ref(),
        &bytes[2..15],
        &bytes[15..30],
        &bytes[30..],
    ] {
        c.send(cut);
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.response().status, 204);
    // Byte by byte.
    for b in raw("GET", "/version", "").as_bytes() {
        c.send(std::slice::from_ref(b));
    }
    assert_eq!(c.response().status, 200);
}

#[test]
fn concurrent_clients_do_not_block_each_other() {
    let srv = start("concurrent", DEFAULT_MAX_PAYLOAD);
    let req = raw("PUT", "/machine-config", MACHINE);
    let (head, body) = req.split_at(req.len() - 5);
    // A has its headers and part of the body in; B only half a request line.
    let mut a = Client::connect(&srv);
    a.send(head.as_bytes());
    let mut b = Client::connect(&srv);
    b.send(b"GET /vers");
    let mut c = Client::connect(&srv);
    assert_eq!(c.request("GET", "/version", "").status, 200);
    assert_eq!(c.request("GET", "/", "").status, 204);
    b.send(b"ion HTTP/1.1\r\n\r\n");
    assert_eq!(b.response().status, 200);
    a.send(body.as_bytes());
    assert_eq!(a.response().status, 204);
}

#[test]
fn oversized_body_is_refused_without_reading_it() {
    let srv = start("oversized", 64);
    let mut c = Client::connect(&srv);
    let n = 1_000_000;
    let mut req =
        format!("PUT /machine-config HTTP/1.1\r\nContent-Length: {n}\r\n\r\n").into_bytes();
    req.resize(req.len() + n, b' ');
    // The server drains the refused body, so this does not fail with a broken pipe.
    c.send(&req);
    let r = c.response();
    assert_eq!(r.status, 400);
    assert_eq!(
        r.fault(),
        "Request payload with size 1000000 is larger than the limit of 64 allowed by server."
    );
    assert_eq!(r.header("Connection"), Some("close"));
    c.expect_closed();

    // A body of exactly the limit is fine.
    let mut c = Client::connect(&srv);
    let body = format!(r#"{{"metrics_path":"{}"}}"#, "m".repeat(64 - 19));
    assert_eq!(body.len(), 64);
    assert_eq!(c.request("PUT", "/metrics", &body).status, 204);
}

#[test]
fn oversized_body_with_expect_gets_no_continue() {
    let srv = start("oversized-expect", 64);
    let mut c = Client::connect(&srv);
    c.send(b"PUT /metrics HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 65\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("size 65 is larger than the limit of 64"));
    c.expect_closed();
}

#[test]
fn expect_100_continue() {
    let srv = start("expect", DEFAULT_MAX_PAYLOAD);
    let mut c = Client::connect(&srv);
    let head = format!(
        "PUT /machine-config HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        MACHINE.len()
    );
    c.send(head.as_bytes());
    let r = c.response();
    assert_eq!(r.status, 100);
    assert!(r.body.is_empty());
    c.send(MACHINE.as_bytes());
    assert_eq!(c.response().status, 204);

    // With the body already sent, no 100 is needed.
    c.send(format!("{head}{MACHINE}").as_bytes());
    assert_eq!(c.response().status, 204);
    assert_eq!(c.request("GET", "/version", "").status, 200);

    // Other expectations are refused.
    let mut c = Client::connect(&srv);
    c.send(b"PUT /metrics HTTP/1.1\r\nExpect: magic\r\nContent-Length: 2\r\n\r\n{}");
    let r = c.response();
    assert_eq!(r.status, 417);
    assert!(r.fault().contains("100-continue"));
    c.expect_closed();
}

#[test]
fn router_errors_are_400_and_keep_the_connection() {
    let srv = start("routererr", DEFAULT_MAX_PAYLOAD);
    let mut c = Client::connect(&srv);
    let r = c.request("PUT", "/foo", "{}");
    assert_eq!(r.status, 400);
    assert_eq!(r.fault(), "Invalid request method and/or path: PUT /foo");
    let r = c.request("PUT", "/machine-config", r#"{"vcpu_count": 1, "mem"#);
    assert_eq!(r.status, 400);
    assert!(r
        .fault()
        .starts_with("Invalid machine-config body: EOF while parsing"));
    let r = c.request("PUT", "/machine-config", "");
    assert_eq!(r.fault(), "Empty PUT request.");
    let r = c.request("PATCH", "/machine-config", "");
    assert_eq!(r.fault(), "Empty PATCH request.");
    assert_eq!(c.request("GET", "/version", "").status, 200);
}

/// Sends `bytes` and expects a 400 (or `status`) whose fault contains `needle`, then a close.
fn expect_refused(srv: &TestServer, bytes: &[u8], status: u16, needle: &str) {
    let mut c = Client::connect(srv);
    c.send(bytes);
    let r = c.response();
    assert_eq!(r.status, status, "{r:?}");
    let fault = r.fault();
    assert!(
        fault.contains(needle),
        "{fault:?} does not contain {needle:?}"
    );
    assert_eq!(r.header("Connection"), Some("close"));
    c.expect_closed();
}

#[test]
fn framing_errors_are_400_and_close() {
    let srv = start("framing", DEFAULT_MAX_PAYLOAD);
    expect_refused(
        &srv,
        b"PUT /machine-config HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
        "Transfer-Encoding is not supported",
    );
    expect_refused(
        &srv,
        b"PUT /machine-config HTTP/1.1\r\nHost: x\r\n\r\n{}",
        400,
        "Missing Content-Length header: a PUT request must send one.",
    );
    expect_refused(&srv, b"GARBAGE\r\n\r\n", 400, "Invalid HTTP request:");
    expect_refused(
        &srv,
        b"GET / HTTP/2.0\r\n\r\n",
        400,
        "Invalid HTTP request:",
    );
    expect_refused(
        &srv,
        b"GET /\x01 HTTP/1.1\r\n\r\n",
        400,
        "Invalid HTTP request:",
    );
    expect_refused(
        &srv,
        b"PUT /metrics HTTP/1.1\r\nContent-Length: 1x\r\n\r\n{}",
        400,
        "Invalid Content-Length header.",
    );
    expect_refused(
        &srv,
        b"PUT /metrics HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        400,
        "Conflicting Content-Length headers.",
    );
    let huge = "Content-Length: 99999999999999999999999999\r\n";
    expect_refused(
        &srv,
        format!("PUT /metrics HTTP/1.1\r\n{huge}\r\n").as_bytes(),
        400,
        "is larger than the limit of 51200",
    );
    let many: String = (0..70).map(|i| format!("X-{i}: y\r\n")).collect();
    expect_refused(
        &srv,
        format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes(),
        400,
        "Too many headers",
    );
}

#[test]
fn oversized_headers_are_refused() {
    let srv = start("bighead", DEFAULT_MAX_PAYLOAD);
    let big = "a".repeat(MAX_HEADER_SIZE + 100);
    let msg = "Request headers are larger than the limit of 8192 bytes.";
    // Complete but too large.
    expect_refused(
        &srv,
        format!("GET / HTTP/1.1\r\nX-Big: {big}\r\n\r\n").as_bytes(),
        400,
        msg,
    );
    // Never terminated.
    expect_refused(
        &srv,
        format!("GET / HTTP/1.1\r\nX-Big: {big}").as_bytes(),
        400,
        msg,
    );
}

#[test]
fn connection_close_and_http10() {
    let srv = start("close", DEFAULT_MAX_PAYLOAD);
    let mut c = Client::connect(&srv);
    c.send(b"GET /version HTTP/1.1\r\nConnection: Keep-Alive, close\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Connection"), Some("close"));
    c.expect_closed();

    let mut c = Client::connect(&srv);
    c.send(b"GET /version HTTP/1.0\r\n\r\n");
    assert_eq!(c.response().status, 200);
    c.expect_closed();

    let mut c = Client::connect(&srv);
    c.send(b"GET /version HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.response().status, 200);
    assert_eq!(c.request("GET", "/version", "").status, 200);
}

#[test]
fn clients_dropping_mid_request_do_not_disturb_others() {
    let srv = start("dropping", DEFAULT_MAX_PAYLOAD);
    let mut other = Client::connect(&srv);
    assert_eq!(other.request("GET", "/version", "").status, 200);
    {
        // Mid-body.
        let mut c = Client::connect(&srv);
        c.send(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"vcpu");
    }
    {
        // Mid-headers.
        let mut c = Client::connect(&srv);
        c.send(b"PUT /machine-config HTTP/1.1\r\nConte");
    }
    {
        // Before reading its answer, with more requests queued.
        let mut c = Client::connect(&srv);
        c.send(raw("GET", "/version", "").repeat(50).as_bytes());
    }
    {
        // Half-close after a complete request: it is still answered.
        let mut c = Client::connect(&srv);
        c.send(raw("GET", "/version", "").as_bytes());
        c.s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(c.response().status, 200);
        c.expect_closed();
    }
    thread::sleep(Duration::from_millis(50));
    assert_eq!(other.request("GET", "/version", "").status, 200);
    assert_eq!(
        Client::connect(&srv)
            .request("PUT", "/machine-config", MACHINE)
            .status,
        204
    );
}

#[test]
fn connections_beyond_the_limit_are_refused() {
    let srv = start("limit", DEFAULT_MAX_PAYLOAD);
    let mut clients: Vec<Client> = (0..MAX_CONNECTIONS)
        .map(|_| {
            let mut c = Client::connect(&srv);
            assert_eq!(c.request("GET", "/version", "").status, 200);
            c
        })
        .collect();
    let mut extra = Client::connect(&srv);
    let r = extra.response();
    assert_eq!(r.status, 503);
    assert!(r.fault().contains("Too many open connections"));
    extra.expect_closed();

    // Freeing a slot lets a new client in.
    clients.pop();
    let mut ok = false;
    for _ in 0..100 {
        let mut c = Client::connect(&srv);
        if c.request("GET", "/version", "").status == 200 {
            ok = true;
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(ok);
    assert_eq!(clients[0].request("GET", "/", "").status, 204);
}

#[test]
fn garbage_never_kills_the_server() {
    let srv = start("garbage", 256);
    let pieces: [&[u8]; 16] = [
        b"GET ",
        b"PUT ",
        b"PATCH ",
        b"/machine-config",
        b"/version?",
        b" HTTP/1.1\r\n",
        b"\r\n",
        b"Content-Length: 5\r\n",
        b"Content-Length: -1\r\n",
        b"Expect: 100-continue\r\n",
        b"Connection: close\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"{\"vcpu_count\": 1}",
        b"\x00\xff\xfe",
        b":::: ",
        b"\n",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..300 {
        let mut input = Vec::new();
        for _ in 0..(next() % 12) {
            input.extend_from_slice(pieces[(next() % 16) as usize]);
            if next() % 4 == 0 {
                input.push((next() % 256) as u8);
            }
        }
        let mut c = Client::connect(&srv);
        let _ = c.s.write_all(&input);
        let _ = c.s.shutdown(Shutdown::Write);
        let mut out = Vec::new();
        let _ = c.s.read_to_end(&mut out);
        assert!(out.is_empty() || out.starts_with(b"HTTP/1.1 "), "{out:?}");
    }
    assert_eq!(
        Client::connect(&srv).request("GET", "/version", "").status,
        200
    );
}

#[test]
fn run_returns_when_the_vmm_is_gone() {
    let mut srv = start("vmmgone", DEFAULT_MAX_PAYLOAD);
    let mut c = Client::connect(&srv);
    c.send(raw("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#).as_bytes());
    let result = srv.handle.take().unwrap().join().unwrap();
    assert!(result.is_ok(), "{result:?}");
    c.expect_closed();
    // Dropping the server removed its socket file.
    assert!(!srv.path.exists());
}

#[test]
fn bind_errors_are_clear() {
    let path = sock_path("exists");
    std::fs::write(&path, b"").unwrap();
    let e = ApiServer::bind(&path, DEFAULT_MAX_PAYLOAD).unwrap_err();
    assert!(matches!(e, ServerError::SocketExists(_)));
    assert_eq!(
        e.to_string(),
        format!("API socket path {} already exists", path.display())
    );
    // The existing file is not ours to remove.
    assert!(path.exists());
    std::fs::remove_file(&path).unwrap();

    let path = Path::new("/nonexistent-tartarus-dir/api.sock");
    let e = ApiServer::bind(path, DEFAULT_MAX_PAYLOAD).unwrap_err();
    assert!(matches!(e, ServerError::Bind { .. }));
    assert!(std::error::Error::source(&e).is_some());

    // A server dropped without running removes its socket.
    let path = sock_path("dropped");
    let _ = std::fs::remove_file(&path);
    let server = ApiServer::bind(&path, DEFAULT_MAX_PAYLOAD).unwrap();
    assert_eq!(server.path(), path);
    assert!(path.exists());
    drop(server);
    assert!(!path.exists());
}

#[test]
fn response_encoding() {
    let mut out = Vec::new();
    write_response(&mut out, &VmmResponse::Empty, false);
    assert_eq!(
        out,
        b"HTTP/1.1 204 No Content\r\nServer: Tartarus API\r\n\r\n"
    );
    let mut out = Vec::new();
    write_response(&mut out, &VmmResponse::Json(json!({"a": 1})), true);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 200 OK\r\nServer: Tartarus API\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
    );
    let mut out = Vec::new();
    write_response(&mut out, &VmmResponse::Error(200, "odd".into()), false);
    assert!(out.starts_with(b"HTTP/1.1 500 Internal Server Error\r\n"));
    let mut out = Vec::new();
    write_response(&mut out, &VmmResponse::Error(409, "\"q\"".into()), false);
    assert!(out.starts_with(b"HTTP/1.1 409 Conflict\r\n"));
    assert!(out.ends_with(br#"{"fault_message":"\"q\""}"#));
}
