//! virtio-net end to end: the virtio_net test guest's frame arrives on the host tap and a frame
//! written to the tap reaches the guest; metrics count both; network-interface API errors; PATCH
//! of rate limiters after boot; a VMM-created tap with --allow-tap-create.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tartarus_tests::net::{is_tartarus, tartarus_frame, HostTap, PacketSocket};
use tartarus_tests::{guests, TempDir, Vmm, GUEST_TIMEOUT};

const GUEST_MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];
const GUEST_MAC_STR: &str = "06:00:ac:10:00:02";

fn iface(id: &str, tap: &str, extra: Value) -> Value {
    let mut v = json!({"iface_id": id, "host_dev_name": tap});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn configure(vmm: &Vmm, boot_args: &str) {
    vmm.configure(1, 64, &guests().get("virtio_net.elf"), boot_args);
}

/// Waits for the guest's 0x88b5 frame on the tap.
fn capture_guest_frame(sock: &PacketSocket) -> Vec<u8> {
    let deadline = Instant::now() + GUEST_TIMEOUT;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        if let Some(n) = sock.recv_incoming(&mut buf).unwrap() {
            if is_tartarus(&buf[..n]) {
                return buf[..n].to_vec();
            }
        }
    }
    panic!("the guest's frame never reached the tap");
}

#[test]
fn frames_flow_both_ways_through_the_tap() {
    let tap = HostTap::create().expect("create a tap (needs root)");
    let sock = PacketSocket::bind(tap.ifindex().unwrap()).unwrap();
    sock.set_timeout(Duration::from_millis(200)).unwrap();
    let dir = TempDir::new("net");
    let metrics = dir.join("metrics.json");
    let mut vmm = Vmm::start_api();
    configure(&vmm, "net_rx_wait=20000");
    vmm.put_ok("/metrics", &json!({ "metrics_path": metrics }));
    vmm.put_ok(
        "/network-interfaces/eth0",
        &iface("eth0", &tap.name, json!({"guest_mac": GUEST_MAC_STR})),
    );
    let cfg = vmm.get_json("/vm/config");
    assert_eq!(
        cfg["network-interfaces"][0]["host_dev_name"],
        json!(tap.name)
    );
    vmm.start();

    let f = capture_guest_frame(&sock);
    assert_eq!(&f[0..6], &[0xff; 6], "broadcast destination");
    assert_eq!(&f[6..12], &GUEST_MAC, "source is the configured MAC");
    assert_eq!(&f[14..29], b"tartarus-net-tx");
    assert_eq!(f.len(), 60);
    vmm.wait_for_output(&format!("virtio-net: mac={GUEST_MAC_STR}"), GUEST_TIMEOUT);

    // The host answers; the guest prints it and ends.
    let reply = tartarus_frame(GUEST_MAC, [0x02, 0, 0, 0, 0, 9], b"tartarus-net-rx");
    sock.send(&reply).unwrap();
    let out = vmm.wait_for_output("virtio-net: done", GUEST_TIMEOUT);
    assert!(out.contains("net tx done"), "{out}");
    assert!(
        out.contains("net rx len=60 payload=tartarus-net-rx"),
        "{out}"
    );
    assert!(!out.contains("net rx timeout"), "{out}");
    vmm.wait_success();

    // The final flush at exit counted both frames.
    let text = std::fs::read_to_string(&metrics).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let m = &last["net"]["eth0"];
    assert!(m["tx_frames"].as_u64().unwrap() >= 1, "{m}");
    assert!(m["tx_bytes"].as_u64().unwrap() >= 60, "{m}");
    assert!(m["rx_frames"].as_u64().unwrap() >= 1, "{m}");
    assert_eq!(m["tx_invalid_chains"], json!(0), "{m}");
}

