#!/usr/bin/env bash
# Installs what Tartarus needs on a fresh Debian machine and builds it.
#   scripts/setup.sh            debug build (what the tests use)
#   scripts/setup.sh --release  release build as well (demo, benchmarks)
# Safe to run again: packages already present are not reinstalled, builds are incremental.
set -euo pipefail
cd "$(dirname "$0")/.."

# gcc/binutils/make/python3 build the test guests; curl drives the API in the demo;
# libclang-dev is needed by the userfaultfd crate's bindgen step.
# iproute2 makes taps for the net tests, e2fsprogs (debugfs) reads the Linux lane's disk and
# makes the sandboxes' writable layers; iptables does the sandboxes' nat networking.
# Images: docker-registry (the CNCF distribution registry) and skopeo serve and fill the test
# registry, apache2-utils gives htpasswd, debootstrap and zstd make the test images, umoci is
# the benchmark's peer pipeline, attr reads xattrs in checks.
# Audit: rsyslog + rsyslog-relp are the real syslog sink of platform/audit's tests and bench;
# rsyslog-gnutls is rsyslog's GnuTLS stream driver, for the sink's TLS listener (tls://, RFC 5425).
# Auth: nodejs (with npm) runs the real OIDC provider of tartarus-auth's tests (npm
# oauth2-mock-server, installed by the tests into ~/.cache/tartarus/oauth2-mock-server-<version>).
PACKAGES=(build-essential binutils make python3 curl libclang-dev pkg-config iproute2 e2fsprogs iptables
  docker-registry skopeo umoci apache2-utils debootstrap zstd attr nodejs rsyslog rsyslog-relp
  rsyslog-gnutls)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust (rustup) first" >&2; exit 1; }

for dev in /dev/kvm; do
  [ -r "$dev" ] && [ -w "$dev" ] || { echo "setup: $dev is missing or not accessible to $(id -un)" >&2; exit 1; }
done

echo "setup: building test guests"
make -s -C tests/guests OUT="$PWD/build/guests"

echo "setup: building tartarus (debug)"
cargo build --workspace --bins --quiet
if [ "${1:-}" = "--release" ]; then
  echo "setup: building tartarus (release)"
  cargo build --workspace --bins --release --quiet
fi
