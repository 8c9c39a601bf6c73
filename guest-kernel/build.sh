#!/usr/bin/env bash
# Build (or fetch from cache) a moat kernel.
#
#   guest-kernel/build.sh guest                 # microVM guest kernel
#   guest-kernel/build.sh test-host             # L1 "test host" kernel (nested KVM)
#   guest-kernel/build.sh --print-path <flavor> # cached path or exit 1, never builds
#
# Prints ONLY the absolute path of vmlinux on stdout; progress goes to stderr.
# See guest-kernel/README.md for the cache layout.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
CACHE_ROOT="${MOAT_CACHE_DIR:-$HOME/.cache/moat}/kernel"

log() { printf '[moat-kernel] %s\n' "$*" >&2; }
die() { printf '[moat-kernel] error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat >&2 <<EOF
usage: $0 <guest|test-host>
       $0 --print-path <guest|test-host>
env:   MOAT_CACHE_DIR   cache root (default \$HOME/.cache/moat)
       MOAT_KERNEL_TARBALL  use this kernel source tarball instead of /usr/src/linux-source-*
EOF
    exit 2
}

print_only=0
case "${1:-}" in
    --print-path) print_only=1; shift ;;
    -h|--help|"") usage ;;
esac
[ $# -eq 1 ] || usage
flavor="$1"

case "$flavor" in
    guest)     fragments=("$SCRIPT_DIR/microvm.config") ;;
    test-host) fragments=("$SCRIPT_DIR/microvm.config" "$SCRIPT_DIR/test-host.config") ;;
    *) die "unknown flavor '$flavor' (expected 'guest' or 'test-host')" ;;
esac
for f in "${fragments[@]}"; do
    [ -r "$f" ] || die "missing config fragment $f"
