#!/usr/bin/env bash
# Build (or fetch from cache) the guest initramfs whose /init is a static moat-agent.
#
#   agent/build-image.sh              # build the static agent, then the initramfs if not cached
#   agent/build-image.sh --print-path # cached path for the current static agent, or exit 1;
#                                     # never builds (not even cargo)
#
# Prints ONLY the absolute path of the initramfs on stdout; progress goes to stderr.
#
# The agent is built with glibc's static CRT into target/agent-static/ (its own target dir,
# so the RUSTFLAGS change does not rebuild the normal workspace build). The image is cached as
#   ${MOAT_CACHE_DIR:-$HOME/.cache/moat}/image/agent-initramfs-<key>.cpio.gz
# where <key> hashes the agent binary and this script.
#
# Layout: /init (moat-agent), /dev (with a console node), /proc, /sys, /run, /tmp.
#
# env: MOAT_CACHE_DIR   cache root (default $HOME/.cache/moat)
#      MOAT_AGENT_BIN   use this (static) agent binary instead of building one
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"
CACHE_ROOT="${MOAT_CACHE_DIR:-$HOME/.cache/moat}/image"
TARGET=x86_64-unknown-linux-gnu
TARGET_DIR="$REPO/target/agent-static"

log() { printf '[moat-image] %s\n' "$*" >&2; }
die() { printf '[moat-image] error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,16p' "$SCRIPT" | sed 's/^# \{0,1\}//' >&2
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

# --- the static agent ----------------------------------------------------------
if [ -n "${MOAT_AGENT_BIN:-}" ]; then
    agent="$MOAT_AGENT_BIN"
    [ -x "$agent" ] || die "MOAT_AGENT_BIN=$agent is not an executable file"
else
    agent="$TARGET_DIR/$TARGET/release/moat-agent"
    if [ "$print_only" = 0 ]; then
        log "building static moat-agent into $TARGET_DIR"
        (
            cd "$REPO"
            RUSTFLAGS='-C target-feature=+crt-static' \
                cargo build --release --target "$TARGET" \
                --target-dir "$TARGET_DIR" -p moat-agent >&2
        ) || die "cargo build of the static moat-agent failed"
    fi
    [ -x "$agent" ] || die "no static agent at $agent (run: $SCRIPT)"
fi

# A static binary has no program interpreter and no shared-library dependencies.
if readelf -l "$agent" | grep -q 'INTERP'; then
    die "$agent is dynamically linked (has a PT_INTERP); the guest has no libc"
fi
if readelf -d "$agent" 2>/dev/null | grep -q '(NEEDED)'; then
    die "$agent needs shared libraries: $(readelf -d "$agent" | grep '(NEEDED)' | tr -s ' ')"
fi

# --- cache key -----------------------------------------------------------------
key="$( { sha256sum <"$agent"; sha256sum <"$SCRIPT"; } | sha256sum | cut -c1-16 )"
final="$CACHE_ROOT/agent-initramfs-$key.cpio.gz"

if [ -f "$final" ]; then
    printf '%s\n' "$final"
    exit 0
fi
[ "$print_only" = 0 ] || die "no cached initramfs at $final (run: $SCRIPT)"

mkdir -p "$CACHE_ROOT"
stage="$(mktemp -d "$CACHE_ROOT/.stage.XXXXXX")"
cleanup() { rm -rf "$stage"; }
trap cleanup EXIT

root="$stage/root"
mkdir -p "$root"/{dev,proc,sys,run,tmp}
chmod 1777 "$root/tmp"
install -m 0755 -s "$agent" "$root/init"  # stripped: smaller image, faster unpack
# The kernel opens /dev/console for init's fds 0-2 before the agent mounts devtmpfs; without
# the node the agent reopens the console itself, so a failing mknod (not root) is only noted.
if ! mknod -m 0600 "$root/dev/console" c 5 1 2>/dev/null; then
    log "note: cannot mknod dev/console (not root?); the agent reopens the console itself"
fi
find "$root" -exec touch -h -d @0 {} +

(
    cd "$root"
    find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible
) | gzip -9 -n >"$stage/image.cpio.gz"

# Sanity: the archive lists /init.
gzip -dc "$stage/image.cpio.gz" | cpio --quiet -t 2>/dev/null | grep -qx 'init' \
    || die "built archive has no /init"

chmod 0644 "$stage/image.cpio.gz"
mv "$stage/image.cpio.gz" "$final"
log "built $final ($(stat -c %s "$final") bytes; agent $(stat -c %s "$agent") bytes)"
printf '%s\n' "$final"
