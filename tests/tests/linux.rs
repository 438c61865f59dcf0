//! The Linux lane: our microvm kernel boots the ext4 root file system (kernels/build-rootfs.sh)
//! from virtio-blk with a virtio-net NIC on a tap and a vsock, once per test run, and everything
//! else reuses that VM or its snapshot:
//!
//! 1. the agent answers over vsock (CONNECT/OK through the VMM's Unix socket);
//! 2. `echo`, a shell pipeline and a missing binary through the agent;
//! 3. a file written and synced in the guest;
//! 4. the guest pings the host end of the tap;
//! 5. pause + Full snapshot, resume, power off (SIGTERM to tartarus-init), and the file is read back
//!    from the host image with debugfs;
//! 6. restores of that snapshot (File, then Uffd) answer the agent again.
//!
//! Slow on PVM hosts (~20 s kernel boot, see kernels/README.md). `TARTARUS_LINUX_TESTS=0` at
//! build time marks it ignored (run it anyway with `--ignored`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use guest_init::client::{connect_hybrid_vsock, Client};
use serde_json::json;
use tartarus_tests::{build_vecstate, script_output, TempDir, Vmm};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
const AGENT_PORT: u32 = 52;
const GUEST_CID: u32 = 3;

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
    // The restored vsock device reset its transport: the host connects anew.
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
         tartarus.hostname=lane ip={guest_ip}::{host_ip}:255.255.255.252:lane:eth0:off"
    );
    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": vmlinux, "boot_args": args}),
    );
    vmm.put_ok(
        "/drives/rootfs",
        &json!({"drive_id": "rootfs", "path_on_host": disk, "is_root_device": true,
                "is_read_only": false}),
    );
    vmm.put_ok(
        "/network-interfaces/eth0",
        &json!({"iface_id": "eth0", "host_dev_name": tap.name, "guest_mac": "06:00:ac:10:00:02"}),
    );
    vmm.put_ok("/vsock", &json!({"guest_cid": GUEST_CID, "uds_path": uds}));
    let t = Instant::now();
    vmm.start();
    vmm.wait_for_output("tartarus-init: ready", BOOT_TIMEOUT);
    eprintln!("tartarus-init ready {:?} after InstanceStart", t.elapsed());

    // 1-2: the agent and exec.
    let mut agent = connect_agent(&uds);
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

    // 3: a file, synced to the disk.
    exec_ok(
        &mut agent,
        &[
            "sh",
            "-c",
            "echo 'written in the guest' > /root/lane.txt && sync",
        ],
    );

    // 4: the network: the guest reaches the host end of the tap.
    let ping = exec_ok(&mut agent, &["ping", "-c", "1", "-W", "10", &host_ip]);
    assert!(ping.contains("1 packets received"), "{ping}");
    drop(agent);

    // 5: snapshot, then power off and read the file from the host image.
    let state = dir.join("lane.state");
    let mem = dir.join("lane.mem");
    vmm.patch_ok("/vm", &json!({"state": "Paused"}));
    let r = vmm.put(
        "/snapshot/create",
        &json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}\n{}", fault(&r), vmm.diagnostics());
    vmm.patch_ok("/vm", &json!({"state": "Resumed"}));
    // SIGTERM to PID 1 is tartarus-init's shutdown: stop everything, sync, power off (the
    // microvm kernel has no keyboard driver, so Ctrl-Alt-Del does not reach it). The agent
    // dies with everything else, so the exec's answer is not waited for.
    let mut a = connect_agent(&uds);
    let _ = a.start_exec(
        &guest_init::protocol::ExecSpec::new(["kill", "-TERM", "1"]),
        &[],
    );
    let status = vmm.wait_exit(Duration::from_secs(120));
    assert_eq!(status.code(), Some(0), "{}", vmm.diagnostics());
    let content = run(
        "debugfs",
        &["-R", "cat /root/lane.txt", disk.to_str().unwrap()],
    )
    .unwrap();
    assert_eq!(content, "written in the guest\n");

    // 6: the snapshot wakes up with File and with Uffd memory.
    restore_and_exec(&state, &mem, false, &uds);
    restore_and_exec(&state, &mem, true, &uds);
    drop(tap);
}
