#!/usr/bin/env bash
# Download Docker Engine 26.1 + containerd 1.7.24 from Debian 13 ("trixie") into a private prefix.
#
#   tests/scripts/fetch-trixie.sh               # download + unpack (cached; a no-op once done)
#   tests/scripts/fetch-trixie.sh --print-path  # path of the cached prefix, or exit 1;
#                                               # never downloads
#
# Prints ONLY the absolute path of the prefix on stdout; progress goes to stderr. The prefix has
# usr/sbin/{dockerd,docker-proxy}, usr/bin/{docker,docker-init,containerd,ctr,
# containerd-shim-runc-v2}; put "$prefix/usr/sbin:$prefix/usr/bin" first in PATH. runc is NOT
# taken from trixie (its runc fails on Debian 12): the host's /usr/sbin/runc is the runc.
#
# Nothing is installed and the system's apt state is not touched (tests/scripts/private-apt.sh:
# a private apt whose lists live in $MOAT_CACHE_DIR/trixie/apt, `dpkg -x`). The prefix is
# $MOAT_CACHE_DIR/trixie/<key> (MOAT_CACHE_DIR defaults to $HOME/.cache/moat), key = hash of
# the package list + this script + private-apt.sh.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
CACHE_ROOT="${MOAT_CACHE_DIR:-$HOME/.cache/moat}/trixie"
SUITE=trixie
# shellcheck source=private-apt.sh
. "$SCRIPT_DIR/private-apt.sh"
# docker.io: dockerd, docker-proxy, docker-init (-> tini-static, hence tini); docker-cli: docker;
# containerd: containerd, ctr, containerd-shim-runc-v2. Their other dependencies (libc6,
# libsystemd0, iptables, ...) are satisfied by Debian 12's own libraries and tools.
PACKAGES=(docker.io docker-cli containerd tini)
DOCKER_VERSION_RE='26\.1\.'
CONTAINERD_VERSION_RE='1\.7\.'

log() { printf '[moat-trixie] %s\n' "$*" >&2; }
die() { printf '[moat-trixie] error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,16p' "$SCRIPT" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

print_only=0
case "${1:-}" in
    --print-path) print_only=1; shift ;;
    -h|--help) usage ;;
esac
[ $# -eq 0 ] || usage

key="$(
    {
        printf '== packages\n%s\n' "${PACKAGES[*]}"
        printf '== fetch-trixie.sh\n'
        cat "$SCRIPT" "$SCRIPT_DIR/private-apt.sh"
    } | sha256sum | cut -c1-16
)"
private_apt_begin "$CACHE_ROOT" "$key" usr/sbin/dockerd "$print_only" "$SUITE" \
    "${PACKAGES[@]}"
# The dynamic tini needs glibc 2.38 (Debian 12 has 2.36); docker-init -> tini-static is the one
# dockerd uses.
rm -f "$PRIVATE_APT_PREFIX/usr/bin/tini"

# --- check ---------------------------------------------------------------------
p="$PRIVATE_APT_PREFIX"
for bin in usr/sbin/dockerd usr/sbin/docker-proxy usr/bin/docker usr/bin/docker-init \
           usr/bin/containerd usr/bin/ctr usr/bin/containerd-shim-runc-v2; do
    private_apt_check_runs "$p/$bin"
done
check_version() {
    local bin="$1" re="$2" out
    out="$("$p/$bin" --version 2>&1)" || die "$bin --version failed: $out"
    grep -qE "$re" <<<"$out" || die "$bin --version printed '$out', expected /$re/"
    log "$bin: $out"
}
check_version usr/sbin/dockerd "^Docker version $DOCKER_VERSION_RE"
check_version usr/bin/docker "^Docker version $DOCKER_VERSION_RE"
check_version usr/bin/containerd " v?$CONTAINERD_VERSION_RE"
check_version usr/bin/ctr " v?$CONTAINERD_VERSION_RE"
check_version usr/bin/docker-init '^tini version '
out="$("$p/usr/bin/containerd-shim-runc-v2" -v 2>&1)" || die "containerd-shim-runc-v2 -v failed: $out"
grep -qE "Version: +v?$CONTAINERD_VERSION_RE" <<<"$out" \
    || die "containerd-shim-runc-v2 -v printed '$out', expected version /$CONTAINERD_VERSION_RE/"

private_apt_commit
