#!/usr/bin/env bash
# Installs moat's containerd runtime: containerd-shim-moat-v2, moat-vmm and the operator's tool
# moat into PREFIX/bin,
# containerd-shim-kata-v2 -> containerd-shim-moat-v2 beside them (so configs naming the Kata
# runtime, io.containerd.kata.v2, get moat), and the default moat config unless one exists.
# Every step is printed; any failure stops the script with a message and a non-zero status.
# See runtime/README.md ("Install").
set -euo pipefail

usage() {
    cat <<'EOF'
usage: runtime/install.sh [--prefix DIR] [--config FILE] [--from DIR] [--no-kata] [--dry-run]
  --prefix DIR   install the binaries into DIR/bin (default /usr/local)
  --config FILE  the moat config to create when absent (default /etc/moat/configuration.toml);
                 an existing one is never touched
  --from DIR     where the built containerd-shim-moat-v2, moat-vmm and moat are (default: this
                 repository's target/release, else target/debug)
  --no-kata      do not create the containerd-shim-kata-v2 link
  --dry-run      print what would be done; change nothing
EOF
}

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prefix=/usr/local
config=/etc/moat/configuration.toml
from=""
kata=1
dry=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix | --config | --from)
            [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"
            case "$1" in
                --prefix) prefix=$2 ;;
                --config) config=$2 ;;
                --from) from=$2 ;;
            esac
            shift 2
            ;;
        --no-kata) kata=0; shift ;;
        --dry-run) dry=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

if [ -z "$from" ]; then
    for d in "$here/../target/release" "$here/../target/debug"; do
        if [ -x "$d/containerd-shim-moat-v2" ] && [ -x "$d/moat-vmm" ] && [ -x "$d/moat" ]; then
            from=$(cd "$d" && pwd)
            break
        fi
    done
    [ -n "$from" ] || die "no built containerd-shim-moat-v2 and moat-vmm in $here/../target/{release,debug}: run 'cargo build --release -p moat-runtime -p moat-vmm -p moat-ctl' or pass --from DIR"
fi
for b in containerd-shim-moat-v2 moat-vmm moat; do
    [ -f "$from/$b" ] && [ -x "$from/$b" ] || die "$from/$b: not found or not executable"
done
default_config=$here/configuration.toml
[ -f "$default_config" ] || die "$default_config (the default config) is missing"

bin=$prefix/bin
kata_link=$bin/containerd-shim-kata-v2
if [ "$kata" = 1 ] && { [ -e "$kata_link" ] || [ -L "$kata_link" ]; } &&
    [ "$(readlink "$kata_link" || true)" != containerd-shim-moat-v2 ]; then
    die "$kata_link exists and is not moat's link (Kata installed?): remove it or pass --no-kata"
fi

# Prints a step, then (unless --dry-run) runs it.
run() {
    echo "+ $*"
    [ "$dry" = 1 ] || "$@" || die "failed: $*"
}

run install -d -m 0755 "$bin"
run install -m 0755 "$from/containerd-shim-moat-v2" "$bin/containerd-shim-moat-v2"
run install -m 0755 "$from/moat-vmm" "$bin/moat-vmm"
run install -m 0755 "$from/moat" "$bin/moat"
if [ "$kata" = 1 ]; then
    run ln -sfn containerd-shim-moat-v2 "$kata_link"
fi
if [ -e "$config" ] || [ -L "$config" ]; then
    echo "keeping the existing $config"
else
    run install -d -m 0755 "$(dirname "$config")"
    run install -m 0644 "$default_config" "$config"
fi
if [ "$dry" = 1 ]; then
    echo "dry run: nothing was changed"
else
    echo "installed moat into $bin; the guest kernel and initramfs go where $config says (kernel, initrd)"
fi
