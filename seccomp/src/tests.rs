use std::path::Path;

use super::*;

#[test]
fn built_in_filters_compile_and_summarise() {
    let f = Filters::built_in().unwrap();
    for k in ThreadKind::ALL {
        assert!(f.program(k).is_some_and(|p| !p.is_empty()));
    }
    let s = f.summary();
    assert!(
        s.contains("built-in") && s.contains("vcpu") && s.contains("SIGSYS"),
        "{s}"
    );
    let d = Filters::disabled();
    assert!(d.program(ThreadKind::Api).is_none());
    assert!(d.summary().contains("disabled"));
}

#[test]
fn built_in_json_round_trips() {
    let text = built_in_json().to_string();
    let f = Filters::from_json(text.as_bytes(), Path::new("defaults.json")).unwrap();
    let b = Filters::built_in().unwrap();
    for k in ThreadKind::ALL {
        assert_eq!(f.program(k), b.program(k), "{k}");
    }
    assert_eq!(f.origin(), &Origin::File("defaults.json".into()));
}

#[test]
fn thread_kinds_parse() {
    assert_eq!("vcpu".parse::<ThreadKind>(), Ok(ThreadKind::Vcpu));
    assert!("vcpu0".parse::<ThreadKind>().is_err());
}

fn json_error(text: &str) -> String {
    match Filters::from_json(text.as_bytes(), Path::new("f.json")) {
        Ok(_) => panic!("accepted {text}"),
        Err(e) => e.to_string(),
    }
}

fn filter(syscall: &str) -> String {
    format!(
        r#"{{"mismatch_action": "kill_process", "match_action": "allow",
             "filter": [{{"syscall": "{syscall}"}}]}}"#
    )
}

#[test]
fn bad_json_files_give_clear_errors() {
    let e = json_error("not json");
    assert!(e.starts_with("Invalid seccomp filter file f.json: "), "{e}");
    assert!(e.contains("line 1"), "{e}");

    let e = json_error(&format!(r#"{{"api": {0}, "vmm": {0}}}"#, filter("read")));
    assert!(e.contains(r#"no filter for the "vcpu" thread"#), "{e}");

    let e = json_error(&format!(
        r#"{{"api": {0}, "vmm": {0}, "vcpu": {0}, "vcpu0": {0}}}"#,
        filter("read")
    ));
    assert!(e.contains(r#"unknown thread "vcpu0""#), "{e}");

    let e = json_error(&format!(r#"{{"api": {0}}}"#, filter("no_such_call")));
    assert!(e.contains("no_such_call"), "{e}");

    let e = json_error(
        r#"{"api": {"mismatch_action": "allow", "match_action": "allow", "filter": []}}"#,
    );
    assert!(e.contains("equal"), "{e}");

    let missing = Filters::from_json_file(Path::new("/nonexistent/f.json")).unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("Cannot read seccomp filter file /nonexistent/f.json"),
        "{missing}"
    );
}

/// In a forked child: installs `program`, runs `f`, exits 0. Returns the wait status.
fn in_child(program: &BpfProgram, f: fn()) -> libc::c_int {
    // SAFETY: the child only makes raw syscalls (prctl, seccomp, the probe, _exit) on memory
    // prepared before the fork; it never returns into the test harness.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            if install(program).is_err() {
                libc::_exit(2);
            }
            f();
            libc::_exit(0);
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        status
    }
}

#[test]
fn a_forbidden_syscall_kills_with_sigsys() {
    let f = Filters::built_in().unwrap();
    for k in ThreadKind::ALL {
        let program = f.program(k).unwrap();
        // SAFETY: getppid has no arguments.
        let status = in_child(program, || unsafe {
            libc::syscall(defaults::FORBIDDEN_FOR_TESTS);
        });
        assert!(libc::WIFSIGNALED(status), "{k}: status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS, "{k}");

        // Allowed calls go through.
        // SAFETY: gettid has no arguments.
        let status = in_child(program, || unsafe {
            libc::syscall(libc::SYS_gettid);
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{k}"
        );
    }
}

#[test]
fn ioctl_requests_are_checked() {
    let f = Filters::built_in().unwrap();
    let api = f.program(ThreadKind::Api).unwrap();
    // FIONBIO on a bad fd is allowed (EBADF), KVM_RUN is not an API-thread ioctl.
    // SAFETY: ioctl on an invalid fd touches no memory.
    let ok = in_child(api, || unsafe {
        libc::ioctl(-1, libc::FIONBIO, 0);
    });
    assert!(libc::WIFEXITED(ok), "status {ok:#x}");
    // SAFETY: as above.
    let killed = in_child(api, || unsafe {
        libc::ioctl(-1, u64::from(ioctls::KVM_RUN), 0);
    });
    assert!(libc::WIFSIGNALED(killed) && libc::WTERMSIG(killed) == libc::SIGSYS);
}
