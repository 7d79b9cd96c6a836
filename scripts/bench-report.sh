#!/usr/bin/env bash
# Runs the spawn-latency benchmark and prints the Markdown table of docs/performance.md:
# the machine, then per concurrency the median of floor / warm / download and their
# ratio to the floor (from criterion's target/criterion/spawn/*/*/new/estimates.json).
#
#   scripts/bench-report.sh              # run the bench (1, 8, 64), then report
#   scripts/bench-report.sh --no-run     # only report the last run's numbers
#
# Env: SPAWN_BENCH_CONCURRENCY (default 1,8,64). Uses the dev profile: this project
# never builds release on its 2-core machines, so the numbers are for a debug build.
# Needs jq.
set -euo pipefail
cd "$(dirname "$0")/.."

export SPAWN_BENCH_CONCURRENCY="${SPAWN_BENCH_CONCURRENCY:-1,8,64}"
if [ "${1:-}" != "--no-run" ]; then
    cargo bench --profile dev --bench spawn >&2
fi

dir=target/criterion/spawn
median_ms() { # variant concurrency -> median in ms, or empty
    local f="$dir/$1/$2/new/estimates.json"
    [ -f "$f" ] && jq -r '.median.point_estimate / 1e6' "$f" || true
}

model="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "Machine: $(nproc) CPUs, ${model:-unknown model}; $(uname -sr); $(rustc --version)"
echo "Command: SPAWN_BENCH_CONCURRENCY=$SPAWN_BENCH_CONCURRENCY cargo bench --profile dev --bench spawn"
echo
echo "| concurrency | floor (median) | warm cache (median) | warm / floor | download every run (median) | download / floor |"
echo "|---:|---:|---:|---:|---:|---:|"
IFS=, read -ra levels <<<"$SPAWN_BENCH_CONCURRENCY"
for c in "${levels[@]}"; do
    floor="$(median_ms floor "$c")"
    warm="$(median_ms warm "$c")"
    down="$(median_ms download "$c")"
    [ -n "$floor" ] || continue
    ratio() { [ -n "$1" ] && awk -v a="$1" -v b="$floor" 'BEGIN { printf "%.1fx", a / b }' || echo "-"; }
    ms() { [ -n "$1" ] && awk -v a="$1" 'BEGIN { printf "%.1f ms", a }' || echo "-"; }
    echo "| $c | $(ms "$floor") | $(ms "$warm") | $(ratio "$warm") | $(ms "$down") | $(ratio "$down") |"
done
