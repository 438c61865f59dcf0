use super::*;

/// `strace -f -tt -o FILE` of a VMM: main thread 100, api 101, vcpu0 102, vcpu1 103.
const WITH_O: &str = r#"100 12:00:00.000001 execve("/usr/bin/tartarus-vmm", ["tartarus-vmm"], 0x7ffd /* 20 vars */) = 0
100 12:00:00.000100 clone3({flags=CLONE_VM|CLONE_THREAD, child_tid=0x7f, stack=0x7f, stack_size=0x200000, tls=0x7f} => {parent_tid=[101]}, 88) = 101
101 12:00:00.000200 prctl(PR_SET_NAME, "api") = 0
101 12:00:00.000300 poll([{fd=3, events=POLLIN}], 1, -1 <unfinished ...>
100 12:00:00.000400 openat(AT_FDCWD, "/dev/kvm", O_RDWR|O_CLOEXEC) = 4
101 12:00:00.000500 <... poll resumed>) = 1 ([{fd=3, revents=POLLIN}])
101 12:00:00.000600 accept4(3, NULL, NULL, SOCK_CLOEXEC) = 5
101 12:00:00.000700 ioctl(5, FIONBIO, [1]) = 0
100 12:00:00.000800 ioctl(4, KVM_CREATE_VM, 0) = 6
100 12:00:00.000900 clone3({flags=CLONE_VM, stack_size=0x200000} <unfinished ...>
102 12:00:00.001000 set_robust_list(0x7f, 24) = 0
100 12:00:00.001100 <... clone3 resumed> => {parent_tid=[102]}, 88) = 102
102 12:00:00.001200 prctl(PR_SET_NAME, "vcpu0") = 0
102 12:00:00.001300 ioctl(7, KVM_RUN <unfinished ...>
100 12:00:00.001400 clone3({flags=CLONE_VM, stack_size=0x200000}, 88) = 103
103 12:00:00.001500 prctl(PR_SET_NAME, "vcpu1") = 0
103 12:00:00.001600 ioctl(8, 0xae80, 0) = 0
102 12:00:00.001700 <... ioctl resumed>, 0) = -1 EINTR (Interrupted system call)
102 12:00:00.001800 --- SIGRT_2 {si_signo=SIGRT_2, si_code=SI_TKILL, si_pid=100, si_uid=0} ---
102 12:00:00.001900 rt_sigreturn({mask=[]}) = -1 EINTR (Interrupted system call)
100 12:00:00.002000 ioctl(6, _IOC(_IOC_WRITE, 0xae, 0x46, 0x20), 0x7ffc) = 0
100 12:00:00.002100 ioctl(0, SNDCTL_TMR_TIMEBASE or TCGETS, 0x7ffc) = -1 ENOTTY (Inappropriate ioctl for device)
103 12:00:00.002150 ioctl(8, KVM_RUN <unfinished ...>
102 12:00:00.002200 exit(0) = ?
102 12:00:00.002300 +++ exited with 0 +++
100 12:00:00.002400 exit_group(0) = ?
103 12:00:00.002450 <... ioctl resumed> <unfinished ...>) = ?
100 12:00:00.002500 +++ exited with 0 +++
"#;

/// The same kind of output on stderr: `[pid N]` prefixes, the first process unprefixed.
const ON_STDERR: &str = r#"execve("./tartarus-vmm", ["./tartarus-vmm"], 0x7ffd /* 20 vars */) = 0
brk(NULL)                               = 0x55
clone3({flags=CLONE_VM|CLONE_THREAD}, 88) = 201
[pid 201] prctl(PR_SET_NAME, "api" <unfinished ...>
[pid 200] epoll_wait(3,  <unfinished ...>
[pid 201] <... prctl resumed>)          = 0
[pid 201] sendto(5, "HTTP/1.1 204 \r\n\r\n", 17, MSG_DONTWAIT|MSG_NOSIGNAL, NULL, 0) = 17
[pid 200] <... epoll_wait resumed>[{events=EPOLLIN, data={u32=4, u64=4}}], 100, -1) = 1
[pid 200] read(4, "\1\0\0\0\0\0\0\0", 8) = 8
+++ exited with 0 +++
"#;

