#!/usr/bin/env bash
# moat's whole test suite, as CI runs it (`.ci/run` calls this).
#   1. host packages, 2. guest + test-host kernels (cached outside the clone),
#   3. cargo fmt --check, clippy -D warnings, cargo doc -D warnings, 4. every test: unit, tiny-guest on /dev/kvm,
#   and the real-VM tests, which run inside the nested test host unless the machine has
#   hardware virtualization.
set -euo pipefail
cd "$(dirname "$0")/../.."

step() { printf '\n=== %s ===\n' "$*" >&2; }

step "host packages"
tests/scripts/setup-host.sh

step "kernels and guest image"
guest-kernel/build.sh guest >/dev/null
guest-kernel/build.sh test-host >/dev/null
agent/build-image.sh >/dev/null
tests/scripts/build-guest-tools.sh >/dev/null

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

step "tests"
cargo test --workspace --locked --no-fail-fast -- --test-threads="${MOAT_TEST_THREADS:-1}"
