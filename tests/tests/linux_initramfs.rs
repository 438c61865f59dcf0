//! The Linux lane, first step: our microvm kernel (kernels/build-kernel.sh, cached) boots a tiny
//! initramfs around tartarus-init (kernels/build-initramfs.sh, cached) on tartarus-vmm, reaches
//! `tartarus-init: ready`, and powers off by itself (`tartarus.poweroff_after_ready`), so the VMM
//! exits 0. Slow on PVM hosts (see kernels/README.md), and the Linux lane (tests/linux.rs) already
//! boots Linux once per run, so this one only runs with `--ignored`.

use std::time::{Duration, Instant};

use serde_json::json;
use tartarus_tests::{script_output, Vmm};

/// The PVM work-arounds (shared/PVM.md); the VMM will add them itself in a later slice.
const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 noxsave 8250.nr_uarts=1 \
    clearcpuid=smap,popcnt,cx16,erms,fsrm clocksource=kvm-clock rdinit=/sbin/init \
    tartarus.poweroff_after_ready";
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

#[test]
#[ignore = "a second slow Linux boot: the Linux lane (tests/linux.rs) boots from virtio-blk; run with --ignored"]
fn linux_boots_to_tartarus_init_ready_and_powers_off() {
    let t = Instant::now();
    let vmlinux = script_output("kernels/build-kernel.sh", &[], "vmlinux");
    let initramfs = script_output("kernels/build-initramfs.sh", &[], "initramfs");
    eprintln!("kernel + initramfs ready in {:?}", t.elapsed());

    let mut vmm = Vmm::start_api();
    vmm.put_ok(
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": 256}),
    );
    vmm.put_ok(
        "/boot-source",
        &json!({"kernel_image_path": vmlinux, "initrd_path": initramfs, "boot_args": BOOT_ARGS}),
    );
    let t = Instant::now();
    vmm.start();
    let out = vmm.wait_for_output("tartarus-init: ready", BOOT_TIMEOUT);
    eprintln!("tartarus-init ready {:?} after InstanceStart", t.elapsed());
    assert!(out.contains("Run /sbin/init as init process"), "{out}");
    let status = vmm.wait_exit(Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(0),
        "VMM exit after power-off:\n{}",
        vmm.diagnostics()
    );
    eprintln!("VMM exited 0 {:?} after InstanceStart", t.elapsed());
}
