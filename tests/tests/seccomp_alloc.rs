//! The allocator under the default seccomp filters (issue 10): glibc's `free` once opened
//! `/proc/sys/vm/overcommit_memory` while trimming a thread's arena, outside the api and vCPU
//! filters, and a dozen closing API connections killed the VMM with SIGSYS. These tests drive
//! each filtered thread through its allocation patterns and check the VMM is still alive and
//! answering afterwards.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tartarus_tests::stress::{concurrent_gets, idle_connections, large_bodies};
use tartarus_tests::{guests, TempDir, Vmm, VmmBuilder};

/// Panics with the diagnostics if the VMM has exited; else checks that it answers `GET /`.
fn assert_alive(vmm: &mut Vmm, after: &str) {
    if let Some(status) = vmm.try_wait_exit(Duration::from_millis(300), Duration::from_millis(20)) {
        panic!(
            "tartarus-vmm died after {after}: {status}\n{}",
            vmm.diagnostics()
        );
    }
    let r = vmm.get("/");
    assert_eq!(r.status, 200, "after {after}: {r}");
}

/// Every API load pattern, each followed by a liveness check.
fn api_load(vmm: &mut Vmm, rounds: usize) {
    let socket = vmm.socket_path().to_path_buf();
    for round in 0..rounds {
        let served = concurrent_gets(&socket, 10, 30);
        assert!(served > 0, "round {round}: no GET / was served");
        assert_alive(vmm, &format!("300 concurrent GET / (round {round})"));
        idle_connections(&socket, 300, Duration::from_millis(50));
        assert_alive(vmm, &format!("300 idle connections (round {round})"));
        idle_connections(&socket, 63, Duration::ZERO);
        assert_alive(vmm, &format!("63 idle connections (round {round})"));
        large_bodies(&socket, 40, 50_000);
        large_bodies(&socket, 20, 200_000);
        assert_alive(vmm, &format!("bursts of large bodies (round {round})"));
    }
}

#[test]
fn api_thread_survives_connection_storms_before_boot() {
    let mut vmm = Vmm::start_api();
    api_load(&mut vmm, 3);
    assert_eq!(vmm.state(), "Not started");
}

#[test]
fn sixteen_connections_with_get_do_not_kill_the_vmm() {
    // The exact reproduction from the issue.
    let mut vmm = Vmm::start_api();
    let served = concurrent_gets(vmm.socket_path(), 1, 16);
    assert_eq!(served, 16);
    assert_alive(&mut vmm, "16 connections with GET /");
}

fn disk(dir: &TempDir, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
    p
}

fn add_drive(vmm: &Vmm, id: &str, path: &Path, engine: &str) {
    vmm.put_ok(
        &format!("/drives/{id}"),
        &json!({"drive_id": id, "path_on_host": path, "is_root_device": false,
                "io_engine": engine, "cache_type": "Writeback"}),
    );
}

#[test]
fn every_thread_survives_load_on_a_running_vm_with_many_devices() {
    let dir = TempDir::new("seccomp-alloc");
    let disks: Vec<_> = (0..4).map(|i| disk(&dir, &format!("d{i}.img"))).collect();
    let vsock = dir.join("v.sock");
    let metrics = dir.join("metrics.json");
    let mut vmm = VmmBuilder::new().spawn_in(dir);
    vmm.wait_for_socket();
    vmm.put_ok(
        "/machine-config",
        &json!({"vcpu_count": 2, "mem_size_mib": 64}),
    );
    for (i, d) in disks.iter().enumerate() {
        let engine = if i % 2 == 0 { "Sync" } else { "Async" };
        add_drive(&vmm, &format!("disk{i}"), d, engine);
    }
    vmm.put_ok("/vsock", &json!({"guest_cid": 3, "uds_path": vsock}));
    vmm.put_ok("/metrics", &json!({ "metrics_path": metrics }));
    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": guests().get("virtio_blk.elf"),
                "boot_args": "blk_read=3 blk_write=5 blk_flush blk_id blk_wait_cad blk_read2=7 blk_write2=9"}),
    );
    vmm.start();
    vmm.wait_for_output(
        "blk waiting for ctrl-alt-del",
        tartarus_tests::GUEST_TIMEOUT,
    );

    // The api thread under load while the vCPUs run, then the VMM thread (pause/resume talks
    // to every vCPU thread, PATCH reopens a backing file, metrics are serialised), repeatedly.
    for round in 0..4 {
        api_load(&mut vmm, 1);
        for _ in 0..5 {
            assert_eq!(vmm.patch("/vm", &json!({"state": "Paused"})).status, 204);
            assert_eq!(vmm.patch("/vm", &json!({"state": "Resumed"})).status, 204);
        }
        for (i, d) in disks.iter().enumerate() {
            vmm.patch_ok(
                &format!("/drives/disk{i}"),
                &json!({"drive_id": format!("disk{i}"), "path_on_host": d}),
            );
        }
        assert_eq!(vmm.action("FlushMetrics").status, 204);
        let cfg = vmm.get_json("/vm/config");
        assert_eq!(cfg["drives"].as_array().map(Vec::len), Some(4));
        assert_alive(&mut vmm, &format!("VMM-thread work (round {round})"));
    }
    // The vCPU threads: the guest's second batch of requests after Ctrl-Alt-Del, then its reset.
    assert_eq!(vmm.action("SendCtrlAltDel").status, 204);
    let out = vmm.wait_success();
    assert!(out.contains("blk write sector 9 status=0"), "{out}");
}

#[test]
fn api_requests_in_flight_when_the_guest_resets_do_not_kill_the_vmm() {
    // The guest resets right after InstanceStart while clients keep requests in flight: the VMM
    // thread ends, the api thread's channel closes and its server is dropped under the api
    // filter (it once called statx there to remove the socket file).
    for run in 0..20 {
        let mut vmm = Vmm::start_api();
        vmm.configure(1, 64, &guests().hello_elf, "");
        let socket = vmm.socket_path().to_path_buf();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let (socket, stop) = (socket.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if concurrent_gets(&socket, 1, 4) == 0 {
                            break;
                        }
                    }
                })
            })
            .collect();
        let _ = vmm.try_request(
            "PUT",
            "/actions",
            Some(br#"{"action_type": "InstanceStart"}"#),
        );
        let status = vmm.wait_exit(tartarus_tests::GUEST_TIMEOUT);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        assert_eq!(
            status.code(),
            Some(0),
            "run {run}: expected the guest's reset (exit 0), got {status}\n{}",
            vmm.diagnostics()
        );
        assert!(
            !socket.exists(),
            "run {run}: the API socket was left behind"
        );
    }
}