#[test]
fn rate_limiters_can_be_patched_after_boot() {
    let tap = HostTap::create().unwrap();
    let sock = PacketSocket::bind(tap.ifindex().unwrap()).unwrap();
    sock.set_timeout(Duration::from_millis(200)).unwrap();
    let vmm = Vmm::start_api();
    configure(&vmm, "net_rx_wait=20000");
    let limiter = json!({"bandwidth": {"size": 1_000_000, "refill_time": 100}});
    vmm.put_ok(
        "/network-interfaces/eth0",
        &iface("eth0", &tap.name, json!({"tx_rate_limiter": limiter})),
    );
    vmm.start();
    capture_guest_frame(&sock);
    vmm.patch_ok(
        "/network-interfaces/eth0",
        &json!({"iface_id": "eth0", "rx_rate_limiter": {"ops": {"size": 100, "refill_time": 1000}}}),
    );
    let r = vmm.patch("/network-interfaces/eth1", &json!({"iface_id": "eth1"}));
    assert_eq!(r.status, 400, "{r}");
    assert!(r.fault_message().unwrap().contains("eth1"), "{r}");
    // PUT after start is refused with the state named.
    let r = vmm.put(
        "/network-interfaces/eth2",
        &iface("eth2", &tap.name, json!({})),
    );
    assert_eq!(r.status, 400, "{r}");
    let msg = r.fault_message().unwrap();
    assert!(
        msg.contains("network interface") && msg.contains("Running"),
        "{msg}"
    );
    let cfg = vmm.get_json("/vm/config");
    assert_eq!(
        cfg["network-interfaces"][0]["rx_rate_limiter"]["ops"]["size"],
        json!(100)
    );
    sock.send(&tartarus_frame(
        GUEST_MAC,
        [2, 0, 0, 0, 0, 9],
        b"after-patch",
    ))
    .unwrap();
    vmm.wait_for_output("payload=after-patch", GUEST_TIMEOUT);
}

#[test]
fn api_errors_for_network_interfaces() {
    let tap = HostTap::create().unwrap();
    let other = HostTap::create().unwrap();
    let vmm = Vmm::start_api();
    let fault = |r: tartarus_tests::Response| {
        assert_eq!(r.status, 400, "{r}");
        r.fault_message().unwrap().to_string()
    };
    // A tap that does not exist: the message says how to create one.
    let missing = HostTap::unused_name();
    let msg = fault(vmm.put(
        "/network-interfaces/eth0",
        &iface("eth0", &missing, json!({})),
    ));
    assert!(msg.contains("does not exist"), "{msg}");
    assert!(
        msg.contains(&format!("ip tuntap add dev {missing} mode tap")),
        "{msg}"
    );
    // Path and body disagree; bad MAC; bad device name; unknown field.
    let msg = fault(vmm.put(
        "/network-interfaces/eth0",
        &iface("eth9", &tap.name, json!({})),
    ));
    assert!(msg.contains("'eth0'") && msg.contains("'eth9'"), "{msg}");
    let msg = fault(vmm.put(
        "/network-interfaces/eth0",
        &iface("eth0", &tap.name, json!({"guest_mac": "06:00"})),
    ));
    assert!(msg.contains("guest_mac"), "{msg}");
    let msg = fault(vmm.put("/network-interfaces/eth0", &iface("eth0", "a/b", json!({}))));
    assert!(msg.contains("host_dev_name"), "{msg}");
    let msg = fault(vmm.put(
        "/network-interfaces/eth0",
        &iface("eth0", &tap.name, json!({"mtu": 1500})),
    ));
    assert!(msg.contains("unknown field"), "{msg}");

    vmm.put_ok(
        "/network-interfaces/eth0",
        &iface("eth0", &tap.name, json!({"guest_mac": GUEST_MAC_STR})),
    );
    // The same tap or MAC for a second interface.
    let msg = fault(vmm.put(
        "/network-interfaces/eth1",
        &iface("eth1", &tap.name, json!({})),
    ));
    assert!(
        msg.contains("host_dev_name") && msg.contains("eth0"),
        "{msg}"
    );
    let msg = fault(vmm.put(
        "/network-interfaces/eth1",
        &iface("eth1", &other.name, json!({"guest_mac": GUEST_MAC_STR})),
    ));
    assert!(msg.contains("guest_mac") && msg.contains("eth0"), "{msg}");
    // PUT with an existing iface_id replaces it (Firecracker's behaviour): still one interface.
    vmm.put_ok(
        "/network-interfaces/eth0",
        &iface("eth0", &other.name, json!({})),
    );
    let cfg = vmm.get_json("/vm/config");
    assert_eq!(
        cfg["network-interfaces"].as_array().unwrap().len(),
        1,
        "{cfg}"
    );
    assert_eq!(
        cfg["network-interfaces"][0]["host_dev_name"],
        json!(other.name)
    );
    // PATCH of an unknown interface.
    let msg = fault(vmm.patch("/network-interfaces/nope", &json!({"iface_id": "nope"})));
    assert!(msg.contains("nope"), "{msg}");
    // The VMM still serves.
    assert_eq!(vmm.state(), "Not started");
}

