#!/usr/bin/env bash
# moat's whole test suite, as CI runs it (`.ci/run` calls this).
#   1. host packages, 2. guest + test-host kernels (cached outside the clone),
#   3. cargo fmt --check, clippy -D warnings, cargo doc -D warnings, 4. every test: unit, tiny-guest on /dev/kvm,
#   and the real-VM tests, which run inside the nested test host unless the machine has
#   hardware virtualization.
set -euo pipefail
cd "$(dirname "$0")/../.."

step() { printf '\n=== %s ===\n' "$*" >&2; }
# One build, never edited: incremental caches only cost disk (gigabytes on a fresh clone).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Free disk, printed where CI shows it: a fresh build needs several GiB (ARCHITECTURE.md, "Testing ladder").
disk() { df -h --output=avail,target . | tail -1 | sed 's/^/test-all: disk free: /' >&2; }
disk

step "host packages"
tests/scripts/setup-host.sh

step "kernels, guest image, Debian 13's Docker, the test host's qemu"
guest-kernel/build.sh guest >/dev/null
guest-kernel/build.sh test-host >/dev/null
agent/build-image.sh >/dev/null
tests/scripts/build-guest-tools.sh >/dev/null
# Docker Engine 26 + containerd 1.7 from Debian 13, unpacked privately (docker_moat.rs).
tests/scripts/fetch-trixie.sh >/dev/null
# qemu 10 from bookworm-backports, unpacked privately: the test host's (its TCG runs nested
# guests far more reliably than Debian 12's 7.2; ARCHITECTURE.md, issue 13).
echo "test host qemu: $(tests/scripts/fetch-qemu.sh)"

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Docs build without warnings (broken intra-doc links, bare URLs, ...).
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
# One test layout: a module's tests are its child `tests` module, never a `#[path]` file.
if git grep -n '#\[path' -- '*.rs'; then
    echo "test-all: #[path] modules are not allowed (see ARCHITECTURE.md, Conventions)" >&2
    exit 1
fi

step "build"
cargo build --workspace --all-targets --locked
# The test-only attack-hooks moat-vmm (containerd_moat_jail.rs), in its own target dir.
tests/scripts/build-attack-vmm.sh
disk

step "tests"
# Every retry after a nested-guest crash lands in this log (moat_tests::retries); the summary
# below prints them and fails the run past the budget (the arithmetic: ARCHITECTURE.md, "Guest crashes in the test host").
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
export MOAT_RETRY_LOG="$target_dir/moat-retries.log"
rm -f "$MOAT_RETRY_LOG"
status=0
cargo test --workspace --locked --no-fail-fast -- --test-threads="${MOAT_TEST_THREADS:-1}" ||
    status=$?

budget="${MOAT_RETRY_BUDGET:-16}"
retries=0
if [ -f "$MOAT_RETRY_LOG" ]; then retries=$(wc -l <"$MOAT_RETRY_LOG"); fi
step "guest-crash retries: $retries (budget $budget)"
if [ -f "$MOAT_RETRY_LOG" ]; then sed 's/^/  retried: /' "$MOAT_RETRY_LOG" >&2; fi
if [ "$retries" -gt "$budget" ]; then
    echo "test-all: $retries guest-crash retries, over the budget of $budget" >&2
    status=1
fi
exit "$status"
