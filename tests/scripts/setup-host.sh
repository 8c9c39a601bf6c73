#!/usr/bin/env bash
# Installs the Debian packages moat's build and test suite need (idempotent, quiet when done).
# Kernel source, qemu (the nested-KVM test host), busybox (tiny initramfs), kernel build tools,
# binutils + libc6-dev (static moat-agent for the guest image), patch (the test-host kernel's
# diagnostics patch), prometheus (its promtool checks `moat monitor`'s scrape; the server the
# package starts is stopped).
set -euo pipefail

PACKAGES=(linux-source-6.12 qemu-system-x86 busybox-static flex bison bc libelf-dev libssl-dev
          cpio xz-utils gzip kmod binutils libc6-dev containerd runc containernetworking-plugins
          iptables patch
          prometheus)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "setup-host: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup-host: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >&2
if ! $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
    # linux-source-6.12 comes from bookworm-security; fall back to 6.1 when it is not available.
    if [[ " ${missing[*]} " == *" linux-source-6.12 "* ]]; then
        echo "setup-host: linux-source-6.12 not installable, falling back to linux-source-6.1" >&2
        rest=("${missing[@]/linux-source-6.12/linux-source-6.1}")
        $SUDO apt-get install -y -q --no-install-recommends "${rest[@]}" >&2
    else
        exit 1
    fi
fi
if [[ " ${missing[*]} " == *" prometheus "* ]]; then
    # Only promtool is wanted; the package's server must not run beside the tests.
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
    $SUDO pkill -x prometheus || true
fi
