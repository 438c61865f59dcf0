//! The Linux lane: our microvm kernel boots the ext4 root file system (kernels/build-rootfs.sh)
//! read-only from virtio-blk, with a second, empty ext4 drive as the writable overlay
//! (`tartarus.overlay=/dev/vdb`), a virtio-net NIC on a tap and a vsock, once per test run, and
//! everything else reuses that VM or its snapshot:
//!
//! 1. the agent answers over vsock (CONNECT/OK through the VMM's Unix socket), protocol v2;
//! 2. `echo`, a shell pipeline and a missing binary through the agent;
//! 3. / is the overlay; files written and synced in the guest (/root, /etc);
//! 4. the guest pings the host end of the tap;
//! 5. a tty exec, and a `connect` port forward to a busybox `nc -l -e cat` in the guest;
//! 6. pause + Full snapshot with an agent connection open (the state file lists it), resume, the
//!    agent's `shutdown`, and the files are read back from the overlay disk's `/upper` with
//!    debugfs; the root image is unchanged;
//! 7. restores of that snapshot (File, then Uffd) reset that connection and answer the agent
//!    on a new one.
//!
//! Slow on PVM hosts (~20 s kernel boot, see kernels/README.md). `TARTARUS_LINUX_TESTS=0` at
//! build time marks it ignored (run it anyway with `--ignored`).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use guest_init::client::{connect_hybrid_vsock, Client, ClientError};
use guest_init::protocol::{ErrorCode, ExecSpec};
use serde_json::json;
use tartarus_tests::{build_vecstate, script_output, TempDir, Vmm};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
const AGENT_PORT: u32 = 52;
const GUEST_CID: u32 = 3;
/// The guest port of the `connect` check's echo server.
const ECHO_PORT: u16 = 7070;

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A tap device with an address on the host side, removed on drop.
struct Tap {
    name: String,
}

impl Tap {
    fn new(name: &str, host_cidr: &str) -> Tap {
        let _ = run("ip", &["link", "del", name]);
        run("ip", &["tuntap", "add", "dev", name, "mode", "tap"]).unwrap();
        let tap = Tap { name: name.into() };
        run("ip", &["addr", "add", host_cidr, "dev", name]).unwrap();
        run("ip", &["link", "set", name, "up"]).unwrap();
        tap
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.name]);
    }
}

type Agent = Client<std::os::unix::net::UnixStream>;

