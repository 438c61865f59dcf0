//! Escape checks: a jailed `tartarus-vmm` under its default seccomp filters, seen from the
//! attacker's side. Each test would fail if the protection it names were missing:
//!
//! - host paths: the VMM, asked through its API to open host files (absolute, `/proc/1/root/...`,
//!   `../..`, a symlink planted in the jail, a world-readable host file), cannot; its
//!   `/proc/<pid>/root` is the jail root;
//! - processes: it is PID 1 of its own PID namespace, has no `/proc`, and a process with its
//!   uid in its namespaces cannot signal (or see) a host process;
//! - privileges: no capability in any set, `NoNewPrivs`, uid/gid not 0, every thread filtered;
//!   with its credentials in its mount namespace, `setuid(0)`, `chroot`, `mount` fail;
//! - devices: the jail's `/dev` holds only the nodes jailer/README.md lists, and `mknod` of a
//!   character or block device fails with its credentials in its mount namespace;
//! - seccomp: a syscall outside the filter kills the jailed VMM with SIGSYS from each thread
//!   kind (api, vmm, vcpu);
//! - cleanup: nothing of the jail is mounted in the host's namespace while it runs, and after
//!   the README's cleanup the jail directory and cgroups are gone with no mount under the chroot
//!   base.
//!
//! The "attacker with the VMM's credentials" is a helper process: a fork of the test that joins
//! the VMM's mount and PID namespaces with `setns`, drops to its uid/gid (which empties its
//! capability sets, the state the privilege test checks the VMM is in) and then issues raw
//! syscalls. It stands in for a compromised VMM: running the attack inside the VMM itself would
//! need code in the VMM that only tests compile, and its seccomp filter would kill it before most
//! of these syscalls (which the SIGSYS test shows separately).
//!
//! Runs as root, like tests/tests/jailer.rs; nothing is skipped.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tartarus_tests::jail::{
    self, cgroup_dirs_of, dev_ino, proc_status, static_trigger_vmm, JailBuilder,
    DEFAULT_PARENT_CGROUP, EXEC_NAME, JAIL_GID, JAIL_UID,
};
use tartarus_tests::{guests, TempDir, GUEST_TIMEOUT};

fn require_root() {
    assert_eq!(
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() },
        0,
        "the escape checks must run as root (they start the jailer and join namespaces)"
    );
}

/// A jailed VMM in the recommended mode (own PID namespace, daemonized), API up.
fn spawn_jail(tag: &str) -> jail::Jail {
    let mut jail = JailBuilder::new(tag)
        .jailer_args(["--new-pid-ns", "--daemonize"])
        .copy_in(&guests().hello_elf, "hello.elf")
        .spawn();
    let s = jail.wait_jailer(Duration::from_secs(10));
    assert!(s.success(), "jailer exit {s}\n{}", jail.diagnostics());
    jail.wait_for_socket();
    jail
}

/// PUT /drives with `path`: must be a 400 because the file does not exist in the VMM's view
/// (ENOENT: not a permission error, which an unjailed VMM with the same uid would get for
/// /etc/shadow).
fn drive_refused(jail: &jail::Jail, id: &str, path: &str, read_only: bool) {
    let body = json!({
        "drive_id": id, "path_on_host": path, "is_root_device": false, "is_read_only": read_only
    });
    let r = jail.request("PUT", &format!("/drives/{id}"), Some(&body));
    assert_eq!(
        r.status, 400,
        "the jailed VMM accepted the host path {path:?}: {r}"
    );
    let text = r.to_string();
    assert!(
        text.contains("path_on_host") && text.contains("No such file or directory"),
        "{path:?}: unexpected answer {text}"
    );
    assert!(jail.vmm_alive(), "{path:?} killed the VMM");
}

