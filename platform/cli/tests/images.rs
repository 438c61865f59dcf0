//! OCI images: template names for image references, docker-style argv, registry credentials,
//! names in paths, the image table, the new flags' parsing, and the `tartarus` binary's image
//! commands and `run IMAGE` against the stand-in daemon.

mod common;

use std::path::Path;
use std::process::{Command as Proc, Output, Stdio};

use clap::Parser;
use tartarus_cli::cli::*;
use tartarus_cli::client::encode_path;
use tartarus_cli::commands::{
    compose_argv, exec_request, image_template_name, looks_like_image_ref, registry_auth,
};
use tartarus_cli::output::{freed_text, image_table, parse_rfc3339, short_id};
use tartarus_cli::spec::build_spec;
use tartarus_types::{Image, ImagesFreed, RegistryAuth, TemplateImage};

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

fn valid_template_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(c))
}

#[test]
fn image_template_names() {
    assert_eq!(
        image_template_name("docker.io/library/alpine:3.20"),
        "img-docker.io-library-alpine-3.20"
    );
    assert_eq!(
        image_template_name("127.0.0.1:5000/Edge:Latest"),
        "img-127.0.0.1-5000-edge-latest"
    );
    assert_eq!(image_template_name("alpine"), "img-alpine");
    assert_eq!(image_template_name("oci:/srv/ä x"), "img-oci--srv---x");
    // Deterministic, and always a valid template name.
    let refs = [
        "alpine",
        "ghcr.io/org/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "docker-archive:/tmp/A B.tar:name:tag",
        "",
        "ÄÖÜ",
        &"x".repeat(500),
    ];
    for r in refs {
        let n = image_template_name(r);
        assert!(valid_template_name(&n), "{r:?} -> {n:?}");
        assert_eq!(n, image_template_name(r));
    }
}

#[test]
fn long_image_template_names_are_cut_with_a_hash() {
    let a = format!("registry.example.com/team/{}:v1", "service".repeat(10));
    let b = format!("registry.example.com/team/{}:v2", "service".repeat(10));
    let (na, nb) = (image_template_name(&a), image_template_name(&b));
    assert_eq!(na.len(), 63);
    assert_eq!(nb.len(), 63);
    assert_ne!(na, nb, "same prefix, different references");
    assert!(na.starts_with("img-registry.example.com-team-service"));
    let (head, hash) = na.split_at(63 - 13);
    assert!(hash.starts_with('-'), "{na}");
    assert!(
        hash[1..].bytes().all(|c| c.is_ascii_hexdigit()),
        "{na} {head}"
    );
    // Exactly 63 characters is not cut.
    let r = "x".repeat(59);
    assert_eq!(image_template_name(&r), format!("img-{r}"));
    let r = "x".repeat(60);
    assert_ne!(image_template_name(&r), format!("img-{r}"));
    assert_eq!(image_template_name(&r).len(), 63);
}

#[test]
fn image_references_are_recognized() {
    for r in [
        "alpine:3",
        "ghcr.io/a/b",
        "python3.12",
        "a/b",
        "x@sha256:00",
    ] {
        assert!(looks_like_image_ref(r), "{r}");
    }
    for r in ["base", "python", "my-template_1"] {
        assert!(!looks_like_image_ref(r), "{r}");
    }
}