/// Connects to the agent through the vsock socket, retrying until it answers; every later read
/// has a timeout, so a stuck guest fails the test instead of hanging it.
fn connect_agent(uds: &Path) -> Agent {
    let start = Instant::now();
    loop {
        let attempt = connect_hybrid_vsock(uds, AGENT_PORT).and_then(|s| {
            s.set_read_timeout(Some(Duration::from_secs(60))).ok();
            Client::new(s)
        });
        match attempt {
            Ok(c) => return c,
            Err(e) if start.elapsed() > AGENT_TIMEOUT => panic!("agent: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Runs `argv` through the agent; returns stdout, insisting on exit code 0.
fn exec_ok(agent: &mut Agent, argv: &[&str]) -> String {
    let out = agent
        .exec(argv.iter().copied())
        .unwrap_or_else(|e| panic!("exec {argv:?}: {e}"));
    assert_eq!(
        out.code,
        Some(0),
        "exec {argv:?}: stdout {:?} stderr {:?} signal {:?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.signal
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fault(r: &tartarus_tests::Response) -> String {
    r.fault_message().unwrap_or(&r.text).to_string()
}

/// Loads the lane's snapshot into a fresh VMM, resumes it and checks the agent answers.
fn restore_and_exec(state: &Path, mem: &Path, uffd: bool, uds: &Path) {
    // A killed VMM leaves its socket file; the restored device needs uds_path free.
    let _ = std::fs::remove_file(uds);
    let mut vmm = Vmm::start_api();
    let backend = if uffd { "Uffd" } else { "File" };
    let t = Instant::now();
    let r = vmm.put(
        "/snapshot/load",
        &json!({"snapshot_path": state, "mem_backend": {"backend_type": backend, "backend_path": mem},
                "resume_vm": true}),
    );
    assert_eq!(
        r.status,
        204,
        "{backend}: {}\n{}",
        fault(&r),
        vmm.diagnostics()
    );
    // The restored vsock device reset the snapshot's connections: the host connects anew.
    let mut agent = connect_agent(uds);
    let out = exec_ok(&mut agent, &["cat", "/root/lane.txt"]);
    eprintln!(
        "restore ({backend}) -> first agent reply + exec: {:?}",
        t.elapsed()
    );
    assert_eq!(out, "written in the guest\n");
    let out = exec_ok(&mut agent, &["sh", "-c", "echo restored-$((2+3))"]);
    assert_eq!(out, "restored-5\n");
    vmm.kill();
}

/// A tty exec: the process sees a /dev/pts terminal of the size asked for.
fn check_tty(agent: &mut Agent) {
    let spec = ExecSpec::new(["sh", "-c", "tty; stty size"]).with_tty(30, 100);
    let out = agent
        .start_exec(&spec, &[])
        .and_then(|e| e.collect())
        .expect("tty exec");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.code, Some(0), "{text:?}");
    assert!(text.starts_with("/dev/pts/"), "{text:?}");
    assert!(text.contains("30 100\r\n"), "{text:?}");
}

/// `connect`: a closed port is a clear error; then bytes to a busybox `nc -l -e cat` in the
/// guest come back through the forward, a reply still arrives after the host half-closes, and
/// that half-close ends it all.
fn check_port_forward(uds: &Path) {
    let agent = connect_agent(uds);
    let Err((mut agent, e)) = agent.try_connect_port(ECHO_PORT) else {
        panic!("port {ECHO_PORT} is open before the test opened it");
    };
    match e {
        ClientError::Agent { code, message } => {
            assert_eq!(code, ErrorCode::NotFound);
            assert_eq!(
                message,
                format!("connection refused to 127.0.0.1:{ECHO_PORT}")
            );
        }
        other => panic!("connect to a closed port: {other}"),
    }
    agent
        .ping()
        .expect("the connection goes on after a refused connect");
    // The server runs as an exec on a connection of its own until its client is done.
    let port = ECHO_PORT.to_string();
    let mut server_conn = connect_agent(uds);
    let server = server_conn
        .start_exec(&ExecSpec::new(["nc", "-l", "-p", &port, "-e", "cat"]), &[])
        .expect("start nc");
    let start = Instant::now();
    let mut stream = loop {
        match connect_agent(uds).try_connect_port(ECHO_PORT) {
            Ok(s) => break s,
            Err((_, e)) if start.elapsed() < Duration::from_secs(30) => {
                eprintln!("waiting for nc: {e}");
                std::thread::sleep(Duration::from_millis(300));
            }
            Err((_, e)) => panic!("connect to nc: {e}"),
        }
    };
    let t = Instant::now();
    let msg = b"through the port forward\n";
    stream.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    stream
        .read_exact(&mut back)
        .expect("echo through the forward");
    assert_eq!(back, msg);
    // A last request and the host's half-close at once (as `nc -N` or an HTTP/1.0 client):
    // cat sees EOF, nc exits, the guest side closes too, and the whole reply, most of it sent
    // after the half-close, still arrives before the EOF.
    let tail: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    stream.write_all(&tail).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert_eq!(
        rest.len(),
        tail.len(),
        "reply after the half-close cut short"
    );
    assert!(rest == tail, "reply after the half-close differs");
    let out = server.collect().expect("nc ends");
    assert_eq!(
        out.code,
        Some(0),
        "nc: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("port forward: echo and close in {:?}", t.elapsed());
}

#[test]
#[cfg_attr(
    tartarus_skip_linux_tests,
    ignore = "Linux lane turned off with TARTARUS_LINUX_TESTS=0; pass --ignored to run it"
)]
fn linux_lane() {
    let t = Instant::now();
    let vmlinux = script_output("kernels/build-kernel.sh", &[], "vmlinux");
    let image = script_output("kernels/build-rootfs.sh", &["--variant", "base"], "rootfs");
    eprintln!("kernel + rootfs ready in {:?}", t.elapsed());

    let dir = TempDir::new("linux-lane");
    let disk = dir.join("rootfs.ext4");
    run(
        "cp",
        &[
            "--sparse=always",
            image.to_str().unwrap(),
            disk.to_str().unwrap(),
        ],
    )
    .unwrap();
    // The writable layer: a fresh, sparse ext4 disk (no journal, lazy init: little to write).
    let overlay = dir.join("overlay.ext4");
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-O",
            "^has_journal",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
            "-m",
            "0",
            "-L",
            "tartarus-overlay",
            overlay.to_str().unwrap(),
            "64M",
        ],
    )
    .unwrap();
    let uds = dir.join("v.sock");
    // A /30 of its own per process, so parallel runs on one host do not collide.
    let n = std::process::id() % 250 + 1;
    let host_ip = format!("10.213.{n}.1");
    let guest_ip = format!("10.213.{n}.2");
    let tap = Tap::new(&format!("tlane{n}"), &format!("{host_ip}/30"));

    let mut vmm = Vmm::start_api();
    vmm.put_ok(
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": 256}),
    );
    let args = format!(
        "console=ttyS0 reboot=k panic=1 8250.nr_uarts=1 clocksource=kvm-clock \
         tartarus.hostname=lane tartarus.overlay=/dev/vdb \
         ip={guest_ip}::{host_ip}:255.255.255.252:lane:eth0:off"
    );
    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": vmlinux, "boot_args": args}),
    );
    vmm.put_ok(
        "/drives/rootfs",
        &json!({"drive_id": "rootfs", "path_on_host": disk, "is_root_device": true,
                "is_read_only": true}),
    );
    vmm.put_ok(
        "/drives/overlay",
        &json!({"drive_id": "overlay", "path_on_host": overlay, "is_root_device": false,
                "is_read_only": false}),
    );
    vmm.put_ok(
        "/network-interfaces/eth0",
        &json!({"iface_id": "eth0", "host_dev_name": tap.name, "guest_mac": "06:00:ac:10:00:02"}),
    );
    vmm.put_ok("/vsock", &json!({"guest_cid": GUEST_CID, "uds_path": uds}));
    let t = Instant::now();
    vmm.start();
    let console = vmm.wait_for_output("tartarus-init: ready", BOOT_TIMEOUT);
    eprintln!("tartarus-init ready {:?} after InstanceStart", t.elapsed());
    let overlay_log: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("tartarus-init: overlay:"))
        .collect();
    eprintln!("{}", overlay_log.join("\n"));
    assert!(
        overlay_log.len() == 1 && overlay_log[0].contains("/dev/vdb as its writable layer"),
        "{console}"
    );

    // 1-2: the agent and exec.
    let mut agent = connect_agent(&uds);
    assert_eq!(agent.version(), 2);
    let info = agent.info().expect("agent info");
    assert_eq!(info.hostname, "lane");
    assert_eq!(
        exec_ok(&mut agent, &["echo", "hello", "lane"]),
        "hello lane\n"
    );
    // Vector state: where context switches lose state beyond XMM (PVM hosts: the kernel runs
    // with noxsave but user space sees the host's XCR0), glibc must be kept on SSE code by
    // tartarus-init's GLIBC_TUNABLES (guest-init/src/xstate.rs); vecstate exits 1 otherwise.
    let t = Instant::now();
    let vecstate = std::fs::read(build_vecstate(dir.path())).unwrap();
    agent
        .write_file("/tmp/vecstate", &vecstate, Some(0o755))
        .expect("copy vecstate into the guest");
    let vec = exec_ok(&mut agent, &["/tmp/vecstate"]);
    eprintln!("{} ({:?})", vec.trim_end(), t.elapsed());
    assert!(vec.contains("safe=yes"), "{vec}");
    if vec.contains("switches=corrupted") {
        // PID 1 re-executed itself with the tunables, so its own glibc runs SSE code too.
        let environ = agent.read_file("/proc/1/environ").expect("PID 1 environ");
        let environ = String::from_utf8_lossy(&environ);
        assert!(
            environ.contains(&format!(
                "GLIBC_TUNABLES={}",
                guest_init::xstate::GLIBC_SSE_ONLY
            )),
            "PID 1 runs without the tunables: {environ:?}"
        );
    }
    // The guard also holds for an exec with an empty environment.
    let spec = guest_init::protocol::ExecSpec {
        clear_env: true,
        ..guest_init::protocol::ExecSpec::new(["/tmp/vecstate"])
    };
    let out = agent
        .start_exec(&spec, &[])
        .and_then(|e| e.collect())
        .expect("vecstate with clear_env");
    let vec = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.code, Some(0), "clear_env: {vec}");
    let words = exec_ok(
        &mut agent,
        &["sh", "-c", "echo one two three | wc -w | tr -d ' '"],
    );
    assert_eq!(words, "3\n");
    // A missing binary is a clear error, and the connection stays usable.
    let missing = agent.exec(["/bin/no-such-program"]);
    let e = missing.expect_err("exec of a missing binary");
    assert!(e.to_string().contains("no-such-program"), "{e}");

    // 3: / is the overlay over the read-only root; files land on the overlay disk.
    let mounts = exec_ok(&mut agent, &["cat", "/proc/mounts"]);
    assert!(mounts.contains("overlay / overlay "), "{mounts}");
    // The upper disk is out of reach under the old root, but its super block is listed.
    let opts = exec_ok(
        &mut agent,
        &[
            "sh",
            "-c",
            "cat /proc/fs/ext4/vdb/options 2>/dev/null || true",
        ],
    );
    if !opts.is_empty() {
        assert!(opts.contains("noinit_itable"), "{opts}");
        eprintln!("upper disk mounted with noinit_itable");
    }
    exec_ok(
        &mut agent,
        &[
            "sh",
            "-c",
            "echo 'written in the guest' > /root/lane.txt && sync",
        ],
    );
    agent
        .write_file("/etc/lane.conf", b"overlay=yes\n", Some(0o644))
        .expect("write into /etc");
    assert_eq!(agent.read_file("/etc/lane.conf").unwrap(), b"overlay=yes\n");
    exec_ok(&mut agent, &["sync"]);

    // 4: the network: the guest reaches the host end of the tap.
    let ping = exec_ok(&mut agent, &["ping", "-c", "1", "-W", "10", &host_ip]);
    assert!(ping.contains("1 packets received"), "{ping}");

    // 5: a terminal and a port forward.
    check_tty(&mut agent);
    check_port_forward(&uds);

    // 6: snapshot (with the agent connection still open: the restores below must reset it
    // and still answer), then power off and read the file from the host image.
    let state = dir.join("lane.state");
    let mem = dir.join("lane.mem");
    vmm.patch_ok("/vm", &json!({"state": "Paused"}));
    let r = vmm.put(
        "/snapshot/create",
        &json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}\n{}", fault(&r), vmm.diagnostics());
    let saved: serde_json::Value = snapshot::read_state_file(&state).expect("state file");
    let vsock = saved["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["kind"]["type"] == "vsock"))
        .expect("vsock in the state file");
    let open = vsock["kind"]["open_connections"]
        .as_array()
        .expect("open_connections");
    assert!(
        !open.is_empty(),
        "the agent connection is not listed: {vsock}"
    );
    vmm.patch_ok("/vm", &json!({"state": "Resumed"}));
    drop(agent);
    // The agent's shutdown: tartarus-init stops everything, syncs and powers off (the microvm
    // kernel has no keyboard driver, so Ctrl-Alt-Del does not reach it).
    let t = Instant::now();
    let mut a = connect_agent(&uds);
    a.shutdown(2000).expect("shutdown request");
    let status = vmm.wait_exit(Duration::from_secs(120));
    assert_eq!(status.code(), Some(0), "{}", vmm.diagnostics());
    eprintln!("shutdown request -> VMM exit: {:?}", t.elapsed());
    let debugfs = |cmd: &str, image: &Path| run("debugfs", &["-R", cmd, image.to_str().unwrap()]);
    let content = debugfs("cat /upper/root/lane.txt", &overlay).unwrap();
    assert_eq!(content, "written in the guest\n");
    let etc = debugfs("ls -l /upper/etc", &overlay).unwrap();
    assert!(etc.contains("lane.conf"), "{etc}");
    assert_eq!(
        debugfs("cat /upper/etc/lane.conf", &overlay).unwrap(),
        "overlay=yes\n"
    );
    // The read-only root image is byte for byte the one built.
    run("cmp", &[image.to_str().unwrap(), disk.to_str().unwrap()]).expect("root image changed");

    // 7: the snapshot wakes up with File and with Uffd memory.
    restore_and_exec(&state, &mem, false, &uds);
    restore_and_exec(&state, &mem, true, &uds);
    drop(tap);
}