#[test]
fn vmm_cannot_open_host_paths() {
    require_root();
    let jail = spawn_jail("esc-path");
    // A host file that any uid may read and write: only the jail keeps the VMM from it (not
    // permissions, unlike /etc/shadow).
    let host = TempDir::new("esc-host");
    let secret = host.join("secret.img");
    fs::write(&secret, vec![0u8; 4096]).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o666)).unwrap();
    fs::set_permissions(host.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // A symlink planted in the jail pointing at it (resolved inside the jail: dangling).
    std::os::unix::fs::symlink(&secret, jail.host_path("/link.img")).unwrap();
    // Control: a file inside the jail, readable by the VMM's uid, is accepted — so the refusals
    // below are the jail's doing, not a broken drive API.
    let inside = jail.host_path("/inside.img");
    fs::write(&inside, vec![0u8; 4096]).unwrap();
    std::os::unix::fs::chown(&inside, Some(JAIL_UID), Some(JAIL_GID)).unwrap();
    jail.put_ok(
        "/drives/inside",
        &json!({"drive_id": "inside", "path_on_host": "/inside.img", "is_root_device": false}),
    );

    let secret_s = secret.to_str().unwrap().to_string();
    let relative = format!("../../../../../..{secret_s}");
    let cases: [(&str, bool); 8] = [
        ("/etc/shadow", true),
        ("/etc/passwd", true),
        ("/proc/1/root/etc/passwd", true),
        ("/proc/self/root/etc/passwd", true),
        ("../../../../etc/passwd", true),
        (&secret_s, false),
        (&relative, true),
        ("/link.img", false),
    ];
    for (i, (path, ro)) in cases.iter().enumerate() {
        drive_refused(&jail, &format!("host{i}"), path, *ro);
    }
    // The host file is untouched.
    assert_eq!(fs::read(&secret).unwrap(), vec![0u8; 4096]);

    // From the host: the VMM's root is the jail root, which holds only the jail's files.
    let root = PathBuf::from(format!("/proc/{}/root", jail.pid()));
    assert_eq!(dev_ino(&root), dev_ino(jail.root()), "{}", root.display());
    assert_ne!(dev_ino(&root), dev_ino(Path::new("/")));
    for host_dir in ["etc", "proc", "sys", "tmp", "usr", "home", "root"] {
        assert!(
            !root.join(host_dir).exists(),
            "/{host_dir} is visible in the jail"
        );
    }

    // With the VMM's credentials in its namespaces, the same paths do not open either.
    let r = attack(&jail, &secret);
    assert_eq!(r.stat_vmm_binary, 0, "the helper is not in the jail: {r:?}");
    assert_eq!(r.open_etc_passwd, libc::ENOENT, "{r:?}");
    assert_eq!(r.open_host_secret, libc::ENOENT, "{r:?}");
    assert_eq!(r.open_proc_1_root, libc::ENOENT, "{r:?}");
}

#[test]
fn vmm_sees_no_other_process() {
    require_root();
    let jail = spawn_jail("esc-pid");
    let pid = jail.pid();
    let st = proc_status(pid).expect("VMM process");
    let nspid: Vec<&str> = st["NSpid"].split_whitespace().collect();
    assert_eq!(nspid, [pid.to_string().as_str(), "1"], "NSpid");
    assert_ne!(
        dev_ino(Path::new(&format!("/proc/{pid}/ns/pid"))),
        dev_ino(Path::new("/proc/self/ns/pid")),
        "the VMM shares our PID namespace"
    );
    assert!(!jail.host_path("/proc").exists(), "/proc in the jail");

    let r = attack(&jail, Path::new("/nonexistent"));
    // Its namespace holds the VMM (PID 1) and the helper; the test process, alive on the host
    // and visible to anyone there (EPERM, not ESRCH), does not exist in it.
    assert_eq!(
        r.kill_pid1, 0,
        "the VMM is not PID 1 of its namespace: {r:?}"
    );
    assert_eq!(r.kill_test_process, libc::ESRCH, "{r:?}");
    assert_eq!(r.kill_test_process_host_view, libc::EPERM, "{r:?}");
    assert_eq!(r.stat_proc, libc::ENOENT, "/proc inside: {r:?}");
    assert!(r.own_pid > 1 && r.own_pid < 100, "{r:?}");
}

