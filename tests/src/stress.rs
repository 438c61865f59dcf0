//! API load patterns for the seccomp allocator tests: many concurrent connections, idle ones,
//! large bodies. Each pattern makes the API thread allocate and free in bulk, which is what
//! trims glibc's arenas (issue 10).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::http::format_request;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn connect(socket: &Path) -> Option<UnixStream> {
    let s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    s.set_write_timeout(Some(IO_TIMEOUT)).ok()?;
    Some(s)
}

/// Reads until the peer closes or the first response is complete enough to count; the
/// status code, if one came.
fn read_status(s: &mut UnixStream) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let line = std::str::from_utf8(&buf).ok()?.lines().next()?.to_string();
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `threads` threads each open `per_thread` connections at once, send `GET /` on every one,
/// read what comes back and close them. Returns how many got a 200 (the server serves at most
/// its connection limit at a time and turns the rest away).
pub fn concurrent_gets(socket: &Path, threads: usize, per_thread: usize) -> usize {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let socket = socket.to_path_buf();
            std::thread::spawn(move || {
                let mut conns: Vec<UnixStream> =
                    (0..per_thread).filter_map(|_| connect(&socket)).collect();
                let req = format_request("GET", "/", None);
                for c in &mut conns {
                    let _ = c.write_all(&req);
                }
                conns
                    .iter_mut()
                    .map(read_status)
                    .filter(|s| *s == Some(200))
                    .count()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

/// Opens `n` connections that send nothing, holds them for `hold`, then closes them all.
pub fn idle_connections(socket: &Path, n: usize, hold: Duration) {
    let conns: Vec<UnixStream> = (0..n).filter_map(|_| connect(socket)).collect();
    std::thread::sleep(hold);
    drop(conns);
}

/// `n` connections at once, each sending a `PUT /machine-config` whose body is `size` bytes
/// of padding (invalid JSON, so a 400; above the payload limit, a 400 too), then closing.
pub fn large_bodies(socket: &Path, n: usize, size: usize) {
    let mut body = b"{\"vcpu_count\": 1, \"pad\": \"".to_vec();
    body.resize(size.saturating_sub(2), b'x');
    body.extend_from_slice(b"\"}");
    let req = format_request("PUT", "/machine-config", Some(&body));
    let mut conns: Vec<UnixStream> = (0..n).filter_map(|_| connect(socket)).collect();
    for c in &mut conns {
        let _ = c.write_all(&req);
    }
    for c in &mut conns {
        let _ = read_status(c);
    }
}
