//! tartarus-jailer: a jailed VMM boots a test guest and answers its API inside the jail; from
//! the host, its uid/gid, capabilities, no_new_privs, root, cgroups, PID namespace, rlimits,
//! environment and network namespace are what was asked; jailed and unjailed runs print the
//! same; bad input fails with a clear message and creates nothing.
//!
//! Runs as root (the jailer needs it). The static VMM and jailer are built once per process by
//! `scripts/build-static.sh`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use tartarus_tests::jail::{
    self, cgroup_dirs_of, dev_ino, proc_cgroups, proc_limit, proc_status, static_bins, v1_mount,
    v2_mount, JailBuilder, DEFAULT_PARENT_CGROUP, EXEC_NAME, JAIL_GID, JAIL_UID,
};
use tartarus_tests::{guests, GuestReport, TempDir, Vmm, GUEST_TIMEOUT};

const MEM_MIB: u64 = 64;

fn require_root() {
    assert_eq!(
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() },
        0,
        "the jailer tests must run as root (they create jails, cgroups and device nodes)"
    );
}

/// Boots the hello guest in `jail` with `wait_cad`, runs `check` while the guest waits, then
/// sends Ctrl-Alt-Del and checks the exit and the serial output.
fn boot_and_check(
    mut jail: jail::Jail,
    boot_args: &str,
    check: impl FnOnce(&jail::Jail),
) -> String {
    jail.wait_for_socket();
    let info = jail.request("GET", "/", None);
    assert_eq!(info.status, 200, "GET / -> {info}");
    assert_eq!(info.body.as_ref().unwrap()["id"], json!(jail.id), "{info}");
    jail.boot(1, MEM_MIB, "/hello.elf", &format!("wait_cad {boot_args}"));
    jail.wait_for_serial("waiting for ctrl-alt-del", GUEST_TIMEOUT);
    check(&jail);
    jail.put_ok("/actions", &json!({"action_type": "SendCtrlAltDel"}));
    let code = jail.wait_vmm_exit(GUEST_TIMEOUT);
    assert_eq!(code, Some(0), "VMM exit\n{}", jail.diagnostics());
    let out = jail.serial();
    GuestReport::parse(&out)
        .check(boot_args, MEM_MIB, 1)
        .unwrap_or_else(|e| panic!("guest output does not match: {e}\n{out}"));
    assert!(out.contains("ctrl-alt-del received"), "{out}");
    out
}

/// Checks what every jailed VMM must look like from the host.
fn check_confined(jail: &jail::Jail) {
    let pid = jail.pid();
    let st = proc_status(pid).expect("VMM process");
    let ids = |k: &str| {
        st[k]
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids("Uid"), vec![JAIL_UID.to_string(); 4], "Uid: {st:?}");
    assert_eq!(ids("Gid"), vec![JAIL_GID.to_string(); 4], "Gid: {st:?}");
    assert_eq!(st["Groups"], "", "supplementary groups");
    for k in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(st[k], "0000000000000000", "{k}");
    }
    assert_eq!(st["NoNewPrivs"], "1");
    // Its root is the jail: same directory (dev, inode) as the jail root on the host, which
    // holds the VMM binary; no host file is visible.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    assert_eq!(
        dev_ino(&root),
        dev_ino(jail.root()),
        "/proc/{pid}/root is not the jail root"
    );
    assert!(root.join(EXEC_NAME).is_file());
    assert!(
        !root.join("etc").exists() && !root.join("proc").exists() && !root.join("tmp").exists()
    );
    // Device nodes, owned by the VMM's uid/gid.
    let dev = fs::metadata(root.join("dev/kvm")).expect("/dev/kvm in the jail");
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(dev.file_type().is_char_device());
    assert_eq!((dev.uid(), dev.gid()), (JAIL_UID, JAIL_GID));
    // An empty environment.
    let env = fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        env.is_empty(),
        "environment: {:?}",
        String::from_utf8_lossy(&env)
    );
    // No inherited descriptors: everything above 2 is the VMM's own (sockets, eventfds, KVM...).
    for fd in fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let fd = fd.unwrap();
        if fd.file_name().to_str().unwrap().parse::<i32>().unwrap() <= 2 {
            continue;
        }
        let link = fs::read_link(fd.path()).unwrap();
        let l = link.to_string_lossy();
        assert!(
            !l.starts_with("/tmp") && !l.contains("jail-logs") && !l.starts_with("pipe:"),
            "unexpected fd to {l}"
        );
    }
}

