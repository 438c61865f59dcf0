//! virtio-vsock end to end with the virtio_vsock test guest: host-initiated connections through
//! `CONNECT <port>` on uds_path (echoed by the guest), guest-initiated ones to `<uds>_<port>`,
//! refusals both ways, a host client that half-closes or vanishes mid-stream, API errors,
//! config-file boot.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tartarus_tests::{guests, TempDir, Vmm, GUEST_TIMEOUT};

const IO_TIMEOUT: Duration = Duration::from_secs(20);

fn uds(vmm: &Vmm) -> PathBuf {
    vmm.dir().join("v.sock")
}

/// Configures vsock (CID 3) and boots the vsock guest with `boot_args`.
fn boot(boot_args: &str) -> Vmm {
    let vmm = Vmm::start_api();
    vmm.put_ok(
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    vmm.put_ok("/vsock", &json!({"guest_cid": 3, "uds_path": uds(&vmm)}));
    vmm.put_ok(
        "/metrics",
        &json!({"metrics_path": vmm.dir().join("metrics.json")}),
    );
    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": guests().get("virtio_vsock.elf"), "boot_args": boot_args}),
    );
    vmm.start();
    vmm
}

/// Connects to uds_path and sends `CONNECT <port>`; returns the stream and the answer line
/// (empty if the VMM closed the stream instead).
fn connect(path: &Path, port: u32) -> (UnixStream, String) {
    let mut s = UnixStream::connect(path).expect("connect to uds_path");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).expect("read the answer") == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    (s, String::from_utf8_lossy(&line).into_owned())
}

fn host_port(line: &str) -> u32 {
    line.strip_prefix("OK ")
        .and_then(|p| p.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("unexpected answer {line:?}"))
}

fn metrics(vmm: &Vmm) -> Value {
    let r = vmm.action("FlushMetrics");
    assert_eq!(r.status, 204, "{r}");
    let text = std::fs::read_to_string(vmm.dir().join("metrics.json")).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

#[test]
fn host_connects_and_the_guest_echoes() {
    let mut vmm = boot("vsock_listen=52");
    vmm.wait_for_output("vsock listening on port 52", GUEST_TIMEOUT);
    let (mut s, line) = connect(&uds(&vmm), 52);
    let port = host_port(&line);
    assert!(port >= 1 << 30, "{line}");
    let msg = b"hello through vsock\n";
    s.write_all(msg).unwrap();
    let mut echo = vec![0u8; msg.len()];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, msg);
    let m = metrics(&vmm);
    assert_eq!(m["vsock"]["connections_opened"], 1, "{m}");
    assert_eq!(m["vsock"]["rx_bytes"], msg.len(), "{m}");
    assert_eq!(m["vsock"]["tx_bytes"], msg.len(), "{m}");
    // Half-close our side: the guest gets SHUTDOWN(SEND), answers RST, the VMM closes the stream.
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let out = vmm.wait_success();
    assert!(
        out.contains(&format!("vsock connected from 2:{port}")),
        "{out}"
    );
    assert!(out.contains("vsock echo 20 bytes"), "{out}");
    assert!(out.contains("vsock shutdown flags=2"), "{out}");
    assert!(out.contains("virtio-vsock: done"), "{out}");
    assert!(!uds(&vmm).exists(), "uds_path left behind after exit");
}

/// A client that sends its request and half-closes at once (`nc -N`, HTTP/1.0) still reads the
/// whole reply: the guest hears SHUTDOWN(SEND) only and its echo, sent after the host's EOF was
/// seen, reaches the host before the guest's RST ends the connection.
#[test]
fn a_host_half_close_still_gets_the_whole_reply() {
    let mut vmm = boot("vsock_listen=52 vsock_quiet");
    vmm.wait_for_output("vsock listening on port 52", GUEST_TIMEOUT);
    let (mut s, line) = connect(&uds(&vmm), 52);
    host_port(&line);
    let msg: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    s.write_all(&msg).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    assert_eq!(reply.len(), msg.len(), "reply cut short");
    assert!(reply == msg, "reply differs");
    let out = vmm.wait_success();
    assert!(out.contains("vsock shutdown flags=2"), "{out}");
    assert!(out.contains("virtio-vsock: done"), "{out}");
}

