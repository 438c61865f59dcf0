//! The attacker's side: hostile names, symlinks and hard links that try to reach outside the
//! root. Every refused layer is followed by a check that nothing appeared (or changed) next to
//! the root, where a sentinel directory holds a file named `secret`.

use super::*;

/// Runs one layer that must be refused with `check`, then proves nothing escaped.
fn refused(layer: Vec<u8>, check: impl Fn(&UnpackError) -> bool) {
    let mut s = Scratch::new();
    fs::write(s.sentinel().join("secret"), b"keep out").unwrap();
    s.layer(&layer, None);
    let err = s.run(&UnpackOptions::default()).unwrap_err();
    assert!(check(&err), "unexpected error: {err}");
    assert!(err.to_string().contains("sha256:layer0"), "{err}");
    s.assert_contained();
}

#[test]
fn absolute_and_dotdot_names_are_refused() {
    for name in ["/etc/x", "../x", "a/../../x", "./../sentinel/x", "a/.."] {
        refused(
            Tar::new()
                .raw(EntryType::Regular, name.as_bytes(), b"", b"evil")
                .bytes(),
            |e| {
                matches!(e, UnpackError::UnsafePath { entry, .. } if entry == name)
                    && e.to_string().contains(name)
            },
        );
    }
    refused(
        Tar::new()
            .raw(EntryType::Directory, b"../sentinel/d", b"", b"")
            .bytes(),
        |e| matches!(e, UnpackError::UnsafePath { .. }),
    );
    refused(
        Tar::new()
            .raw(EntryType::Regular, b"x/../.wh.secret", b"", b"")
            .bytes(),
        |e| matches!(e, UnpackError::UnsafePath { .. }),
    );
}

#[test]
fn writes_through_escaping_symlinks_are_refused() {
    let cases: [(&str, &str); 4] = [
        ("../sentinel", "evil/pwned"),
        ("../../..", "evil/tmp/pwned"),
        ("/../sentinel", "evil/pwned"),
        ("ok/../../sentinel", "evil/pwned"),
    ];
    for (target, write) in cases {
        let mut t = Tar::new();
        t.dir("ok", 0o755)
            .link(EntryType::Symlink, "evil", target)
            .file(write, b"pwned");
        refused(t.bytes(), |e| {
            matches!(e, UnpackError::SymlinkEscape { entry, symlink, .. }
                if entry == write && symlink == "/evil")
                && e.to_string().contains("/evil")
        });
        // `../../..` from the root is `/` here: nothing may appear in the real /tmp either.
        assert!(!exists(Path::new("/tmp/pwned")) && !exists(Path::new("/pwned")));
    }
    // A chain: the escape happens in the second symlink.
    let mut t = Tar::new();
    t.link(EntryType::Symlink, "a", "b/c")
        .link(EntryType::Symlink, "b", "..")
        .file("a/x", b"");
    refused(
        t.bytes(),
        |e| matches!(e, UnpackError::SymlinkEscape { symlink, .. } if symlink == "/b"),
    );
    // Whiteouts resolve their parent the same way and cannot delete outside.
    let mut t = Tar::new();
    t.link(EntryType::Symlink, "evil", "../sentinel")
        .file("evil/.wh.secret", b"");
    refused(t.bytes(), |e| {
        matches!(e, UnpackError::SymlinkEscape { .. })
    });
    let mut t = Tar::new();
    t.link(EntryType::Symlink, "evil", "../sentinel")
        .file("evil/.wh..wh..opq", b"");
    refused(t.bytes(), |e| {
        matches!(e, UnpackError::SymlinkEscape { .. })
    });
    // A loop is an error, not a hang.
    let mut t = Tar::new();
    t.link(EntryType::Symlink, "l1", "l2")
        .link(EntryType::Symlink, "l2", "l1")
        .file("l1/x", b"");
    refused(t.bytes(), |e| matches!(e, UnpackError::SymlinkLoop { .. }));
}

