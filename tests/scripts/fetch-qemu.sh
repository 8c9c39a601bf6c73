#!/usr/bin/env bash
# Download qemu 10 (Debian bookworm-backports) into a private prefix: the test host's qemu.
#
#   tests/scripts/fetch-qemu.sh               # download + unpack (cached; a no-op once done)
#   tests/scripts/fetch-qemu.sh --print-path  # path of the cached prefix, or exit 1;
#                                             # never downloads
#
# Prints ONLY the absolute path of the prefix on stdout; progress goes to stderr. The prefix has
# usr/bin/qemu-system-x86_64 and its firmware in usr/share/qemu (run it with
# `-L <prefix>/usr/share/qemu`). Why not Debian 12's qemu 7.2: under its TCG the nested test
# host's L2 guests triple-fault and L1 itself dies far more often (ARCHITECTURE.md, "Guest
# crashes in the test host").
#
# Nothing is installed and the system's apt state is not touched (tests/scripts/private-apt.sh).
# The prefix is $MOAT_CACHE_DIR/qemu/<key> (MOAT_CACHE_DIR defaults to $HOME/.cache/moat),
# key = hash of the package list + this script + private-apt.sh.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
CACHE_ROOT="${MOAT_CACHE_DIR:-$HOME/.cache/moat}/qemu"
SUITE=bookworm-backports
# shellcheck source=private-apt.sh
. "$SCRIPT_DIR/private-apt.sh"
# qemu-system-x86: the binary; -common: its helpers and keymaps; -data: firmware (qboot.rom,
# the microvm machine's BIOS). The other dependencies are Debian 12's own libraries.
PACKAGES=(qemu-system-x86 qemu-system-common qemu-system-data)
QEMU_VERSION_RE='^QEMU emulator version 10\.'

log() { printf '[moat-qemu] %s\n' "$*" >&2; }
die() { printf '[moat-qemu] error: %s\n' "$*" >&2; exit 1; }

case "${1:-}" in
    --print-path) print_only=1 ;;
    "") print_only=0 ;;
    *) sed -n '2,16p' "$SCRIPT" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

key="$(
    {
        printf '== packages\n%s\n' "${PACKAGES[*]}"
        cat "$SCRIPT" "$SCRIPT_DIR/private-apt.sh"
    } | sha256sum | cut -c1-16
)"
private_apt_begin "$CACHE_ROOT" "$key" usr/bin/qemu-system-x86_64 "$print_only" "$SUITE" \
    "${PACKAGES[@]}"

p="$PRIVATE_APT_PREFIX"
private_apt_check_runs "$p/usr/bin/qemu-system-x86_64"
[ -r "$p/usr/share/qemu/qboot.rom" ] || die "qboot.rom (the microvm BIOS) missing"
out="$("$p/usr/bin/qemu-system-x86_64" --version 2>&1)" || die "qemu --version failed: $out"
grep -qE "$QEMU_VERSION_RE" <<<"$out" || die "qemu --version printed '$out', expected /$QEMU_VERSION_RE/"
log "$(head -1 <<<"$out")"

private_apt_commit
