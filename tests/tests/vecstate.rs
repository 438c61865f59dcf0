//! tests/linux-progs/vecstate.c on the host: it must notice glibc's AVX code (so the Linux lane's
//! check can fail), and tartarus-init's GLIBC_TUNABLES value (guest_init::xstate) must keep this
//! glibc on SSE code. The guest side of the same check runs in the Linux lane.

use std::process::Command;

use guest_init::xstate::GLIBC_SSE_ONLY;
use tartarus_tests::{build_vecstate, TempDir};

fn run(bin: &std::path::Path, tunables: Option<&str>) -> String {
    let mut cmd = Command::new(bin);
    cmd.env_remove("GLIBC_TUNABLES");
    if let Some(t) = tunables {
        cmd.env("GLIBC_TUNABLES", t);
    }
    let out = cmd.output().expect("run vecstate");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "vecstate failed on the host: {text}");
    text
}

#[test]
fn glibc_tunables_keep_glibc_on_sse_code() {
    let dir = TempDir::new("vecstate");
    let bin = build_vecstate(dir.path());

    let plain = run(&bin, None);
    eprintln!("without tunables: {}", plain.trim_end());
    // The host kernel saves everything it enables.
    assert!(plain.contains("switches=ok"), "{plain}");
    if !plain.contains("state=sse") {
        // An AVX-capable host: glibc picks AVX code there, and vecstate sees it.
        assert!(plain.contains("glibc=avx"), "{plain}");
    }

    let guarded = run(&bin, Some(GLIBC_SSE_ONLY));
    eprintln!("with GLIBC_TUNABLES: {}", guarded.trim_end());
    assert!(guarded.contains("glibc=sse"), "{guarded}");
}