/// Accepts one connection within the timeout.
fn accept(l: &UnixListener) -> UnixStream {
    l.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + GUEST_TIMEOUT;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the guest never connected");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[test]
fn guest_connects_to_the_port_socket() {
    let dir = TempDir::new("vsock");
    let vmm = Vmm::builder().spawn_in(dir);
    vmm.wait_for_socket();
    let listener = UnixListener::bind(format!("{}_5000", uds(&vmm).display())).unwrap();
    vmm.put_ok(
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    vmm.put_ok("/vsock", &json!({"guest_cid": 7, "uds_path": uds(&vmm)}));
    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": guests().get("virtio_vsock.elf"),
                "boot_args": "vsock_connect=5000"}),
    );
    vmm.start();
    let mut vmm = vmm;
    let s = accept(&listener);
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "hello from guest\n");
    (&s).write_all(b"hello from host!\n").unwrap();
    // The guest shuts down after 17 bytes; the VMM answers RST and closes our stream.
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let out = vmm.wait_success();
    assert!(out.contains("virtio-vsock: cid=7"), "{out}");
    assert!(out.contains("vsock connected to 2:5000"), "{out}");
    assert!(
        out.contains("vsock recv 17 bytes: hello from host!."),
        "{out}"
    );
    assert!(out.contains("vsock closed\n"), "{out}");
}

#[test]
fn guest_connection_to_a_port_nobody_listens_on_is_refused() {
    let mut vmm = boot("vsock_connect=5001");
    let out = vmm.wait_success();
    assert!(out.contains("vsock connect refused"), "{out}");
    assert!(out.contains("virtio-vsock: done"), "{out}");
}

#[test]
fn connect_to_a_closed_guest_port_closes_the_stream_and_the_vmm_carries_on() {
    let mut vmm = boot("vsock_listen=52");
    vmm.wait_for_output("vsock listening on port 52", GUEST_TIMEOUT);
    // Port 53: the guest answers RST, the host stream closes without an OK line.
    let (_s, line) = connect(&uds(&vmm), 53);
    assert_eq!(line, "");
    // A bad handshake line is refused too.
    let mut bad = UnixStream::connect(uds(&vmm)).unwrap();
    bad.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    bad.write_all(b"HELLO 52\n").unwrap();
    let mut rest = Vec::new();
    bad.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // The device still works, with the agent's own client (guest-init) this time.
    let mut s = guest_init::client::connect_hybrid_vsock(&uds(&vmm), 52).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"x");
    let m = metrics(&vmm);
    assert!(
        m["vsock"]["connections_refused"].as_u64().unwrap() >= 1,
        "{m}"
    );
    assert!(
        m["vsock"]["handshake_failures"].as_u64().unwrap() >= 1,
        "{m}"
    );
    drop(s);
    let out = vmm.wait_success();
    assert!(out.contains("virtio-vsock: done"), "{out}");
}

#[test]
fn a_host_client_vanishing_mid_stream_does_not_wedge_anything() {
    let mut vmm = boot("vsock_listen=52");
    vmm.wait_for_output("vsock listening on port 52", GUEST_TIMEOUT);
    let (mut s, line) = connect(&uds(&vmm), 52);
    host_port(&line);
    s.write_all(&[b'z'; 4000]).unwrap();
    drop(s);
    let out = vmm.wait_success();
    assert!(
        out.contains("vsock shutdown flags=3") || out.contains("vsock rst"),
        "{out}"
    );
    assert!(out.contains("virtio-vsock: done"), "{out}");
}

