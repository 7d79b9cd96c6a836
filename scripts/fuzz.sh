#!/usr/bin/env bash
# Fuzz the parsers of outside input (fuzz/, cargo-fuzz layout; see fuzz/README.md).
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   default 300 s, every target
#        scripts/fuzz.sh --ci [TARGET...]                   CI mode: 20 s per target
#        scripts/fuzz.sh --list
# Needs the nightly toolchain and cargo-fuzz (installed here when missing). Builds once
# without a sanitizer but with debug assertions (overflow checks), into fuzz/target.
# Every target runs even after one fails; a failure prints the crashing input's path
# and the command that replays it, and the script exits 1.
# Env: FUZZ_JOBS  parallel libFuzzer workers per target (default 1)
#      FUZZ_SEED  libFuzzer's -seed (--ci: 1, so a CI run explores the same inputs each
#                 time and a red CI is a real, replayable find; else random)
set -euo pipefail

cd "$(dirname "$0")/.."
log() { printf '[fuzz.sh] %s\n' "$*" >&2; }

FLAGS=(-s none -a)
seconds=300
seed="${FUZZ_SEED:-0}" # 0: libFuzzer picks one
if [ "${1:-}" = "--ci" ]; then
    seconds=20
    seed="${FUZZ_SEED:-1}"
    shift
elif [ "${1:-}" = "--list" ]; then
    ls fuzz/fuzz_targets | sed 's/\.rs$//'
    exit 0
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
fi
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(ls fuzz/fuzz_targets | sed 's/\.rs$//')
fi

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    log "ERROR: the nightly toolchain is missing (rustup toolchain install nightly)"
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "cargo-fuzz missing: cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked
fi

start=$(date +%s)
log "building ${#targets[@]} target(s): cargo +nightly fuzz build ${FLAGS[*]}"
(cd fuzz && cargo +nightly fuzz build "${FLAGS[@]}")
log "built in $(($(date +%s) - start)) s"

failed=()
for t in "${targets[@]}"; do
    log "fuzzing $t for ${seconds} s"
    mkdir -p "fuzz/corpus/$t"
    out="fuzz/target/fuzz-$t.log"
    rc=0
    # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: a leak or a bomb.
    (cd fuzz && cargo +nightly fuzz run "${FLAGS[@]}" -j "${FUZZ_JOBS:-1}" "$t" -- \
        -max_total_time="$seconds" -seed="$seed" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) \
        >"$out" 2>&1 || rc=$?
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added):' "$out" \
        | sed "s/^/[fuzz.sh] $t /" >&2 || true
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        log "FAILED: $t (exit $rc); full output in $out"
        # The panic (or libFuzzer's own verdict: leak, timeout, out of memory) and the input.
        grep -E -A3 'panicked at|ERROR: libFuzzer|^Output of' "$out" \
            | grep -vE '^\s+[0-9]+: |^\s+at |stack backtrace' | head -n 40 >&2 || true
        for a in $(grep -oE 'artifacts/[A-Za-z0-9_]+/(crash|leak|timeout|oom|slow-unit)-[0-9a-f]+' "$out" | sort -u); do
            log "crashing input: fuzz/$a (replay: cd fuzz && cargo +nightly fuzz run ${FLAGS[*]} $t $a)"
        done
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    log "FAILED targets: ${failed[*]}"
    exit 1
fi
log "all ${#targets[@]} target(s) ran ${seconds} s without a failure"
