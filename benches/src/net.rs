//! The net suite: virtio-net packets per second through a host tap, with the virtio_net guest.
//!
//! - `net_tx_pps`: the guest sends `TX_FRAMES` 60-byte frames one after another
//!   (`net_tx_count`); the host captures them on an AF_PACKET socket bound to the tap and
//!   divides the frames after the first by the time between the first and the last arrival.
//! - `net_rx_pps`: once the guest's first frame has arrived (its receive buffers are posted),
//!   the host writes `RX_FRAMES` frames to the tap as fast as it can; the guest counts them
//!   (`net_rx_count`) and prints the count. Frames divided by the time from the first send to
//!   that line on the serial console (so the figure includes one serial line's latency).
//! - `host_veth_pps`: the host-only peer: the same number of frames from an AF_PACKET socket on
//!   one end of a veth pair to one on the other end, first send to last receive. The ratios
//!   `net_tx_pps / host_veth_pps` and `net_rx_pps / host_veth_pps` go into the report.
//!
//! Needs root (taps, veth, packet sockets).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tartarus_tests::net::{is_tartarus, tartarus_frame, HostTap, PacketSocket};
use tartarus_tests::{Vmm, GUEST_TIMEOUT};

use crate::{configure, put, spawn, summary, Options};

const TX_FRAMES: usize = 1000;
const RX_FRAMES: usize = 500;
const GUEST_MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];

fn start(opts: &Options, tap: &HostTap, boot_args: &str) -> Result<Vmm, String> {
    let vmm = spawn(opts)?;
    vmm.try_wait_for_socket(Duration::from_secs(15), Duration::from_millis(1))?;
    configure(&vmm, &opts.guests.dir.join("virtio_net.elf"), boot_args)?;
    put(
        &vmm,
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0", "host_dev_name": tap.name, "guest_mac": "06:00:ac:10:00:02"}),
    )?;
    crate::action(&vmm, "InstanceStart")?;
    Ok(vmm)
}

/// Receives guest frames until `n` arrived; returns the arrival times.
fn capture(sock: &PacketSocket, n: usize) -> Result<Vec<Instant>, String> {
    let deadline = Instant::now() + GUEST_TIMEOUT;
    let mut buf = vec![0u8; 2048];
    let mut times = Vec::with_capacity(n);
    while times.len() < n {
        if Instant::now() > deadline {
            return Err(format!("only {} of {n} frames arrived", times.len()));
        }
        if let Some(len) = sock.recv_incoming(&mut buf).map_err(|e| e.to_string())? {
            if is_tartarus(&buf[..len]) && buf[6..12] == GUEST_MAC {
                times.push(Instant::now());
            }
        }
    }
    Ok(times)
}

fn tx_run(opts: &Options, tap: &HostTap, sock: &PacketSocket) -> Result<f64, String> {
    let mut vmm = start(
        opts,
        tap,
        &format!("net_tx_count={TX_FRAMES} net_rx_wait=1"),
    )?;
    let times = capture(sock, TX_FRAMES)?;
    let _ = vmm.try_wait_exit(GUEST_TIMEOUT, Duration::from_millis(5));
    let span = times[TX_FRAMES - 1] - times[0];
    Ok((TX_FRAMES - 1) as f64 / span.as_secs_f64())
}

fn rx_run(opts: &Options, tap: &HostTap, sock: &PacketSocket) -> Result<f64, String> {
    let mut vmm = start(
        opts,
        tap,
        &format!("net_rx_count={RX_FRAMES} net_rx_wait=5000"),
    )?;
    capture(sock, 1)?;
    let frame = tartarus_frame(GUEST_MAC, [2, 0, 0, 0, 0, 9], b"bench");
    let t0 = Instant::now();
    for _ in 0..RX_FRAMES {
        sock.send(&frame).map_err(|e| e.to_string())?;
    }
    vmm.try_wait_for_output(&format!("net rx count={RX_FRAMES}"), GUEST_TIMEOUT)?;
    let elapsed = t0.elapsed();
    let _ = vmm.try_wait_exit(GUEST_TIMEOUT, Duration::from_millis(5));
    Ok(RX_FRAMES as f64 / elapsed.as_secs_f64())
}