#[test]
fn duplicate_iface_ids_in_a_config_file_are_refused() {
    let tap = HostTap::create().unwrap();
    let dir = TempDir::new("netcfg");
    let cfg = dir.join("vm.json");
    let body = json!({
        "boot-source": {"kernel_image_path": guests().get("virtio_net.elf")},
        "network-interfaces": [
            {"iface_id": "eth0", "host_dev_name": tap.name},
            {"iface_id": "eth0", "host_dev_name": "other0"}
        ]
    });
    std::fs::write(&cfg, body.to_string()).unwrap();
    let mut vmm = Vmm::builder()
        .api(false)
        .args(["--no-api", "--config-file"])
        .arg(&cfg)
        .spawn();
    let status = vmm.wait_exit(GUEST_TIMEOUT);
    assert_eq!(status.code(), Some(1));
    assert!(
        vmm.log().contains("duplicate iface_id"),
        "{}",
        vmm.diagnostics()
    );
}

#[test]
fn the_vmm_creates_a_missing_tap_when_allowed() {
    let name = format!("{}c", HostTap::unused_name());
    let mut vmm = Vmm::builder().arg("--allow-tap-create").spawn();
    vmm.wait_for_socket();
    configure(&vmm, "net_rx_wait=100");
    vmm.put_ok(
        "/network-interfaces/eth0",
        &iface("eth0", &name, json!({"guest_mac": GUEST_MAC_STR})),
    );
    vmm.start();
    let out = vmm.wait_success();
    assert!(out.contains("net tx done"), "{out}");
    // The tap lived as long as the VMM only.
    let listed = std::process::Command::new("ip")
        .args(["link", "show", &name])
        .output()
        .unwrap();
    assert!(!listed.status.success(), "tap {name} outlived the VMM");
}

#[test]
fn a_snapshot_with_a_nic_restores_and_keeps_receiving() {
    let tap = HostTap::create().unwrap();
    let sock = PacketSocket::bind(tap.ifindex().unwrap()).unwrap();
    sock.set_timeout(Duration::from_millis(200)).unwrap();
    let dir = TempDir::new("net-snap");
    let (state, mem) = (dir.join("vm.state"), dir.join("vm.mem"));
    let mut vmm = Vmm::start_api();
    configure(&vmm, "net_rx_wait=60000");
    vmm.put_ok(
        "/network-interfaces/eth0",
        &iface("eth0", &tap.name, json!({"guest_mac": GUEST_MAC_STR})),
    );
    vmm.start();
    // The guest has sent its frame and now polls its RX ring: snapshot it there.
    capture_guest_frame(&sock);
    vmm.wait_for_output("net tx done", GUEST_TIMEOUT);
    vmm.patch_ok("/vm", &json!({"state": "Paused"}));
    let r = vmm.put(
        "/snapshot/create",
        &json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{r}\n{}", vmm.diagnostics());
    // The tap can be attached by one VMM at a time: the original goes first.
    vmm.kill();

    let mut restored = Vmm::start_api();
    let r = restored.put(
        "/snapshot/load",
        &json!({"snapshot_path": state, "mem_backend": {"backend_type": "File", "backend_path": mem},
                "resume_vm": true}),
    );
    assert_eq!(r.status, 204, "{r}\n{}", restored.diagnostics());
    let cfg = restored.get_json("/vm/config");
    assert_eq!(
        cfg["network-interfaces"][0]["host_dev_name"],
        json!(tap.name)
    );
    // A frame written to the tap now reaches the restored guest's saved RX buffers.
    let reply = tartarus_frame(GUEST_MAC, [0x02, 0, 0, 0, 0, 9], b"tartarus-net-rx");
    sock.send(&reply).unwrap();
    let out = restored.wait_for_output("virtio-net: done", GUEST_TIMEOUT);
    assert!(
        out.contains("net rx len=60 payload=tartarus-net-rx"),
        "{out}"
    );
    restored.wait_success();
}
