//! Argument parsing of every command (`Cli::try_parse_from`).

use clap::Parser;
use tartarus_cli::cli::*;

fn parse(args: &[&str]) -> Cli {
    let mut v = vec!["tartarus"];
    v.extend_from_slice(args);
    Cli::try_parse_from(v).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn fails(args: &[&str]) -> clap::Error {
    let mut v = vec!["tartarus"];
    v.extend_from_slice(args);
    Cli::try_parse_from(v).expect_err(&format!("{args:?} should not parse"))
}

#[test]
fn globals() {
    let c = parse(&[
        "--host",
        "http://127.0.0.1:7070",
        "--profile",
        "lab",
        "-o",
        "json",
        "health",
    ]);
    assert_eq!(c.host.as_deref(), Some("http://127.0.0.1:7070"));
    assert_eq!(c.profile.as_deref(), Some("lab"));
    assert_eq!(c.output, Some(OutputFormat::Json));
    // Globals also after the subcommand.
    let c = parse(&["sandbox", "ls", "-o", "table", "--host", "unix:///x.sock"]);
    assert_eq!(c.output, Some(OutputFormat::Table));
    assert_eq!(c.host.as_deref(), Some("unix:///x.sock"));
    assert!(matches!(parse(&["health"]).command, Command::Health));
    assert_eq!(fails(&["-o", "yaml", "health"]).exit_code(), 2);
    assert_eq!(fails(&["nonsense"]).exit_code(), 2);
    let v = fails(&["--version"]);
    assert_eq!(v.kind(), clap::error::ErrorKind::DisplayVersion);
}

#[test]
fn run() {
    let c = parse(&[
        "run",
        "python",
        "--timeout",
        "30",
        "--network",
        "nat",
        "-e",
        "A=1",
        "-e",
        "B=x=y",
        "-w",
        "/tmp",
        "--keep",
        "--",
        "python3",
        "-c",
        "print(1)",
    ]);
    let Command::Run(r) = c.command else { panic!() };
    assert_eq!(r.template, "python");
    assert_eq!(r.timeout, Some(30));
    assert_eq!(r.network, Network::Nat);
    assert_eq!(
        r.exec.env,
        [("A".into(), "1".into()), ("B".into(), "x=y".into())]
    );
    assert_eq!(r.exec.workdir.as_deref(), Some("/tmp"));
    assert!(r.keep);
    assert_eq!(r.cmd, ["python3", "-c", "print(1)"]);
    // Flags after the command belong to the command.
    let Command::Run(r) = parse(&["run", "base", "--", "ls", "--keep", "-e"]).command else {
        panic!()
    };
    assert!(!r.keep);
    assert_eq!(r.cmd, ["ls", "--keep", "-e"]);
    assert_eq!(r.network, Network::None);
    // The command is optional (a template made from an image has a default one).
    let Command::Run(r) = parse(&["run", "base"]).command else {
        panic!()
    };
    assert!(r.cmd.is_empty() && !r.image);
    fails(&["run", "base", "-e", "NOEQUALS", "--", "ls"]);
    fails(&["run", "base", "--network", "bridge", "--", "ls"]);
}

#[test]
fn sandbox_commands() {
    let c = parse(&[
        "sandbox",
        "create",
        "base",
        "--timeout",
        "60",
        "--network",
        "nat",
        "--label",
        "a=b",
        "-l",
        "c=d",
    ]);
    let Command::Sandbox(SandboxCmd::Create(a)) = c.command else {
        panic!()
    };
    assert_eq!(a.template.as_deref(), Some("base"));
    assert_eq!(a.labels.len(), 2);
    let c = parse(&["sandbox", "create", "--snapshot", "snap-1"]);
    let Command::Sandbox(SandboxCmd::Create(a)) = c.command else {
        panic!()
    };
    assert_eq!((a.template, a.snapshot.as_deref()), (None, Some("snap-1")));
    fails(&["sandbox", "create"]);
    fails(&["sandbox", "create", "base", "--snapshot", "snap-1"]);

    let Command::Sandbox(SandboxCmd::Ls(a)) =
        parse(&["sandbox", "ls", "--state", "running"]).command
    else {
        panic!()
    };
    assert_eq!(a.state.as_deref(), Some("running"));
    fails(&["sandbox", "ls", "--state", "sleeping"]);
    assert!(matches!(parse(&["ps"]).command, Command::Ps(_)));
    assert!(matches!(
        parse(&["sb", "list"]).command,
        Command::Sandbox(SandboxCmd::Ls(_))
    ));
    assert!(matches!(
        parse(&["sandbox", "inspect", "sb-1"]).command,
        Command::Sandbox(SandboxCmd::Inspect { .. })
    ));
    let Command::Sandbox(SandboxCmd::Rm(a)) =
        parse(&["sandbox", "rm", "sb-1", "sb-2", "--grace", "5"]).command
    else {
        panic!()
    };
    assert_eq!((a.ids.len(), a.grace), (2, Some(5)));
    let Command::Rm(a) = parse(&["rm", "sb-1"]).command else {
        panic!()
    };
    assert_eq!(a.ids, ["sb-1"]);
    fails(&["rm"]);
    assert!(matches!(
        parse(&["sandbox", "pause", "sb-1"]).command,
        Command::Sandbox(SandboxCmd::Pause { .. })
    ));
    assert!(matches!(
        parse(&["sandbox", "resume", "sb-1"]).command,
        Command::Sandbox(SandboxCmd::Resume { .. })
    ));
}

#[test]
fn exec() {
    let Command::Exec(e) = parse(&["exec", "-it", "sb-1", "--", "sh"]).command else {
        panic!()
    };
    assert!(e.interactive && e.tty && !e.detach);
    assert_eq!(
        (e.id.as_str(), e.cmd.as_slice()),
        ("sb-1", &["sh".to_string()][..])
    );
    let Command::Exec(e) = parse(&[
        "exec",
        "-d",
        "-e",
        "K=V",
        "-w",
        "/srv",
        "--timeout",
        "9",
        "sb-1",
        "--",
        "sleep",
        "10",
    ])
    .command
    else {
        panic!()
    };
    assert!(e.detach);
    assert_eq!(e.timeout, Some(9));
    assert_eq!(e.exec.workdir.as_deref(), Some("/srv"));
    let Command::Exec(e) = parse(&["exec", "sb-1", "--", "ls", "-l"]).command else {
        panic!()
    };
    assert_eq!(e.cmd, ["ls", "-l"]);
    fails(&["exec", "-d", "-i", "sb-1", "--", "sh"]);
    fails(&["exec", "sb-1"]);
}

#[test]
fn logs_cp_port_forward() {
    let Command::Logs(l) = parse(&["logs", "-f", "--tail", "20", "sb-1"]).command else {
        panic!()
    };
    assert!(l.follow);
    assert_eq!(l.tail, Some(20));
    let Command::Cp(c) = parse(&["cp", "--mode", "0755", "./a", "sb-1:/a"]).command else {
        panic!()
    };
    assert_eq!(
        (c.src.as_str(), c.dst.as_str(), c.mode),
        ("./a", "sb-1:/a", Some(0o755))
    );
    fails(&["cp", "--mode", "999", "a", "sb-1:/a"]);
    fails(&["cp", "a"]);
    let Command::PortForward(p) =
        parse(&["port-forward", "sb-1", "8080:80", "--address", "0.0.0.0"]).command
    else {
        panic!()
    };
    assert_eq!((p.ports, p.address.as_str()), ((8080, 80), "0.0.0.0"));
    let Command::PortForward(p) = parse(&["port-forward", "sb-1", "3000"]).command else {
        panic!()
    };
    assert_eq!((p.ports, p.address.as_str()), ((3000, 3000), "127.0.0.1"));
    fails(&["port-forward", "sb-1", "8080:http"]);
    fails(&["port-forward", "sb-1", "0:80"]);
}

#[test]
fn snapshot_commands() {
    assert!(matches!(
        parse(&["snapshot", "create", "sb-1", "--leave-paused"]).command,
        Command::Snapshot(SnapshotCmd::Create {
            leave_paused: true,
            ..
        })
    ));
    let Command::Snapshot(SnapshotCmd::Ls { sandbox }) =
        parse(&["snapshot", "ls", "--sandbox", "sb-1"]).command
    else {
        panic!()
    };
    assert_eq!(sandbox.as_deref(), Some("sb-1"));
    let Command::Snapshot(SnapshotCmd::Rm { ids }) =
        parse(&["snapshot", "rm", "snap-1", "snap-2"]).command
    else {
        panic!()
    };
    assert_eq!(ids.len(), 2);
    assert!(matches!(
        parse(&["snapshot", "inspect", "snap-1"]).command,
        Command::Snapshot(SnapshotCmd::Inspect { .. })
    ));
    fails(&["snapshot", "rm"]);
}

#[test]
fn template_commands() {
    assert!(matches!(
        parse(&["template", "ls"]).command,
        Command::Template(TemplateCmd::Ls)
    ));
    assert!(matches!(
        parse(&["template", "inspect", "base"]).command,
        Command::Template(TemplateCmd::Inspect { .. })
    ));
    assert!(matches!(
        parse(&["template", "rm", "base"]).command,
        Command::Template(TemplateCmd::Rm { .. })
    ));
    let Command::Template(TemplateCmd::Init { dir, name }) =
        parse(&["template", "init", "py", "--name", "python"]).command
    else {
        panic!()
    };
    assert_eq!(
        (dir.to_str(), name.as_deref()),
        (Some("py"), Some("python"))
    );
    let Command::Template(TemplateCmd::Build(b)) = parse(&[
        "template",
        "build",
        "--name",
        "py",
        "--kernel",
        "vmlinux",
        "--rootfs",
        "r.ext4",
        "--vcpus",
        "2",
        "--memory",
        "512",
        "--disk",
        "2048",
        "--boot-args",
        "-- quiet",
        "--env",
        "LANG=C",
        "--warmup",
        "python3 -c 1",
        "--warmup-bg",
        "srv",
        "--replace",
        "-v",
    ])
    .command
    else {
        panic!()
    };
    assert_eq!(b.name.as_deref(), Some("py"));
    assert_eq!(
        (b.vcpus, b.memory, b.disk),
        (Some(2), Some(512), Some(2048))
    );
    assert_eq!(b.boot_args.as_deref(), Some("-- quiet"));
    assert_eq!((b.warmup.len(), b.warmup_bg.len()), (1, 1));
    assert!(b.replace && b.verbose);
    let Command::Template(TemplateCmd::Build(b)) =
        parse(&["template", "build", "-f", "t.toml"]).command
    else {
        panic!()
    };
    assert_eq!(b.file.as_deref().and_then(|p| p.to_str()), Some("t.toml"));
}

#[test]
fn events_health_completions() {
    let Command::Events(e) = parse(&["events", "-f", "--since", "41"]).command else {
        panic!()
    };
    assert!(e.follow);
    assert_eq!(e.since, Some(41));
    for (s, want) in [
        ("bash", CompletionShell::Bash),
        ("zsh", CompletionShell::Zsh),
        ("fish", CompletionShell::Fish),
    ] {
        let Command::Completions { shell } = parse(&["completions", s]).command else {
            panic!()
        };
        assert_eq!(shell, want);
    }
    fails(&["completions", "powershell"]);
}

#[test]
fn value_parsers() {
    assert_eq!(parse_key_val("A=b=c").unwrap(), ("A".into(), "b=c".into()));
    assert_eq!(parse_key_val("A=").unwrap(), ("A".into(), String::new()));
    assert!(parse_key_val("=x").is_err());
    assert_eq!(parse_mode("644").unwrap(), 0o644);
    assert_eq!(parse_mode("0o4755").unwrap(), 0o4755);
    assert!(parse_mode("8").is_err());
    assert_eq!(parse_port_pair("1:2").unwrap(), (1, 2));
    assert!(parse_port_pair("70000").is_err());
}

#[test]
fn clap_definition_is_consistent() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}