struct Veth(String);

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

fn ifindex(name: &str) -> Result<i32, String> {
    let c = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(format!("no interface {name}"));
    }
    Ok(i as i32)
}

fn ip(args: &[&str]) -> Result<(), String> {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .map_err(|e| e.to_string())?
        .success();
    ok.then_some(())
        .ok_or_else(|| format!("ip {} failed", args.join(" ")))
}

/// Host-only peer: frames from one end of a veth pair to the other.
fn veth_run(a: &str, b: &str) -> Result<f64, String> {
    let tx = PacketSocket::bind(ifindex(a)?).map_err(|e| e.to_string())?;
    let rx = PacketSocket::bind(ifindex(b)?).map_err(|e| e.to_string())?;
    rx.set_timeout(Duration::from_millis(200))
        .map_err(|e| e.to_string())?;
    rx.set_rcvbuf(16 << 20).map_err(|e| e.to_string())?;
    let frame = tartarus_frame([2, 0, 0, 0, 0, 8], GUEST_MAC, b"bench");
    let t0 = Instant::now();
    let mut buf = vec![0u8; 2048];
    let mut got = 0;
    for _ in 0..RX_FRAMES {
        tx.send(&frame).map_err(|e| e.to_string())?;
    }
    let deadline = t0 + GUEST_TIMEOUT;
    while got < RX_FRAMES && Instant::now() < deadline {
        match rx.recv_incoming(&mut buf).map_err(|e| e.to_string())? {
            Some(n) if is_tartarus(&buf[..n]) => got += 1,
            Some(_) => {}
            None => break,
        }
    }
    if got < RX_FRAMES {
        return Err(format!("veth: {got} of {RX_FRAMES} frames arrived"));
    }
    Ok(RX_FRAMES as f64 / t0.elapsed().as_secs_f64())
}

/// Runs the suite: (report, metrics).
pub fn run(opts: &Options) -> Result<(Value, Vec<Value>), String> {
    let n = opts.runs;
    let tap = HostTap::create()?;
    let sock =
        PacketSocket::bind(tap.ifindex().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    sock.set_timeout(Duration::from_millis(100))
        .map_err(|e| e.to_string())?;
    sock.set_rcvbuf(16 << 20).map_err(|e| e.to_string())?;
    let va = format!("tbv{}a", std::process::id() % 100_000);
    let vb = format!("tbv{}b", std::process::id() % 100_000);
    ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
    let _veth = Veth(va.clone());
    ip(&["link", "set", &va, "up"])?;
    ip(&["link", "set", &vb, "up"])?;

    // Warm-up.
    tx_run(opts, &tap, &sock)?;
    let (mut tx, mut rx, mut host) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        eprint!("\rnet: {}/{n}   ", i + 1);
        tx.push(tx_run(opts, &tap, &sock)?);
        rx.push(rx_run(opts, &tap, &sock)?);
        host.push(veth_run(&va, &vb)?);
    }
    eprintln!();
    let metrics = vec![
        summary("net_tx_pps", "frames/s", &tx),
        summary("net_rx_pps", "frames/s", &rx),
        summary("host_veth_pps", "frames/s", &host),
    ];
    let med = |m: &Value| m["median"].as_f64().unwrap_or(0.0);
    let peer = med(&metrics[2]).max(1.0);
    let report = json!({
        "tx_frames": TX_FRAMES,
        "rx_frames": RX_FRAMES,
        "frame_bytes": 60,
        "ratio_tx_to_host_veth": crate::round3(med(&metrics[0]) / peer),
        "ratio_rx_to_host_veth": crate::round3(med(&metrics[1]) / peer),
    });
    Ok((report, metrics))
}
