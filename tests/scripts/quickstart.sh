#!/usr/bin/env bash
# One command from a fresh Debian machine to a container in a microVM: installs packages
# (containerd, runc, CNI plugins, qemu), builds the guest kernel (and the test-host kernel when
# this machine lacks hardware virtualization), builds moat (VMM, shim) and the agent image,
# starts a private containerd with the io.containerd.moat.v2 runtime, imports a locally built
# busybox image and runs `ctr run --rm --runtime io.containerd.moat.v2 ... echo hello from a
# microVM` (moat-demo).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v cargo >/dev/null || { echo "quickstart: cargo (Rust toolchain) is required" >&2; exit 1; }
tests/scripts/setup-host.sh
guest-kernel/build.sh guest >/dev/null
agent/build-image.sh >/dev/null
if ! grep -qwE 'vmx|svm' /proc/cpuinfo || [ -d /sys/module/kvm_pvm ]; then
    guest-kernel/build.sh test-host >/dev/null
    tests/scripts/fetch-qemu.sh >/dev/null   # the test host's qemu 10 (bookworm-backports)
fi
cargo build --release --locked --bin moat-vmm --bin containerd-shim-moat-v2 --bin moat-demo
exec target/release/moat-demo
