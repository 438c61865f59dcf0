//! The vsock suite: round-trip latency and echo throughput through virtio-vsock, with a host
//! Unix-socket-pair echo measured in the same run as the peer figure.
//!
//! One VMM boots the virtio_vsock test guest with `vsock_listen=52 vsock_quiet` (it echoes every
//! packet without printing per packet); the bench connects through `uds_path` (`CONNECT 52`).
//! Metrics (median, p10, p90, min, max):
//! - `vsock_rtt_us` (label `bytes`: 64): one message written, its echo read back; `--runs` × 10
//!   messages.
//! - `vsock_echo_throughput_mib_s`: [`THROUGHPUT_BYTES`] written by one thread while another
//!   reads the echo, per run; the guest echoes in packets of up to 2048 bytes.
//! - `unix_pair_rtt_us`, `unix_pair_echo_throughput_mib_s`: the same against a thread echoing on
//!   a `UnixStream::pair()`.
//!
//! - `vmm_thread_cpu_per_rtt_us`, `vmm_thread_cpu_per_mib_ms`: CPU time of the VMM thread (the
//!   device side: event loop, queues, sockets; from `/proc/<pid>/task/<pid>/schedstat`) per round
//!   trip (one sample per batch of 10 messages) and per MiB echoed (one sample per run).
//!
//! The report adds `ratio_rtt` and `ratio_throughput` (vsock / Unix pair, medians). On this
//! nested PVM host the guest's copies run emulated in ring 0, so the vsock figures are bounded
//! by the guest, not the device; the ratio on hardware KVM is the number that matters.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tartarus_tests::Vmm;

use super::{put, spawn, summary, Options};

const MSG: usize = 64;
/// Bytes per throughput run.
pub const THROUGHPUT_BYTES: usize = 128 * 1024;
const CHUNK: usize = 4096;
const WAIT: Duration = Duration::from_secs(30);

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Round trips of `MSG` bytes on a connected echo stream.
fn rtt(s: &mut UnixStream, n: usize) -> Result<Vec<f64>, String> {
    let msg = [0x42u8; MSG];
    let mut back = [0u8; MSG];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&msg).map_err(|e| format!("rtt write: {e}"))?;
        s.read_exact(&mut back)
            .map_err(|e| format!("rtt read: {e}"))?;
        out.push(us(t.elapsed()));
        if back != msg {
            return Err("rtt: echo differs".into());
        }
    }
    Ok(out)
}

/// MiB/s echoing `THROUGHPUT_BYTES` (writer thread, reader here).
fn throughput(s: &UnixStream) -> Result<f64, String> {
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = s.try_clone().map_err(|e| e.to_string())?;
    let t = Instant::now();
    let writer = std::thread::spawn(move || -> Result<(), String> {
        let chunk = [0x17u8; CHUNK];
        let mut sent = 0;
        while sent < THROUGHPUT_BYTES {
            let n = CHUNK.min(THROUGHPUT_BYTES - sent);
            w.write_all(&chunk[..n])
                .map_err(|e| format!("write: {e}"))?;
            sent += n;
        }
        Ok(())
    });
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0;
    while got < THROUGHPUT_BYTES {
        let n = r
            .read(&mut buf)
            .map_err(|e| format!("throughput read after {got} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("echo ended after {got} bytes"));
        }
        got += n;
    }
    let secs = t.elapsed().as_secs_f64();
    writer.join().map_err(|_| "writer panicked")??;
    Ok(THROUGHPUT_BYTES as f64 / secs / (1024.0 * 1024.0))
}

/// A Unix socket pair with an echo thread on one end; returns the other end.
fn unix_pair_echo() -> Result<UnixStream, String> {
    let (a, mut b) = UnixStream::pair().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 2048];
        while let Ok(n) = b.read(&mut buf) {
            if n == 0 || b.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    a.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
    Ok(a)
}

/// Boots the echo guest and connects to it.
fn vsock_echo(opts: &Options) -> Result<(Vmm, UnixStream), String> {
    let vmm = spawn(opts)?;
    vmm.try_wait_for_socket(WAIT, Duration::from_millis(2))
        .map_err(|e| format!("{e}\n{}", vmm.diagnostics()))?;
    let uds = vmm.dir().join("v.sock");
    put(
        &vmm,
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 64}),
    )?;
    put(&vmm, "/vsock", json!({"guest_cid": 3, "uds_path": uds}))?;
    put(
        &vmm,
        "/boot-source",
        json!({"kernel_image_path": opts.guests.get("virtio_vsock.elf"),
               "boot_args": "vsock_listen=52 vsock_quiet vsock_wait=120000"}),
    )?;
    put(&vmm, "/actions", json!({"action_type": "InstanceStart"}))?;
    vmm.try_wait_for_output("vsock listening on port 52", WAIT)
        .map_err(|e| format!("{e}\n{}", vmm.diagnostics()))?;
    let s = connect(&uds)?;
    Ok((vmm, s))
}