fn img(entrypoint: &[&str], cmd: &[&str]) -> TemplateImage {
    TemplateImage {
        reference: "alpine:3".into(),
        id: "sha256:00".into(),
        entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn v(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn argv_is_composed_like_docker_run() {
    // No image: the command as given, and it is needed.
    assert_eq!(
        compose_argv("base", None, &v(&["ls", "-l"])).unwrap(),
        ["ls", "-l"]
    );
    let e = compose_argv("base", None, &[]).unwrap_err();
    assert!(e.to_string().contains("tartarus run base -- CMD"), "{e}");
    assert_eq!(e.exit_code(), 2);
    // Entrypoint + cmd.
    let i = img(&["/entry", "-x"], &["serve"]);
    assert_eq!(
        compose_argv("t", Some(&i), &[]).unwrap(),
        ["/entry", "-x", "serve"]
    );
    assert_eq!(
        compose_argv("t", Some(&i), &v(&["sh"])).unwrap(),
        ["/entry", "-x", "sh"]
    );
    // Only a cmd: the command replaces it.
    let i = img(&[], &["/bin/sh"]);
    assert_eq!(compose_argv("t", Some(&i), &[]).unwrap(), ["/bin/sh"]);
    assert_eq!(
        compose_argv("t", Some(&i), &v(&["echo", "hi"])).unwrap(),
        ["echo", "hi"]
    );
    // Only an entrypoint.
    let i = img(&["/app"], &[]);
    assert_eq!(compose_argv("t", Some(&i), &[]).unwrap(), ["/app"]);
    assert_eq!(
        compose_argv("t", Some(&i), &v(&["--help"])).unwrap(),
        ["/app", "--help"]
    );
    // Neither: a command is needed.
    let e = compose_argv("t", Some(&img(&[], &[])), &[]).unwrap_err();
    assert!(
        e.to_string().contains("neither an entrypoint nor a cmd"),
        "{e}"
    );
    assert_eq!(
        compose_argv("t", Some(&img(&[], &[])), &v(&["true"])).unwrap(),
        ["true"]
    );
}

#[test]
fn names_in_paths_keep_slashes_and_colons() {
    assert_eq!(
        encode_path("127.0.0.1:5000/edge:latest"),
        "127.0.0.1:5000/edge:latest"
    );
    assert_eq!(encode_path("sha256:abcd"), "sha256:abcd");
    assert_eq!(encode_path("a/b@sha256:00"), "a/b@sha256:00");
    assert_eq!(encode_path("a b?c#d%e"), "a%20b%3Fc%23d%25e");
    assert_eq!(encode_path("ä"), "%C3%A4");
    assert_eq!(encode_path("x&y=z+"), "x%26y%3Dz%2B");
}

fn auth_args(u: Option<&str>, p: Option<&str>, stdin: bool, t: Option<&str>) -> RegistryAuthArgs {
    RegistryAuthArgs {
        username: u.map(Into::into),
        password: p.map(Into::into),
        password_stdin: stdin,
        token: t.map(Into::into),
    }
}

#[test]
fn registry_credentials() {
    let no_env = |_: &str| None;
    let no_stdin = || -> std::io::Result<String> { panic!("stdin read") };
    let basic = |u: &str, p: &str| {
        Some(RegistryAuth::Basic {
            username: u.into(),
            password: p.into(),
        })
    };
    assert_eq!(
        registry_auth(&auth_args(None, None, false, None), no_env, no_stdin).unwrap(),
        None
    );
    assert_eq!(
        registry_auth(&auth_args(None, None, false, Some("tok")), no_env, no_stdin).unwrap(),
        Some(RegistryAuth::Bearer {
            token: "tok".into()
        })
    );
    assert_eq!(
        registry_auth(
            &auth_args(Some("me"), Some("pw"), false, None),
            no_env,
            no_stdin
        )
        .unwrap(),
        basic("me", "pw")
    );
    // --password-stdin: the first line, without its newline.
    let got = registry_auth(&auth_args(Some("me"), None, true, None), no_env, || {
        Ok("s3cret\r\n".into())
    });
    assert_eq!(got.unwrap(), basic("me", "s3cret"));
    let e = registry_auth(&auth_args(Some("me"), None, true, None), no_env, || {
        Ok("\n".into())
    })
    .unwrap_err();
    assert_eq!(e.exit_code(), 2);
    // The environment, as a fallback for either part.
    let env = |k: &str| match k {
        "TARTARUS_REGISTRY_USER" => Some("envuser".to_string()),
        "TARTARUS_REGISTRY_PASSWORD" => Some("envpw".to_string()),
        _ => None,
    };
    assert_eq!(
        registry_auth(&auth_args(None, None, false, None), env, no_stdin).unwrap(),
        basic("envuser", "envpw")
    );
    assert_eq!(
        registry_auth(&auth_args(Some("me"), None, false, None), env, no_stdin).unwrap(),
        basic("me", "envpw")
    );
    // A user without a password, and a password without a user, are usage errors.
    let e = registry_auth(&auth_args(Some("me"), None, false, None), no_env, no_stdin);
    assert!(e.unwrap_err().to_string().contains("--password-stdin"));
    let e = registry_auth(&auth_args(None, Some("pw"), false, None), no_env, no_stdin);
    assert_eq!(e.unwrap_err().exit_code(), 2);
}

#[test]
fn image_commands_parse() {
    let Command::Image(ImageCmd::Pull(a)) = parse(&[
        "image",
        "pull",
        "127.0.0.1:5000/edge:latest",
        "--name",
        "edge",
        "--username",
        "me",
        "--password-stdin",
        "--build",
        "-q",
    ])
    .command
    else {
        panic!()
    };
    assert_eq!(a.reference, "127.0.0.1:5000/edge:latest");
    assert_eq!(a.name.as_deref(), Some("edge"));
    assert_eq!(a.auth.username.as_deref(), Some("me"));
    assert!(a.auth.password_stdin && a.build && a.quiet);
    let Command::Image(ImageCmd::Pull(a)) =
        parse(&["image", "pull", "alpine", "--token", "t"]).command
    else {
        panic!()
    };
    assert_eq!(a.auth.token.as_deref(), Some("t"));
    assert!(!a.quiet && !a.build);
    fails(&["image", "pull"]);
    fails(&["image", "pull", "a", "--token", "t", "--username", "u"]);
    fails(&[
        "image",
        "pull",
        "a",
        "--username",
        "u",
        "--password",
        "p",
        "--password-stdin",
    ]);

    let Command::Image(ImageCmd::Ls(a)) = parse(&["image", "ls", "-q"]).command else {
        panic!()
    };
    assert!(a.quiet && !a.json);
    let Command::Image(ImageCmd::Ls(a)) = parse(&["image", "list", "--json"]).command else {
        panic!()
    };
    assert!(a.json);
    fails(&["image", "ls", "-q", "--json"]);

    let Command::Image(ImageCmd::Inspect { names }) =
        parse(&["image", "inspect", "alpine", "sha256:0123"]).command
    else {
        panic!()
    };
    assert_eq!(names, ["alpine", "sha256:0123"]);
    fails(&["image", "inspect"]);

    let Command::Image(ImageCmd::Rm(a)) = parse(&["image", "rm", "-f", "a", "b"]).command else {
        panic!()
    };
    assert!(a.force);
    assert_eq!(a.names, ["a", "b"]);
    let Command::Image(ImageCmd::Rm(a)) = parse(&["image", "delete", "a"]).command else {
        panic!()
    };
    assert!(!a.force);
    fails(&["image", "rm"]);
    assert!(matches!(
        parse(&["image", "prune"]).command,
        Command::Image(ImageCmd::Prune)
    ));
}

#[test]
fn template_build_from_image_parses_and_builds_the_spec() {
    let Command::Template(TemplateCmd::Build(a)) = parse(&[
        "template",
        "build",
        "--name",
        "py",
        "--from-image",
        "python:3.12-slim",
        "--username",
        "me",
        "--password-stdin",
    ])
    .command
    else {
        panic!()
    };
    assert_eq!(a.from_image.as_deref(), Some("python:3.12-slim"));
    assert!(a.auth.password_stdin);
    // No kernel needed: the daemon's default.
    let s = build_spec(&a).unwrap();
    assert_eq!(s.image.as_deref(), Some("python:3.12-slim"));
    assert_eq!((s.kernel.as_str(), s.rootfs.as_str()), ("", ""));
    fails(&[
        "template",
        "build",
        "--name",
        "x",
        "--from-image",
        "a",
        "--rootfs",
        "/r",
    ]);
    // Neither a rootfs nor an image.
    let e = build_spec(&TemplateBuildArgs {
        name: Some("z".into()),
        kernel: Some("/k".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("--from-image REF"), "{e}");
    // A spec file's image; --rootfs replaces it, --from-image replaces a file's rootfs.
    let dir = common::temp_dir("imgspec");
    let f = dir.join("t.toml");
    std::fs::write(&f, "name = \"a\"\nimage = \"alpine:3\"\n").unwrap();
    let s = build_spec(&TemplateBuildArgs {
        file: Some(f.clone()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        (s.image.as_deref(), s.kernel.as_str()),
        (Some("alpine:3"), "")
    );
    let s = build_spec(&TemplateBuildArgs {
        file: Some(f),
        rootfs: Some("/r".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!((s.image, s.rootfs.as_str()), (None, "/r"));
    let g = dir.join("u.toml");
    std::fs::write(&g, "name = \"a\"\nkernel = \"k\"\nrootfs = \"r\"\n").unwrap();
    let s = build_spec(&TemplateBuildArgs {
        file: Some(g),
        from_image: Some("alpine:3".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        (s.image.as_deref(), s.rootfs.as_str()),
        (Some("alpine:3"), "")
    );
    assert_eq!(Path::new(&s.kernel), dir.join("k"));
}

#[test]
fn run_and_exec_take_image_and_user() {
    let Command::Run(r) = parse(&["run", "--image", "alpine", "-u", "1000:1000"]).command else {
        panic!()
    };
    assert!(r.image && r.cmd.is_empty());
    assert_eq!(r.template, "alpine");
    assert_eq!(r.exec.user.as_deref(), Some("1000:1000"));
    let Command::Run(r) = parse(&["run", "alpine:3", "-v", "--", "ls", "-u"]).command else {
        panic!()
    };
    assert!(!r.image && r.verbose);
    assert_eq!(r.cmd, ["ls", "-u"]);
    assert_eq!(r.exec.user, None);
    let Command::Exec(e) = parse(&["exec", "--user", "nobody", "sb-1", "--", "id"]).command else {
        panic!()
    };
    assert_eq!(e.exec.user.as_deref(), Some("nobody"));
    assert_eq!(
        exec_request(&e.exec, &e.cmd).user.as_deref(),
        Some("nobody")
    );
}

#[test]
fn times_ids_tables() {
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(parse_rfc3339("2026-01-01T00:00:00Z"), Some(1_767_225_600));
    assert_eq!(
        parse_rfc3339("2026-01-01T02:00:00.123+02:00"),
        Some(1_767_225_600)
    );
    assert_eq!(
        parse_rfc3339("2000-02-29T12:30:15-01:30"),
        Some(951_827_415 + 5400)
    );
    for bad in [
        "",
        "yesterday",
        "2026-13-01T00:00:00Z",
        "2026-01-01T00:00:00",
    ] {
        assert_eq!(parse_rfc3339(bad), None, "{bad}");
    }
    assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
    assert_eq!(short_id("0123"), "0123");

    let image = |id: &str, names: &[&str]| Image {
        id: id.into(),
        names: names.iter().map(|s| s.to_string()).collect(),
        source: String::new(),
        size: 3 * 1024 * 1024,
        layers: vec![],
        created: None,
        pulled_at: "2026-01-01T00:00:00Z".into(),
        entrypoint: vec![],
        cmd: vec![],
        env: vec![],
        working_dir: String::new(),
        user: String::new(),
        labels: Default::default(),
        exposed_ports: vec![],
        rootfs_bytes: None,
        templates: vec![],
    };
    let items = [
        image("sha256:0123456789abcdef", &["alpine:3", "alpine:latest"]),
        image("sha256:fedcba9876543210", &[]),
    ];
    let t = image_table(&items, 1_767_225_600 + 7200);
    assert_eq!(
        t,
        "NAME            ID             SIZE      PULLED\n\
         alpine:3        0123456789ab   3.0 MiB   2h ago\n\
         alpine:latest   0123456789ab   3.0 MiB   2h ago\n\
         <none>          fedcba987654   3.0 MiB   2h ago\n"
    );
    let f = ImagesFreed {
        images: vec!["sha256:aa".into()],
        blobs: 2,
        rootfs: 1,
        bytes: 2048,
    };
    assert_eq!(
        freed_text(&f),
        "Deleted: sha256:aa\nFreed 2.0 KiB (1 image, 2 blobs, 1 root file system)\n"
    );
    assert_eq!(
        freed_text(&ImagesFreed::default()),
        "Freed 0 B (0 images, 0 blobs, 0 root file systems)\n"
    );
}

// The binary against the stand-in daemon.

fn tartarus(s: &common::StandIn, args: &[&str], envs: &[(&str, &str)], stdin: &[u8]) -> Output {
    use std::io::Write;
    let home = s.dir.join("home");
    let mut child = Proc::new(env!("CARGO_BIN_EXE_tartarus"))
        .args(["--host", &s.unix_host()])
        .args(args)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("TARTARUS_HOST")
        .env_remove("TARTARUS_PROFILE")
        .env_remove("TARTARUS_REGISTRY_USER")
        .env_remove("TARTARUS_REGISTRY_PASSWORD")
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The body of the last request to exactly `path`.
fn sent(s: &common::StandIn, method: &str, path: &str) -> serde_json::Value {
    serde_json::from_slice(&s.exact(method, path).unwrap().body).unwrap()
}

#[test]
fn image_pull_prints_the_id() {
    let s = common::start();
    let o = tartarus(
        &s,
        &[
            "image",
            "pull",
            "ghcr.io/org/app:1",
            "--username",
            "me",
            "--password-stdin",
        ],
        &[],
        b"pw\n",
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o), format!("{}\n", common::IMAGE_ID));
    assert!(
        err(&o).contains("pulled ghcr.io/org/app:1: 2 layers"),
        "{}",
        err(&o)
    );
    let body = sent(&s, "POST", "/images/pull");
    assert_eq!(
        body,
        serde_json::json!({"reference": "ghcr.io/org/app:1", "name": null,
            "auth": {"username": "me", "password": "pw"}, "build": false})
    );
    // -q: the id alone; the environment's credentials.
    let o = tartarus(
        &s,
        &["image", "pull", "a/b", "--name", "b", "--build", "-q"],
        &[
            ("TARTARUS_REGISTRY_USER", "u"),
            ("TARTARUS_REGISTRY_PASSWORD", "p"),
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o), format!("{}\n", common::IMAGE_ID));
    let body = sent(&s, "POST", "/images/pull");
    assert_eq!(
        body["auth"],
        serde_json::json!({"username": "u", "password": "p"})
    );
    assert_eq!(
        (body["name"].as_str(), body["build"].as_bool()),
        (Some("b"), Some(true))
    );
    // A failed pull.
    let o = tartarus(&s, &["image", "pull", "bad/ref"], &[], b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("tartarus: pulling bad/ref failed: manifest unknown"),
        "{}",
        err(&o)
    );
}

#[test]
fn image_ls_inspect_rm_prune() {
    let s = common::start();
    let o = tartarus(&s, &["image", "ls"], &[], b"");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let text = out(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("NAME"), "{text}");
    assert!(lines[1].starts_with("docker.io/library/alpine:3.20   0123456789ab   3.1 MiB"));
    assert!(lines[3].starts_with("<none>"), "{text}");
    let o = tartarus(&s, &["image", "ls", "-q"], &[], b"");
    assert_eq!(out(&o), "0123456789ab\nfedcba987654\n");
    let o = tartarus(&s, &["image", "ls", "--json"], &[], b"");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 2);

    let o = tartarus(
        &s,
        &["image", "inspect", "127.0.0.1:5000/edge:latest"],
        &[],
        b"",
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["names"][0], "127.0.0.1:5000/edge:latest");
    assert!(s
        .exact("GET", "/images/127.0.0.1:5000/edge:latest")
        .is_some());
    let o = tartarus(&s, &["image", "inspect", "a", "missing"], &[], b"");
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert!(err(&o).contains("missing: No image missing"), "{}", err(&o));

    let o = tartarus(&s, &["image", "rm", "alpine:3"], &[], b"");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(
        out(&o),
        format!(
            "Deleted: {}\nFreed 3.1 MiB (1 image, 3 blobs, 1 root file system)\n",
            common::IMAGE_ID
        )
    );
    assert!(s.exact("DELETE", "/images/alpine:3?force=false").is_some());
    let o = tartarus(&s, &["image", "rm", "used"], &[], b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("(-f deletes it anyway)"), "{}", err(&o));
    let o = tartarus(&s, &["image", "rm", "-f", "used"], &[], b"");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(s.exact("DELETE", "/images/used?force=true").is_some());

    let o = tartarus(&s, &["image", "prune"], &[], b"");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(out(&o).ends_with("Freed 3.1 MiB (1 image, 3 blobs, 1 root file system)\n"));
}

#[test]
fn template_build_from_image() {
    let s = common::start();
    let o = tartarus(
        &s,
        &[
            "template",
            "build",
            "--name",
            "py",
            "--from-image",
            "python:3.12",
            "--token",
            "t",
        ],
        &[],
        b"",
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(out(&o).contains("Image:"), "{}", out(&o));
    let body = sent(&s, "POST", "/templates");
    assert_eq!(body["image"], "python:3.12");
    assert_eq!(body["kernel"], "");
    assert_eq!(body["registry_auth"], serde_json::json!({"token": "t"}));
    // Credentials without an image are a usage error.
    let o = tartarus(
        &s,
        &[
            "template", "build", "--name", "x", "--kernel", "/k", "--rootfs", "/r", "--token", "t",
        ],
        &[],
        b"",
    );
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
}

#[test]
fn run_an_image_builds_its_template_once() {
    let s = common::start();
    let o = tartarus(&s, &["run", "docker.io/library/alpine:3.20"], &[], b"");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    // The image's entrypoint and cmd.
    assert!(out(&o).starts_with("argv=/entry default "), "{}", out(&o));
    assert!(
        err(&o).contains("built template img-docker.io-library-alpine-3.20"),
        "{}",
        err(&o)
    );
    let body = sent(&s, "POST", "/templates");
    assert_eq!(body["name"], "img-docker.io-library-alpine-3.20");
    assert_eq!(body["image"], "docker.io/library/alpine:3.20");
    assert_eq!(
        sent(&s, "POST", "/sandboxes")["template"],
        "img-docker.io-library-alpine-3.20"
    );
    let builds = |s: &common::StandIn| {
        s.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.uri == "/templates")
            .count()
    };
    assert_eq!(builds(&s), 1);
    // Again, with a command and a user: no second build.
    let o = tartarus(
        &s,
        &[
            "run",
            "-u",
            "nobody",
            "docker.io/library/alpine:3.20",
            "--",
            "ls",
            "/",
        ],
        &[],
        b"",
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(out(&o).starts_with("argv=/entry ls / "), "{}", out(&o));
    assert_eq!(builds(&s), 1);
    assert_eq!(
        sent(&s, "POST", "/sandboxes/sb-000000000001/exec")["user"],
        "nobody"
    );
    // --image forces a plain name to be an image.
    let o = tartarus(&s, &["run", "--image", "alpine", "--", "true"], &[], b"");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(sent(&s, "POST", "/sandboxes")["template"], "img-alpine");
    // An image with neither entrypoint nor cmd needs a command.
    let o = tartarus(&s, &["run", "noentry/x"], &[], b"");
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("neither an entrypoint nor a cmd"),
        "{}",
        err(&o)
    );
}

#[test]
fn run_a_plain_template_is_unchanged() {
    let s = common::start();
    let o = tartarus(&s, &["run", "base", "--", "echo", "hi"], &[], b"");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    // No template lookup for a plain template name with a command.
    assert!(s.last("GET", "/templates").is_none());
    assert!(s.last("POST", "/templates").is_none());
    // Without a command: the template has no image, so that is a usage error.
    let o = tartarus(&s, &["run", "base"], &[], b"");
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("tartarus run base -- CMD"), "{}", err(&o));
    // A missing plain template without a command.
    let o = tartarus(&s, &["run", "nosuch"], &[], b"");
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(err(&o).contains("no template nosuch (for an image, use --image)"));
}