#[test]
fn jailed_vmm_boots_and_is_confined() {
    require_root();
    let cpuset = v1_mount("cpuset");
    let pids = v1_mount("pids");
    let mut args: Vec<String> = vec![
        "--resource-limit".into(),
        "no-file=1024".into(),
        "--resource-limit".into(),
        "fsize=50000000".into(),
    ];
    if cpuset.is_some() {
        args.extend(["--cgroup".into(), "cpuset.cpus=0".into()]);
    } else {
        eprintln!("!!! no v1 cpuset hierarchy on this host: cpuset not checked");
    }
    if pids.is_some() {
        args.extend(["--cgroup".into(), "pids.max=77".into()]);
    } else {
        eprintln!("!!! no v1 pids hierarchy on this host: pids not checked");
    }
    let jail = JailBuilder::new("conf")
        .jailer_args(&args)
        .copy_in(&guests().hello_elf, "hello.elf")
        .spawn();
    let id = jail.id.clone();
    assert_eq!(
        jail.pid(),
        jail.jailer_pid(),
        "without --new-pid-ns the jailer execs the VMM"
    );
    boot_and_check(jail, "foo=bar", |jail| {
        check_confined(jail);
        let pid = jail.pid();
        let st = proc_status(pid).unwrap();
        assert_eq!(
            st["NSpid"].split_whitespace().count(),
            1,
            "no PID namespace: {}",
            st["NSpid"]
        );
        assert_eq!(
            proc_limit(pid, "Max open files").unwrap(),
            ("1024".into(), "1024".into())
        );
        assert_eq!(
            proc_limit(pid, "Max file size").unwrap(),
            ("50000000".into(), "50000000".into())
        );
        let cgroups = proc_cgroups(pid);
        let want = format!("/{DEFAULT_PARENT_CGROUP}/{id}");
        for (controller, mount, file, value) in [
            ("cpuset", &cpuset, "cpuset.cpus", "0"),
            ("pids", &pids, "pids.max", "77"),
        ] {
            let Some(mount) = mount else { continue };
            let line = cgroups
                .iter()
                .find(|(_, c, _)| c.iter().any(|c| c == controller))
                .unwrap_or_else(|| {
                    panic!("no {controller} line in /proc/{pid}/cgroup: {cgroups:?}")
                });
            assert_eq!(line.2, want, "{controller} cgroup");
            let dir = mount.join(DEFAULT_PARENT_CGROUP).join(&id);
            assert_eq!(
                fs::read_to_string(dir.join(file)).unwrap().trim(),
                value,
                "{file}"
            );
            let tasks = fs::read_to_string(dir.join("tasks")).unwrap();
            assert!(
                tasks.lines().any(|t| t == pid.to_string()),
                "pid {pid} not in {dir:?}/tasks"
            );
        }
    });
    // The Jail was dropped inside boot_and_check: its cgroups are gone.
    assert!(cgroup_dirs_of(DEFAULT_PARENT_CGROUP, &id).is_empty());
}

