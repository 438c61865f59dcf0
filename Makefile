# Convenience targets; each is a thin wrapper around a script (see README.md).
.PHONY: setup demo demo-vmm test bench guests kernel initramfs rootfs rootfs-python run-linux run-linux-python linux-test clean-linux

setup:            ## install packages, build test guests and the VMM
	scripts/setup.sh
demo:             ## the main job: a Linux sandbox running a command through tartarusd
	scripts/demo.sh
demo-vmm:         ## the VMM alone: boot a microVM through its API with curl
	scripts/demo-vmm.sh
test:             ## the whole test suite (what .ci/run runs)
	scripts/test.sh
bench:            ## all benchmarks, JSON on stdout
	scripts/bench.sh
guests:           ## the small test guests (build/guests)
	$(MAKE) -C tests/guests
kernel:           ## the microvm kernel (cached)
	kernels/build-kernel.sh
initramfs:        ## the tiny initramfs around tartarus-init (cached)
	kernels/build-initramfs.sh
rootfs:           ## ext4 root fs: tartarus-init + busybox (cached)
	kernels/build-rootfs.sh --variant base
rootfs-python:    ## ext4 root fs with Debian's python3 (cached; needs root)
	kernels/build-rootfs.sh --variant python
run-linux:        ## boot Linux with a shell on the serial console (TAP=, VSOCK_UDS= optional)
	scripts/run-linux.sh --variant base $(if $(TAP),--tap $(TAP)) $(if $(VSOCK_UDS),--vsock-uds $(VSOCK_UDS))
run-linux-python: ## the same with the python3 root fs
	scripts/run-linux.sh --variant python $(if $(TAP),--tap $(TAP)) $(if $(VSOCK_UDS),--vsock-uds $(VSOCK_UDS))
linux-test:       ## only the Linux lane of the test suite
	TARTARUS_LINUX_TESTS=1 cargo test -p tartarus-tests --test linux -- --nocapture
clean-linux:      ## forget the VM disk copies of run-linux
	rm -rf build/linux
help:
	@grep -E '^[a-z-]+:.*##' Makefile | sed 's/:.*##/\t/'