#[test]
fn vsock_api_errors() {
    let mut vmm = Vmm::start_api();
    for cid in [0, 1, 2] {
        let r = vmm.put("/vsock", &json!({"guest_cid": cid, "uds_path": uds(&vmm)}));
        assert_eq!(r.status, 400, "{r}");
        let msg = r.fault_message().unwrap();
        assert!(
            msg.contains(&format!("guest_cid {cid} is reserved")),
            "{msg}"
        );
    }
    let r = vmm.put(
        "/vsock",
        &json!({"guest_cid": 3, "uds_path": "/no/such/dir/v.sock"}),
    );
    assert_eq!(r.status, 400, "{r}");
    assert!(
        r.fault_message().unwrap().contains("cannot be accessed"),
        "{r}"
    );
    let r = vmm.put_raw("/vsock", r#"{"guest_cid": 3, "uds_path": "/x", "cid": 4}"#);
    assert_eq!(r.status, 400, "{r}");
    std::fs::write(uds(&vmm), b"").unwrap();
    let r = vmm.put("/vsock", &json!({"guest_cid": 3, "uds_path": uds(&vmm)}));
    assert!(r.fault_message().unwrap().contains("already exists"), "{r}");
    std::fs::remove_file(uds(&vmm)).unwrap();
    // A good one, reported by GET /vm/config; after start, PUT is refused.
    vmm.put_ok("/vsock", &json!({"guest_cid": 3, "uds_path": uds(&vmm)}));
    let cfg = vmm.get_json("/vm/config");
    assert_eq!(cfg["vsock"]["guest_cid"], 3, "{cfg}");
    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": guests().get("virtio_vsock.elf"),
                "boot_args": "vsock_listen=52 vsock_wait=20000"}),
    );
    vmm.start();
    vmm.wait_for_output("vsock listening on port 52", GUEST_TIMEOUT);
    let r = vmm.put(
        "/vsock",
        &json!({"guest_cid": 4, "uds_path": "/tmp/other.sock"}),
    );
    assert_eq!(r.status, 400, "{r}");
    assert!(r.fault_message().unwrap().contains("state Running"), "{r}");
    vmm.kill();
}

#[test]
fn config_file_boot_with_vsock() {
    let dir = TempDir::new("vsock-cfg");
    let sock = dir.join("v.sock");
    let cfg = dir.join("vm.json");
    let body = json!({
        "boot-source": {"kernel_image_path": guests().get("virtio_vsock.elf"),
                        "boot_args": "vsock_connect=6000"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
        "vsock": {"guest_cid": 9, "uds_path": sock},
    });
    std::fs::write(&cfg, body.to_string()).unwrap();
    let mut vmm = Vmm::builder()
        .api(false)
        .arg("--config-file")
        .arg(&cfg)
        .spawn_in(dir);
    let out = vmm.wait_success();
    assert!(out.contains("virtio-vsock: cid=9"), "{out}");
    assert!(out.contains("vsock connect refused"), "{out}");
}

/// A restored vsock goes on from the saved host port and resets (OP_RST) only the connections
/// the snapshotted device had: with none, the guest hears nothing. A state file that does not
/// list them (as format 1.3 wrote it) gets the transport reset, as before. Either way the
/// listening guest accepts a new connection.
#[test]
fn a_restored_vsock_accepts_new_connections_and_resets_only_what_it_must() {
    for legacy in [false, true] {
        let mut vmm = boot("vsock_listen=52 vsock_wait=60000");
        vmm.wait_for_output("vsock listening on port 52", GUEST_TIMEOUT);
        let (state, mem) = (vmm.dir().join("vm.state"), vmm.dir().join("vm.mem"));
        vmm.patch_ok("/vm", &json!({"state": "Paused"}));
        let r = vmm.put(
            "/snapshot/create",
            &json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
        );
        assert_eq!(r.status, 204, "{r}\n{}", vmm.diagnostics());
        let d = vmm.log();
        vmm.kill();
        // SIGKILL leaves the socket file behind; uds_path must not exist for the restored device.
        let _ = std::fs::remove_file(uds(&vmm));
        let mut body: Value = snapshot::read_state_file(&state).unwrap();
        let kind = body["devices"][0]["kind"].as_object_mut().unwrap();
        assert_eq!(kind["open_connections"], json!([]), "{kind:?}");
        if legacy {
            kind.remove("next_host_port");
            kind.remove("open_connections");
            snapshot::write_state_file(&state, &body).unwrap();
        }

        let mut restored = Vmm::start_api();
        let r = restored.put(
            "/snapshot/load",
            &json!({"snapshot_path": state, "mem_backend": {"backend_type": "Uffd", "backend_path": mem},
                    "resume_vm": true}),
        );
        assert_eq!(r.status, 204, "{r}\n{}\n{d}", restored.diagnostics());
        if legacy {
            restored.wait_for_output("vsock event id=0 (transport reset)", GUEST_TIMEOUT);
        }
        // The listening guest accepts a connection made through the restored VMM's socket.
        let (mut s, line) = connect(&uds(&vmm), 52);
        host_port(&line);
        s.write_all(b"after restore\n").unwrap();
        let mut echo = [0u8; 14];
        s.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"after restore\n");
        s.shutdown(Shutdown::Write).unwrap();
        let out = restored.wait_success();
        assert!(out.contains("virtio-vsock: done"), "{out}");
        assert_eq!(out.contains("transport reset"), legacy, "{out}");
    }
}