done
# Source patches of this flavor (guest-kernel/patches/<flavor>/*.patch, applied in order).
shopt -s nullglob
patches=("$SCRIPT_DIR/patches/$flavor"/*.patch)
shopt -u nullglob

# --- kernel source -----------------------------------------------------------
tarball=""
pkg=""
if [ -n "${MOAT_KERNEL_TARBALL:-}" ]; then
    tarball="$MOAT_KERNEL_TARBALL"
    [ -r "$tarball" ] || die "MOAT_KERNEL_TARBALL=$tarball is not readable"
else
    for v in 6.12 6.1; do
        if [ -r "/usr/src/linux-source-$v.tar.xz" ]; then
            tarball="/usr/src/linux-source-$v.tar.xz"
            pkg="linux-source-$v"
            [ "$v" = 6.12 ] || log "warning: linux-source-6.12 not found, falling back to $pkg"
            break
        fi
    done
fi
[ -n "$tarball" ] || die "no kernel source found in /usr/src; run: apt-get install linux-source-6.12"

pkgver=""
if [ -n "$pkg" ] && command -v dpkg-query >/dev/null 2>&1; then
    pkgver="$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || true)"
fi
src_id="$(basename "$tarball") $(stat -c '%s %Y' "$tarball") ${pkgver}"
src_name="$(basename "$tarball" .tar.xz)"
[ -n "$pkgver" ] && src_name="$src_name-$pkgver"
src_name="${src_name//[^A-Za-z0-9._+-]/_}"

# --- cache key ----------------------------------------------------------------
key="$(
    {
        for f in "${fragments[@]}"; do
            printf '== %s\n' "$(basename "$f")"
            cat "$f"
        done
        for p in "${patches[@]}"; do
            printf '== patch %s\n' "$(basename "$p")"
            cat "$p"
        done
        printf '== build.sh\n'
        cat "$SCRIPT"
        printf '== source\n%s\n' "$src_id"
    } | sha256sum | cut -c1-16
)"
name="$flavor-$key"
final="$CACHE_ROOT/$name"

if [ -f "$final/vmlinux" ]; then
    printf '%s\n' "$final/vmlinux"
    exit 0
fi
if [ "$print_only" = 1 ]; then
    die "no cached $flavor kernel at $final/vmlinux (run: $SCRIPT $flavor)"
fi

mkdir -p "$CACHE_ROOT"
# One builder per flavor at a time; re-check the cache once we hold the lock.
exec 8>"$CACHE_ROOT/.lock-$flavor"
flock 8
if [ -f "$final/vmlinux" ]; then
    printf '%s\n' "$final/vmlinux"
    exit 0
fi

# A copy of the source tree ($1) with this flavor's patches applied, made once per key:
# hard links to $1, each patched file a file of its own. Prints its path.
patched_source() {
    local dir="$CACHE_ROOT/src-$src_name-$flavor-$key" tmp p f
    if [ ! -f "$dir/.moat-patched" ]; then
        tmp="$(mktemp -d "$CACHE_ROOT/.src-$flavor.XXXXXX")"
        cp -al "$1/." "$tmp/"
        for p in "${patches[@]}"; do
            for f in $(sed -n 's|^+++ b/\([^[:space:]]*\).*|\1|p' "$p"); do
                cp --remove-destination "$1/$f" "$tmp/$f"
            done
            patch -s -p1 -d "$tmp" <"$p" >&2 || die "patch $(basename "$p") does not apply"
            log "applied $(basename "$p")"
        done
        touch "$tmp/.moat-patched"
        rm -rf "$dir"
        mv "$tmp" "$dir"
    fi
    printf '%s\n' "$dir"
}

srcdir="$CACHE_ROOT/src-$src_name"
(
    exec 9>"$CACHE_ROOT/.lock-src"
    flock 9
    if [ ! -f "$srcdir/Makefile" ]; then
        log "extracting $tarball -> $srcdir"
        tmpsrc="$(mktemp -d "$CACHE_ROOT/.src-tmp.XXXXXX")"
        tar -xJf "$tarball" -C "$tmpsrc"
        top="$(find "$tmpsrc" -mindepth 1 -maxdepth 1 -type d | head -n1)"
        [ -f "$top/Makefile" ] || die "unexpected tarball layout in $tarball"
        rm -rf "$srcdir"
        mv "$top" "$srcdir"
        rm -rf "$tmpsrc"
    fi
)

logfile="$CACHE_ROOT/$name.build.log"
: >"$logfile"
if [ ${#patches[@]} -gt 0 ]; then
    srcdir="$(patched_source "$srcdir")"
fi
stage="$(mktemp -d "$CACHE_ROOT/.$name.tmp.XXXXXX")"
# Object dir: per flavor and source version, kept between builds so that a
# fragment change only recompiles what it affects. Output only ever becomes
# visible via the atomic rename of $stage below.
objdir="$CACHE_ROOT/obj-$flavor-$src_name"
mkdir -p "$objdir"
cleanup() { rm -rf "$stage"; }
trap cleanup EXIT

run_make() {
    if ! make -C "$srcdir" O="$objdir" KBUILD_BUILD_USER=moat KBUILD_BUILD_HOST=moat "$@" >>"$logfile" 2>&1; then
        log "make $* failed; last 40 lines of $logfile:"
        tail -n 40 "$logfile" >&2
        exit 1
    fi
}

jobs="$(nproc)"
start=$(date +%s)
log "building $flavor kernel ($src_name, key $key) with -j$jobs; log: $logfile"
run_make tinyconfig
"$srcdir/scripts/kconfig/merge_config.sh" -m -O "$objdir" "$objdir/.config" "${fragments[@]}" >>"$logfile" 2>&1 \
    || { tail -n 40 "$logfile" >&2; die "merge_config.sh failed"; }
run_make olddefconfig

# Every symbol the fragments ask for must survive olddefconfig (a dropped
# symbol means a missing dependency in the fragment).
declare -A want=()
for f in "${fragments[@]}"; do
    while IFS= read -r line; do
        if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
            want["${BASH_REMATCH[1]}"]="${BASH_REMATCH[2]}"
        elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set ]]; then
            want["${BASH_REMATCH[1]}"]="n"
        fi
    done <"$f"
done
bad=0
for sym in $(printf '%s\n' "${!want[@]}" | sort); do
    w="${want[$sym]}"
    got="$(grep -E "^$sym=" "$objdir/.config" | tail -n1 | cut -d= -f2- || true)"
    if [ "$w" = n ]; then
        if [ -n "$got" ] && [ "$got" != n ]; then
            log "config: $sym should be unset but is $got"; bad=1
        fi
    elif [ "$got" != "$w" ]; then
        log "config: $sym=$w requested but final .config has ${got:-<unset>}"; bad=1
    fi
done
[ "$bad" = 0 ] || die "requested config symbols were dropped by olddefconfig; fix the fragment dependencies"
log "config check: all ${#want[@]} requested symbols present"

run_make -j"$jobs" vmlinux

vmlinux="$objdir/vmlinux"
[ -f "$vmlinux" ] || die "build finished but $vmlinux is missing"
# PVH entry point: ELF note owner "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18).
if ! readelf -n "$vmlinux" | grep -A0 -E '^\s+Xen\s' | grep -qiE 'PHYS32|0x00000012'; then
    die "$vmlinux has no PVH (Xen PHYS32_ENTRY) ELF note"
fi

cp "$vmlinux" "$stage/vmlinux"
cp "$objdir/.config" "$stage/config"
cp "$logfile" "$stage/build.log"
rm -rf "$final"
chmod 755 "$stage"
mv "$stage" "$final"
trap - EXIT
log "built $final/vmlinux in $(( $(date +%s) - start ))s"
printf '%s\n' "$final/vmlinux"
