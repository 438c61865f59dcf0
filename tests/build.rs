//! Turns the slow Linux lane on at compile time: with `TARTARUS_LINUX_TESTS=1` the tests in
//! tests/tests/linux_*.rs are not `#[ignore]`d (they can always be run with `--ignored`).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tartarus_linux_tests)");
    println!("cargo::rerun-if-env-changed=TARTARUS_LINUX_TESTS");
    if std::env::var("TARTARUS_LINUX_TESTS").as_deref() == Ok("1") {
        println!("cargo::rustc-cfg=tartarus_linux_tests");
    }
}
