#!/usr/bin/env bash
# Build the static guest-side test tools (tests/guest-tools: moat-vsock-echo, moat-share-attack).
#
#   tests/scripts/build-guest-tools.sh [BIN]              # build them all (cargo decides if
#                                                         # anything changed)
#   tests/scripts/build-guest-tools.sh --print-path [BIN] # path of the built BIN, or exit 1;
#                                                         # never builds (not even cargo)
#
# BIN is moat-vsock-echo (the default) or moat-share-attack. Prints ONLY the absolute path of
# BIN on stdout; progress goes to stderr.
#
# Built with glibc's static CRT into target/guest-tools-static/ (its own target dir, so the
# RUSTFLAGS change does not rebuild the normal workspace build), like agent/build-image.sh
# does for the agent. The test initramfs (tests/src/guest/image.rs) copies moat-vsock-echo in
# as /bin/moat-vsock-echo; the hostile-guest test's image (tests/src/containerd/oci_image.rs)
# has /bin/moat-share-attack.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
REPO="$(cd "$SCRIPT_DIR/../.." && pwd)"
TARGET=x86_64-unknown-linux-gnu
TARGET_DIR="$REPO/target/guest-tools-static"
BINS=(moat-vsock-echo moat-share-attack)

log() { printf '[moat-guest-tools] %s\n' "$*" >&2; }
die() { printf '[moat-guest-tools] error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,16p' "$SCRIPT" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

print_only=0
case "${1:-}" in
    --print-path) print_only=1; shift ;;
    -h|--help) usage ;;
esac
[ $# -le 1 ] || usage
want="${1:-moat-vsock-echo}"
case " ${BINS[*]} " in
    *" $want "*) ;;
    *) usage ;;
esac

if [ "$print_only" = 0 ]; then
    log "building static ${BINS[*]} into $TARGET_DIR"
    (
        cd "$REPO"
        RUSTFLAGS='-C target-feature=+crt-static' \
            cargo build --release --target "$TARGET" \
            --target-dir "$TARGET_DIR" -p moat-guest-tools --bins >&2
    ) || die "cargo build of the static guest tools failed"
fi

# A static binary has no program interpreter and no shared-library dependencies.
check_static() {
    local bin="$1"
    [ -x "$bin" ] || die "no static $(basename "$bin") at $bin (run: $SCRIPT)"
    if readelf -l "$bin" | grep -q 'INTERP'; then
        die "$bin is dynamically linked (has a PT_INTERP); the guest has no libc"
    fi
    if readelf -d "$bin" 2>/dev/null | grep -q '(NEEDED)'; then
        die "$bin needs shared libraries: $(readelf -d "$bin" | grep '(NEEDED)' | tr -s ' ')"
    fi
}

if [ "$print_only" = 0 ]; then
    for b in "${BINS[@]}"; do
        check_static "$TARGET_DIR/$TARGET/release/$b"
    done
fi
BIN="$TARGET_DIR/$TARGET/release/$want"
check_static "$BIN"
printf '%s\n' "$BIN"
