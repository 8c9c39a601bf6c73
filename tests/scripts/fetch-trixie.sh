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
# Nothing is installed and the system's apt state is not touched: apt-get runs with a private
# config (APT_CONFIG; no /etc/apt/apt.conf.d, sources, preferences or dpkg status) whose lists
# live in $MOAT_CACHE_DIR/trixie/apt, `apt-get download` fetches the .debs, `dpkg -x` unpacks
# them. The archive signature is checked against Debian 12's debian-archive-keyring, which has
# the trixie keys. The prefix is $MOAT_CACHE_DIR/trixie/<key> (MOAT_CACHE_DIR defaults to
# $HOME/.cache/moat), key = hash of the package list + this script.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
CACHE_ROOT="${MOAT_CACHE_DIR:-$HOME/.cache/moat}/trixie"
MIRROR=http://deb.debian.org/debian
SUITE=trixie
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# docker.io: dockerd, docker-proxy, docker-init (-> tini-static, hence tini); docker-cli: docker;
# containerd: containerd, ctr, containerd-shim-runc-v2. Their other dependencies (libc6,
# libsystemd0, iptables, ...) are satisfied by Debian 12's own libraries and tools.
PACKAGES=(docker.io docker-cli containerd tini)
DOCKER_VERSION_RE='26\.1\.'
CONTAINERD_VERSION_RE='1\.7\.'

log() { printf '[moat-trixie] %s\n' "$*" >&2; }
die() { printf '[moat-trixie] error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,18p' "$SCRIPT" | sed 's/^# \{0,1\}//' >&2
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
        cat "$SCRIPT"
    } | sha256sum | cut -c1-16
)"
final="$CACHE_ROOT/$key"

if [ -x "$final/usr/sbin/dockerd" ]; then
    printf '%s\n' "$final"
    exit 0
fi
if [ "$print_only" = 1 ]; then
    die "no cached trixie prefix at $final (run: $SCRIPT)"
fi

for tool in apt-get dpkg-deb sha256sum flock ldd; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
[ -r "$KEYRING" ] || die "$KEYRING missing (apt-get install debian-archive-keyring)"

mkdir -p "$CACHE_ROOT"
# One downloader at a time (the apt dirs are shared); re-check the cache once we hold the lock.
exec 8>"$CACHE_ROOT/.lock"
flock 8
if [ -x "$final/usr/sbin/dockerd" ]; then
    printf '%s\n' "$final"
    exit 0
fi
start=$(date +%s)

# --- private apt ---------------------------------------------------------------
apt_dir="$CACHE_ROOT/apt"
mkdir -p "$apt_dir"/{state/lists/partial,cache/archives/partial,etc/apt.conf.d,etc/preferences.d,log}
: > "$apt_dir/state/status"
printf 'deb [signed-by=%s] %s %s main\n' "$KEYRING" "$MIRROR" "$SUITE" > "$apt_dir/etc/sources.list"
# Dir::Etc::Parts / main point away from /etc/apt, so none of the host's apt.conf.d (hooks such
# as APT::Update::Post-Invoke-Success, pinning, proxies) applies; http_proxy from the
# environment still does. APT::Sandbox::User root: as root, apt would otherwise download as
# _apt, which cannot write into a cache dir under /root.
cat > "$apt_dir/etc/apt.conf" <<EOF
Dir::Etc::Parts "$apt_dir/etc/apt.conf.d";
Dir::Etc::main "/dev/null";
Dir::Etc::SourceList "$apt_dir/etc/sources.list";
Dir::Etc::SourceParts "/dev/null";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "$apt_dir/etc/preferences.d";
Dir::State "$apt_dir/state";
Dir::State::status "$apt_dir/state/status";
Dir::Cache "$apt_dir/cache";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Dir::Log "$apt_dir/log";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Sandbox::User "root";
Acquire::Languages "none";
Acquire::GzipIndexes "true";
EOF
export APT_CONFIG="$apt_dir/etc/apt.conf"

log "apt-get update ($MIRROR $SUITE main, lists in $apt_dir)"
apt-get -q update >&2 || die "apt-get update of $SUITE failed"

stage="$(mktemp -d "$CACHE_ROOT/.$key.tmp.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/debs" "$stage/prefix"
log "downloading ${PACKAGES[*]}"
(cd "$stage/debs" && apt-get -q download "${PACKAGES[@]}" >&2) \
    || die "apt-get download ${PACKAGES[*]} failed"

manifest="$stage/prefix/PACKAGES"
for deb in "$stage"/debs/*.deb; do
    log "unpacking $(basename "$deb")"
    dpkg-deb -x "$deb" "$stage/prefix" || die "dpkg-deb -x $deb failed"
    dpkg-deb -W --showformat='${Package} ${Version}\n' "$deb" >> "$manifest"
done
# The dynamic tini needs glibc 2.38 (Debian 12 has 2.36); docker-init -> tini-static is the one
# dockerd uses.
rm -f "$stage/prefix/usr/bin/tini"

# --- check ---------------------------------------------------------------------
p="$stage/prefix"
for bin in usr/sbin/dockerd usr/sbin/docker-proxy usr/bin/docker usr/bin/docker-init \
           usr/bin/containerd usr/bin/ctr usr/bin/containerd-shim-runc-v2; do
    [ -x "$p/$bin" ] || die "$bin missing from the unpacked packages"
    # A static binary makes ldd fail ("not a dynamic executable"); that is fine.
    if out="$(ldd "$p/$bin" 2>&1)" && grep -qE 'not found' <<<"$out"; then
        die "$bin cannot run on this host: $(grep -E 'not found' <<<"$out" | tr -s ' \t' ' ')"
    fi
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

rm -rf "$final"
chmod 755 "$p"
mv "$p" "$final"
rm -rf "$stage"
trap - EXIT
log "unpacked into $final in $(( $(date +%s) - start ))s"
printf '%s\n' "$final"
