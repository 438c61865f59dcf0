#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and integration tests that start real
# tartarus-vmm processes on /dev/kvm with the test guests. Installs and builds what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ "${TARTARUS_LINUX_TESTS:-1}" != 0 ]; then
  # The Linux lane's kernel and root fs (cached; the first kernel build takes ~5 min on 2 cores).
  echo "test: building the microvm kernel and the root fs"
  kernels/build-kernel.sh >/dev/null
  kernels/build-rootfs.sh --variant base >/dev/null
fi

echo "test: cargo fmt --check"
cargo fmt --all -- --check
echo "test: cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "test: cargo test"
cargo test --workspace -- --test-threads=2