#[test]
fn entries_replace_symlinks_instead_of_writing_through_them() {
    let mut s = Scratch::new();
    fs::write(s.sentinel().join("secret"), b"keep out").unwrap();
    s.layer(
        &Tar::new()
            .link(EntryType::Symlink, "f", "../sentinel/secret")
            .link(EntryType::Symlink, "d", "../sentinel")
            .link(EntryType::Symlink, "n", "../sentinel/node")
            .link(EntryType::Symlink, "l", "../sentinel/secret")
            .file("target", b"t")
            .bytes(),
        None,
    );
    let mut t = Tar::new();
    t.file_with("f", b"mine", 0o4755, 1000, 1000)
        .dir("d", 0o755)
        .raw(EntryType::Fifo, b"n", b"", b"");
    t.link(EntryType::Link, "l", "target");
    s.layer(&t.bytes(), None);
    s.ok();
    assert_eq!(fs::read(s.p("f")).unwrap(), b"mine");
    assert!(lstat(&s.p("d")).is_dir() && lstat(&s.p("n")).file_type().is_fifo());
    assert_eq!(lstat(&s.p("l")).ino(), lstat(&s.p("target")).ino());
    s.assert_contained();
    assert_eq!(lstat(&s.sentinel().join("secret")).mode() & 0o7777, 0o644);
}

#[test]
fn hard_links_out_of_the_root_are_refused() {
    refused(
        Tar::new()
            .raw(EntryType::Link, b"passwd", b"../../etc/passwd", b"")
            .bytes(),
        |e| {
            matches!(e, UnpackError::UnsafePath { entry, reason, .. }
            if entry == "passwd" && reason.contains("../../etc/passwd"))
        },
    );
    refused(
        Tar::new()
            .raw(EntryType::Link, b"passwd", b"/etc/passwd", b"")
            .bytes(),
        |e| matches!(e, UnpackError::UnsafePath { .. }),
    );
    let mut t = Tar::new();
    t.link(EntryType::Symlink, "esc", "../sentinel")
        .link(EntryType::Link, "stolen", "esc/secret");
    refused(
        t.bytes(),
        |e| matches!(e, UnpackError::SymlinkEscape { entry, symlink, .. } if entry == "stolen" && symlink == "/esc"),
    );
}

#[test]
fn the_kernel_keeps_directory_lookups_inside_the_root() {
    // Below the userspace resolver: even handed a hostile path, the descriptor the unpacker
    // writes through never names a directory outside the root.
    let s = Scratch::new();
    fs::create_dir(s.sentinel().join("inside_sentinel")).unwrap();
    std::os::unix::fs::symlink("../sentinel", s.p("evil")).unwrap();
    std::os::unix::fs::symlink("/", s.p("slash")).unwrap();
    let root = resolve::Root::open(&s.root()).unwrap();
    let err = root.open_dir(Path::new("evil"), libc::O_PATH).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ELOOP),
        "symlinks are not followed at all"
    );
    let err = root
        .open_dir(Path::new("../sentinel/inside_sentinel"), libc::O_PATH)
        .unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOENT),
        "`..` stops at the root"
    );
    let err = root
        .open_dir(Path::new("/sentinel"), libc::O_PATH)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "`/` means the root");
    let fd = root.open_dir(Path::new("/../.."), libc::O_RDONLY).unwrap();
    assert_eq!(
        fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ))
        .unwrap()
        .ino(),
        lstat(&s.root()).ino()
    );
}

#[test]
fn a_full_disk_is_reported_with_the_entry() {
    let mut s = Scratch::new();
    let target = CString::new(s.root().as_os_str().as_bytes()).unwrap();
    let (fstype, data) = (
        CString::new("tmpfs").unwrap(),
        CString::new("size=256k").unwrap(),
    );
    // SAFETY: all arguments are NUL-terminated strings that outlive the call.
    let ret = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if ret != 0 {
        eprintln!(
            "skipping: cannot mount a tmpfs: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    struct Unmount(CString);
    impl Drop for Unmount {
        fn drop(&mut self) {
            // SAFETY: the path is a NUL-terminated string; we mounted on it above.
            unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
        }
    }
    // Declared after `s`, so unmounted before `s` removes the directories.
    let _unmount = Unmount(target);
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8 + 1).collect();
    s.layer(
        &Tar::new()
            .file("small", b"ok")
            .file("var/big", &big)
            .bytes(),
        None,
    );
    let err = s.run(&UnpackOptions::default()).unwrap_err();
    assert!(
        matches!(err, UnpackError::DiskFull { ref entry, ref digest, .. }
            if entry == "var/big" && digest == "sha256:layer0"),
        "{err}"
    );
    assert!(err.to_string().contains("var/big"));
}
