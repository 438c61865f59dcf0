//! `--pvm-workarounds`: on a PVM host the VMM hides the CPU features PVM cannot emulate on the
//! guest kernel's command line; operators can force it on or off, and words the user already
//! set are not repeated.

use std::path::Path;

use tartarus_tests::{guests, Vmm};

fn boot_args_line(mode: &str, boot_args: &str) -> String {
    let mut vmm = Vmm::builder().args(["--pvm-workarounds", mode]).spawn();
    vmm.wait_for_socket();
    vmm.configure(1, 64, &guests().hello_elf, boot_args);
    vmm.start();
    let out = vmm.wait_success();
    out.lines()
        .find_map(|l| l.strip_prefix("boot_args: "))
        .unwrap_or_else(|| panic!("no boot_args line: {out}"))
        .to_string()
}

#[test]
fn on_adds_the_work_arounds() {
    let line = boot_args_line("on", "foo=bar");
    assert_eq!(
        line,
        "foo=bar noxsave clearcpuid=smap,popcnt,cx16,erms,fsrm"
    );
}

#[test]
fn off_leaves_the_command_line_alone() {
    assert_eq!(boot_args_line("off", "foo=bar"), "foo=bar");
}

#[test]
fn the_users_own_words_win() {
    let line = boot_args_line("on", "clearcpuid=smap noxsave");
    assert_eq!(line, "clearcpuid=smap noxsave");
}

#[test]
fn auto_follows_the_host() {
    let line = boot_args_line("auto", "x=1");
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    assert_eq!(line.contains("noxsave"), pvm, "{line}");
}
