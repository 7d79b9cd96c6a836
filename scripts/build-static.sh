#!/usr/bin/env bash
# Builds the launcher as one statically linked binary, as Spacelift ships its own
# (docs/performance.md "One static binary"): glibc linked in with crt-static, the dist
# profile (release with whole-program LTO, symbols stripped, see Cargo.toml). Output:
#   target/static/x86_64-unknown-linux-gnu/dist/spacelift-launcher
# Its own target dir (target/static): other RUSTFLAGS would rebuild every dependency of
# the shared one, and its own lock lets it build beside a running benchmark.
# tests/static_binary.rs runs its --version and checks it has no program interpreter.
# The explicit --target keeps RUSTFLAGS off build scripts and proc macros (they must stay
# dynamic) and puts the result beside, not over, the dynamic release build.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
export CARGO_INCREMENTAL=0
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --profile dist -p spacelift-launcher --bin spacelift-launcher --target "$target" \
    --target-dir "${CARGO_TARGET_DIR:-target}/static"
bin="${CARGO_TARGET_DIR:-target}/static/$target/dist/spacelift-launcher"
if readelf -l "$bin" 2>/dev/null | grep -q 'INTERP'; then
    echo "build-static.sh: $bin is dynamically linked" >&2
    exit 1
fi
echo "build-static.sh: $bin, $(stat -c %s "$bin") bytes (stripped): $("$bin" --version)"