#[test]
fn vmm_holds_no_privilege() {
    require_root();
    let jail = spawn_jail("esc-priv");
    jail.boot(1, 64, "/hello.elf", "wait_cad");
    jail.wait_for_serial("waiting for ctrl-alt-del", GUEST_TIMEOUT);
    let pid = jail.pid();
    let st = proc_status(pid).expect("VMM process");
    for k in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
        assert_eq!(st[k], "0000000000000000", "{k}: {st:?}");
    }
    assert_eq!(st["NoNewPrivs"], "1");
    for k in ["Uid", "Gid"] {
        let ids: Vec<u32> = st[k]
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(ids.len(), 4, "{k}");
        assert!(ids.iter().all(|&i| i != 0), "{k} {ids:?}");
    }
    assert_eq!(st["Groups"], "", "supplementary groups");
    // Every thread, vCPUs included, runs under a seccomp filter (mode 2).
    let mut names = BTreeSet::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        let get = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!(get("Seccomp:"), "2", "thread {} unfiltered", get("Name:"));
        names.insert(get("Name:"));
    }
    assert!(
        names.contains("vcpu0") && names.contains("api"),
        "{names:?}"
    );

    let r = attack(&jail, Path::new("/nonexistent"));
    assert_eq!(r.setuid0, libc::EPERM, "{r:?}");
    assert_eq!(r.chroot, libc::EPERM, "{r:?}");
    assert_eq!(r.mount, libc::EPERM, "{r:?}");
    // Cleanup: this guest resets the moment the key arrives, and the VMM can exit before its
    // API thread has written the 204 (seen once in CI): a closed connection is fine here.
    let body = json!({"action_type": "SendCtrlAltDel"}).to_string();
    if let Ok(r) =
        tartarus_tests::http::request(&jail.socket(), "PUT", "/actions", Some(body.as_bytes()))
    {
        assert_eq!(r.status, 204, "{r}");
    }
}

