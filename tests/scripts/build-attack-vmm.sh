#!/usr/bin/env bash
# Builds the test-only attack-hooks moat-vmm (vmm/src/attack.rs) into its own target
# directory, <target>/attack/debug/moat-vmm, so the normal build never contains it.
set -euo pipefail
cd "$(dirname "$0")/../.."
target_dir="${CARGO_TARGET_DIR:-target}"
exec cargo build --locked -p moat-vmm --bin moat-vmm --features attack-hooks \
    --target-dir "$target_dir/attack" "$@"
