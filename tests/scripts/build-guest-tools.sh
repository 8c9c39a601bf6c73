#!/usr/bin/env bash
# Build the static guest-side test tools (tests/guest-tools: moat-vsock-echo).
#
#   tests/scripts/build-guest-tools.sh              # build (cargo decides if anything changed)
#   tests/scripts/build-guest-tools.sh --print-path # path of the built binary, or exit 1;
#                                                   # never builds (not even cargo)
#
# Prints ONLY the absolute path of moat-vsock-echo on stdout; progress goes to stderr.
#
# Built with glibc's static CRT into target/guest-tools-static/ (its own target dir, so the
# RUSTFLAGS change does not rebuild the normal workspace build), like agent/build-image.sh
# does for the agent. The test initramfs (tests/src/guest/image.rs) copies it in as
# /bin/moat-vsock-echo.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
REPO="$(cd "$SCRIPT_DIR/../.." && pwd)"
TARGET=x86_64-unknown-linux-gnu
TARGET_DIR="$REPO/target/guest-tools-static"
BIN="$TARGET_DIR/$TARGET/release/moat-vsock-echo"

log() { printf '[moat-guest-tools] %s\n' "$*" >&2; }
die() { printf '[moat-guest-tools] error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,12p' "$SCRIPT" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

print_only=0
case "${1:-}" in
    --print-path) print_only=1; shift ;;
    -h|--help) usage ;;
    "") ;;
    *) usage ;;
esac
[ $# -eq 0 ] || usage

if [ "$print_only" = 0 ]; then
    log "building static moat-vsock-echo into $TARGET_DIR"
    (
        cd "$REPO"
        RUSTFLAGS='-C target-feature=+crt-static' \
            cargo build --release --target "$TARGET" \
            --target-dir "$TARGET_DIR" -p moat-guest-tools --bin moat-vsock-echo >&2
    ) || die "cargo build of the static moat-vsock-echo failed"
fi
[ -x "$BIN" ] || die "no static moat-vsock-echo at $BIN (run: $SCRIPT)"

# A static binary has no program interpreter and no shared-library dependencies.
if readelf -l "$BIN" | grep -q 'INTERP'; then
    die "$BIN is dynamically linked (has a PT_INTERP); the guest has no libc"
fi
if readelf -d "$BIN" 2>/dev/null | grep -q '(NEEDED)'; then
    die "$BIN needs shared libraries: $(readelf -d "$BIN" | grep '(NEEDED)' | tr -s ' ')"
fi

printf '%s\n' "$BIN"