fn connect(uds: &Path) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(uds).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
    s.write_all(b"CONNECT 52\n").map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match s.read(&mut b) {
            Ok(1) => line.push(b[0]),
            _ => return Err(format!("no OK line (got {line:?})")),
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&line)
        ));
    }
    Ok(s)
}

/// Nanoseconds the VMM's main (VMM) thread has run.
fn vmm_thread_cpu_ns(pid: u32) -> Result<u64, String> {
    let p = format!("/proc/{pid}/task/{pid}/schedstat");
    let text = std::fs::read_to_string(&p).map_err(|e| format!("{p}: {e}"))?;
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{p}: unexpected contents {text:?}"))
}

fn median(v: &Value) -> f64 {
    v["median"].as_f64().unwrap_or(f64::NAN)
}

/// The suite: its report and metrics.
pub(crate) fn run(opts: &Options) -> Result<(Value, Vec<Value>), String> {
    let n = opts.runs;
    let msgs = n * 10;
    // Peer first: it needs no VMM.
    let mut pair = unix_pair_echo()?;
    rtt(&mut pair, 10)?;
    let pair_rtt = rtt(&mut pair, msgs)?;
    let pair_tp = (0..n)
        .map(|_| throughput(&pair))
        .collect::<Result<Vec<_>, _>>()?;

    let (mut vmm, mut s) = vsock_echo(opts)?;
    let pid = vmm.pid();
    type Samples = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);
    let result = (|| -> Result<Samples, String> {
        rtt(&mut s, 10)?;
        let (mut r, mut cpu_rtt) = (Vec::with_capacity(msgs), Vec::with_capacity(n));
        for _ in 0..n {
            let c0 = vmm_thread_cpu_ns(pid)?;
            r.extend(rtt(&mut s, 10)?);
            cpu_rtt.push((vmm_thread_cpu_ns(pid)? - c0) as f64 / 10.0 / 1000.0);
        }
        let (mut t, mut cpu_tp) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mib = THROUGHPUT_BYTES as f64 / (1024.0 * 1024.0);
        for i in 0..n {
            eprint!("\rvsock_echo_throughput: {}/{n}   ", i + 1);
            let c0 = vmm_thread_cpu_ns(pid)?;
            t.push(throughput(&s)?);
            cpu_tp.push((vmm_thread_cpu_ns(pid)? - c0) as f64 / 1e6 / mib);
        }
        eprintln!();
        Ok((r, t, cpu_rtt, cpu_tp))
    })();
    let (vsock_rtt, vsock_tp, cpu_rtt, cpu_tp) =
        result.map_err(|e| format!("{e}\n{}", vmm.diagnostics()))?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    if vmm.try_wait_exit(WAIT, Duration::from_millis(5)).is_none() {
        vmm.kill();
    }

    let label = |mut v: Value| {
        v["bytes"] = json!(MSG);
        v
    };
    let m_vrtt = label(summary("vsock_rtt_us", "us", &vsock_rtt));
    let m_prtt = label(summary("unix_pair_rtt_us", "us", &pair_rtt));
    let m_vtp = summary("vsock_echo_throughput_mib_s", "MiB/s", &vsock_tp);
    let m_ptp = summary("unix_pair_echo_throughput_mib_s", "MiB/s", &pair_tp);
    let report = json!({
        "guest": opts.guests.get("virtio_vsock.elf"),
        "message_bytes": MSG,
        "throughput_bytes_per_run": THROUGHPUT_BYTES,
        "ratio_rtt": (median(&m_vrtt) / median(&m_prtt) * 10.0).round() / 10.0,
        "ratio_throughput": (median(&m_vtp) / median(&m_ptp) * 1e4).round() / 1e4,
    });
    let m_crtt = label(summary("vmm_thread_cpu_per_rtt_us", "us", &cpu_rtt));
    let m_ctp = summary("vmm_thread_cpu_per_mib_ms", "ms", &cpu_tp);
    Ok((report, vec![m_vrtt, m_prtt, m_vtp, m_ptp, m_crtt, m_ctp]))
}
