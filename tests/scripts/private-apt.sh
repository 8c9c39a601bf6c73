# Sourced by tests/scripts/fetch-*.sh: download Debian packages through a private apt, without
# touching the system's apt or dpkg state.
#
#   private_apt_init DIR SUITE   # apt config + lists under DIR for deb.debian.org SUITE main;
#                                # exports APT_CONFIG and runs `apt-get update`
#   private_apt_fetch DEST PKG.. # downloads PKG.. and unpacks them into DEST (dpkg -x), with a
#                                # manifest DEST/PACKAGES ("name version" per line)
#   private_apt_begin ROOT KEY MARKER PRINT_ONLY SUITE PKG..
#                                # a cached prefix ROOT/KEY (holding the executable MARKER) is
#                                # printed and the script exits 0 (PRINT_ONLY=1: a missing one
#                                # is an error); else, under ROOT/.lock, PKG.. from SUITE are
#                                # unpacked into $PRIVATE_APT_PREFIX for the caller to check
#   private_apt_commit           # moves $PRIVATE_APT_PREFIX to ROOT/KEY, prints it, exits 0
#
# apt-get runs with a private config (APT_CONFIG; no /etc/apt/apt.conf.d, sources, preferences
# or dpkg status). The archive signature is checked against Debian 12's debian-archive-keyring,
# which has the keys of bookworm-backports and trixie. Callers define log() and die().

PRIVATE_APT_MIRROR=http://deb.debian.org/debian
PRIVATE_APT_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

private_apt_init() {
    local apt_dir="$1" suite="$2"
    for tool in apt-get dpkg-deb; do
        command -v "$tool" >/dev/null || die "$tool not found"
    done
    [ -r "$PRIVATE_APT_KEYRING" ] \
        || die "$PRIVATE_APT_KEYRING missing (apt-get install debian-archive-keyring)"
    mkdir -p "$apt_dir"/{state/lists/partial,cache/archives/partial,etc/apt.conf.d,etc/preferences.d,log}
    : > "$apt_dir/state/status"
    printf 'deb [signed-by=%s] %s %s main\n' "$PRIVATE_APT_KEYRING" "$PRIVATE_APT_MIRROR" "$suite" \
        > "$apt_dir/etc/sources.list"
    # Dir::Etc::Parts / main point away from /etc/apt, so none of the host's apt.conf.d (hooks
    # such as APT::Update::Post-Invoke-Success, pinning, proxies) applies; http_proxy from the
    # environment still does. APT::Sandbox::User root: as root, apt would otherwise download as
    # _apt, which cannot write into a cache dir under /root.
    cat > "$apt_dir/etc/apt.conf" <<APTCONF
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
APTCONF
    export APT_CONFIG="$apt_dir/etc/apt.conf"
    log "apt-get update ($PRIVATE_APT_MIRROR $suite main, lists in $apt_dir)"
    apt-get -q update >&2 || die "apt-get update of $suite failed"
}

private_apt_fetch() {
    local dest="$1" debs deb
    shift
    debs="$(mktemp -d "$dest.debs.XXXXXX")"
    log "downloading $*"
    (cd "$debs" && apt-get -q download "$@" >&2) || { rm -rf "$debs"; die "apt-get download $* failed"; }
    mkdir -p "$dest"
    for deb in "$debs"/*.deb; do
        log "unpacking $(basename "$deb")"
        dpkg-deb -x "$deb" "$dest" || { rm -rf "$debs"; die "dpkg-deb -x $deb failed"; }
        dpkg-deb -W --showformat='${Package} ${Version}\n' "$deb" >> "$dest/PACKAGES"
    done
    rm -rf "$debs"
}

# Fails when BIN (a path) needs a shared library this host lacks.
private_apt_check_runs() {
    local bin="$1" out
    [ -x "$bin" ] || die "$bin missing from the unpacked packages"
    # A static binary makes ldd fail ("not a dynamic executable"); that is fine.
    if out="$(ldd "$bin" 2>&1)" && grep -qE 'not found' <<<"$out"; then
        die "$bin cannot run on this host: $(grep -E 'not found' <<<"$out" | tr -s ' \t' ' ')"
    fi
}

private_apt_begin() {
    local root="$1" key="$2" marker="$3" print_only="$4" suite="$5"
    shift 5
    PRIVATE_APT_FINAL="$root/$key"
    if [ -x "$PRIVATE_APT_FINAL/$marker" ]; then
        printf '%s\n' "$PRIVATE_APT_FINAL"
        exit 0
    fi
    [ "$print_only" = 0 ] || die "nothing cached at $PRIVATE_APT_FINAL (run: $0)"
    for tool in flock ldd; do
        command -v "$tool" >/dev/null || die "$tool not found"
    done
    mkdir -p "$root"
    # One downloader at a time (the apt dirs are shared); re-check the cache under the lock.
    exec 8>"$root/.lock"
    flock 8
    if [ -x "$PRIVATE_APT_FINAL/$marker" ]; then
        printf '%s\n' "$PRIVATE_APT_FINAL"
        exit 0
    fi
    PRIVATE_APT_START=$(date +%s)
    private_apt_init "$root/apt" "$suite"
    PRIVATE_APT_STAGE="$(mktemp -d "$root/.$key.tmp.XXXXXX")"
    trap 'rm -rf "$PRIVATE_APT_STAGE"' EXIT
    PRIVATE_APT_PREFIX="$PRIVATE_APT_STAGE/prefix"
    private_apt_fetch "$PRIVATE_APT_PREFIX" "$@"
}

private_apt_commit() {
    rm -rf "$PRIVATE_APT_FINAL"
    chmod 755 "$PRIVATE_APT_PREFIX"
    mv "$PRIVATE_APT_PREFIX" "$PRIVATE_APT_FINAL"
    rm -rf "$PRIVATE_APT_STAGE"
    trap - EXIT
    log "unpacked into $PRIVATE_APT_FINAL in $(( $(date +%s) - PRIVATE_APT_START ))s"
    printf '%s\n' "$PRIVATE_APT_FINAL"
    exit 0
}
