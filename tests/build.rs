//! The slow Linux lane (tests/tests/linux*.rs) runs by default; `TARTARUS_LINUX_TESTS=0` at build
//! time marks it `#[ignore]`d (it can still be run with `--ignored`).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tartarus_skip_linux_tests)");
    println!("cargo::rerun-if-env-changed=TARTARUS_LINUX_TESTS");
    if std::env::var("TARTARUS_LINUX_TESTS").as_deref() == Ok("0") {
        println!("cargo::rustc-cfg=tartarus_skip_linux_tests");
    }
}