#[test]
fn vmm_cannot_create_devices() {
    require_root();
    let jail = spawn_jail("esc-dev");
    // Only the README's nodes: kvm, net/tun, userfaultfd, urandom (the last three only when the
    // host has them), each as documented.
    let dev = jail.host_path("/dev");
    let listed: BTreeSet<String> = ["kvm", "net", "userfaultfd", "urandom"]
        .into_iter()
        .map(String::from)
        .collect();
    let found: BTreeSet<String> = fs::read_dir(&dev)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(found.is_subset(&listed), "/dev in the jail: {found:?}");
    assert!(found.contains("kvm"));
    let check = |name: &str, host: &str, owner: (u32, u32), mode: u32| {
        let p = dev.join(name);
        let Ok(m) = fs::symlink_metadata(&p) else {
            assert!(
                !Path::new(host).exists(),
                "{host} exists on the host but not in the jail"
            );
            return;
        };
        let h = fs::metadata(host).unwrap();
        assert!(m.file_type().is_char_device(), "{name}");
        assert_eq!(m.rdev(), h.rdev(), "{name}: major:minor");
        assert_eq!((m.uid(), m.gid()), owner, "{name}: owner");
        assert_eq!(m.mode() & 0o7777, mode, "{name}: mode");
    };
    check("kvm", "/dev/kvm", (JAIL_UID, JAIL_GID), 0o600);
    check(
        "userfaultfd",
        "/dev/userfaultfd",
        (JAIL_UID, JAIL_GID),
        0o600,
    );
    check("urandom", "/dev/urandom", (0, 0), 0o666);
    if found.contains("net") {
        let net: Vec<String> = fs::read_dir(dev.join("net"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(net, ["tun"], "/dev/net in the jail");
        check("net/tun", "/dev/net/tun", (JAIL_UID, JAIL_GID), 0o600);
    }

    let r = attack(&jail, Path::new("/nonexistent"));
    // Control: the VMM's uid may create files in its root (a FIFO works), so the refusals are
    // for want of CAP_MKNOD, not a read-only or missing directory.
    assert_eq!(r.mkfifo, 0, "{r:?}");
    assert_eq!(r.mknod_char, libc::EPERM, "mknod of /dev/mem's 1:1: {r:?}");
    assert_eq!(r.mknod_block, libc::EPERM, "mknod of a block device: {r:?}");
    for name in ["escape-mem", "escape-blk"] {
        assert!(!jail.host_path(name).exists(), "{name} was created");
    }
}

#[test]
fn forbidden_syscall_kills_the_jailed_vmm_with_sigsys() {
    require_root();
    let trigger = static_trigger_vmm();
    for kind in ["api", "vmm", "vcpu"] {
        let mut jail = JailBuilder::new(&format!("esc-sys-{kind}"))
            .exec_file(trigger)
            .copy_in(&guests().hello_elf, "hello.elf")
            .vmm_args(["--seccomp-test-trigger", kind])
            .spawn();
        if kind == "vcpu" {
            jail.wait_for_socket();
            jail.put_ok(
                "/machine-config",
                &json!({"vcpu_count": 1, "mem_size_mib": 64}),
            );
            jail.put_ok(
                "/boot-source",
                &json!({"kernel_image_path": "/hello.elf", "boot_args": "wait_cad"}),
            );
            // The vCPU dies as soon as it starts; the answer may or may not arrive.
            let _ = tartarus_tests::http::request(
                &jail.socket(),
                "PUT",
                "/actions",
                Some(&br#"{"action_type": "InstanceStart"}"#[..]),
            );
        }
        let code = jail.wait_vmm_exit(GUEST_TIMEOUT);
        assert_eq!(
            code,
            None,
            "{kind}: exited normally\n{}",
            jail.diagnostics()
        );
        assert_eq!(
            jail.vmm_signal(),
            Some(libc::SIGSYS),
            "{kind}: expected death by SIGSYS\n{}",
            jail.diagnostics()
        );
    }
}

#[test]
fn cleanup_leaves_nothing_mounted() {
    require_root();
    let mut jail = spawn_jail("esc-clean");
    let base = jail.base().to_path_buf();
    let jail_dir = base.join(EXEC_NAME).join(&jail.id);
    // The jail's bind mount lives in the VMM's mount namespace only.
    assert_eq!(
        mounts_under(&base, "/proc/self/mountinfo"),
        Vec::<String>::new()
    );
    let vmm_mounts = fs::read_to_string(format!("/proc/{}/mountinfo", jail.pid())).unwrap();
    // ...where it is the only mount: the jail root as "/", nosuid; the host's root, /proc and
    // the rest were detached with the old root.
    let vmm_points: Vec<(&str, &str)> = vmm_mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some((*f.get(4)?, *f.get(5)?))
        })
        .collect();
    assert_eq!(vmm_points.len(), 1, "the VMM's mounts: {vmm_mounts}");
    assert_eq!(vmm_points[0].0, "/", "{vmm_mounts}");
    assert!(
        vmm_points[0].1.split(',').any(|o| o == "nosuid"),
        "{vmm_mounts}"
    );
    // The README's cleanup, once the VMM has exited: rm -r <base>/<exec name>/<id>, rmdir the
    // cgroups.
    // SAFETY: the VMM is our child (subreaper) and not yet reaped.
    unsafe { libc::kill(jail.pid(), libc::SIGKILL) };
    assert_eq!(jail.wait_vmm_exit(GUEST_TIMEOUT), None);
    assert_eq!(jail.vmm_signal(), Some(libc::SIGKILL));
    fs::remove_dir_all(&jail_dir).unwrap_or_else(|e| panic!("rm -r {}: {e}", jail_dir.display()));
    for dir in jail.cgroup_dirs() {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while let Err(e) = fs::remove_dir(&dir) {
            assert!(
                std::time::Instant::now() < deadline,
                "rmdir {}: {e}",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert!(!jail_dir.exists());
    assert!(cgroup_dirs_of(DEFAULT_PARENT_CGROUP, &jail.id).is_empty());
    assert_eq!(
        mounts_under(&base, "/proc/self/mountinfo"),
        Vec::<String>::new()
    );
    assert_eq!(
        mounts_under(&base, "/proc/1/mountinfo"),
        Vec::<String>::new()
    );
}

/// Mount points in `mountinfo` at or below `dir`.
fn mounts_under(dir: &Path, mountinfo: &str) -> Vec<String> {
    let dir = dir.to_str().unwrap();
    fs::read_to_string(mountinfo)
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m == dir || m.starts_with(&format!("{dir}/")))
        .collect()
}

/// What the helper saw: 0 for success, else the errno (own_pid: its pid in the namespace).
#[derive(Debug, Default, Clone, Copy)]
#[repr(C)]
struct Attack {
    setns_mnt: i32,
    setns_pid: i32,
    drop_privileges: i32,
    stat_vmm_binary: i32,
    open_etc_passwd: i32,
    open_host_secret: i32,
    open_proc_1_root: i32,
    stat_proc: i32,
    mknod_char: i32,
    mknod_block: i32,
    mkfifo: i32,
    chroot: i32,
    setuid0: i32,
    mount: i32,
    kill_pid1: i32,
    kill_test_process: i32,
    kill_test_process_host_view: i32,
    own_pid: i32,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

fn rc(r: libc::c_int) -> i32 {
    if r < 0 {
        errno()
    } else {
        0
    }
}

/// Opens `path` read-only in the caller's view: 0 if it opened (then closed), else the errno.
fn try_open(path: &CString) -> i32 {
    // SAFETY: a NUL-terminated path; the descriptor is closed at once.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return errno();
    }
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    0
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// Forks a helper that joins the VMM's mount and PID namespaces, drops to the VMM's uid/gid (no
/// capabilities left) and, in a child inside the PID namespace, tries to escape. `host_file` is
/// a host path it must not be able to open.
fn attack(jail: &jail::Jail, host_file: &Path) -> Attack {
    let pid = jail.pid();
    // Everything that allocates happens before fork: the test process has other threads.
    let mnt_ns = cstr(&format!("/proc/{pid}/ns/mnt"));
    let pid_ns = cstr(&format!("/proc/{pid}/ns/pid"));
    let vmm_binary = cstr(&format!("/{EXEC_NAME}"));
    let etc_passwd = cstr("/etc/passwd");
    let host_secret = CString::new(host_file.as_os_str().as_bytes()).unwrap();
    let proc_1_root = cstr("/proc/1/root/etc/passwd");
    let proc_dir = cstr("/proc");
    let node_char = cstr("/escape-mem");
    let node_block = cstr("/escape-blk");
    let fifo = cstr("/escape-fifo");
    let root = cstr("/");
    let tmpfs = cstr("tmpfs");
    // SAFETY: getpid cannot fail.
    let test_pid = unsafe { libc::getpid() };
    // Host view control: an unprivileged process on the host sees the test process (EPERM).
    let host_view = {
        let mut fds = [0; 2];
        // SAFETY: a valid array for pipe2.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: the child only makes syscalls and leaves with _exit.
        match unsafe { libc::fork() } {
            // SAFETY: in the child: plain syscalls on local data, then _exit.
            0 => unsafe {
                let mut r = rc(libc::setgroups(0, std::ptr::null()));
                if r == 0 {
                    r = rc(libc::setresgid(JAIL_GID, JAIL_GID, JAIL_GID));
                }
                if r == 0 {
                    r = rc(libc::setresuid(JAIL_UID, JAIL_UID, JAIL_UID));
                }
                if r == 0 {
                    r = rc(libc::kill(test_pid, 0));
                } else {
                    r = -r;
                }
                libc::write(fds[1], (&r as *const i32).cast(), 4);
                libc::_exit(0)
            },
            child => read_result::<i32>(fds, child),
        }
    };

    let mut fds = [0; 2];
    // SAFETY: a valid array for pipe2.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child and grandchild only make syscalls on data prepared above and leave with
    // _exit.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child == 0 {
        // SAFETY: in the child: syscalls on data prepared above, then _exit.
        unsafe {
            let mut a = Attack {
                kill_test_process_host_view: host_view,
                ..Attack::default()
            };
            let send = |a: &Attack| {
                libc::write(
                    fds[1],
                    (a as *const Attack).cast(),
                    std::mem::size_of::<Attack>(),
                );
            };
            let mnt = libc::open(mnt_ns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            let pidns = libc::open(pid_ns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            a.setns_mnt = rc(libc::setns(mnt, libc::CLONE_NEWNS));
            a.setns_pid = rc(libc::setns(pidns, libc::CLONE_NEWPID));
            a.drop_privileges = rc(libc::setgroups(0, std::ptr::null()));
            if a.drop_privileges == 0 {
                a.drop_privileges = rc(libc::setresgid(JAIL_GID, JAIL_GID, JAIL_GID));
            }
            if a.drop_privileges == 0 {
                a.drop_privileges = rc(libc::setresuid(JAIL_UID, JAIL_UID, JAIL_UID));
            }
            if a.setns_mnt != 0 || a.setns_pid != 0 || a.drop_privileges != 0 {
                send(&a);
                libc::_exit(1);
            }
            // setns(CLONE_NEWPID) applies to children: the attack runs in one.
            let gc = libc::fork();
            if gc == 0 {
                a.own_pid = libc::getpid();
                let mut st: libc::stat = std::mem::zeroed();
                a.stat_vmm_binary = rc(libc::stat(vmm_binary.as_ptr(), &mut st));
                a.stat_proc = rc(libc::stat(proc_dir.as_ptr(), &mut st));
                a.open_etc_passwd = try_open(&etc_passwd);
                a.open_host_secret = try_open(&host_secret);
                a.open_proc_1_root = try_open(&proc_1_root);
                a.mknod_char = rc(libc::mknod(
                    node_char.as_ptr(),
                    libc::S_IFCHR | 0o666,
                    libc::makedev(1, 1),
                ));
                a.mknod_block = rc(libc::mknod(
                    node_block.as_ptr(),
                    libc::S_IFBLK | 0o666,
                    libc::makedev(7, 0),
                ));
                a.mkfifo = rc(libc::mknod(fifo.as_ptr(), libc::S_IFIFO | 0o600, 0));
                if a.mkfifo == 0 {
                    libc::unlink(fifo.as_ptr());
                }
                a.chroot = rc(libc::chroot(root.as_ptr()));
                a.setuid0 = rc(libc::setuid(0));
                a.mount = rc(libc::mount(
                    tmpfs.as_ptr(),
                    root.as_ptr(),
                    tmpfs.as_ptr(),
                    0,
                    std::ptr::null(),
                ));
                a.kill_pid1 = rc(libc::kill(1, 0));
                a.kill_test_process = rc(libc::kill(test_pid, 0));
                send(&a);
                libc::_exit(0);
            }
            let mut status = 0;
            libc::waitpid(gc, &mut status, 0);
            libc::_exit(0);
        }
    }
    let a: Attack = read_result(fds, child);
    assert_eq!(
        (a.setns_mnt, a.setns_pid, a.drop_privileges),
        (0, 0, 0),
        "the helper could not join the VMM's namespaces as root: {a:?}"
    );
    a
}

/// Reads one `T` from the pipe `fds` (closing it) and reaps `child`.
fn read_result<T: Copy + Default>(fds: [libc::c_int; 2], child: libc::pid_t) -> T {
    // SAFETY: our own descriptors; `out` is a plain-old-data value of the size read.
    unsafe {
        libc::close(fds[1]);
        let mut out = T::default();
        let n = libc::read(
            fds[0],
            (&mut out as *mut T).cast(),
            std::mem::size_of::<T>(),
        );
        libc::close(fds[0]);
        let mut status = 0;
        libc::waitpid(child, &mut status, 0);
        assert_eq!(
            n,
            std::mem::size_of::<T>() as isize,
            "the helper sent no result (status {status:#x})"
        );
        out
    }
}
