//! `tartarus-init`: PID 1 of a Tartarus Linux guest (see guest-init/README.md).

fn main() {
    if std::process::id() != 1 {
        eprintln!("tartarus-init: must run as PID 1 (the guest's init)");
        std::process::exit(2);
    }
    guest_init::init::run();
}