fn names(set: &BTreeSet<String>) -> Vec<&str> {
    set.iter().map(String::as_str).collect()
}

#[test]
fn prefixes_and_timestamps() {
    assert_eq!(split_prefix("12 read(3"), (Some(12), "read(3"));
    assert_eq!(split_prefix("[pid 7] 12:00:01 read(3"), (Some(7), "read(3"));
    assert_eq!(
        split_prefix("7 1700000000.123456 read(3"),
        (Some(7), "read(3")
    );
    assert_eq!(split_prefix("12:00:01.000002 read(3"), (None, "read(3"));
    assert_eq!(
        split_prefix("read(3, \"a b\", 3) = 3"),
        (None, "read(3, \"a b\", 3) = 3")
    );
}

#[test]
fn arguments_split_at_top_level() {
    let args = r#"5, "a, (b)", {x=1, y=[2, 3]}, 0) = 0"#;
    assert_eq!(nth_arg(args, 0), Some("5"));
    assert_eq!(nth_arg(args, 1), Some(r#""a, (b)""#));
    assert_eq!(nth_arg(args, 2), Some("{x=1, y=[2, 3]}"));
    assert_eq!(nth_arg(args, 3), Some("0"));
    assert_eq!(nth_arg(args, 4), None);
    assert_eq!(nth_arg("7, KVM_RUN ", 1), Some("KVM_RUN"));
}

#[test]
fn ioctl_requests() {
    assert_eq!(parse_ioctl_request("KVM_RUN"), Some(ioctls::KVM_RUN));
    assert_eq!(parse_ioctl_request("0xae80"), Some(ioctls::KVM_RUN));
    assert_eq!(parse_ioctl_request("44672"), Some(ioctls::KVM_RUN));
    assert_eq!(
        parse_ioctl_request("0xae80 /* KVM_RUN */"),
        Some(ioctls::KVM_RUN)
    );
    assert_eq!(
        parse_ioctl_request("_IOC(_IOC_WRITE, 0xae, 0x46, 0x20)"),
        Some(ioctls::KVM_SET_USER_MEMORY_REGION)
    );
    assert_eq!(
        parse_ioctl_request("_IOC(_IOC_READ|_IOC_WRITE, 0xae, 0x5, 0x8)"),
        Some(ioctls::KVM_GET_SUPPORTED_CPUID)
    );
    assert_eq!(
        parse_ioctl_request("SNDCTL_TMR_TIMEBASE or TCGETS"),
        Some(ioctls::TCGETS)
    );
    assert_eq!(parse_ioctl_request("SOME_DRIVER_IOCTL"), None);
}

#[test]
fn threads_are_named_and_grouped() {
    let t = Trace::parse(WITH_O);
    assert_eq!(t.thread_ids(), vec![100, 101, 102, 103]);
    let p = Profile::from_trace(
        &t,
        &Grouping {
            merge_vcpu_into_vmm: false,
            ..Grouping::default()
        },
    )
    .unwrap();
    assert_eq!(
        p.filters.keys().map(String::as_str).collect::<Vec<_>>(),
        ["api", "vcpu", "vmm"]
    );
    assert_eq!(
        names(&p.filters["api"].syscalls),
        ["accept4", "ioctl", "poll", "prctl"]
    );
    assert_eq!(p.filters["api"].ioctls, BTreeSet::from([ioctls::FIONBIO]));
    // The split KVM_RUN call and the raw one both count; the signal line does not.
    assert_eq!(
        names(&p.filters["vcpu"].syscalls),
        ["exit", "ioctl", "prctl", "rt_sigreturn", "set_robust_list"]
    );
    assert_eq!(p.filters["vcpu"].ioctls, BTreeSet::from([ioctls::KVM_RUN]));
    assert_eq!(
        names(&p.filters["vmm"].syscalls),
        ["clone3", "execve", "exit_group", "ioctl", "openat"]
    );
    assert_eq!(
        p.filters["vmm"].ioctls,
        BTreeSet::from([
            ioctls::KVM_CREATE_VM,
            ioctls::KVM_SET_USER_MEMORY_REGION,
            ioctls::TCGETS
        ])
    );
}

#[test]
fn vcpu_is_merged_into_vmm_by_default() {
    let p = Profile::from_trace(&Trace::parse(WITH_O), &Grouping::default()).unwrap();
    assert!(p.filters["vmm"].syscalls.contains("rt_sigreturn"));
    assert!(p.filters["vmm"].ioctls.contains(&ioctls::KVM_RUN));
    assert!(p.filters["vmm"].syscalls.contains("seccomp"));
    assert!(!p.filters["vcpu"].syscalls.contains("openat"));
}

#[test]
fn stderr_format_and_explicit_grouping() {
    let t = Trace::parse(ON_STDERR);
    let p = Profile::from_trace(&t, &Grouping::default()).unwrap();
    assert_eq!(names(&p.filters["api"].syscalls), ["prctl", "sendto"]);
    assert_eq!(
        names(&p.filters["vmm"].syscalls),
        ["brk", "clone3", "epoll_wait", "execve", "read"]
    );

    let single = Grouping {
        single: Some("all".into()),
        ..Grouping::default()
    };
    let p = Profile::from_trace(&t, &single).unwrap();
    assert_eq!(p.filters.keys().collect::<Vec<_>>(), ["all"]);
    assert_eq!(p.filters["all"].syscalls.len(), 7);

    let explicit = Grouping {
        threads: vec![("web".into(), 201)],
        main_name: "main".into(),
        ..Grouping::default()
    };
    let p = Profile::from_trace(&t, &explicit).unwrap();
    assert_eq!(p.filters.keys().collect::<Vec<_>>(), ["main", "web"]);
}

#[test]
fn json_output_is_sorted_and_compiles() {
    let mut p = Profile::from_trace(&Trace::parse(WITH_O), &Grouping::default()).unwrap();
    assert!(p.drop_unknown_syscalls().is_empty());
    let v = p.to_json();
    let vcpu = v["vcpu"]["filter"].as_array().unwrap();
    let listed: Vec<&str> = vcpu
        .iter()
        .map(|r| r["syscall"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        ["exit", "ioctl", "prctl", "rt_sigreturn", "set_robust_list"]
    );
    assert_eq!(vcpu[1]["args"][0]["val"], json!(ioctls::KVM_RUN));
    assert_eq!(vcpu[1]["comment"], json!("KVM_RUN"));
    assert_eq!(v["vcpu"]["mismatch_action"], json!("kill_process"));
    let map =
        seccompiler::compile_from_json(v.to_string().as_bytes(), seccompiler::TargetArch::x86_64)
            .unwrap();
    assert_eq!(map.len(), 3);
}

#[test]
fn unknown_names_and_ioctls() {
    let mut p = Profile::from_trace(
        &Trace::parse("1 read(3, \"\", 1) = 0\n1 frobnicate(1) = 0\n"),
        &Grouping::default(),
    )
    .unwrap();
    assert_eq!(p.drop_unknown_syscalls(), ["frobnicate"]);
    assert_eq!(names(&p.filters["vmm"].syscalls), ["read"]);

    let e = Profile::from_trace(
        &Trace::parse("1 ioctl(3, SOME_DRIVER_IOCTL, 0) = 0\n"),
        &Grouping::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("raw=ioctl"), "{e}");

    assert!(matches!(
        Profile::from_trace(
            &Trace::parse("+++ exited with 0 +++\n"),
            &Grouping::default()
        ),
        Err(StraceError::Empty)
    ));
    let t = Trace::parse("1 syscall_0x1b8(1, 2) = -1 ENOSYS\n");
    assert_eq!(t.skipped.len(), 1);
}

#[test]
fn baseline_is_added_to_every_filter() {
    let trace = Trace::parse("100 ioctl(3, KVM_RUN, 0) = 0\n");
    let mut p = Profile::from_trace(&trace, &Grouping::default()).unwrap();
    p.add_baseline(&crate::defaults::runtime_baseline());
    for f in p.filters.values() {
        assert!(f.syscalls.contains("futex"));
        assert!(f.syscalls.contains("exit"));
    }
}