#[test]
fn new_pid_ns_and_daemonize() {
    require_root();
    let mut jail = JailBuilder::new("pidns")
        .jailer_args(["--new-pid-ns", "--daemonize"])
        .copy_in(&guests().hello_elf, "hello.elf")
        .spawn();
    // The jailer forks the VMM into the namespace, records its host pid and exits.
    let s = jail.wait_jailer(Duration::from_secs(10));
    assert!(s.success(), "jailer exit {s}\n{}", jail.diagnostics());
    assert_ne!(jail.pid(), jail.jailer_pid());
    let (out, err) = jail.jailer_output();
    assert!(
        out.is_empty() && err.is_empty(),
        "daemonized output: {out:?} {err:?}"
    );
    boot_and_check(jail, "pidns=1", |jail| {
        check_confined(jail);
        let pid = jail.pid();
        let st = proc_status(pid).unwrap();
        let nspid: Vec<&str> = st["NSpid"].split_whitespace().collect();
        assert_eq!(nspid, [pid.to_string().as_str(), "1"], "NSpid");
        // A session of its own (setsid) and stdio on /dev/null.
        let nssid: Vec<&str> = st["NSsid"].split_whitespace().collect();
        assert_eq!(nssid.last(), Some(&"1"), "NSsid {nssid:?}");
        for fd in 0..3 {
            let l = fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
            assert_eq!(l, Path::new("/dev/null"), "fd {fd}");
        }
        assert_eq!(
            proc_limit(pid, "Max open files").unwrap(),
            ("2048".into(), "2048".into())
        );
    });
}

#[test]
fn jailed_and_unjailed_output_match() {
    require_root();
    let args = "foo=bar count=3";
    // PVM detection reads /sys, which the jail does not have: give both runs the same mode.
    let pvm = ["--pvm-workarounds", "on"];
    // Unjailed: the same static binary through the common harness (serial on stdout).
    let mut vmm = Vmm::builder().binary(&static_bins().vmm).args(pvm).spawn();
    vmm.wait_for_socket();
    vmm.configure(1, MEM_MIB, &guests().hello_elf, args);
    vmm.start();
    let unjailed = vmm.wait_success();

    let mut jail = JailBuilder::new("same")
        .copy_in(&guests().hello_elf, "hello.elf")
        .vmm_args(pvm)
        .spawn();
    jail.wait_for_socket();
    jail.boot(1, MEM_MIB, "/hello.elf", args);
    assert_eq!(
        jail.wait_vmm_exit(GUEST_TIMEOUT),
        Some(0),
        "{}",
        jail.diagnostics()
    );
    let jailed = jail.serial();
    GuestReport::parse(&jailed)
        .check(args, MEM_MIB, 1)
        .unwrap_or_else(|e| panic!("{e}\n{jailed}"));
    assert!(jailed.contains("count: 3"), "{jailed}");
    assert_eq!(jailed, unjailed, "jailed and unjailed guest output differ");
}

#[test]
fn joins_network_namespace() {
    require_root();
    let dir = TempDir::new("netns");
    let ns = dir.join("ns");
    fs::write(&ns, b"").unwrap();
    let ok = Command::new("unshare")
        .arg(format!("--net={}", ns.display()))
        .arg("true")
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("!!! SKIPPED: cannot create a network namespace with `unshare --net=FILE`");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(ns.clone());
    let ns_ino = dev_ino(&ns).unwrap().1;
    let own_ino = dev_ino(Path::new("/proc/self/ns/net")).unwrap().1;
    assert_ne!(ns_ino, own_ino);
    let jail = JailBuilder::new("netns")
        .jailer_args(["--netns", ns.to_str().unwrap()])
        .spawn();
    jail.wait_for_socket();
    let vmm_ns = dev_ino(Path::new(&format!("/proc/{}/ns/net", jail.pid())))
        .unwrap()
        .1;
    assert_eq!(vmm_ns, ns_ino, "the VMM is not in the --netns namespace");
    check_confined(&jail);
}

