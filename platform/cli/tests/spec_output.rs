//! Template spec files (TOML and JSON, relative paths, flags on top, `template init`), table
//! formatting, sizes and ages, exit-code mapping, and completion scripts.

mod common;

use std::path::Path;

use tartarus_cli::cli::{CompletionShell, TemplateBuildArgs};
use tartarus_cli::commands::misc_completion_script;
use tartarus_cli::output::{age, bytes, exec_error_status, exit_status, mib_from_kib, Table};
use tartarus_cli::spec::{build_spec, init_dir, load_spec, parse_spec, SpecError};

#[test]
fn toml_spec_with_relative_paths() {
    let text = r#"
name = "py"
kernel = "vmlinux"
rootfs = "../images/./rootfs.ext4"
memory_mib = 512
[env]
LANG = "C.UTF-8"
[[warmup]]
argv = ["python3", "-c", "1"]
[[warmup]]
argv = ["srv"]
background = true
"#;
    let s = parse_spec(text, Path::new("/specs/py/template.toml")).unwrap();
    assert_eq!(s.kernel, "/specs/py/vmlinux");
    assert_eq!(s.rootfs, "/specs/images/rootfs.ext4");
    assert_eq!((s.vcpus, s.memory_mib, s.disk_mib), (1, 512, 1024));
    assert_eq!(s.env["LANG"], "C.UTF-8");
    assert_eq!(s.warmup.len(), 2);
    assert!(s.warmup[1].background);
}

#[test]
fn json_spec_and_absolute_paths() {
    let text = r#"{"name": "base", "kernel": "/abs/vmlinux", "rootfs": "r.ext4", "vcpus": 2}"#;
    let s = parse_spec(text, Path::new("/specs/base.json")).unwrap();
    assert_eq!(s.kernel, "/abs/vmlinux");
    assert_eq!(s.rootfs, "/specs/r.ext4");
    assert_eq!(s.vcpus, 2);
}

