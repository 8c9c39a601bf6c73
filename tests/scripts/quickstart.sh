#!/usr/bin/env bash
# One command from a fresh Debian machine to a microVM: installs packages, builds the guest
# kernel (and the test-host kernel when this machine lacks hardware virtualization), builds
# moat and the agent image, boots the default guest and runs `echo hello from a microVM` in a
# container there.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v cargo >/dev/null || { echo "quickstart: cargo (Rust toolchain) is required" >&2; exit 1; }
tests/scripts/setup-host.sh
guest-kernel/build.sh guest >/dev/null
agent/build-image.sh >/dev/null
if ! grep -qwE 'vmx|svm' /proc/cpuinfo || [ -d /sys/module/kvm_pvm ]; then
    guest-kernel/build.sh test-host >/dev/null
fi
cargo build --release --locked --bin moat-vmm --bin moat-demo
exec target/release/moat-demo