#[test]
fn existing_jail_is_refused() {
    require_root();
    let jail = JailBuilder::new("dup").spawn();
    jail.wait_for_socket();
    let bins = static_bins();
    let out = jail::run_jailer([
        "--id",
        &jail.id,
        "--exec-file",
        bins.vmm.to_str().unwrap(),
        "--uid",
        "12345",
        "--gid",
        "12345",
        "--chroot-base-dir",
        jail.base().to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("already in use"), "{err}");
    assert!(jail.vmm_alive(), "the first VMM must be unaffected");
    assert_eq!(jail.request("GET", "/", None).status, 200);
}

/// Runs the jailer with a valid command line changed by `edit`; it must fail with a message
/// containing `expect`, and create nothing: no chroot base, no cgroup.
fn refused(what: &str, expect: &str, edit: impl FnOnce(&mut Vec<String>)) {
    let tmp = TempDir::new("badjail");
    let base = tmp.join("base");
    let id = jail::unique_id("bad");
    let mut args: Vec<String> = [
        "--id",
        &id,
        "--exec-file",
        static_bins().vmm.to_str().unwrap(),
        "--uid",
        "12345",
        "--gid",
        "12345",
        "--chroot-base-dir",
        base.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    edit(&mut args);
    args.extend(["--".into(), "--api-sock".into(), "/api.sock".into()]);
    let out = jail::run_jailer(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{what}: the jailer succeeded with {args:?}"
    );
    assert!(
        err.contains(expect),
        "{what}: message {err:?} does not contain {expect:?}"
    );
    assert!(!base.exists(), "{what}: {} was created", base.display());
    let leftover: Vec<PathBuf> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(leftover.is_empty(), "{what}: created {leftover:?}");
    assert!(
        cgroup_dirs_of(DEFAULT_PARENT_CGROUP, &id).is_empty(),
        "{what}: cgroup created"
    );
    eprintln!("{what}: {}", err.trim());
}

fn set(args: &mut [String], flag: &str, value: &str) {
    let i = args.iter().position(|a| a == flag).unwrap();
    args[i + 1] = value.to_string();
}

#[test]
fn bad_input_is_refused_and_creates_nothing() {
    require_root();
    refused("unknown flag", "unexpected argument '--bogus'", |a| {
        a.push("--bogus".into())
    });
    refused("id with a slash", "Invalid --id \"a/b\"", |a| {
        set(a, "--id", "a/b")
    });
    let long = "a".repeat(65);
    refused("id of 65 characters", "Invalid --id", |a| {
        set(a, "--id", &long)
    });
    refused(
        "missing exec file",
        "Invalid --exec-file /nonexistent/tartarus-vmm",
        |a| set(a, "--exec-file", "/nonexistent/tartarus-vmm"),
    );
    refused("non-numeric uid", "Invalid --uid \"abc\"", |a| {
        set(a, "--uid", "abc")
    });
    refused("uid 0", "Invalid --uid \"0\"", |a| set(a, "--uid", "0"));
    refused("non-numeric gid", "Invalid --gid \"12x\"", |a| {
        set(a, "--gid", "12x")
    });
    refused("bad cgroup setting", "Invalid --cgroup \"cpuset\"", |a| {
        a.extend(["--cgroup".into(), "cpuset".into()])
    });
    refused("cgroup version 3", "Invalid --cgroup-version \"3\"", |a| {
        a.extend(["--cgroup-version".into(), "3".into()])
    });
    refused("unknown resource", "unknown resource", |a| {
        a.extend(["--resource-limit".into(), "nofile=5".into()])
    });
    refused("non-numeric resource", "non-negative integer", |a| {
        a.extend(["--resource-limit".into(), "fsize=10k".into()])
    });
    refused("missing netns", "Invalid --netns /nonexistent/ns", |a| {
        a.extend(["--netns".into(), "/nonexistent/ns".into()])
    });
    refused("netns that is not one", "not a namespace file", |a| {
        a.extend(["--netns".into(), "/etc/hostname".into()])
    });
    refused("--id after --", "Do not pass --id after", |a| {
        a.extend(["--".into(), "--id".into(), "x".into()])
    });
    // The jail has no loader: a dynamically linked VMM could never start there.
    refused(
        "dynamically linked exec file",
        "--exec-file /bin/true: dynamically linked (needs /",
        |a| set(a, "--exec-file", "/bin/true"),
    );
    refused(
        "dynamically linked exec file (hint)",
        "); build it static (scripts/build-static.sh)",
        |a| set(a, "--exec-file", "/bin/true"),
    );
    let scripts = TempDir::new("notelf");
    let script = scripts.join("tartarus-vmm");
    fs::write(&script, b"#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    refused(
        "exec file that is not ELF",
        &format!(
            "--exec-file {}: not a static ELF executable: not an ELF file",
            script.display()
        ),
        |a| set(a, "--exec-file", script.to_str().unwrap()),
    );

    // A chroot base that is a file.
    let tmp = TempDir::new("badbase");
    let file = tmp.join("file");
    fs::write(&file, b"x").unwrap();
    let out = jail::run_jailer([
        "--id",
        "x",
        "--exec-file",
        static_bins().vmm.to_str().unwrap(),
        "--uid",
        "12345",
        "--gid",
        "12345",
        "--chroot-base-dir",
        file.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("Invalid --chroot-base-dir") && err.contains("not a directory"),
        "{err}"
    );
    assert_eq!(fs::read(&file).unwrap(), b"x");

    // A cgroup version or controller this host lacks.
    match v2_mount() {
        None => refused("cgroup v2 missing", "no cgroup v2 hierarchy", |a| {
            a.extend([
                "--cgroup-version".into(),
                "2".into(),
                "--cgroup".into(),
                "pids.max=5".into(),
            ])
        }),
        Some((mount, available)) => {
            let lacking = ["pids", "cpu", "memory", "io", "cpuset"]
                .into_iter()
                .find(|c| !available.iter().any(|a| a == c));
            match lacking {
                Some(c) => refused(
                    &format!(
                        "cgroup v2 without {c} (it offers {available:?} at {})",
                        mount.display()
                    ),
                    &format!("Cgroup v2 controller \"{c}\""),
                    |a| {
                        a.extend([
                            "--cgroup-version".into(),
                            "2".into(),
                            "--cgroup".into(),
                            format!("{c}.max=5"),
                        ])
                    },
                ),
                None => eprintln!("!!! the v2 hierarchy has every common controller: not checked"),
            }
        }
    }
    let lacking_v1 = ["rdma", "misc", "hugetlb", "net_cls", "perf_event"]
        .into_iter()
        .find(|c| v1_mount(c).is_none());
    if let Some(c) = lacking_v1 {
        refused(
            &format!("cgroup v1 without {c}"),
            &format!("Cgroup v1 controller \"{c}\""),
            |a| a.extend(["--cgroup".into(), format!("{c}.max=1")]),
        );
    }
}

#[test]
fn failure_after_creation_is_undone() {
    require_root();
    if v1_mount("cpuset").is_none() {
        eprintln!("!!! SKIPPED: no v1 cpuset hierarchy");
        return;
    }
    let tmp = TempDir::new("undo");
    let base = tmp.join("base");
    let id = jail::unique_id("undo");
    // Valid syntax, but the kernel refuses a CPU this host does not have: the jail and the
    // cgroup are already created when the write fails.
    let out = jail::run_jailer([
        "--id",
        &id,
        "--exec-file",
        static_bins().vmm.to_str().unwrap(),
        "--uid",
        "12345",
        "--gid",
        "12345",
        "--chroot-base-dir",
        base.to_str().unwrap(),
        "--cgroup",
        "cpuset.cpus=4095",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cpuset.cpus"), "{err}");
    assert!(
        !base.exists(),
        "the jail was left behind: {}",
        base.display()
    );
    assert!(
        cgroup_dirs_of(DEFAULT_PARENT_CGROUP, &id).is_empty(),
        "the cgroup was left behind"
    );
}

#[test]
fn help_and_version() {
    let out = jail::run_jailer(["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--id",
        "--exec-file",
        "--uid",
        "--gid",
        "--chroot-base-dir",
        "--netns",
        "--daemonize",
        "--new-pid-ns",
        "--cgroup-version",
        "--cgroup",
        "--parent-cgroup",
        "--resource-limit",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    let out = jail::run_jailer(["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("tartarus-jailer "));
}