#[test]
fn unknown_fields_are_refused() {
    let e = parse_spec(
        "name = \"a\"\nkernel = \"k\"\nrootfs = \"r\"\nmemory = 5\n",
        Path::new("/t.toml"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("memory"), "{e}");
    let e = parse_spec(r#"{"name": "a", "kernal": "k"}"#, Path::new("/t.json")).unwrap_err();
    assert!(e.to_string().contains("kernal"), "{e}");
    // Kernel and rootfs may be left out (the daemon's kernel; an image instead of a rootfs).
    let s = parse_spec(
        r#"{"name": "a", "image": "alpine:3"}"#,
        Path::new("/t.json"),
    )
    .unwrap();
    assert_eq!((s.kernel.as_str(), s.rootfs.as_str()), ("", ""));
    assert_eq!(s.image.as_deref(), Some("alpine:3"));
}

#[test]
fn load_spec_from_a_relative_file() {
    let dir = common::temp_dir("spec");
    std::fs::write(
        dir.join("t.toml"),
        "name = \"x\"\nkernel = \"k\"\nrootfs = \"sub/r\"\n",
    )
    .unwrap();
    let s = load_spec(&dir.join("t.toml")).unwrap();
    assert_eq!(Path::new(&s.rootfs), dir.join("sub/r"));
    assert!(matches!(
        load_spec(&dir.join("missing.toml")),
        Err(SpecError::Read { .. })
    ));
}

#[test]
fn flags_override_the_file() {
    let dir = common::temp_dir("flags");
    let f = dir.join("t.toml");
    std::fs::write(
        &f,
        "name = \"x\"\nkernel = \"k\"\nrootfs = \"r\"\nvcpus = 2\n[env]\nA = \"1\"\n",
    )
    .unwrap();
    let args = TemplateBuildArgs {
        file: Some(f),
        name: Some("y".into()),
        memory: Some(1024),
        env: vec![("B".into(), "2".into())],
        warmup: vec!["echo hi".into()],
        warmup_bg: vec!["serve".into()],
        replace: true,
        ..Default::default()
    };
    let s = build_spec(&args).unwrap();
    assert_eq!((s.name.as_str(), s.vcpus, s.memory_mib), ("y", 2, 1024));
    assert_eq!(s.env.len(), 2);
    assert_eq!(s.warmup[0].argv, ["sh", "-c", "echo hi"]);
    assert!(!s.warmup[0].background && s.warmup[1].background);
    assert!(s.replace);
    assert_eq!(Path::new(&s.kernel), dir.join("k"));
}

#[test]
fn flags_only() {
    let args = TemplateBuildArgs {
        name: Some("z".into()),
        kernel: Some("/k".into()),
        rootfs: Some("rel/r".into()),
        ..Default::default()
    };
    let s = build_spec(&args).unwrap();
    assert_eq!(s.kernel, "/k");
    assert!(Path::new(&s.rootfs).is_absolute(), "{}", s.rootfs);
    assert!(s.rootfs.ends_with("/rel/r"));
    let e = build_spec(&TemplateBuildArgs {
        name: Some("z".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "missing kernel: give it in the spec file (-f) or as a flag (--kernel)"
    );
}

#[test]
fn init_writes_a_loadable_spec() {
    let dir = common::temp_dir("init").join("My Python");
    let files = init_dir(&dir, None).unwrap();
    assert_eq!(files.len(), 2);
    let s = load_spec(&dir.join("template.toml")).unwrap();
    assert_eq!(s.name, "my-python");
    assert_eq!(Path::new(&s.kernel), dir.join("vmlinux"));
    assert_eq!(Path::new(&s.rootfs), dir.join("rootfs.ext4"));
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(readme.contains("tartarus template build -f template.toml"));
    // Never overwrites.
    assert!(matches!(
        init_dir(&dir, Some("x")),
        Err(SpecError::Exists(_))
    ));
    let other = common::temp_dir("init2");
    init_dir(&other, Some("named")).unwrap();
    assert_eq!(
        load_spec(&other.join("template.toml")).unwrap().name,
        "named"
    );
}

#[test]
fn table_alignment() {
    let mut t = Table::new(["ID", "STATE", "AGE"]);
    t.row(["sb-1", "running", "5s"]);
    t.row(["sb-000000000002", "paused", "3m"]);
    assert_eq!(
        t.render(),
        "ID                STATE     AGE\n\
         sb-1              running   5s\n\
         sb-000000000002   paused    3m\n"
    );
    assert_eq!(Table::new(["A"]).render(), "A\n");
}

#[test]
fn human_units() {
    assert_eq!(
        [0, 59, 60, 3599, 3600, 86399, 86400 * 3].map(age),
        ["0s", "59s", "1m", "59m", "1h", "23h", "3d"]
    );
    assert_eq!(mib_from_kib(Some(40960)), "40 MiB");
    assert_eq!(mib_from_kib(Some(1)), "1 MiB");
    assert_eq!(mib_from_kib(None), "-");
    assert_eq!(bytes(512), "512 B");
    assert_eq!(bytes(3 << 20), "3.0 MiB");
    assert_eq!(bytes(1536), "1.5 KiB");
}

#[test]
fn exit_codes() {
    assert_eq!(exit_status(Some(0), None), 0);
    assert_eq!(exit_status(Some(3), None), 3);
    assert_eq!(exit_status(Some(256 + 7), None), 7);
    assert_eq!(exit_status(None, Some(9)), 137);
    assert_eq!(exit_status(None, Some(15)), 143);
    assert_eq!(exit_status(None, None), 1);
    assert_eq!(
        exec_error_status("cannot execute 'nosuch': No such file or directory (os error 2)"),
        Some(127)
    );
    assert_eq!(
        exec_error_status("cannot execute '/etc/passwd': Permission denied (os error 13)"),
        Some(126)
    );
    assert_eq!(exec_error_status("No sandbox sb-1"), None);
}

#[test]
fn completion_scripts() {
    let bash = String::from_utf8(misc_completion_script(CompletionShell::Bash)).unwrap();
    assert!(bash.contains("_tartarus()") && bash.contains("port-forward"));
    let zsh = String::from_utf8(misc_completion_script(CompletionShell::Zsh)).unwrap();
    assert!(zsh.starts_with("#compdef tartarus") && zsh.contains("snapshot"));
    let fish = String::from_utf8(misc_completion_script(CompletionShell::Fish)).unwrap();
    assert!(fish.contains("complete -c tartarus") && fish.contains("template"));
}
